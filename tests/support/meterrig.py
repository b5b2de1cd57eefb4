"""Emulated meter boards for end-to-end tests: flash the real firmware, attach the world,
run at high speed against a real Mosquitto, and read the world's ground truth."""
import json
import pathlib
import re
import shutil
import threading
import time

from sim_board import umqtt_install
from sim_board.board import Board, attach_world

ROOT = pathlib.Path(__file__).resolve().parents[2]
WIFI = {"ssid": "energo-sim", "password": "sim-password"}
# When an emulated meter powers on unless a test says otherwise: a summer morning, the sun up
# over the default site for the next twelve hours. A fixed instant, not the host's clock: the
# world a test meets (daylight, the UTC midnight its epoch starts at) must not depend on the
# hour the test runs.
START_EPOCH_S = 1_782_021_600  # 2026-06-21 06:00 UTC
KEY_LINE = re.compile(r"energo: meter (m-[0-9a-f]{12}) board \S+ key ([0-9a-f]+)")


def flash_firmware(flash_dir, board_cfg, device_cfg):
    """What `energo flash` does for an emulated board: firmware, umqtt, board and device files."""
    flash_dir = pathlib.Path(flash_dir)
    flash_dir.mkdir(parents=True, exist_ok=True)
    for name in ("boot.py", "main.py"):
        shutil.copy(ROOT / "firmware" / name, flash_dir / name)
    shutil.copytree(ROOT / "firmware" / "lib" / "energo", flash_dir / "lib" / "energo",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    umqtt_install.install(str(flash_dir))
    (flash_dir / "board.json").write_text(json.dumps(board_cfg))
    (flash_dir / "device.json").write_text(json.dumps(device_cfg))


def device_config(port, record_interval_s=60, sample_interval_ms=1000, community="demo"):
    return {"community": community, "mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
            "record_interval_s": record_interval_s, "sample_interval_ms": sample_interval_ms,
            "wifi": WIFI, "ntp_host": "pool.ntp.org"}


def board_file(name):
    return json.loads((ROOT / "boards" / f"{name}.json").read_text())


class MeterBoard:
    """A started emulated meter whose console is captured; `device_id`/`spki_hex` once booted."""

    def __init__(self, flash_dir, board_cfg, site_scenario, speed, seed=1, faults=(),
                 meters=None, world_seed=7, start_epoch_s=START_EPOCH_S, world_start_s=None):
        """`start_epoch_s`: the true time at power-on. `world_start_s` pins the world's epoch
        (default: the UTC midnight before power-on). A board powered on again must name its
        first life's `world_start_s`: its meter's registers count from there, and the midnight
        before the second power-on may be a later one, whose meter would read less than the
        board saved (never accepted)."""
        self.output = bytearray()
        self.lock = threading.Lock()
        if world_start_s is not None:
            site_scenario = dict(site_scenario, start_s=world_start_s)
        world = {"seed": world_seed, "scenario": site_scenario, "site": "house-1"}
        if meters:
            world["meters"] = meters
        scenario = {"wifi": WIFI, "world": world, "faults": list(faults),
                    "start_epoch_s": start_epoch_s}
        self.board = Board(str(flash_dir), board_cfg, scenario, speed=speed, seed=seed,
                           echo=self._echo)
        self.world = attach_world(self.board, scenario)
        self.world_start_s = self.world.world.start_s
        self.device_id = None
        self.spki_hex = None

    def _echo(self, data):
        with self.lock:
            self.output += data

    def text(self):
        with self.lock:
            return self.output.decode(errors="replace")

    def start(self, timeout_s=30):
        self.board.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = KEY_LINE.search(self.text())
            if match:
                self.device_id, self.spki_hex = match.group(1), match.group(2)
                return self
            time.sleep(0.02)
        raise AssertionError(f"meter did not boot; console:\n{self.text()[-3000:]}")

    def now_s(self):
        """World (true) time of the board now."""
        return self.board.clock.true_time_s()

    def ground_truth(self, t_s):
        return self.world.world.ground_truth(t_s)["house-1"]

    def run_until(self, condition, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.board.stop()
        if self.world is not None and hasattr(self.world, "close"):
            self.world.close()
