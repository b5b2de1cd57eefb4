"""The simulated world: reproducibility, exact ground-truth energy, waveforms, PV, load, battery."""
import math

import numpy as np
import pytest

from sim_board.world import DAY_S, ScenarioError, World

START = "2026-06-21T00:00:00Z"
START_S = 1782000000  # 2026-06-21T00:00:00Z


def house_world(seed=7, **site):
    cfg = {"pv_kwp": 5.0}
    cfg.update(site)
    return World({"start_utc": START, "sites": {"h1": cfg}}, seed)


def test_start_utc_is_parsed():
    assert house_world().start_s == START_S


def test_same_seed_same_world_and_different_seed_differs():
    times = START_S + np.arange(0, DAY_S, 97.0)
    a = house_world(seed=11).site("h1")
    b = house_world(seed=11).site("h1")
    c = house_world(seed=12).site("h1")
    pa = np.array([a.power_w(t) for t in times])
    pb = np.array([b.power_w(t) for t in times])
    pc = np.array([c.power_w(t) for t in times])
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    t = START_S + 3600.123 + np.arange(200) / 5000.0
    assert np.array_equal(a.voltage_v(t), b.voltage_v(t))
    assert not np.array_equal(a.voltage_v(t), c.voltage_v(t))
    assert a.energy_import_wh(START_S + DAY_S) == b.energy_import_wh(START_S + DAY_S)


def test_query_order_does_not_change_values():
    """A world queried hour by hour equals one asked for the end first (then behind it)."""
    a = house_world(seed=3).site("h1")
    b = house_world(seed=3).site("h1")
    end = START_S + 30 * 3600
    ends = [b.energy_import_wh(end), b.energy_export_wh(end)]
    for t in range(START_S, end + 1, 3600):
        a.energy_import_wh(t)
    assert [a.energy_import_wh(end), a.energy_export_wh(end)] == pytest.approx(ends, rel=1e-12)
    behind = end - 5000.5
    assert b.energy_import_wh(behind) == pytest.approx(a.energy_import_wh(behind), rel=1e-12)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"sites": {}}, "scenario.sites"),
        ({"sites": {"h1": {"pv_kwpp": 5}}}, "unknown key"),
        ({"sites": {"h1": {"pv_kwp": -1}}}, "scenario.sites.h1.pv_kwp"),
        ({"sites": {"h 1": {}}}, "bad site name"),
        ({"sites": {"h1": {"phases": 2}}}, "phases"),
        ({"sites": {"h1": {"ev": {"phases": 3}}}}, "ev.phases"),
        ({"sites": {"h1": {}}, "start_utc": "yesterday"}, "start_utc"),
        ({"sites": {"h1": {}}, "grid": {"voltage_v": "230"}}, "grid.voltage_v"),
        ({"sites": {"h1": {}}, "faults": [{"kind": "modbus", "site": "nope"}]}, "faults[0].site"),
        ({"sites": {"h1": {"battery": {"soc_start": 2}}}}, "battery.soc_start"),
    ],
)
def test_bad_scenarios_are_refused_with_their_path(bad, where):
    with pytest.raises(ScenarioError, match=where.replace(".", r"\.").replace("[", r"\[")):
        World(bad, 1)


def test_bad_seed_site_and_time_are_refused():
    with pytest.raises(ValueError):
        World({"sites": {"h1": {}}}, -1)
    world = house_world()
    with pytest.raises(ValueError, match="unknown site"):
        world.site("h2")
    with pytest.raises(ValueError, match="before the world start"):
        world.site("h1").power_w(START_S - 1)
    with pytest.raises(ValueError, match="finite"):
        world.site("h1").energy_import_wh(float("nan"))


@pytest.mark.parametrize("phases", [1, 3])
@pytest.mark.parametrize("hour", [2.0, 12.5])  # night (import) and midday (PV export)
def test_ground_truth_equals_mean_of_v_times_i(phases, hour):
    """Energy from the waveforms (sum of v*i samples) equals the ground truth."""
    site = house_world(seed=5, phases=phases).site("h1")
    t0 = START_S + hour * 3600.0
    fs_hz = 10000.0
    t = t0 + np.arange(int(20 * fs_hz)) / fs_hz
    product = sum(site.voltage_v(t, p) * site.current_a(t, p) for p in range(1, phases + 1))
    wave_wh = float(np.sum(product)) / fs_hz / 3600.0
    net_wh = (site.energy_import_wh(t0 + 20) - site.energy_import_wh(t0)) - (
        site.energy_export_wh(t0 + 20) - site.energy_export_wh(t0)
    )
    assert abs(net_wh) > 0.1
    assert wave_wh == pytest.approx(net_wh, rel=2e-4)


def test_ground_truth_is_the_sum_of_the_per_second_power():
    site = house_world(seed=9, battery={"capacity_kwh": 3.0}).site("h1")
    t0 = START_S + 5 * 3600
    powers = np.array([site.power_w(t0 + k + 0.5) for k in range(7200)])
    imp = site.energy_import_wh(t0 + 7200) - site.energy_import_wh(t0)
    exp = site.energy_export_wh(t0 + 7200) - site.energy_export_wh(t0)
    assert imp == pytest.approx(np.sum(np.maximum(powers, 0)) / 3600.0, rel=1e-9, abs=1e-9)
    assert exp == pytest.approx(np.sum(np.maximum(-powers, 0)) / 3600.0, rel=1e-9, abs=1e-9)
    # inside a second the energy grows linearly at that second's power
    mid = site.energy_import_wh(t0 + 100.25) - site.energy_import_wh(t0 + 100)
    assert mid == pytest.approx(max(powers[100], 0) * 0.25 / 3600.0, abs=1e-12)


def test_energy_never_decreases():
    site = house_world(seed=2).site("h1")
    times = START_S + np.sort(np.random.default_rng(1).uniform(0, 2 * DAY_S, 300))
    imp = [site.energy_import_wh(t) for t in times]
    exp = [site.energy_export_wh(t) for t in times]
    assert all(b >= a for a, b in zip(imp, imp[1:], strict=False))
    assert all(b >= a for a, b in zip(exp, exp[1:], strict=False))
    assert imp[-1] > 1000 and exp[-1] > 1000  # a June day with 5 kWp both imports and exports


def test_pv_is_zero_at_night_and_peaks_near_solar_noon():
    """Munich in June: solar noon is near 11:14 UTC; the sun is down before ~03:00 UTC."""
    for seed in (1, 2, 3):
        site = house_world(seed=seed).site("h1")
        day = START_S + DAY_S * seed
        night = [site.pv_w(day + h * 3600) for h in (0.0, 1.0, 2.0, 20.5, 22.0, 23.5)]
        assert night == [0.0] * 6
        noon = np.mean([site.pv_w(day + 11.25 * 3600 + k * 60) for k in range(-60, 60)])
        morning = np.mean([site.pv_w(day + 5.0 * 3600 + k * 60) for k in range(-60, 60)])
        assert noon > 1.5 * morning
        assert noon <= 5000.0  # never above the array's kWp


def test_household_load_has_base_and_appliance_steps():
    site = house_world(seed=4, pv_kwp=0.0).site("h1")
    loads = np.array([site.load_w(START_S + k * 30) for k in range(3 * DAY_S // 30)])
    assert loads.min() >= 150.0
    assert loads.max() > 1500.0  # a kettle, an oven or a hob
    assert np.all(np.array([site.power_w(START_S + k * 30) for k in range(100)]) > 0)


def test_battery_respects_power_limit_and_charges_from_surplus():
    site = house_world(seed=6, battery={"capacity_kwh": 8.0, "power_w_max": 2500}).site("h1")
    day = START_S + DAY_S
    times = [day + k * 60 for k in range(DAY_S // 60)]
    battery = np.array([site.battery_w(t) for t in times])
    surplus = np.array([site.pv_w(t) - site.load_w(t) for t in times])
    assert np.abs(battery).max() <= 2500.0 + 1e-9
    assert battery.max() > 0 and battery.min() < 0  # it charges and discharges every day
    charging = battery > 0
    assert np.all(battery[charging] <= surplus[charging] + 1e-9)  # only from PV surplus
    discharging = battery < 0
    assert np.all(-battery[discharging] <= -surplus[discharging] + 1e-9)  # never exports


def test_grid_frequency_and_voltage_drift_stay_in_band():
    world = house_world(seed=8)
    site = world.site("h1")
    times = START_S + np.arange(0, 6 * 3600, 7.0)
    f = world.frequency_hz(times)
    assert 49.95 < f.min() < f.max() < 50.05 and f.std() > 0.001
    v = site.voltage_rms_v(times)
    assert 220.0 < v.min() < v.max() < 240.0 and v.std() > 0.1


def test_voltage_waveform_has_the_configured_harmonics():
    world = World({"sites": {"h1": {}}, "grid": {"harmonics_pct": {"3": 0, "5": 4.0, "7": 0},
                                                  "drift": False}}, 1)
    site = world.site("h1")
    t = world.start_s + 100 + np.arange(10000) / 10000.0  # one second, 50 cycles
    spectrum = np.abs(np.fft.rfft(site.voltage_v(t))) / 5000.0
    fundamental = spectrum[50]
    assert fundamental == pytest.approx(math.sqrt(2) * site.voltage_rms_v(t[0]) / math.sqrt(
        1 + 0.04**2), rel=1e-6)
    assert spectrum[250] / fundamental == pytest.approx(0.04, rel=1e-6)
    assert spectrum[150] / fundamental < 1e-6


@pytest.mark.parametrize(
    ("ib_frac", "pf", "reactive"),
    [(0.05, 1.0, "inductive"), (0.1, 1.0, "inductive"), (1.0, 0.5, "inductive"),
     (1.0, 0.8, "capacitive"), (12.0, 1.0, "inductive")],
)
def test_iec_test_points(ib_frac, pf, reactive):
    """IEC 62053-21 style points: exact power, RMS current, and the sign of the phase shift."""
    site = house_world(seed=1).site("h1")
    t0 = START_S + 3600.0
    current_a = 5.0 * ib_frac
    site.set_test_point(t0, current_a, pf=pf, reactive=reactive, voltage_v=230.0)
    assert not site.noise_enabled
    expected_w = 230.0 * current_a * pf
    assert site.power_w(t0 + 10) == pytest.approx(expected_w, rel=1e-12)
    assert site.current_rms_a(t0 + 10) == pytest.approx(current_a, rel=1e-12)
    assert site.voltage_rms_v(t0 + 10) == pytest.approx(230.0)
    gained = site.energy_import_wh(t0 + 60) - site.energy_import_wh(t0)
    assert gained == pytest.approx(expected_w * 60 / 3600.0, rel=1e-9)
    q = site.reactive_power_var(t0 + 10)
    if pf < 1.0:
        assert (q > 0) == (reactive == "inductive")
    t = t0 + 20 + np.arange(2000) / 100000.0  # one cycle at 100 kHz
    v, i = site.voltage_v(t), site.current_a(t)
    assert float(np.mean(v * i)) == pytest.approx(expected_w, rel=1e-3)
    site.clear_test_point(t0 + 120)
    assert site.noise_enabled


def test_test_point_with_harmonics_keeps_power_equal_to_mean_v_i():
    site = house_world(seed=1).site("h1")
    t0 = START_S + 7200.0
    site.set_test_point(t0, 10.0, pf=0.5, harmonics=True)
    t = t0 + 1 + np.arange(20000) / 100000.0  # ten cycles
    mean_vi = float(np.mean(site.voltage_v(t) * site.current_a(t)))
    assert mean_vi == pytest.approx(site.power_w(t0 + 1), rel=1e-6)
    assert float(np.sqrt(np.mean(site.current_a(t) ** 2))) == pytest.approx(10.0, rel=1e-6)


def test_bad_test_points_change_nothing():
    site = house_world().site("h1")
    t0 = START_S + 60.0
    before = site.power_w(t0)
    for kwargs in ({"current_a": -1}, {"current_a": 5, "pf": 0}, {"current_a": 5, "reactive": "x"},
                   {"current_a": float("inf")}):
        with pytest.raises(ValueError):
            site.set_test_point(t0, **kwargs)
    assert site.power_w(t0) == before
    assert site.noise_enabled


def test_ground_truth_snapshot_covers_every_site():
    world = World({"sites": {"a": {}, "b": {"pv_kwp": 3.0}}}, 3)
    truth = world.ground_truth(world.start_s + 3600)
    assert set(truth) == {"a", "b"}
    assert truth["a"]["import_wh"] == world.site("a").energy_import_wh(world.start_s + 3600)
    assert truth["a"]["import_wh"] > 100.0


@pytest.mark.slow
def test_a_week_of_a_community_keeps_exact_energy():
    """Soak: a week of three sites (PV + battery, plain house, charger) against per-second sums."""
    ev = {"battery_kwh": 50.0}
    world = World({"start_s": START_S, "sites": {
        "pv": {"pv_kwp": 6.0, "battery": {"capacity_kwh": 5.0}}, "house": {},
        "charger": {"load": None, "ev": ev}}}, 21)
    charger = world.site("charger")
    for day in range(7):
        for plug, unplug, _soc in charger.ev.sessions_of_day(day):
            charger.ev_set_pilot_duty(plug + 5, 26.7)
            charger.ev_set_contactor(plug + 6, True)
            charger.ev_set_contactor(min(unplug, plug + 5 * 3600), False)
    for name in ("pv", "house"):
        site = world.site(name)
        for day in range(7):
            t0 = START_S + day * DAY_S
            powers = np.array([site.power_w(t0 + k + 0.5) for k in range(DAY_S)])
            imp = site.energy_import_wh(t0 + DAY_S) - site.energy_import_wh(t0)
            assert imp == pytest.approx(np.sum(np.maximum(powers, 0)) / 3600.0, rel=1e-9)
    end = START_S + 8 * DAY_S  # after the last session's controls
    assert charger.energy_import_wh(end) == pytest.approx(charger.ev.energy_charged_wh, rel=1e-12)
    assert charger.energy_import_wh(end) > 7 * 10000.0
