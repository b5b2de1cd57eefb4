"""CT/VT front ends into ESP32 ADC codes: ranges, rails, noise, ADC2 with Wi-Fi, bursts."""
import numpy as np
import pytest

from sim_board.sensors import (
    ATTN_0DB,
    ATTN_2_5DB,
    ATTN_6DB,
    ATTN_11DB,
    AnalogFrontEnd,
    SensorConfigError,
)
from sim_board.world import World

START_S = 1782000000
VOLTAGE = {"pin": 36, "kind": "voltage", "vt_ratio": 460.0, "bias_mv": 1250.0}
CURRENT = {"pin": 39, "kind": "current", "ct_ratio": 2000.0, "burden_ohm": 10.0,
           "bias_mv": 1250.0}


def make(channels=None, seed=1, world_seed=3, wifi=False, faults=None, **adc):
    world = World({"start_s": START_S, "sites": {"h1": {"pv_kwp": 4.0}},
                   "faults": faults or []}, world_seed)
    cfg = {"adc": dict(adc, channels=channels or [VOLTAGE, CURRENT])}
    return world, AnalogFrontEnd(world, cfg, seed, site="h1", wifi_active=wifi)


def quiet_point(world, t_s, current_a=0.0, noise=False):
    world.site("h1").set_test_point(t_s, current_a, noise=noise)


def test_codes_follow_the_mains_waveform_inside_the_range():
    world, afe = make()
    t0 = START_S + 9 * 3600
    v_codes, i_codes = afe.read_block([36, 39], t0, 1 / 8000, 1600, ATTN_11DB)
    v_codes = np.array(v_codes)
    assert v_codes.min() > 200 and v_codes.max() < 3500  # no clipping at 11 dB
    # the swing of the codes matches the RMS voltage through the VT and the ADC's slope
    swing_mv = (np.percentile(v_codes, 99.5) - np.percentile(v_codes, 0.5)) * 3300.0 / 4095.0
    expected_mv = 2 * np.sqrt(2) * world.site("h1").voltage_rms_v(t0) / 460.0 * 1000.0
    assert swing_mv == pytest.approx(expected_mv * 1100.0 / afe.vref_mv, rel=0.08)
    assert 0 <= min(i_codes) and max(i_codes) <= 4095


@pytest.mark.parametrize("atten", [ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB])
def test_big_signals_clip_at_both_rails(atten):
    world, afe = make()
    t0 = START_S + 3600
    quiet_point(world, t0, current_a=600.0, noise=True)  # 600 A through a 100 A CT
    codes = np.array(afe.read_block([39], t0 + 1, 1 / 10000, 2000, atten)[0])
    assert codes.min() == 0 and codes.max() == 4095
    assert np.mean(codes == 4095) > 0.05 and np.mean(codes == 0) > 0.05


def test_transfer_curve_dead_zone_linear_middle_and_knee():
    """Sweep the DC bias of a noise-free channel: the ESP32's curve, rails included."""
    codes = {}
    for bias_mv in (0, 30, 100, 300, 600, 900, 1000, 1100, 1180, 1300, 2000):
        ch = dict(CURRENT, bias_mv=float(bias_mv))
        world, afe = make([ch], seed=4)
        quiet_point(world, START_S + 10)
        codes[bias_mv] = afe.read_code(39, START_S + 11, ATTN_0DB)
    values = [codes[k] for k in sorted(codes)]
    assert values == sorted(values)  # monotonic
    assert codes[0] == 0 and codes[30] == 0  # dead zone
    assert codes[2000] == 4095
    slope = (codes[900] - codes[300]) / 600.0
    assert slope == pytest.approx(4095 / 1100 * 1100 / afe.vref_mv, rel=0.02)
    # above the accurate range the curve bends over: less gain than the line
    assert (codes[1100] - codes[1000]) < 0.9 * slope * 100


def test_noise_free_test_point_reads_one_code():
    world, afe = make()
    quiet_point(world, START_S + 5)
    codes = afe.read_block([39], START_S + 6, 1e-4, 500, ATTN_11DB)[0]
    assert len(set(codes)) == 1


def test_noise_is_reproducible_and_depends_on_seed_and_time():
    world_a, a = make(seed=10)
    world_b, b = make(seed=10)
    world_c, c = make(seed=11)
    t0 = START_S + 4 * 3600
    ra = a.read_block([36, 39], t0, 1e-4, 400, ATTN_11DB)
    assert ra == b.read_block([36, 39], t0, 1e-4, 400, ATTN_11DB)
    assert ra != c.read_block([36, 39], t0, 1e-4, 400, ATTN_11DB)
    # call order does not matter: a single read equals the block's sample at that instant
    assert a.read_code(39, t0 + 7 * 2e-4 + 1e-4, ATTN_11DB) == ra[1][7]
    assert a.read_code(36, t0 + 3 * 2e-4, ATTN_11DB) == ra[0][3]


def _spread(afe, pin, t0):
    codes = np.array(afe.read_block([pin], t0, 1e-3, 3000, ATTN_11DB)[0])
    return np.abs(codes - np.median(codes)).mean()


def test_adc2_pins_are_much_worse_while_wifi_is_on():
    channels = [dict(CURRENT, pin=39), dict(CURRENT, pin=25)]
    wifi = {"on": False}
    world, afe = make(channels, wifi=lambda: wifi["on"])
    quiet_point(world, START_S + 1, noise=True)  # constant input: what varies is the ADC
    t0 = START_S + 2
    adc1_off, adc2_off = _spread(afe, 39, t0), _spread(afe, 25, t0)
    wifi["on"] = True
    adc1_on, adc2_on = _spread(afe, 39, t0), _spread(afe, 25, t0)
    assert adc1_on == adc1_off  # ADC1 does not care about the radio
    assert adc2_off < 5.0
    assert adc2_on > 5 * adc2_off


def test_noise_bursts_from_api_and_scenario():
    faults = [{"kind": "adc_noise_burst", "at_s": 100.0, "duration_s": 10.0, "noise_lsb": 80.0}]
    world, afe = make(faults=faults)
    quiet_point(world, START_S + 1, noise=True)
    calm = _spread(afe, 39, START_S + 20)
    assert calm < 5.0
    assert _spread(afe, 39, START_S + 100.5) > 10 * calm  # the scenario's burst
    afe.inject_noise_burst(START_S + 200.0, 5.0, 60.0, pins=[39])
    assert _spread(afe, 39, START_S + 201) > 10 * calm
    # the voltage pin is untouched: every code equals the one it reads outside any burst
    afe_ref = make(faults=faults)[1]
    quiet_ref = afe_ref.world.site("h1")
    quiet_ref.set_test_point(START_S + 1, 0.0, noise=True)
    block = afe.read_block([36], START_S + 201, 1e-3, 500, ATTN_11DB)
    assert block == afe_ref.read_block([36], START_S + 201, 1e-3, 500, ATTN_11DB)
    assert _spread(afe, 39, START_S + 300) == pytest.approx(calm, abs=1.0)
    with pytest.raises(ValueError):
        afe.inject_noise_burst(START_S, -1.0, 10.0)
    with pytest.raises(ValueError):
        afe.inject_noise_burst(START_S, 1.0, 10.0, pins=[5])


def test_ct_phase_error_is_a_time_advance_of_the_signal():
    shifted = dict(CURRENT, phase_error_deg=3.0)
    world_a, a = make([CURRENT])
    world_b, b = make([shifted])
    for world in (world_a, world_b):
        world.site("h1").set_test_point(START_S + 1, 80.0, pf=1.0)
    t0 = START_S + 2
    dt_s = 3.0 / (360.0 * 50.0)
    lead = b.read_block([39], t0, 1e-4, 200, ATTN_11DB)[0]
    ref = a.read_block([39], t0 + dt_s, 1e-4, 200, ATTN_11DB)[0]
    assert lead == ref
    assert lead != a.read_block([39], t0, 1e-4, 200, ATTN_11DB)[0]


def test_pilot_channel_reads_the_ev_states():
    ev = {"sessions": [{"plug_s": 100, "unplug_s": 5000, "soc_start": 0.5}]}
    world = World({"start_s": START_S, "sites": {"c": {"load": None, "ev": ev}}}, 1)
    ch = {"pin": 34, "kind": "pilot", "pilot_ratio": 10.0, "bias_mv": 1250.0}
    afe = AnalogFrontEnd(world, {"adc": {"noise_lsb": 0.0, "channels": [ch]}}, 2, site="c")
    site = world.site("c")
    code_a = afe.read_code(34, START_S + 50, ATTN_11DB)  # +12 V
    code_b = afe.read_code(34, START_S + 150, ATTN_11DB)  # +9 V, no PWM
    site.ev_set_pilot_duty(START_S + 200, 50.0)
    codes = afe.read_block([34], START_S + 201, 1e-5, 400, ATTN_11DB)[0]
    code_c = max(codes)  # +6 V high level
    assert code_a > code_b > code_c > min(codes)  # and the -12 V low level below
    assert np.mean(np.array(codes) == code_c) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("adc", "where"),
    [
        ({"channels": []}, "channels"),
        ({"channels": [dict(VOLTAGE, pin=5)]}, "pin"),
        ({"channels": [dict(VOLTAGE, kind="power")]}, "kind"),
        ({"channels": [{"pin": 39, "kind": "current", "burden_ohm": 10.0}]}, "ct_ratio"),
        ({"channels": [VOLTAGE, VOLTAGE]}, "twice"),
        ({"channels": [dict(VOLTAGE, site="nowhere")]}, "site"),
        ({"channels": [dict(VOLTAGE, phase=2)]}, "phase"),
        ({"channels": [VOLTAGE], "vref_mv": 5000}, "vref_mv"),
        ({"channels": [{"pin": 34, "kind": "pilot", "pilot_ratio": 10.0}]}, "EV"),
    ],
)
def test_bad_board_configs_are_refused(adc, where):
    world = World({"start_s": START_S, "sites": {"h1": {}}}, 1)
    with pytest.raises(SensorConfigError, match=where):
        AnalogFrontEnd(world, {"adc": adc}, 1, site="h1")


def test_bad_reads_are_refused():
    _world, afe = make()
    t0 = START_S + 10
    with pytest.raises(ValueError, match="not an analog channel"):
        afe.read_code(33, t0, ATTN_11DB)
    with pytest.raises(ValueError, match="attenuation"):
        afe.read_code(36, t0, 4)
    with pytest.raises(ValueError, match="count"):
        afe.read_block([36], t0, 1e-4, 0, ATTN_11DB)
    with pytest.raises(ValueError, match="dt_s"):
        afe.read_block([36], t0, -1e-4, 10, ATTN_11DB)
    with pytest.raises(ValueError, match="distinct"):
        afe.read_block([36, 36], t0, 1e-4, 10, ATTN_11DB)
    with pytest.raises(ValueError, match="finite"):
        afe.read_code(36, float("inf"), ATTN_11DB)
    with pytest.raises(ValueError, match="before the world start"):
        afe.read_code(36, START_S - 10, ATTN_11DB)


@pytest.mark.parametrize("atten", [ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB])
def test_single_conversions_and_blocks_use_the_same_curve(atten):
    """read_code has a plain-Python fast path; it must not drift from the vectorised one."""
    _world, afe = make()
    mv = np.linspace(-50.0, 3600.0, 2000)
    vector = afe._transfer(mv, atten)
    single = np.array([afe._transfer_one(float(x), atten) for x in mv])
    assert np.allclose(vector, single, rtol=0, atol=1e-9)
