"""The community's charge point in `energo sim community`: one charger, two vehicles that pay.

What runs: an emulated esp32-evse board with the unmodified charger firmware, its SDM630 served
over Modbus, on a world site whose only load is the EV the vehicles sit on; it is enrolled for
the station owner (a member of its own) with the station's service fee. Two simulated vehicles
(`sim_board.vehicle.Vehicle`), each registered for a driver member of its own, plug in one
after the other at times drawn from the seed (morning and evening when the period covers them,
otherwise a third and two thirds into it), charge until their target and leave. After the run
every receipt a vehicle kept is checked with the code `energo verify` runs
(`host_tools.settlement.ev_receipt`) against the community key taken from the service's key,
not from the file; the files stay in `<out>/receipts/` for anyone to verify again.

Why the charger is switched off between its sessions (a supply breaker on a timer): its safety
layer samples the control pilot 30 times every 20 ms of board time, so an emulated charger
runs at a few dozen times real time, while the households' meters run at hundreds. Powered
all day it would trail the community by hours and hold every interval open. Powered for its
sessions only, it boots two minutes before each arrival and once more for the end of the
period.
The community keeps one time: while the charger is off its clock is paced to the slowest
household, and while it is on and falls behind, the households are held back (their boards
slowed to real time) until it has caught up (see `ChargePoint.tick`), so every record carries
the event time of the same simulated moment. Energy cannot go unmetered: the EV only
draws through the charger's contactor, and the world keeps one register across power cuts.

Money: the drivers' wallets start empty; the simulated community's rules give members a credit
line (`CREDIT_LIMIT_MICRO`) against which the service places its holds.
"""
import contextlib
import json
import pathlib
import random
import re
import shutil
import time

from host_tools.sim import boards

BOARD = "esp32-evse"
SITE = "station"
OWNER = "station"  # the member the charger is enrolled for: paid for its sessions
DRIVERS = ("driver1", "driver2")
STATION_FEE_MICRO_PER_KWH = 40_000
CREDIT_LIMIT_MICRO = 50_000_000  # members' credit line in the simulated community's rules
KEY_LINE = re.compile(r"energo: charger (c-[0-9a-f]{12}) board \S+ key ([0-9A-Fa-f]+)")
POWER_ON_LEAD_S = 60  # the charger boots, syncs time, certificate and price; the car comes
# While the charger waits on the service or the vehicle (boot, offer, grant, final, receipt),
# its board runs at this speed: its timeouts are in board time (a grant must come within
# 20 s), and a service answering in a second must not look like 20 s of silence. While the
# vehicle is charging the board runs at the run's speed (flat out).
HANDSHAKE_SPEED = 8.0
# A charger that offers before the community's retained price reached it offers the price it
# kept from before it was switched off, which the service refuses: the driver plugs in again.
RETRY_REASONS = ("stale-price",)
RETRIES_MAX = 2
REPLUG_AFTER_S = 30
LEAVE_AFTER_S = 30  # after the cable is pulled, before the supply is switched off
OFF_MIN_S = 300  # shorter gaps are not worth a power cycle
SESSION_MAX_S = 4 * 3600  # a session not done in this much board time is given up
CATCH_UP_S = 0.5  # wall seconds the paced clock takes to close its gap to the households
PACE_MAX = 50_000.0
HOLD_AFTER_S = 120  # households this far ahead of a running charger are held back...
RELEASE_AT_S = 20  # ...until it is this close again
EV_SITE = {"load": None, "pv_kwp": 0.0, "phases": 3,
           "ev": {"battery_kwh": 60.0, "acceptance_a": 32.0, "phases": 3, "sessions": []}}
MORNING_H, EVENING_H = (6.5, 8.5), (17.0, 19.5)


def plan_vehicles(seed, day_s, start_s, end_s, target_wh=None):
    """The two arrivals, from the seed: [{member, seed, plug_s, soc, target_wh, emax_wh,
    cmax_micro}], the second after the first. Morning and evening when the period covers
    both; otherwise at a third and at two thirds of it (a short period still has both)."""
    rng = random.Random(f"energo-ev/{seed}")
    slots = [(day_s + int(a * 3600), day_s + int(b * 3600)) for a, b in (MORNING_H, EVENING_H)]
    if not (start_s <= slots[0][0] and slots[1][1] + 3600 <= end_s):
        span = end_s - start_s
        slots = [(start_s + int(span * a), start_s + int(span * b))
                 for a, b in ((0.30, 0.38), (0.60, 0.66))]
    plan = []
    for n, (member, (low, high)) in enumerate(zip(DRIVERS, slots, strict=True)):
        target = target_wh if target_wh is not None else 100 * rng.randint(30, 50)
        plan.append({"member": member, "seed": seed * 1000 + 900 + n,
                     "plug_s": rng.randint(low, max(low, high)),
                     "soc": round(rng.uniform(0.2, 0.5), 2), "target_wh": target,
                     "emax_wh": target + 2000, "cmax_micro": 10_000_000})
    return plan


class ChargerBoard(boards.EmulatedMeter):
    """The emulated charger: an EmulatedMeter whose vehicle-link UART has a peer, wired before
    boot (the firmware opens its UART once), shared by the vehicles that plug in here."""

    def __init__(self, flash_dir, world_start_s, world_seed, speed, seed, start_epoch_s):
        from sim_board.vehicle_link import LinkPeer

        cfg = boards.board_file(BOARD)
        scenario = {"start_s": world_start_s, "sites": {SITE: EV_SITE}}
        super().__init__(flash_dir, cfg, SITE, scenario, world_seed, speed, seed, start_epoch_s,
                         meters=[boards.MODBUS_METERS["esp32-meter-sdm630"]])
        self.link = LinkPeer(cfg["vehicle_link"]["baudrate"], clock=self.board.clock)
        self.board.uart_ports[cfg["vehicle_link"]["uart"]] = self.link

    def start(self, timeout_s=boards.BOOT_TIMEOUT_S, stop=None):
        self.board.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            match = KEY_LINE.search(self.text())
            if match:
                self.device_id, self.spki_hex = match.group(1), match.group(2).lower()
                return self
            time.sleep(0.02)
        raise boards.BoardError(f"the charger printed no identity; console:\n"
                                f"{self.text()[-2000:]}")

    def attach(self, vehicle):
        pin = self.board.config["evse"]["contactor"]
        return vehicle.connect(self.world.site, self.link, self.now_s,
                               contactor=lambda: bool(self.board.pin_outputs.get(pin, 0)))


class ChargePoint:
    """The charger, its owner and the two vehicles through one run (see the module doc).

    `provision` and `enroll` before the broker starts; then `tick(households_now_s)` from the
    run's loop until `finished`; `stop` in any case; `summary(ledger)` at the end.
    """

    def __init__(self, options, flash_root, world_start_s, day_s, end_s):
        self.options = options
        self.flash_dir = pathlib.Path(flash_root) / SITE
        self.world_start_s, self.end_s = world_start_s, end_s
        self.stop_at_s = end_s + options.record_interval_s + 10  # as the households' boards
        self.receipts_dir = pathlib.Path(options.out_dir) / "receipts"
        self.plan = plan_vehicles(options.seed, boards_day_start(day_s), day_s, end_s,
                                  options.ev_target_wh)
        self.world_seed = self.board_seed = options.seed * 1000 + 800
        self.device_id = self.spki_hex = self.community_key = None
        self.charger = None
        self.vehicles = []
        self.state = "waiting"  # waiting, on, leaving, off, ending, finished
        self.turn = 0  # index of the vehicle whose arrival is next or under way
        self.car = None  # the vehicle on the cable
        self.car_since_s = None  # board time it was put there
        self.retries = 0  # plug-ins again after a refusal worth retrying (RETRY_REASONS)
        self._retried = None  # the session given up for a new plug-in
        self.until_s = None  # leaving: switch off from; off: back on at
        self.holding = False  # whether the households wait for the charger
        self.notes = []  # what happened, for the summary (board time, text)
        self.mqtt = None

    # --- before the run ----------------------------------------------------------------------

    def provision(self, community, unreachable_url):
        """First boot with no reachable broker: the charger creates its key, prints its id."""
        shutil.rmtree(self.receipts_dir, ignore_errors=True)  # only this run's receipts count
        cfg = boards.device_config(community, unreachable_url, self.options.record_interval_s,
                                   self.options.sample_interval_ms)
        boards.flash_firmware(self.flash_dir, boards.board_file(BOARD), cfg)
        board = ChargerBoard(self.flash_dir, self.world_start_s, self.world_seed, 50.0,
                             self.board_seed, self.world_start_s)
        try:
            board.start()
            deadline = time.monotonic() + 5
            while "link:" not in board.text() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            board.stop()
        self.device_id, self.spki_hex = board.device_id, board.spki_hex
        return self.device_id

    def enroll(self, ledger):
        """The owner and drivers as members, the charger enrolled with its fee, the vehicles
        registered (their keys follow from the seed)."""
        from host_tools.settlement.ev_accounts import EvAccounts
        from host_tools.settlement.registry import Registry
        from sim_board.vehicle import Vehicle

        registry = Registry(ledger)
        accounts = EvAccounts(ledger, registry)
        ledger.add_member(OWNER)
        registry.enroll(self.device_id, bytes.fromhex(self.spki_hex), "charger", OWNER)
        accounts.set_station_fee(self.device_id, STATION_FEE_MICRO_PER_KWH)
        self.community_key = accounts.community_key_hex()
        for arrival in self.plan:
            ledger.add_member(arrival["member"])
            car = Vehicle(self.community_key, arrival["member"], emax_wh=arrival["emax_wh"],
                          cmax_micro=arrival["cmax_micro"], target_wh=arrival["target_wh"],
                          soc_start=arrival["soc"], seed=arrival["seed"],
                          receipts_dir=str(self.receipts_dir))
            accounts.add_vehicle(car.pub_hex, arrival["member"])
            self.vehicles.append(car)

    # --- the run -----------------------------------------------------------------------------

    def configure(self, community, mqtt_url, password):
        self.mqtt = (community, mqtt_url, password)

    def now_s(self):
        return self.charger.now_s() if self.charger is not None else None

    def _note(self, text):
        at = self.now_s()
        self.notes.append([None if at is None else round(at), text])

    def _power_on_at(self):
        """When the supply goes on next (board time): before the next arrival, or for the
        end of the period once both vehicles have been."""
        if self.turn < len(self.plan):
            return self.plan[self.turn]["plug_s"] - POWER_ON_LEAD_S
        return self.end_s - POWER_ON_LEAD_S

    @property
    def finished(self):
        return self.state == "finished"

    def tick(self, households_now_s):
        """One step of the charge point's day, never blocking for long: start the charger
        when the households reach its first power-on, plug the next vehicle in, pull it out
        when it has its receipt, switch the supply off until the next arrival (pacing the
        charger's clock to the households meanwhile) and stop it after the period.

        Returns whether the households should be held back now: the charger is running and
        trails them by more than HOLD_AFTER_S (released once within RELEASE_AT_S)."""
        self._step(households_now_s)
        if self.state in ("on", "leaving", "ending"):
            lag = households_now_s - self.now_s()
            self.holding = lag > (RELEASE_AT_S if self.holding else HOLD_AFTER_S)
        else:
            self.holding = False
        return self.holding

    def _step(self, households_now_s):
        if self.state == "waiting":
            if households_now_s >= self._power_on_at():
                self._start(self._power_on_at())
            return
        if self.state == "finished":
            return
        now = self.now_s()
        if self.state == "off":
            if now < self.until_s:
                self._pace(households_now_s, now)
                return
            self.charger.board.clock.set_speed(self.options.speed)
            self._note("supply on")
            self.state = "on"
        if self.state == "on":
            self._on(now)
        elif self.state == "leaving" and now >= self.until_s:
            self._switch_off_or_end(now)
        if self.state == "ending" and now >= self.stop_at_s:
            self._stop_charger()
            self.state = "finished"

    def _start(self, at_s):
        community, url, password = self.mqtt
        cfg = boards.device_config(community, url, self.options.record_interval_s,
                                   self.options.sample_interval_ms, user=self.device_id,
                                   password=password)
        boards.flash_firmware(self.flash_dir, boards.board_file(BOARD), cfg)
        self.charger = ChargerBoard(self.flash_dir, self.world_start_s, self.world_seed,
                                    self.options.speed, self.board_seed, at_s)
        self.charger.start()
        if self.charger.device_id != self.device_id:
            raise boards.BoardError("the charger's key changed on reboot")
        self._note("supply on")
        self.state = "on"

    def _on(self, now):
        if self.turn >= len(self.plan):
            self.state = "ending"
            return
        arrival = self.plan[self.turn]
        if self.car is None:
            self.car = self.vehicles[self.turn]
            self.charger.attach(self.car)
            self.car.schedule = [(float(arrival["plug_s"]), arrival["soc"])]
            self.car.start()
            self.car_since_s, self.retries = now, 0
            self.charger.board.clock.set_speed(HANDSHAKE_SPEED)
            return
        s = self.car.session
        state = s["state"] if s is not None else None
        if s is not None and s is self._retried:
            state = None  # waiting for the new plug-in
        elif state == "rejected" and s["rejected"] in RETRY_REASONS and \
                self.retries < RETRIES_MAX:
            self.retries += 1
            self._retried = s
            self._note(f"{arrival['member']}: rejected ({s['rejected']}), plugs in again")
            self.car.unplug()
            self.car.schedule = [(now + REPLUG_AFTER_S, arrival["soc"])]
            return
        speed = self.options.speed if state == "charging" else HANDSHAKE_SPEED
        if self.charger.board.clock.speed != speed:
            self.charger.board.clock.set_speed(speed)
        if state in ("done", "refused", "rejected") or \
                now > max(arrival["plug_s"], self.car_since_s) + SESSION_MAX_S:
            self._note(f"{arrival['member']}: session {state or 'never started'}")
            self.car.unplug()
            self.car.stop()
            self.car = None
            self.turn += 1
            self.charger.board.clock.set_speed(self.options.speed)
            self.state, self.until_s = "leaving", now + LEAVE_AFTER_S

    def _switch_off_or_end(self, now):
        on_at = self._power_on_at()
        if self.turn >= len(self.plan) and on_at - now < OFF_MIN_S:
            self.state = "ending"
        elif on_at - now < OFF_MIN_S:
            self.state = "on"
        else:
            self._note(f"supply off for {on_at - now:.0f} s")
            self.charger.board.power_cut(off_s=on_at - now)
            self.state, self.until_s = "off", on_at

    def _pace(self, households_now_s, now):
        """While the supply is off nothing runs on the charger but its clock: pace it to the
        households, so it closes its gap (or waits for them) within about CATCH_UP_S."""
        gap = households_now_s - now
        self.charger.board.clock.set_speed(min(PACE_MAX, max(1.0, gap / CATCH_UP_S)))

    def _stop_charger(self):
        with contextlib.suppress(Exception):
            self.charger.board.stop(timeout_s=2.0)

    def stop(self):
        """Stop whatever still runs (the end, or an interrupted run)."""
        if self.car is not None:
            with contextlib.suppress(Exception):
                self.car.stop()
        if self.charger is not None and self.state != "finished":
            self._stop_charger()

    def close(self, console_path):
        if self.charger is not None:
            self.charger.stop()
            pathlib.Path(console_path).write_text(self.charger.text())

    # --- after the run -----------------------------------------------------------------------

    def station_plan(self):
        """The charger as a row of the summary's meter table: {device_id: plan}."""
        if self.charger is None:
            return {}
        return {self.device_id: {"member": OWNER, "meter": "SDM630", "pv_kwp": 0.0}}

    def truth(self, t_s):
        return self.charger.ground_truth(t_s)

    def verify_receipts(self):
        """{session: (ok, detail)} for every receipt file the vehicles kept."""
        from host_tools.settlement import ev_receipt

        results = {}
        for path in sorted(self.receipts_dir.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                body = ev_receipt.verify(doc, self.community_key)
                results[body["session"]] = (True, str(path))
            except (OSError, ValueError) as exc:
                results[path.name.split(".")[0]] = (False, f"{path}: {exc}")
        return results

    def summary(self, ledger):
        from host_tools.sim import ev_summary

        return ev_summary.build(ledger, self, self.verify_receipts())


def boards_day_start(day_s):
    """Midnight (UTC) of the day `day_s` falls in."""
    return day_s - day_s % 86_400
