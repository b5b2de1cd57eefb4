"""The charger's Evse on an emulated board: the IEC 61851 timing rules and the fault stops,
measured on the board's virtual clock from the pilot line's log (never on wall time).

The firmware's real `energo.evse` runs in the board's own importer against the emulator's
machine shims; the world's EV model answers on the pilot line (sim_board.pilot_line), and the
tests step the Evse exactly as its `run()` task does: poll, sleep 20 ms."""
import json
import pathlib
import shutil
import time

import pytest

from sim_board.board import Board, attach_world
from sim_board.runtime import Runtime

ROOT = pathlib.Path(__file__).resolve().parent.parent
EPOCH_S = 1782000000
PLUG_S = 2  # the EV plugs in 2 s after power-on


def charger_board(tmp_path, faults=(), speed=1000.0, main=None):
    """An emulated charger (the shipped board file) on a site whose EV plugs in at PLUG_S."""
    flash = tmp_path / "flash"
    shutil.copytree(ROOT / "firmware" / "lib" / "energo", flash / "lib" / "energo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cfg = json.loads((ROOT / "boards" / "esp32-evse.json").read_text())
    (flash / "board.json").write_text(json.dumps(cfg))
    if main is not None:
        (flash / "main.py").write_text(main)
    ev = {"battery_kwh": 40.0, "acceptance_a": 16.0, "phases": 3,
          "sessions": [{"plug_s": PLUG_S, "unplug_s": 3600, "soc_start": 0.3}]}
    scenario = {"start_epoch_s": EPOCH_S, "faults": list(faults), "world": {
        "seed": 1, "site": "c1",
        "scenario": {"start_s": EPOCH_S, "sites": {"c1": {"load": None, "phases": 3,
                                                          "ev": ev}}}}}
    board = Board(str(flash), cfg, scenario, speed=speed)
    return board, attach_world(board, scenario)


class Rig:
    """One emulated charger board with its Evse, stepped in virtual time."""

    def __init__(self, tmp_path, faults=()):
        self.board, self.world = charger_board(tmp_path, faults)
        self.line = self.world.pilot
        self.site = self.world.site
        self.rt = Runtime(self.board)
        self.rt.exec_source(
            "import json, machine, time\nfrom energo.evse import Evse\n"
            "evse = Evse(json.load(open('board.json')), machine)\n"
            "def run_until(t_ms):\n"
            "    while time.ticks_diff(time.ticks_ms(), t_ms) < 0:\n"
            "        evse.poll()\n        time.sleep_ms(20)\n")
        self.evse = self.rt.main_globals["evse"]

    def run_until(self, t_s):
        self.rt.exec_source(f"run_until({round(t_s * 1000)})\n")

    def do(self, source):
        self.rt.exec_source(source)

    def now_s(self):
        return self.board.clock.now_s()

    def contactor_events(self):
        return self.line.events("contactor")

    def closed_at(self, after_s=0.0):
        return next(t for t, v in self.contactor_events() if v and t >= after_s)

    def opened_at(self, after_s=0.0):
        return next(t for t, v in self.contactor_events() if not v and t >= after_s)


def charging(tmp_path, amps=16, **kw):
    """A rig whose EV is charging: offered, permitted, contactor closed."""
    rig = Rig(tmp_path, **kw)
    rig.run_until(1.0)
    rig.do(f"evse.offer({amps})\nevse.permit(True)\n")
    rig.run_until(5.0)
    assert rig.evse.contactor and rig.evse.state == "C"
    return rig


def test_contactor_closes_within_3_s_of_the_vehicle_asking(tmp_path):
    rig = Rig(tmp_path)
    rig.run_until(1.0)
    rig.do("evse.offer(16)\nevse.permit(True)\n")
    assert rig.evse.state == "A" and not rig.evse.contactor
    rig.run_until(6.0)
    closed = rig.closed_at()
    assert PLUG_S < closed <= PLUG_S + 3.0  # the EV asks (C) as soon as it sees 16 A offered
    assert rig.site.ev.contactor_closed
    assert rig.site.current_rms_a(EPOCH_S + 5.5) == pytest.approx(16.0, rel=1e-3)
    assert rig.evse.high_mv == pytest.approx(6000, abs=150)
    assert rig.evse.low_mv == pytest.approx(-12000, abs=150)


def test_no_close_without_permit_then_within_3_s_of_it(tmp_path):
    rig = Rig(tmp_path)
    rig.run_until(1.0)
    rig.do("evse.offer(16)\n")
    rig.run_until(8.0)
    assert rig.evse.state == "C" and not rig.evse.contactor  # asking, but not paid for yet
    assert not any(v for _, v in rig.contactor_events())
    rig.do("evse.permit(True)\n")
    permit_s = rig.now_s()
    rig.run_until(12.0)
    assert permit_s < rig.closed_at() <= permit_s + 3.0
    rig.do("evse.permit(False)\n")
    revoked_s = rig.now_s()
    assert rig.opened_at(permit_s) == revoked_s  # at once, not at the next poll
    rig.run_until(14.0)
    assert not rig.evse.contactor


def test_contactor_opens_within_100_ms_of_c_to_b(tmp_path):
    rig = charging(tmp_path)
    edge_s = 8.0123  # between two polls
    rig.line.set_vehicle("B", at_s=edge_s)
    rig.run_until(10.0)
    opened = rig.opened_at(5.0)
    assert edge_s < opened <= edge_s + 0.100
    assert rig.evse.state == "B" and not rig.site.ev.contactor_closed


def test_unplugging_opens_the_contactor_within_100_ms(tmp_path):
    rig = charging(tmp_path)
    rig.line.set_vehicle("A", at_s=7.0071)
    rig.run_until(9.0)
    assert 7.0071 < rig.opened_at(5.0) <= 7.0071 + 0.100
    assert rig.evse.state == "A"


def test_well_behaved_vehicle_stops_at_once_when_the_pwm_stops(tmp_path):
    rig = charging(tmp_path)
    rig.do("assert evse.clear()\nevse.offer(0)\n")  # clear() without a fault changes nothing
    stop_s = rig.now_s()
    rig.run_until(8.0)
    assert rig.evse.offered_a == 0
    assert rig.line.events("duty_u16")[-1] == (stop_s, 65535)  # +12 V DC, no offer
    assert stop_s < rig.opened_at(5.0) <= stop_s + 0.100  # the EV model goes C -> B


def test_contactor_forced_open_6_s_after_the_pwm_stops_if_the_vehicle_stays_in_c(tmp_path):
    rig = charging(tmp_path)
    rig.line.set_vehicle("C", at_s=rig.now_s())  # a vehicle that ignores the PWM stopping
    rig.do("evse.offer(0)\n")
    stop_s = rig.now_s()
    rig.run_until(stop_s + 5.9)
    assert rig.evse.contactor  # the vehicle has its 6 s to ramp down
    rig.run_until(stop_s + 8.0)
    opened = rig.opened_at(5.0)
    assert stop_s + 6.0 <= opened <= stop_s + 6.0 + 0.100
    rig.run_until(stop_s + 10.0)
    assert not rig.evse.contactor and rig.evse.state == "C"  # and it stays open


def test_rcd_trip_opens_at_once_and_goes_to_f_until_cleared(tmp_path):
    rig = charging(tmp_path, faults=[{"kind": "rcd_trip", "at_s": 8.0105, "for_s": 0.5}])
    rig.run_until(8.2)
    assert rig.evse.fault == "rcd" and rig.evse.state == "F"
    opened = rig.opened_at(5.0)
    assert 8.0105 <= opened <= 8.0105 + 0.001  # the pin IRQ, not the next 20 ms poll
    assert rig.line.events("duty_u16")[-1] == (opened, 0)  # pilot held at -12 V
    assert rig.line.voltage_mv(rig.now_s()) == -12000
    assert rig.do("ok = evse.clear()\n") is None and rig.rt.main_globals["ok"] is False
    with pytest.raises(ValueError, match="clear"):
        rig.do("evse.offer(16)\n")
    rig.run_until(9.0)  # the residual current is gone
    rig.do("ok = evse.clear()\nevse.offer(16)\n")
    assert rig.rt.main_globals["ok"] is True and rig.evse.fault is None
    assert not rig.evse.permitted  # the fault ended the session's permit
    rig.run_until(10.0)
    assert not rig.evse.contactor
    rig.do("evse.permit(True)\n")
    cleared_s = rig.now_s()
    rig.run_until(13.0)
    assert cleared_s < rig.closed_at(cleared_s) <= cleared_s + 3.0


def test_pilot_short_trips(tmp_path):
    rig = charging(tmp_path, faults=[{"kind": "pilot_short", "at_s": 7.0, "for_s": 0}])
    rig.run_until(9.0)
    assert rig.evse.fault == "short" and rig.evse.state == "F"
    assert 7.0 < rig.opened_at(5.0) <= 7.0 + 0.100


def test_missing_diode_trips_while_pwm_runs(tmp_path):
    rig = charging(tmp_path, faults=[{"kind": "diode_missing", "at_s": 7.0, "for_s": 0}])
    rig.run_until(9.0)
    assert rig.evse.fault == "diode" and not rig.evse.contactor
    assert 7.0 < rig.opened_at(5.0) <= 7.0 + 0.100


def test_noise_near_a_threshold_never_flips_the_state_of_a_steady_line(tmp_path):
    rig = charging(tmp_path)
    rig.line.offset_mv = 1400  # the vehicle's C level at 7.4 V, 0.1 V under the B threshold
    rig.line.noise_lsb = 40.0  # ~0.4 V RMS on the pilot: far worse than a real front end
    rig.run_until(35.0)
    assert [v for _, v in rig.contactor_events()].count(True) == 1
    assert rig.evse.contactor and rig.evse.fault is None


@pytest.mark.parametrize("bad", [5, 33, 80, -1, "16", None, True, 6.05 - 0.1])
def test_bad_offers_are_refused_and_change_nothing(tmp_path, bad):
    rig = charging(tmp_path)
    duty = rig.line.events("duty_u16")[-1]
    rig.rt.main_globals["bad"] = bad
    with pytest.raises(ValueError):
        rig.do("evse.offer(bad)\n")
    assert rig.evse.offered_a == 16 and rig.line.events("duty_u16")[-1] == duty
    with pytest.raises(ValueError, match="fault must be one of"):
        rig.do("evse.trip('tired')\n")
    assert rig.evse.fault is None and rig.evse.contactor


def test_overcurrent_trip_from_above(tmp_path):
    rig = charging(tmp_path)
    rig.do("evse.trip('overcurrent')\n")
    assert rig.evse.fault == "overcurrent" and not rig.site.ev.contactor_closed
    rig.run_until(8.0)
    assert not rig.evse.contactor
    rig.do("assert evse.clear()\nevse.offer(10)\nevse.permit(True)\n")
    rig.run_until(12.0)
    assert rig.evse.contactor
    assert rig.site.current_rms_a(EPOCH_S + 11.5) == pytest.approx(10.0, rel=1e-3)


def test_run_task_closes_the_contactor_within_3_s(tmp_path):
    rig = Rig(tmp_path)
    rig.do("import asyncio\nevse.offer(16)\nevse.permit(True)\n"
           "async def main():\n"
           "    t = asyncio.create_task(evse.run())\n"
           "    await asyncio.sleep(6)\n    t.cancel()\n"
           "asyncio.run(main())\n")
    assert rig.evse.contactor
    assert PLUG_S < rig.closed_at() <= PLUG_S + 3.0


def test_a_vehicle_asking_for_ventilation_gets_no_power(tmp_path):
    rig = charging(tmp_path)
    rig.line.set_vehicle("D", at_s=7.0)
    rig.run_until(9.0)
    assert rig.evse.state == "D" and 7.0 < rig.opened_at(5.0) <= 7.1


def test_a_power_cut_drops_the_contactor_and_the_rebooted_charger_closes_it_again(tmp_path):
    main = ("import asyncio, json, machine\nfrom energo.evse import Evse\n"
            "evse = Evse(json.load(open('board.json')), machine)\n"
            "evse.offer(16)\nevse.permit(True)\nasyncio.run(evse.run())\n")
    board, world = charger_board(tmp_path, [{"kind": "power_cut", "at_s": 6.0, "off_s": 2.0}],
                                 speed=10.0, main=main)
    board.start()
    try:
        deadline = time.monotonic() + 60
        while board.clock.now_s() < 14.0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        board.stop()
    events = world.pilot.events("contactor")
    closes = [t for t, v in events if v]
    assert len(closes) == 2 and PLUG_S < closes[0] <= PLUG_S + 3.0
    assert any(v is False and t == pytest.approx(6.0, abs=1e-3) for t, v in events)
    assert 8.0 < closes[1] <= 8.0 + 3.0 + 1.0  # boot, then within 3 s of the vehicle asking
    assert world.site.current_rms_a(EPOCH_S + 7.0) == 0.0
