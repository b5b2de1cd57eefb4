"""Charge-and-pay handshake: plug-in to contactor closed, through a real broker and service.

The unmodified charger firmware runs on an emulated esp32-evse board (the SDM630 behind it on
Modbus), against a private Mosquitto and the settlement service with the charger enrolled and
the vehicles registered. Simulated vehicles plug in one after another; each session runs the
whole protocol (offer, auth, the service's grant, pilot C, contactor) and then stops at once
(countersigned, then unplugged) so the next car can come. Plug to contactor is measured on the
board's virtual clock, which at `--speed 1` is real time.

Where the time goes: every ECDSA signature made and checked inside the plug-to-contactor window
is timed on its side: the vehicle (its offer, certificate and grant checks, its auth), the
charger (its firmware's P-256 code: offer, auth check, TX B record) and the service (offer and
auth checks, the grant signed with OpenSSL). The baseline is the same set of signatures made
and checked back to back in this process, without board, link or broker.
"""
import json
import math
import os
import re
import statistics
import tempfile
import threading
import time

from host_tools.errors import UsageError
from host_tools.sim import boards as sim_boards

NAME = "handshake"
_SITE = "station"
_KEY_LINE = re.compile(r"energo: charger (c-[0-9a-f]{12}) board \S+ key ([0-9a-f]+)")
_SERVICE_THREAD = "bench-service"
_SESSION_WAIT_S = 60.0  # real seconds a session may take before it counts as failed
TARGET_P99_MS = 1000
VEHICLES = 5


def add_arguments(parser):
    parser.add_argument("--sessions", type=int, default=50,
                        help="charging sessions to measure (3..1000; default 50)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="the charger board's virtual speed (default 1: real time)")


def _percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class _CryptoTimer:
    """Wraps signing and verification functions; keeps (side, wall start, seconds) events."""

    def __init__(self):
        self.events = []
        self._undo = []

    def wrap(self, obj, name, side, thread=None):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            if thread is not None and threading.current_thread().name != thread:
                return fn(*args, **kwargs)
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.events.append((side, t0, time.monotonic() - t0))
        setattr(obj, name, timed)
        self._undo.append((obj, name, fn))

    def wrap_steps(self, obj, name, side):
        """Like wrap, for a function returning a steps-generator (p256.sign_steps, ...): the
        firmware runs it in slices with its event loop between them, so each slice is timed."""
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            inner = fn(*args, **kwargs)

            def steps():
                while True:
                    t0 = time.monotonic()
                    try:
                        next(inner)
                    except StopIteration as done:
                        return done.value
                    finally:
                        self.events.append((side, t0, time.monotonic() - t0))
                    yield
            return steps()
        setattr(obj, name, timed)
        self._undo.append((obj, name, fn))

    def restore(self):
        for obj, name, fn in reversed(self._undo):
            setattr(obj, name, fn)
        self._undo = []

    def within(self, side, start, end):
        return sum(d for s, t0, d in self.events if s == side and start <= t0 <= end)


def _flash(tmp, port):
    flash = os.path.join(tmp, "charger")
    board = sim_boards.board_file("esp32-evse")
    sim_boards.flash_firmware(flash, board, _device(port))
    return flash, board


def _device(port):
    return sim_boards.device_config("bench", f"mqtt://127.0.0.1:{port}", record_interval_s=60,
                                sample_interval_ms=1000)


class _Charger:
    """The emulated charger board with its world (site with an EV, SDM630) and console."""

    def __init__(self, flash, board_cfg, speed):
        from sim_board.board import Board, attach_world
        from sim_board.vehicle_link import LinkPeer

        ev = {"battery_kwh": 60.0, "acceptance_a": 16.0, "phases": 3, "sessions": []}
        self.scenario = {"wifi": sim_boards.WIFI, "world": {
            "seed": 1, "site": _SITE,
            "scenario": {"sites": {_SITE: {"load": None, "pv_kwp": 0.0, "phases": 3, "ev": ev}}},
            "meters": [{"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600}]}}
        self.out = bytearray()
        self.board = Board(flash, board_cfg, self.scenario, speed=speed, seed=1,
                           echo=self.out.extend)
        self.world = attach_world(self.board, self.scenario)
        # the cable's modem: wired before power-on, since the firmware opens its UART once
        link_cfg = board_cfg["vehicle_link"]
        self.link = LinkPeer(link_cfg["baudrate"], clock=self.board.clock)
        self.board.uart_ports[link_cfg["uart"]] = self.link

    def text(self):
        return bytes(self.out).decode(errors="replace")

    def wait_for(self, pattern, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            time.sleep(0.02)
        raise UsageError(f"the charger did not print {pattern!r}; console:\n"
                         f"{self.text()[-1500:]}")

    def stop(self):
        self.board.stop(timeout_s=5.0)
        self.world.close()


def _community(tmp, device_id, spki_hex):
    """The ledger: the station's owner, the charger enrolled, VEHICLES registered drivers."""
    from host_tools.settlement import Ledger, SettlementConfig
    from host_tools.settlement.ev import EvService
    from host_tools.settlement.registry import Registry
    from sim_board.vehicle import Vehicle

    url = f"sqlite:///{os.path.join(tmp, 'ledger.db')}"
    key_path = os.path.join(tmp, "service-key.pem")
    ledger = Ledger.open(url, config=SettlementConfig(member_credit_limit_micro=10**12),
                         key_path=key_path)
    try:
        ledger.add_member("owner")
        registry = Registry(ledger)
        registry.enroll(device_id, bytes.fromhex(spki_hex), "charger", "owner")
        ev = EvService(ledger, registry, "bench")
        vehicles = []
        for i in range(VEHICLES):
            # a target of 1 Wh: the car stops as soon as it charges, the next one comes
            vehicle = Vehicle(ev.community_key_hex(), f"driver{i}", seed=100 + i, target_wh=1,
                              emax_wh=5000, cmax_micro=5_000_000)
            ledger.add_member(vehicle.wallet)
            ev.add_vehicle(vehicle.pub_hex, vehicle.wallet)
            vehicles.append(vehicle)
    finally:
        ledger.close()
    return url, key_path, vehicles


def _publish_price(port, url, key_path):
    """The community's reference price, retained, as its market publishes it; the bench runs
    no market, so it is the price the service accepts without one."""
    import paho.mqtt.publish as publish

    from host_tools.settlement import Ledger

    ledger = Ledger.open(url, key_path=key_path)
    try:
        price = ledger.config.ev_reference_price_micro_per_kwh
    finally:
        ledger.close()
    publish.single("energo/v1/bench/price", json.dumps({"price_micro_per_kwh": price}), qos=1,
                   retain=True, hostname="127.0.0.1", port=port)


def _baseline():
    """One handshake's signatures made and checked back to back (no board, link, broker)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from energo import p256

    charger = p256.generate_private_key()
    vehicle = p256.generate_private_key()
    community = ec.generate_private_key(ec.SECP256R1())
    runs = []
    for i in range(5):
        t0 = time.perf_counter()
        offer = p256.sign(charger, b"offer %d" % i)
        for _ in range(2):  # the vehicle: certificate and offer
            p256.verify(p256.public_key(charger), b"offer %d" % i, offer)
        auth = p256.sign(vehicle, b"auth %d" % i)
        for _ in range(3):  # the charger's auth check; the service's offer and auth checks
            p256.verify(p256.public_key(vehicle), b"auth %d" % i, auth)
        grant = community.sign(b"grant", ec.ECDSA(hashes.SHA256()))
        community.public_key().verify(grant, b"grant", ec.ECDSA(hashes.SHA256()))
        p256.sign(charger, b"TX B record %d" % i)
        runs.append(time.perf_counter() - t0)
    return round(statistics.median(runs) * 1000, 2)


def _session(vehicle, previous, plug_wall):
    """Wait for the new session to be countersigned (or refused); returns it."""
    deadline = plug_wall + _SESSION_WAIT_S
    s = None
    while time.monotonic() < deadline:
        s = vehicle.session
        if s is not previous and s["state"] in ("final", "done", "refused", "rejected"):
            return s
        time.sleep(0.005)
    return s if s is not previous else {"state": "not plugged", "refused": None,
                                        "rejected": None, "contactor_s": None}


def _run_sessions(charger, vehicles, count, timer):
    board, pilot = charger.board, charger.world.pilot
    pin = board.config["evse"]["contactor"]
    results = []
    for n in range(count):
        vehicle = vehicles[n % len(vehicles)]
        vehicle.connect(charger.world.site, charger.link, board.clock.true_time_s,
                        contactor=lambda: bool(board.pin_outputs.get(pin, 0)))
        vehicle.start()
        try:
            previous = vehicle.session
            plug_wall = time.monotonic()
            vehicle.plug()
            s = _session(vehicle, previous, plug_wall)
            contactor_wall = time.monotonic() if s["contactor_s"] is None else \
                plug_wall + (s["contactor_s"] - s["plug_s"]) / board.clock.speed
            closed = [t for t, what, value in pilot.log if what == "contactor" and value
                      and board.clock.true_epoch_s + t >= s["plug_s"]]
            if s["state"] not in ("final", "done") or not closed:
                results.append({"ok": False, "state": s["state"], "refused": s["refused"],
                                "rejected": s["rejected"]})
            else:
                contactor_s = board.clock.true_epoch_s + closed[0]
                ms = (contactor_s - s["plug_s"]) * 1000
                results.append({"ok": True, "ms": ms,
                                "offer_ms": (s["offer_s"] - s["plug_s"]) * 1000,
                                "grant_ms": (s["grant_s"] - s["offer_s"]) * 1000,
                                "close_ms": (contactor_s - s["grant_s"]) * 1000,
                                "vehicle_ms": (s["sign_s"] + s["verify_s"]) * 1000,
                                "charger_ms": timer.within("charger", plug_wall,
                                                           contactor_wall) * 1000,
                                "service_ms": timer.within("service", plug_wall,
                                                           contactor_wall) * 1000})
            vehicle.unplug()
            t_unplug = board.clock.true_time_s()
            while board.clock.true_time_s() < t_unplug + 0.5:  # the charger sees pilot A
                time.sleep(0.01)
        finally:
            vehicle.stop()
    return results


def run(args):
    from host_tools.mosquitto import Mosquitto
    from host_tools.settlement.service import Service

    if not 3 <= args.sessions <= 1000 or not 0 < args.speed <= 1000:
        raise UsageError("--sessions 3..1000 and --speed in (0, 1000]")
    baseline_ms = _baseline()
    timer = _CryptoTimer()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="energo-bench-") as tmp:
        flash, board_cfg = _flash(tmp, broker.port + 1 if broker.port < 65535 else 1)
        first = _Charger(flash, board_cfg, speed=300.0)  # provisioning boot: read the key
        try:
            first.board.start()
            device_id, spki_hex = first.wait_for(_KEY_LINE, 60).groups()
        finally:
            first.stop()
        with open(os.path.join(flash, "device.json"), "w") as f:
            json.dump(_device(broker.port), f)
        service = None
        charger = None
        worker = None
        try:
            url, key_path, vehicles = _community(tmp, device_id, spki_hex)
            _publish_price(broker.port, url, key_path)
            service = Service(url, broker.url, "bench", key_path=key_path, batch_wait_ms=5)
            worker = threading.Thread(target=service.run, name=_SERVICE_THREAD, daemon=True)
            worker.start()
            if not service.connected.wait(10):
                raise UsageError("the settlement service did not connect to the broker")
            from energo import p256

            timer.wrap(p256, "verify", "service", thread=_SERVICE_THREAD)
            timer.wrap(service.ev, "sign", "service")
            charger = _Charger(flash, board_cfg, speed=args.speed)
            charger.board.start()
            charger.wait_for(r"session: certificate and allow-list updated", 120)
            board_p256 = charger.board.runtime.modules["energo.p256"]
            # sign and verify run these too: wrapping only them counts every slice once
            for name in ("sign_steps", "verify_steps"):
                timer.wrap_steps(board_p256, name, "charger")
            results = _run_sessions(charger, vehicles, args.sessions, timer)
            settled = service.ev.counts.get("settled", 0)
        finally:
            timer.restore()
            if charger is not None:
                charger.stop()
            if service is not None:
                service.stop_event.set()
                worker.join(10)
    good = [r for r in results if r["ok"]]
    if not good:
        raise UsageError(f"no session reached the contactor: {results[:3]}")
    ms = [r["ms"] for r in good]
    crypto = [r["vehicle_ms"] + r["charger_ms"] + r["service_ms"] for r in good]
    p99 = _percentile(ms, 99)
    return {
        "firmware": "charger (esp32-evse), unmodified",
        "speed": args.speed,
        "sessions": len(results),
        "sessions_failed": len(results) - len(good),
        "plug_to_contactor_ms_p50": round(_percentile(ms, 50), 1),
        "plug_to_contactor_ms_p99": round(p99, 1),
        "plug_to_contactor_ms_max": round(max(ms), 1),
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 <= TARGET_P99_MS,
        # where the time goes: plug-in to the offer at the vehicle, offer to the grant at the
        # vehicle (its auth, the charger, the broker and the service), grant to contactor
        "plug_to_offer_ms_p50": round(_percentile([r["offer_ms"] for r in good], 50), 1),
        "offer_to_grant_ms_p50": round(_percentile([r["grant_ms"] for r in good], 50), 1),
        "grant_to_contactor_ms_p50": round(_percentile([r["close_ms"] for r in good], 50), 1),
        "crypto_ms_p50": round(_percentile(crypto, 50), 1),
        "crypto_share": round(sum(crypto) / sum(ms), 3),
        "vehicle_crypto_ms_p50": round(_percentile([r["vehicle_ms"] for r in good], 50), 2),
        "charger_crypto_ms_p50": round(_percentile([r["charger_ms"] for r in good], 50), 2),
        "service_crypto_ms_p50": round(_percentile([r["service_ms"] for r in good], 50), 2),
        "baseline_crypto_ms": baseline_ms,
        "settled_by_service": settled,
    }
