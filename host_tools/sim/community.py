"""`energo sim community`: a simulated community day with the real firmware, broker and service.

What runs: N households, each an emulated ESP32 meter board (a CT clamp, or an SDM630 over
Modbus) running the unmodified firmware against its own seeded world site (load, PV, one
household with a home battery and the community's storage); the embedded broker (or Mosquitto,
or an external one) with per-device credentials; `energo settle` on SQLite (or PostgreSQL) with
its HTTP API. At the end the summary is read back from the ledger and set beside the world's
ground truth.

Reproducibility: the community plan (which meter, which load, PV size, battery), every world
seed, every board seed (hence every device key) and every agent's prices follow from `seed`.
What does not follow from it is how the host schedules threads: which records share a batch,
the wall time a record arrives. Settlement runs on event time, so what is settled per interval
does not depend on it.

Speed: the households' boards are split over one worker process per core
(`host_tools.sim.fleet`): the boards of one process share its interpreter lock, and the broker
and the service, processes of their own, need little CPU. A board costs about 0.5 ms of CPU per
simulated second (SDM630) and 1.4 ms (CT, sampling every 5 s; see
`Options.ct_sample_interval_ms`), mostly the firmware's own loops. The charger is the costliest
board by far; it runs in this process, and only around its sessions (see `host_tools.sim.ev`).
Boards that
cannot keep up fall behind their schedule rather than skip: each stops once it has lived
through the period, and the run ends when the slowest has. A board half an hour ahead of the
slowest is slowed to real time until the others are close (`CommunityRun._pace_households`), so
no record arrives after its interval closed only because its board was slow.

Market: when the settlement service has its market (`host_tools.settlement.market`), every
member opts in with a zero-intelligence agent whose target prices are drawn from the seed
(`enable_agents`), and the summary reads trades and reference prices back from the ledger
database.

EV: one charge point (an emulated esp32-evse board with the charger firmware) owned by a
member of its own, and two vehicles with wallets of their own that plug in at seeded times,
charge, pay and keep their receipts (`host_tools.sim.ev`; `ev=False` leaves them out). The
simulated community's rules give members a credit line, so the drivers' holds can be placed.
"""
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import threading
import time

from host_tools.mosquitto import free_port
from host_tools.sim import boards, processes

DAY_START_UTC = "2026-06-21T00:00:00Z"  # midsummer: PV matters; fixed so runs are reproducible
PROVISION_LEAD_S = 3600  # boards are provisioned an hour before the day (world time)
HOUSEHOLDS_MAX = 64
HOURS_MAX = 48.0
SPEED_MAX = 2000.0
COMMUNITY = "demo"
STORAGE_CAPACITY_WH = 20_000
UNREACHABLE_BROKER = "mqtt://127.0.0.1:1"  # the provisioning boot must not send anything
# Event-time grace before an interval closes without a silent device. Boards in one process
# do not keep equal pace (a Modbus board waits on its serial peer in real time, a CT board does
# not), so a board may trail the others by an hour of simulated time; with the service's default
# (one interval) its records would all arrive after their interval closed and be booked as
# corrections. Two hours keeps them in their own intervals.
GRACE_S = 7200
DRAIN_QUIET_S = 3.0  # the run is drained once nothing settled for this long
DRAIN_MAX_S = 60.0
AHEAD_HOLD_S = 1800  # a board this far ahead of the slowest is held back...
AHEAD_RELEASE_S = 600  # ...until it is this close again
HOLD_SPEED = 1.0  # a held-back board runs at real time


class SimError(ValueError):
    """An option or environment the simulation cannot run with; the message says what to do."""


@dataclasses.dataclass
class Options:
    """What to simulate. The defaults are the whole community day: 12 households from 00:00 to
    24:00 UTC with the charge point and its two vehicles (about six to eight minutes on a
    two-core machine, the households' boards split over one process per core; the service's
    intervals, the agents' trades and the vehicles' sessions all happen on event time, so a
    shorter `hours` from a later `start_hour` shows the same mechanisms sooner)."""

    households: int = 12
    hours: float = 24.0
    start_hour: float = 0.0
    speed: float = 720.0
    seed: int = 1
    db_url: str | None = None  # default: sqlite in out_dir (recreated each run)
    broker_url: str | None = None  # an external broker; default: the embedded one
    mosquitto: bool = False  # a private Mosquitto with the generated credentials and ACL
    out_dir: str = "out/community"
    # At most 60 s: the firmware's supervisor stops feeding the watchdog when a task has been
    # silent for 60 s, and the record task wakes once per record interval.
    record_interval_s: int = 60
    sample_interval_ms: int = 15_000  # Modbus meters: the SDM integrates, we only read it
    # CT meters integrate by sampling (a 200 ms window per sample applied to the whole gap), so
    # a sparse window misses appliances switching in between: 5 s keeps a CT household within
    # about 1 % at ~1.4 ms CPU per board-second; 1 s costs ~7 ms, 15 s errs by several %.
    ct_sample_interval_ms: int = 5_000
    http: bool = True
    report: bool = True
    ev: bool = True  # the charge point and its two vehicles (host_tools.sim.ev)
    ev_target_wh: int | None = None  # what each vehicle charges; None: drawn from the seed
    processes: int = 0  # worker processes for the households' boards; 0: one per core

    def check(self):
        """Refuse options out of range before anything starts (SimError, one line)."""
        def whole(name, value, low, high):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SimError(f"{name} must be a whole number from {low} to {high}, "
                               f"got {value!r}")

        def number(name, value, low, high):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low <= value <= high:
                raise SimError(f"{name} must be a number from {low} to {high}, got {value!r}")

        whole("households", self.households, 1, HOUSEHOLDS_MAX)
        number("hours", self.hours, 0.25, HOURS_MAX)
        number("start_hour", self.start_hour, 0.0, 23.75)
        number("speed", self.speed, 1.0, SPEED_MAX)
        whole("seed", self.seed, 0, 2**31 - 1)
        whole("record_interval_s", self.record_interval_s, 15, 60)
        whole("sample_interval_ms", self.sample_interval_ms, 1000, 60_000)
        whole("ct_sample_interval_ms", self.ct_sample_interval_ms, 1000, 60_000)
        if max(self.sample_interval_ms, self.ct_sample_interval_ms) \
                > self.record_interval_s * 1000:
            raise SimError("sample intervals must not exceed record_interval_s")
        whole("processes", self.processes, 0, HOUSEHOLDS_MAX)
        if self.ev_target_wh is not None:
            whole("ev_target_wh", self.ev_target_wh, 100, 20_000)
        if self.broker_url is not None and self.mosquitto:
            raise SimError("give an external broker or --mosquitto, not both")
        if self.broker_url is not None:
            from host_tools.settlement.service import ServiceError, parse_mqtt_url

            try:
                parse_mqtt_url(self.broker_url)
            except ServiceError as exc:
                raise SimError(str(exc)) from None
        if self.db_url is not None and not self.db_url.startswith(("sqlite:///",
                                                                    "postgresql://")):
            raise SimError(f"database URL must be sqlite:///PATH or postgresql://..., "
                           f"got {self.db_url!r}")
        return self


def day_start_s():
    return int(datetime.datetime.fromisoformat(DAY_START_UTC.replace("Z", "+00:00")).timestamp())


def plan_households(count, seed):
    """The community, from the seed: meters, loads, PV, the storage owner's battery.

    A third of the households have a CT meter, the rest an SDM630 over Modbus; every
    other household has PV; household 2 (or 1 in a community of one) owns the community's
    storage and has a home battery.
    """
    rng = random.Random(f"energo-community/{seed}")
    storage_index = 1 if count > 1 else 0
    plan = []
    for i in range(count):
        # SDM120 boards are left out: the firmware reads the SDM630's register block
        # 0x0000-0x001F, which the emulated single-phase SDM120 refuses (illegal address).
        board = boards.CT_BOARD if i % 3 == 0 else "esp32-meter-sdm630"
        pv_kwp = round(rng.uniform(3.0, 9.0), 1) if i % 2 == 1 else 0.0
        site = {"load": {"base_w": round(rng.uniform(150.0, 450.0)),
                         "scale": round(rng.uniform(0.7, 1.4), 2)},
                "pv_kwp": pv_kwp}
        if i == storage_index:
            site["battery"] = {"capacity_kwh": STORAGE_CAPACITY_WH / 1000, "power_w_max": 4000.0}
        plan.append({
            "index": i, "member": f"house{i + 1:02d}", "board": board,
            "meter": {"esp32-meter-ct": "CT", "esp32-meter-sdm630": "SDM630",
                      "esp32-meter-sdm120": "SDM120"}[board],
            "pv_kwp": pv_kwp, "site": site, "world_seed": seed * 1000 + i,
            "board_seed": seed * 1000 + i,
            "storage_capacity_wh": STORAGE_CAPACITY_WH if i == storage_index else 0,
        })
    return plan


class Household:
    """A planned household and its emulated meter (provisioned, then running)."""

    def __init__(self, plan, flash_root, options, world_start_s, board_cfg=None):
        self.plan = plan
        self.flash_dir = pathlib.Path(flash_root) / plan["member"]
        self.options = options
        self.world_start_s = world_start_s
        if board_cfg is not None:  # calibrated once, by the process that provisioned it
            self.board_cfg = board_cfg
        elif plan["board"] == boards.CT_BOARD:
            self.board_cfg = boards.calibrated_ct_board(plan["world_seed"])
        else:
            self.board_cfg = boards.board_file(plan["board"])
        self.sample_interval_ms = (options.ct_sample_interval_ms
                                   if plan["board"] == boards.CT_BOARD
                                   else options.sample_interval_ms)
        self.meter = None  # the running board, in the worker process that runs it
        self.started = False
        self.running = False
        self.held = False  # slowed to real time while the others catch up
        self.device_id = self.spki_hex = None

    def _make(self, start_epoch_s, speed):
        scenario = {"start_s": self.world_start_s,
                    "sites": {self.plan["member"]: self.plan["site"]}}
        meters = boards.MODBUS_METERS.get(self.plan["board"])
        return boards.EmulatedMeter(self.flash_dir, self.board_cfg, self.plan["member"],
                                    scenario, self.plan["world_seed"], speed,
                                    self.plan["board_seed"], start_epoch_s,
                                    meters=[meters] if meters else None)

    def provision(self, community):
        """First boot with no reachable broker: the board creates its key and prints its id."""
        cfg = boards.device_config(community, UNREACHABLE_BROKER, self.options.record_interval_s,
                                   self.sample_interval_ms)
        boards.flash_firmware(self.flash_dir, self.board_cfg, cfg)
        meter = self._make(self.world_start_s, 50.0)
        try:
            meter.start()
            # Stop only once the firmware is in its main loop (it then tries the broker):
            # stopping it half-way through starting leaves Python warnings, not harm.
            deadline = time.monotonic() + 5
            while "link:" not in meter.text() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            meter.stop()
        self.device_id, self.spki_hex = meter.device_id, meter.spki_hex
        return self.device_id

    def start(self, community, mqtt_url, password, start_epoch_s):
        cfg = boards.device_config(community, mqtt_url, self.options.record_interval_s,
                                   self.sample_interval_ms, user=self.device_id,
                                   password=password)
        boards.flash_firmware(self.flash_dir, self.board_cfg, cfg)
        self.meter = self._make(start_epoch_s, self.options.speed)
        self.running = True
        self.meter.start()
        if self.meter.device_id != self.device_id:
            raise boards.BoardError(f"{self.plan['member']}: the device key changed on reboot")

    def stop_board(self):
        """Power the board off (its world stays readable for the ground truth)."""
        if self.running:
            self.running = False
            with contextlib.suppress(Exception):
                self.meter.board.stop(timeout_s=2.0)

    def truth(self, t_s):
        return self.meter.ground_truth(t_s)


def agent_settings(member, seed, retail_micro_per_kwh, feed_in_micro_per_kwh):
    """A member's ZI agent settings from the seed: limits between feed-in and retail tariff.

    Nobody sells below what the grid pays for feed-in or buys above what the grid charges, so
    the range is the tariffs; where inside it each member aims is the seeded part.
    """
    rng = random.Random(f"energo-agent/{seed}/{member}")
    span = retail_micro_per_kwh - feed_in_micro_per_kwh
    return {"enabled": True,
            "floor_micro_per_kwh": feed_in_micro_per_kwh,
            "ceiling_micro_per_kwh": retail_micro_per_kwh,
            "target_buy_micro_per_kwh": feed_in_micro_per_kwh + int(span * rng.uniform(0.4, 0.9)),
            "target_sell_micro_per_kwh": feed_in_micro_per_kwh + int(span * rng.uniform(0.1, 0.6)),
            "upper_threshold_ppm": 800_000, "lower_threshold_ppm": 200_000}


def enable_agents(ledger, seed):
    """Opt every member in to the market; False when this service has no market to trade on."""
    try:
        from host_tools.api import store
        from host_tools.settlement import market  # noqa: F401 - its presence is the test
    except ImportError:
        return False
    config = ledger.config
    with ledger.db.transaction():
        store.ensure_tables(ledger.db)
        for member in ledger.member_names():
            settings = agent_settings(member, seed, config.retail_tariff_micro_per_kwh,
                                      config.feed_in_tariff_micro_per_kwh)
            store.agent_config(member, settings)  # refuses settings an agent would refuse
            store.put_agent_settings(ledger.db, member, settings, int(time.time() * 1000))
    return True


class Progress:
    """One status line: simulated time, records settled, intervals, trades and sessions."""

    def __init__(self, out, every_s=5.0):
        self.out = out
        self.every_s = every_s
        self.tty = hasattr(out, "isatty") and out.isatty()
        self._next = 0.0

    def show(self, line, force=False):
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + (0.5 if self.tty else self.every_s)
        if self.tty:
            print(f"\r{line}\x1b[K", end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def done(self):
        if self.tty:
            print(file=self.out, flush=True)


class CommunityRun:
    """One simulation: prepare, run until the period is over (or stopped), summarise."""

    def __init__(self, options, out=None):
        self.options = options.check()
        self.out = out if out is not None else sys.stdout
        self.out_dir = pathlib.Path(options.out_dir)
        self.stop_event = threading.Event()
        self.households = []
        self.service = None
        self.interrupted = False
        self.http_url = None
        self.market = False
        self._cleanup = []  # callables run when the run ends
        self._db_counts = ({"trades": "-", "sessions": "-"}, 0.0)  # (shown values, when read)
        self.dashboard_url = None
        self.ev = None  # the charge point (host_tools.sim.ev.ChargePoint) unless --no-ev
        self.fleet = None  # the households' boards, in worker processes (host_tools.sim.fleet)

    def say(self, text):
        print(f"energo sim: {text}", file=self.out, flush=True)

    # --- set-up -------------------------------------------------------------------------------

    def _fresh_db_url(self):
        if self.options.db_url is not None:
            return self.options.db_url
        path = self.out_dir / "ledger.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        return f"sqlite:///{path.resolve()}"

    def _open_ledger(self):
        """The ledger, created with the simulated community's rules (a credit line for
        members, so that a driver's hold can be placed; ledger.py stores rules at creation)."""
        from host_tools.settlement import SettlementConfig
        from host_tools.settlement.errors import ConfigError
        from host_tools.settlement.ledger import Ledger
        from host_tools.sim import ev

        try:
            return Ledger.open(self.db_url, key_path=self.key_path, config=SettlementConfig(
                member_credit_limit_micro=ev.CREDIT_LIMIT_MICRO))
        except ConfigError:
            ledger = Ledger.open(self.db_url, key_path=self.key_path)
            try:
                self._refuse_members(ledger)
            finally:
                ledger.close()
            raise SimError("the database was created with other settlement rules: give an "
                           "empty database") from None

    @staticmethod
    def _refuse_members(ledger):
        if ledger.member_names():
            raise SimError("the ledger already has members: give an empty database "
                           "(the simulation builds its own community)")

    def _check_ledger_empty(self):
        ledger = self._open_ledger()
        try:
            self._refuse_members(ledger)
        finally:
            ledger.close()

    def _prepare_ledger(self):
        from host_tools.settlement.registry import Registry

        ledger = self._open_ledger()
        try:
            if ledger.member_names():
                raise SimError("the ledger already has members: give an empty database "
                               "(the simulation builds its own community)")
            registry = Registry(ledger)
            for house in self.households:
                ledger.add_member(house.plan["member"],
                                  storage_capacity_wh=house.plan["storage_capacity_wh"])
                registry.enroll(house.device_id, bytes.fromhex(house.spki_hex), "meter",
                                house.plan["member"])
            self.market = enable_agents(ledger, self.options.seed)
            if self.ev is not None:  # after the agents: drivers and owner trade no energy
                self.ev.enroll(ledger)
        finally:
            ledger.close()

    @contextlib.contextmanager
    def _broker(self):
        """The broker URL; the broker (if we start one) lives as long as the block."""
        from host_tools import broker_auth

        if self.options.broker_url is not None:
            yield self.options.broker_url
            return
        port = free_port()
        if self.options.mosquitto:
            from host_tools import mosquitto

            if mosquitto.binary() is None:
                raise SimError("--mosquitto: mosquitto is not installed (Debian: mosquitto)")
            # A directory of its own, world-traversable: Mosquitto started as root drops to
            # its own user, which could not reach a private output directory.
            conf_dir = pathlib.Path(tempfile.mkdtemp(prefix="energo-sim-mosquitto-"))
            conf_dir.chmod(0o755)
            self._cleanup.append(lambda: shutil.rmtree(conf_dir, ignore_errors=True))
            broker_auth.write_mosquitto_config(
                str(conf_dir), COMMUNITY, self.secret,
                self._device_ids(), port=port, bind="127.0.0.1")
            command = [mosquitto.binary(), "-c", str(conf_dir / "mosquitto.conf")]
        else:
            command = processes.energo("broker", "--db", self.db_url, "--community", COMMUNITY,
                              "--secret", self.secret_path, "--listen", f"127.0.0.1:{port}")
        with processes.Process("broker", command, self.out_dir / "broker.log") as process:
            process.wait_port(port)
            yield f"mqtt://127.0.0.1:{port}"

    @contextlib.contextmanager
    def _service(self, broker_url):
        """`energo settle` with its HTTP API; yields a `ServiceProbe` on its metrics."""
        http_port = free_port()
        command = processes.energo("settle", "--db", self.db_url, "--mqtt", broker_url,
                          "--community", COMMUNITY, "--key", self.key_path,
                          "--mqtt-secret", self.secret_path, "--http", f"127.0.0.1:{http_port}",
                          "--admin-token-file", str(self.out_dir / "admin-token"),
                          "--status-every-s", "60", "--grace-s", str(GRACE_S))
        with processes.Process("settle", command, self.out_dir / "settle.log") as process:
            probe = processes.ServiceProbe(f"http://127.0.0.1:{http_port}", process)
            probe.wait_healthy()
            yield probe

    # --- the run ------------------------------------------------------------------------------

    def run(self):
        """Run the whole simulation; returns the summary dict (also written to out_dir)."""
        from host_tools import broker_auth

        options = self.options
        self.out_dir.mkdir(parents=True, exist_ok=True)
        flash_root = self.out_dir / "boards"
        shutil.rmtree(flash_root, ignore_errors=True)
        self.db_url = self._fresh_db_url()
        self.key_path = str(self.out_dir / "service-key.pem")
        self.secret_path = str(self.out_dir / "broker-secret")
        self.secret = broker_auth.load_or_create_secret(self.secret_path)
        world_start_s = day_start_s() - PROVISION_LEAD_S
        day_s = day_start_s() + int(options.start_hour * 3600)  # where the boards start
        end_s = day_s + int(options.hours * 3600)
        started_wall_s = time.monotonic()
        self._check_ledger_empty()  # before minutes of provisioning, not after
        plans = plan_households(options.households, options.seed)
        start = datetime.datetime.fromtimestamp(day_s, datetime.UTC)
        self.say(f"{len(plans)} households, {options.hours:g} h from {start:%Y-%m-%d %H:%M} UTC, "
                 f"speed {options.speed:g}x, seed {options.seed}")
        for plan in plans:
            house = Household(plan, flash_root, options, world_start_s)
            house.provision(COMMUNITY)
            self.households.append(house)
        if options.ev:
            from host_tools.sim import ev

            self.ev = ev.ChargePoint(options, flash_root, world_start_s, day_s, end_s)
            self.ev.provision(COMMUNITY, UNREACHABLE_BROKER)
        ids = self._device_ids()
        if len(set(ids)) != len(ids):
            raise SimError("two boards produced the same device id; change the seed")
        self._prepare_ledger()
        self.say(f"provisioned and enrolled {len(self.households)} meters"
                 + ("" if self.ev is None else " and a charger; vehicles arrive at "
                    + ", ".join(f"{datetime.datetime.fromtimestamp(a['plug_s'], datetime.UTC):%H:%M}"
                                for a in self.ev.plan)))
        from host_tools.sim import fleet

        # The workers import and build their boards while the broker and the service start.
        self.fleet = fleet.Fleet(self.households, options, flash_root, world_start_s,
                                 options.processes or fleet.default_processes(len(plans)))
        try:
            return self._run_all(started_wall_s, day_s, end_s)
        finally:
            self._close_fleet()

    def _run_all(self, started_wall_s, day_s, end_s):
        try:
            with self._broker() as broker_url, self._service(broker_url) as probe:
                self.service = probe
                self.http_url = f"{probe.base_url}/api/v1/digest"
                self.say(f"broker: {broker_url}")
                self.say(f"HTTP API: {self.http_url}")
                self.dashboard_url = f"{probe.base_url}/"
                self.say(f"dashboard: {self._dashboard_link(probe.base_url)}")
                try:
                    self._run_boards(broker_url, day_s, end_s)
                finally:
                    self._stop_boards()
                    self._drain()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            for cleanup in self._cleanup:
                cleanup()
        return self._finish(started_wall_s, day_s, end_s)

    def _close_fleet(self):
        """Stop the workers (once); {household index: console text}."""
        fleet, self.fleet = self.fleet, None
        return {} if fleet is None else fleet.close()

    def _device_ids(self):
        ids = [house.device_id for house in self.households]
        return ids if self.ev is None else [*ids, self.ev.device_id]

    def _run_boards(self, broker_url, day_s, end_s):
        from host_tools import broker_auth

        progress = Progress(self.out)
        try:
            if self.ev is not None:
                self.ev.configure(COMMUNITY, broker_url,
                                  broker_auth.derive_password(self.secret, self.ev.device_id))
            passwords = {house.plan["index"]:
                         broker_auth.derive_password(self.secret, house.device_id)
                         for house in self.households}
            for house in self.households:
                house.started = house.running = True
            self.fleet.start(COMMUNITY, broker_url, passwords, day_s)
            # Each board stops once it has lived through the period and sent its last record;
            # the next ones would only lie outside the day.
            stop_at_s = end_s + self.options.record_interval_s + 10
            while not self.stop_event.is_set():
                now = self.fleet.now_s()
                for house in self.households:
                    if house.running and now[house.plan["index"]] >= stop_at_s:
                        self._stop_board(house)
                sim_now_s = min(min(now.values()), end_s)
                slowest_s = min(now.values())
                # The slowest household is the community's time; the charger may ask to be
                # waited for (host_tools.sim.ev).
                self._pace_households(now, slowest_s,
                                      self.ev is not None and self.ev.tick(slowest_s))
                progress.show(self._status(sim_now_s, day_s))
                if not any(house.running for house in self.households) and \
                        (self.ev is None or self.ev.finished):
                    break
                time.sleep(0.25)
            progress.show(self._status(min(min(self.fleet.now_s().values()), end_s), day_s,
                                       fresh=True), force=True)
        except KeyboardInterrupt:
            self.interrupted = True
            self.say("interrupted: stopping the boards for a partial summary")
        finally:
            progress.done()

    def _pace_households(self, now, slowest_s, hold_all):
        """Keep the boards within the service's grace of each other: a household more than
        AHEAD_HOLD_S ahead of the slowest (a CT board does not wait on a serial line as a
        Modbus one does) runs at real time until it is within AHEAD_RELEASE_S, which also
        leaves the slow ones the CPU; all of them do while the charger catches up."""
        for house in self.households:
            if not house.running:
                continue
            ahead_s = now[house.plan["index"]] - slowest_s
            held = hold_all or ahead_s > (AHEAD_RELEASE_S if house.held else AHEAD_HOLD_S)
            if held != house.held:
                house.held = held
                self.fleet.set_speed(house.plan["index"],
                                     HOLD_SPEED if held else self.options.speed)

    def _status(self, sim_now_s, day_s, fresh=False):
        counts = self.service.counts()
        clock = datetime.datetime.fromtimestamp(sim_now_s, datetime.UTC)
        elapsed_h = (sim_now_s - day_s) / 3600
        shown = self._read_db_counts(fresh)
        return (f"sim {clock:%H:%M} (+{elapsed_h:.1f} h)  settled {counts['settled']}  "
                f"intervals {counts['intervals_closed']}  trades {shown['trades']}  "
                f"sessions {shown['sessions']}")

    def _dashboard_link(self, base_url):
        """The dashboard's URL with the operator's (admin) token in the fragment: browsers never
        send a fragment, so the token reaches no request log; without it the page is public."""
        try:
            token = (self.out_dir / "admin-token").read_text().strip()
        except OSError:
            return f"{base_url}/"
        return f"{base_url}/#token={token}"

    def _read_db_counts(self, fresh=False):
        """Trades and charging sessions so far, read from the ledger database at most every 5 s
        (a fresh connection; the service owns its own); `fresh` for the last line of a run,
        which must not show counts from up to 5 s before its end."""
        shown, read_at = self._db_counts
        if not fresh and time.monotonic() - read_at < 5.0:
            return shown
        from host_tools.settlement.ledger import Ledger

        with contextlib.suppress(Exception):  # a busy database only delays the display
            ledger = Ledger.open(self.db_url, create=False)
            try:
                shown = {"trades": _trade_totals(ledger.db)[0] if self.market else "-",
                         "sessions": str(sessions_count(ledger.db))}
            finally:
                ledger.close()
        self._db_counts = (shown, time.monotonic())
        return shown

    def _stop_board(self, house):
        """Power a household's board off (its world stays readable for the ground truth)."""
        if house.running:
            house.running = False
            self.fleet.stop_board(house.plan["index"])

    def _stop_boards(self):
        if self.fleet is not None:
            for house in self.households:
                self._stop_board(house)
        if self.ev is not None:
            self.ev.stop()

    def _drain(self):
        """Let the service settle what the boards sent before they stopped."""
        deadline = time.monotonic() + DRAIN_MAX_S
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            counts = self.service.counts()
            settled = counts["settled"]
            if settled != last or counts["queue"]:
                last, quiet_since = settled, time.monotonic()
            elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
                return
            time.sleep(0.1)

    def _finish(self, started_wall_s, day_s, end_s):
        from host_tools.settlement.ledger import Ledger
        from host_tools.sim import summary as summary_mod

        plans = {house.device_id: {"member": house.plan["member"],
                                   "meter": house.plan["meter"],
                                   "pv_kwp": house.plan["pv_kwp"]}
                 for house in self.households if house.started}
        truths = {house.device_id: (lambda t_s, index=house.plan["index"]:
                                    self.fleet.truth(index, t_s))
                  for house in self.households if house.started}
        if self.ev is not None:
            plans.update(self.ev.station_plan())
            truths[self.ev.device_id] = self.ev.truth
        run = {"households": self.options.households, "hours": self.options.hours,
               "speed": self.options.speed, "seed": self.options.seed,
               "day_start_utc": DAY_START_UTC, "start_hour": self.options.start_hour,
               "interrupted": self.interrupted, "market": self.market,
               "wall_s": round(time.monotonic() - started_wall_s, 1),
               "http_api": self.http_url, "ev": self.ev is not None}
        ledger = Ledger.open(self.db_url, key_path=self.key_path)
        try:
            result = summary_mod.build(ledger, lambda device_id, t_s: truths[device_id](t_s),
                                       plans, run)
            if self.ev is not None:
                result["ev_sessions"] = self.ev.summary(ledger)
        finally:
            ledger.close()
        consoles = self._close_fleet()
        for house in self.households:
            if house.plan["index"] in consoles:
                # The console of every board, for a look at what a firmware said.
                (self.out_dir / "boards" / f"{house.plan['member']}.console.txt").write_text(
                    consoles[house.plan["index"]])
        if self.ev is not None:
            self.ev.close(self.out_dir / "boards" / "station.console.txt")
        (self.out_dir / "summary.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        if self.options.report:
            try:
                from host_tools.sim import report
            except ImportError:
                report = None
            if report is not None:
                result["report"] = report.write(result, self.out_dir)
        return result


def _trade_totals(db):
    """(trade count, volume Wh) recorded by the market so far, as text for the display."""
    if db.get_meta("market_schema_version") is None:
        return "0", "0"
    count, volume = db.one("SELECT COALESCE(SUM(trade_count), 0), COALESCE(SUM(volume_wh), 0) "
                           "FROM market_reference_prices")
    return str(int(count)), str(int(volume))


def sessions_count(db):
    """EV charging sessions in the ledger database: the progress line's one hook for them
    (the dashboard's reader, so the two always agree; 0 while the community has none)."""
    from host_tools.api import dashboard

    return dashboard.sessions_count(db)
