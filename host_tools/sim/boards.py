"""Emulated meter boards for a community run: flash directory, world wiring, identity, truth.

Why the flash directory is prepared directly instead of going through `energo flash`: that tool
talks to a board over its serial REPL with mpremote and a pseudo-terminal, which is what a USB
board needs and costs seconds per board. An emulated board's flash IS a host directory, so
writing the same files into it (the firmware sources, micropython-lib's umqtt, /board.json and
/device.json, checked as the firmware checks them) gives the firmware exactly the same start
and lets a dozen boards come up in a second.

Provisioning follows the real order: a board boots once with no reachable broker, prints its
device id and public key on the console (its key is created on first boot and stays on flash),
is enrolled and given its broker password (derived from the id), and boots again for real.
"""
import json
import os
import pathlib
import re
import shutil
import threading
import time

from energo import devcfg

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE_DIR = ROOT / "firmware"
BOARDS_DIR = ROOT / "boards"
WIFI = {"ssid": "energo-sim", "password": "sim-password"}
KEY_LINE = re.compile(r"energo: meter (m-[0-9a-f]{12}) board \S+ key ([0-9A-Fa-f]+)")
CONSOLE_BYTES_MAX = 64 * 1024  # kept per board: the boot line and the latest errors
BOOT_TIMEOUT_S = 60
# The world meters behind each Modbus board file (bus settings as in boards/*.json).
MODBUS_METERS = {
    "esp32-meter-sdm630": {"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600},
    "esp32-meter-sdm120": {"model": "SDM120", "uart": 2, "slave_id": 1, "baudrate": 2400},
}
CT_BOARD = "esp32-meter-ct"


class BoardError(RuntimeError):
    """An emulated board did not boot or did not print its identity."""


def board_file(name):
    """The board definition `boards/<name>.json` as a dict."""
    return json.loads((BOARDS_DIR / f"{name}.json").read_text())


def calibrated_ct_board(world_seed, seconds=30.0):
    """The CT board as the production line leaves it: calibrated for this unit's chip.

    The chip's ADC reference and the CT/VT errors are seeded by the world seed, so each CT
    household is calibrated once for its own seed (uncalibrated, it is off by a few percent).
    """
    from energo.sources import AdcSource
    from host_tools import calibrate

    board = board_file(CT_BOARD)
    volt, current = AdcSource.channels(board["adc"])
    rig = calibrate.Rig(board, world_seed, ct_ratio_error_pct=0.0,
                        ct_phase_error_deg=current.get("phase_error_deg", 0.0),
                        vt_phase_error_deg=volt.get("phase_error_deg", 0.0))
    calibrated, _ = calibrate.calibrate(rig, seconds=seconds)
    return calibrated


def device_config(community, mqtt_url, record_interval_s, sample_interval_ms, user=None,
                  password=None):
    """/device.json for a meter, refused here (ValueError) if the firmware would refuse it."""
    mqtt = {"url": mqtt_url}
    if user is not None:
        mqtt["user"], mqtt["password"] = user, password
    cfg = {"community": community, "mqtt": mqtt, "record_interval_s": record_interval_s,
           "sample_interval_ms": sample_interval_ms, "wifi": WIFI, "ntp_host": "pool.ntp.org"}
    devcfg.check(cfg)
    return cfg


def flash_firmware(flash_dir, board_cfg, device_cfg):
    """Write what `energo flash` writes: firmware sources, umqtt, /board.json, /device.json.

    /data (the device key, energy register and outbox) is left alone, as a reflash does.
    """
    from sim_board import umqtt_install

    flash_dir = pathlib.Path(flash_dir)
    flash_dir.mkdir(parents=True, exist_ok=True)
    for name in ("boot.py", "main.py"):
        shutil.copy(FIRMWARE_DIR / name, flash_dir / name)
    shutil.copytree(FIRMWARE_DIR / "lib" / "energo", flash_dir / "lib" / "energo",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    umqtt_install.install(str(flash_dir))
    (flash_dir / "board.json").write_text(json.dumps(board_cfg))
    (flash_dir / "device.json").write_text(json.dumps(device_cfg))


class EmulatedMeter:
    """One started emulated meter: its console, identity, virtual time and world truth."""

    def __init__(self, flash_dir, board_cfg, site, site_scenario, world_seed, speed, seed,
                 start_epoch_s, meters=None):
        from sim_board.board import Board, attach_world

        self.output = bytearray()
        self._lock = threading.Lock()
        self.site = site
        world = {"seed": world_seed, "scenario": site_scenario, "site": site}
        if meters:
            world["meters"] = meters
        scenario = {"wifi": WIFI, "world": world, "start_epoch_s": start_epoch_s}
        self.board = Board(os.fspath(flash_dir), board_cfg, scenario, speed=speed, seed=seed,
                           echo=self._echo)
        self.world = attach_world(self.board, scenario)
        self.device_id = None
        self.spki_hex = None

    def _echo(self, data):
        with self._lock:
            self.output += data
            if len(self.output) > CONSOLE_BYTES_MAX:
                del self.output[:len(self.output) - CONSOLE_BYTES_MAX // 2]

    def text(self):
        with self._lock:
            return self.output.decode(errors="replace")

    def start(self, timeout_s=BOOT_TIMEOUT_S, stop=None):
        """Power on and wait for the identity line; BoardError with the console tail if none."""
        self.board.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            match = KEY_LINE.search(self.text())
            if match:
                self.device_id, self.spki_hex = match.group(1), match.group(2).upper()
                return self
            time.sleep(0.02)
        raise BoardError(f"board for {self.site} printed no identity; console:\n"
                         f"{self.text()[-2000:]}")

    def now_s(self):
        """The world's (true) time on this board now."""
        return self.board.clock.true_time_s()

    def ground_truth(self, t_s):
        """{"import_wh", "export_wh"} of this site since the world's start, at `t_s`."""
        return self.world.world.ground_truth(t_s)[self.site]

    def stop(self):
        try:
            self.board.stop()
        finally:
            if self.world is not None and hasattr(self.world, "close"):
                self.world.close()
