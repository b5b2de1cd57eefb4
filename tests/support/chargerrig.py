"""An emulated charge point for end-to-end tests: the real firmware on an esp32-evse board, the
SDM630 behind it served by pymodbus, a world whose site has an EV (and nothing else drawing
power), simulated vehicles on its vehicle-link UART, a real Mosquitto and the settlement service
with the charger enrolled and the vehicles registered."""
import re
import threading
import time

from host_tools.settlement import Ledger, SettlementConfig
from host_tools.settlement.ev import EvService
from host_tools.settlement.registry import Registry
from host_tools.settlement.service import Service
from sim_board.board import Board, attach_world
from sim_board.vehicle import Vehicle
from sim_board.vehicle_link import LinkPeer
from tests.support.meterrig import WIFI, board_file, device_config, flash_firmware

BOARD = "esp32-evse"
SITE = "station-1"
SDM630 = [{"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600}]
KEY_LINE = re.compile(r"energo: charger (c-[0-9a-f]{12}) board \S+ key ([0-9a-f]+)")
CREDIT_MICRO = 50_000_000
OWNER = "owner"
HANDSHAKE_SPEED = 8.0
HANDSHAKE_STATES = ("plugged", "authorizing")


def station_world(battery_kwh=60.0, acceptance_a=32.0):
    """A site with only the charge point's EV behind the meter; it plugs in only when a
    simulated vehicle says so (no seeded sessions)."""
    ev = {"battery_kwh": battery_kwh, "acceptance_a": acceptance_a, "phases": 3, "sessions": []}
    return {"sites": {SITE: {"load": None, "pv_kwp": 0.0, "phases": 3, "ev": ev}}}


class ChargerBoard:
    """A started emulated charger whose console is captured; `device_id`/`spki_hex` once booted."""

    def __init__(self, flash_dir, speed, seed=1, faults=(), world_seed=7, start_epoch_s=None):
        self.output = bytearray()
        self.lock = threading.Lock()
        world = {"seed": world_seed, "scenario": station_world(), "site": SITE,
                 "meters": SDM630}
        scenario = {"wifi": WIFI, "world": world, "faults": list(faults)}
        if start_epoch_s is not None:  # the same charger powered on again later
            scenario["start_epoch_s"] = start_epoch_s
        self.speed = float(speed)
        self.vehicles = []
        self.board = Board(str(flash_dir), board_file(BOARD), scenario, speed=speed, seed=seed,
                           echo=self._echo)
        self.world = attach_world(self.board, scenario)
        # The vehicle-link UART's other end, wired before boot (the firmware opens its UART
        # once) and shared by every vehicle that plugs in here, one at a time.
        self.link = LinkPeer(board_file(BOARD)["vehicle_link"]["baudrate"], clock=self.board.clock)
        self.board.uart_ports[board_file(BOARD)["vehicle_link"]["uart"]] = self.link
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
        raise AssertionError(f"charger did not boot; console:\n{self.text()[-3000:]}")

    def now_s(self):
        return self.board.clock.true_time_s()

    def attach(self, vehicle):
        """Put `vehicle` on this charger's cable (one vehicle at a time is plugged in)."""
        pin = self.board.config["evse"]["contactor"]
        self.vehicles.append(vehicle)
        return vehicle.connect(self.world.site, self.link, self.board.clock.true_time_s,
                               contactor=lambda: bool(self.board.pin_outputs.get(pin, 0)))

    def run_until(self, condition, timeout_s):
        """Wait (real time) until `condition()`; meanwhile pace the handshake (see _pace)."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if condition():
                    return True
                self._pace()
                time.sleep(0.01)
            return False
        finally:
            if self.board.clock.speed != self.speed:
                self.board.clock.set_speed(self.speed)

    def _pace(self):
        """While a vehicle waits for its authorization, run the board at HANDSHAKE_SPEED.

        The service is a real process answering in real time, while the charger gives it 20 s
        of its own (virtual) time: at 300x that is 67 ms, which a loaded machine misses. A
        real charge point waits in real seconds; slowing the board for the handshake keeps
        that relation without slowing the rest of the test."""
        waiting = any(v.session is not None and v.session.get("state") in HANDSHAKE_STATES
                      for v in self.vehicles)
        speed = min(self.speed, HANDSHAKE_SPEED) if waiting else self.speed
        if self.board.clock.speed != speed:
            self.board.clock.set_speed(speed)

    def stop(self):
        self.board.stop()
        if self.world is not None and hasattr(self.world, "close"):
            self.world.close()


class Community:
    """The settlement service on a ledger with the station's owner and the drivers as members,
    the charger enrolled (role charger, paid to `owner`), and vehicles registered."""

    def __init__(self, tmp_path, broker):
        self.url = f"sqlite:///{tmp_path / 'ledger.db'}"
        self.key_path = str(tmp_path / "service-key.pem")
        self.broker = broker
        ledger = Ledger.open(self.url, config=SettlementConfig(
            member_credit_limit_micro=CREDIT_MICRO), key_path=self.key_path)
        ledger.add_member(OWNER)
        self.community_key = EvService(ledger, Registry(ledger), "demo").community_key_hex()
        ledger.close()
        self.service = None
        self.worker = None

    def ledger(self):
        return Ledger.open(self.url, key_path=self.key_path)

    def enroll_charger(self, device_id, spki_hex):
        ledger = self.ledger()
        try:
            Registry(ledger).enroll(device_id, bytes.fromhex(spki_hex), "charger", OWNER)
        finally:
            ledger.close()

    def vehicle(self, member, offline_limit_micro=None, seed=None, **kwargs):
        """A simulated vehicle registered for `member` (a new member with credit)."""
        vehicle = Vehicle(self.community_key, member, seed=seed, **kwargs)
        ledger = self.ledger()
        try:
            if not ledger.is_member(member):
                ledger.add_member(member)
            EvService(ledger, Registry(ledger), "demo").add_vehicle(
                vehicle.pub_hex, member, offline_limit_micro)
        finally:
            ledger.close()
        return vehicle

    def start(self):
        self.service = Service(self.url, self.broker.url, "demo", key_path=self.key_path,
                               batch_wait_ms=20)
        self.worker = threading.Thread(target=self.service.run, daemon=True)
        self.worker.start()
        if not self.service.connected.wait(10):
            raise AssertionError("the settlement service did not connect")
        self.publish_price()
        return self

    def publish_price(self):
        """The retained reference price, as the service's market publishes it when an interval
        closes (a fresh ledger has none yet: the service then takes its configured price)."""
        import json

        import paho.mqtt.client as mqtt

        ledger = self.ledger()
        try:
            price = ledger.config.ev_reference_price_micro_per_kwh
        finally:
            ledger.close()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="price-stand-in")
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        payload = json.dumps({"interval_start_s": 0, "price_micro_per_kwh": price,
                              "volume_wh": 0, "trade_count": 0, "carried": True})
        client.publish("energo/v1/demo/price", payload, qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        self.price = price

    def stop(self):
        if self.service is not None:
            time.sleep(0.3)  # the last batch commits
            self.service.stop_event.set()
            self.worker.join(10)
            self.service = None


def provision(tmp_path, broker_port, speed=300):
    """Flash a charger and boot it once to read its key (as provisioning does over USB)."""
    flash = tmp_path / "flash"
    flash_firmware(flash, board_file(BOARD), config(broker_port + 1 if broker_port < 65535
                                                    else 1))
    board = ChargerBoard(flash, speed)
    try:
        board.start()
        return flash, board.device_id, board.spki_hex
    finally:
        board.stop()


def config(port, record_interval_s=60, sample_interval_ms=5000):
    return device_config(port, record_interval_s=record_interval_s,
                         sample_interval_ms=sample_interval_ms)


def reflash_config(flash, port, **kwargs):
    """Point the provisioned charger at the real broker (only /device.json changes)."""
    import json

    (flash / "device.json").write_text(json.dumps(config(port, **kwargs)))
