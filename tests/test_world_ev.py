"""The EV behind a charger: IEC 61851 pilot states, current limits, taper, ground truth."""
import numpy as np
import pytest

from sim_board.world import World
from sim_board.world_models import pilot_current_a

START_S = 1782000000
PLUG_S = 3600
UNPLUG_S = 8 * 3600


def charger(soc_start=0.5, battery_kwh=40.0, acceptance_a=16.0, phases=1, seed=1):
    ev = {"battery_kwh": battery_kwh, "acceptance_a": acceptance_a, "phases": phases,
          "sessions": [{"plug_s": PLUG_S, "unplug_s": UNPLUG_S, "soc_start": soc_start}]}
    world = World({"start_s": START_S, "sites": {"c1": {"load": None, "phases": phases,
                                                        "ev": ev}}}, seed)
    return world.site("c1")


@pytest.mark.parametrize(
    ("duty", "amps"),
    [(100.0, 0.0), (5.0, 0.0), (9.0, 6.0), (10.0, 6.0), (25.0, 15.0), (50.0, 30.0),
     (85.0, 51.0), (90.0, 65.0), (96.0, 80.0), (97.0, 0.0), (0.0, 0.0)],
)
def test_pilot_duty_to_current(duty, amps):
    assert pilot_current_a(duty) == pytest.approx(amps)


def test_states_a_b_c_and_current_drawn_only_when_allowed():
    site = charger()
    t = START_S + PLUG_S
    assert site.ev_pilot_state(t - 1) == "A"
    assert site.ev_pilot_state(t + 1) == "B"  # plugged, no PWM yet
    site.ev_set_pilot_duty(t + 2, 25.0)  # 15 A offered
    assert site.ev_pilot_state(t + 2) == "C"
    assert site.power_w(t + 2.5) == 0.0  # contactor still open
    site.ev_set_contactor(t + 3, True)
    # the site's RMS current is what the EV draws; the power follows the site's power factor
    assert site.current_rms_a(t + 3.5) == pytest.approx(15.0, rel=1e-4)
    s_va = site.voltage_rms_v(t + 3.5) * 15.0
    assert site.power_w(t + 3.5) == pytest.approx(site.power_factor(t + 3.5) * s_va, rel=1e-4)
    assert 0.9 * s_va < site.power_w(t + 3.5) <= s_va
    site.ev_set_pilot_duty(t + 10, 50.0)  # 30 A offered, the EV takes its 16 A
    assert site.current_rms_a(t + 10.5) == pytest.approx(16.0, rel=1e-4)
    site.ev_set_pilot_duty(t + 20, 100.0)  # PWM off: the EV must stop
    assert site.ev_pilot_state(t + 20) == "B"
    assert site.power_w(t + 20.5) == 0.0
    assert site.ev_pilot_state(START_S + UNPLUG_S + 1) == "A"


def test_energy_into_the_ev_is_the_ground_truth_and_stops_at_unplug():
    site = charger(soc_start=0.2)
    t = START_S + PLUG_S
    site.ev_set_pilot_duty(t + 10, 26.7)
    site.ev_set_contactor(t + 10.25, True)  # mid-second: integrated from that instant
    end = START_S + UNPLUG_S + 3600
    total = site.energy_import_wh(end)
    assert total == pytest.approx(site.ev.energy_charged_wh, rel=1e-12)
    assert site.energy_export_wh(end) == 0.0
    # 16 A at ~230 V for the ~6.9 h the EV stayed, minus nothing: it never filled 40 kWh * 0.8
    hours = (UNPLUG_S - PLUG_S - 10.25) / 3600.0
    assert total == pytest.approx(16.0 * 230.0 * 0.95 * hours, rel=0.05)
    assert site.energy_import_wh(end + 3600) == total  # nothing drawn after unplug


def test_charging_tapers_above_80_percent_and_stops_full():
    site = charger(soc_start=0.75, battery_kwh=10.0)
    t = START_S + PLUG_S
    site.ev_set_pilot_duty(t, 26.7)
    site.ev_set_contactor(t, True)
    currents = [site.current_rms_a(t + k * 60 + 0.5) for k in range(0, 6 * 60, 5)]
    assert currents[0] == pytest.approx(16.0, rel=1e-4)
    assert any(0.0 < c < 15.0 for c in currents)  # the constant-voltage phase
    assert np.all(np.diff(currents) <= 1e-3)  # never rises again (beyond voltage drift)
    assert currents[-1] == 0.0
    assert site.ev_pilot_state(t + 6 * 3600) == "B"  # full: no longer asking
    assert 9800.0 < site.ev.soc_wh <= 10000.0
    assert site.energy_import_wh(t + 6 * 3600) == pytest.approx(site.ev.energy_charged_wh)


def test_three_phase_ev_and_waveform_energy():
    site = charger(phases=3, acceptance_a=16.0)
    t = START_S + PLUG_S + 60
    site.ev_set_pilot_duty(t, 26.7)
    site.ev_set_contactor(t, True)
    fs_hz = 10000.0
    ts = t + 1 + np.arange(int(5 * fs_hz)) / fs_hz
    product = sum(site.voltage_v(ts, p) * site.current_a(ts, p) for p in (1, 2, 3))
    wave_wh = float(np.sum(product)) / fs_hz / 3600.0
    truth_wh = site.energy_import_wh(t + 6) - site.energy_import_wh(t + 1)
    assert wave_wh == pytest.approx(truth_wh, rel=2e-4)
    assert site.current_rms_a(t + 2) == pytest.approx(16.0, rel=1e-4)


def test_seeded_daily_sessions_are_reproducible():
    ev = {"battery_kwh": 50.0}
    a = World({"start_s": START_S, "sites": {"c": {"ev": ev}}}, 5).site("c")
    b = World({"start_s": START_S, "sites": {"c": {"ev": ev}}}, 5).site("c")
    c = World({"start_s": START_S, "sites": {"c": {"ev": ev}}}, 6).site("c")
    days = range(5)
    sa = [a.ev.sessions_of_day(d) for d in days]
    assert sa == [b.ev.sessions_of_day(d) for d in days]
    assert sa != [c.ev.sessions_of_day(d) for d in days]
    for d, sessions in enumerate(sa):
        (plug, unplug, soc), = sessions
        assert START_S + d * 86400 <= plug < START_S + (d + 1) * 86400
        assert unplug > plug and 0.0 < soc < 1.0


def test_controls_are_validated_and_a_site_without_ev_refuses_them():
    site = charger()
    with pytest.raises(ValueError):
        site.ev_set_pilot_duty(START_S + 10, 101.0)
    with pytest.raises(ValueError):
        site.ev_set_pilot_duty(START_S + 10, 50.0, frequency_hz=0)
    assert site.ev.duty_pct == 100.0
    plain = World({"sites": {"h": {}}}, 1).site("h")
    with pytest.raises(ValueError, match="no EV"):
        plain.ev_set_contactor(plain.world.start_s, True)


def test_late_control_is_applied_now_and_counted():
    site = charger()
    t = START_S + PLUG_S
    site.energy_import_wh(t + 100)
    site.ev_set_pilot_duty(t + 50, 26.7)  # a lagging board
    assert site.late_control_count == 1
    assert site.ev.duty_pct == pytest.approx(26.7)


def test_pilot_voltage_levels_follow_the_state_and_pwm():
    site = charger()
    t = START_S + PLUG_S
    assert site.ev_pilot_voltage_v(t - 10) == 12.0  # A, no PWM: DC +12 V
    site.ev_set_pilot_duty(t + 1, 25.0)
    ts = t + 2 + np.arange(1000) / 100000.0  # ten PWM periods at 1 kHz
    v = site.ev_pilot_voltage_v(ts)
    assert set(np.unique(v).tolist()) == {-12.0, 6.0}  # C: +6 V high level
    assert np.mean(v == 6.0) == pytest.approx(0.25, abs=0.01)


def test_reading_the_pilot_behind_the_integrator_is_not_a_late_control():
    site = charger()
    site.energy_import_wh(START_S + PLUG_S + 100)
    assert site.ev_pilot_state(START_S + PLUG_S + 50) == "B"
    site.ev_pilot_voltage_v(START_S + PLUG_S + 60)
    assert site.late_control_count == 0
    with pytest.raises(ValueError):
        site.ev_pilot_voltage_v(START_S - 1.0)
