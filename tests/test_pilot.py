"""The control pilot: duty table, state filter, diode check, ADC conversion (energo.pilot), and
the emulated pilot line that the charger's ADC samples (sim_board.pilot_line)."""
import random
import types
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energo import pilot
from sim_board.clock import VirtualClock
from sim_board.pilot_line import PilotLine

EVSE = {"pilot_pwm": 25, "pilot_adc": 35, "contactor": 27, "rcd": 34,
        "sense_bias_mv": 1250, "sense_ratio": 12}


@pytest.mark.parametrize(("amps", "pct"), [(6, Fraction(10)), (51, Fraction(85)),
                                          (52, Fraction(848, 10)), (80, Fraction(96))])
def test_duty_table_at_the_seams_is_exact(amps, pct):
    assert pilot.duty_permille(amps) == pct * 10
    assert pilot.duty_u16(amps) == round(pct / 100 * 65535)
    # truncating firmware offers int(0.85 * 65535) = 55704 for 51 A: a hair under 85 %
    assert amps != 51 or pilot.duty_u16(amps) == 55705


@given(st.integers(min_value=60, max_value=800))
def test_every_current_rounds_to_the_nearest_16_bit_duty(da):
    amps = Fraction(da, 10)
    exact = amps / Fraction(6, 10) if da <= 510 else amps / Fraction(25, 10) + 64
    u16 = pilot.duty_u16(da // 10 if da % 10 == 0 else da / 10)
    assert abs(Fraction(u16) - exact / 100 * 65535) <= Fraction(1, 2)


@pytest.mark.parametrize("bad", [0.5, 5, 5.99, 81, 100, -6, True, "6", None, [16]])
def test_currents_a_pilot_cannot_offer_are_refused(bad):
    with pytest.raises(pilot.PilotError):
        pilot.duty_u16(bad)


def test_the_boards_maximum_caps_the_offer():
    assert pilot.duty_u16(32, max_a=32) == 34952
    with pytest.raises(pilot.PilotError, match="6 to 32 A"):
        pilot.duty_u16(32.1, max_a=32)
    assert pilot.duty_u16(0, max_a=32) == pilot.DUTY_FULL


def test_what_the_vehicle_reads_back():
    assert [pilot.allowed_da(p) for p in (50, 80, 99, 100, 267, 850, 851, 960, 961, 1000)] == \
        [0, 60, 60, 60, 160, 510, 527, 800, 0, 0]


@pytest.mark.parametrize(("mv", "state"), [(12000, "A"), (9000, "B"), (6000, "C"),
                                           (3000, "D"), (0, "E"), (-12000, "F"),
                                           (7499, "C"), (7500, "B"), (1499, "E")])
def test_raw_states_split_half_way_between_levels(mv, state):
    assert pilot.raw_state(mv) == state


def test_filter_needs_two_polls_and_holds_inside_the_band():
    f = pilot.StateFilter()
    assert [f.update(v) for v in (6000, 8000, 6000, 8000, 8100, 7900, 7700)] == \
        ["C", "C", "C", "C", "B", "B", "B"]  # 7.7 V and 7.9 V are inside B's band - 0.5 V
    assert f.update(7000) == "B"  # the band's edge still counts as B
    assert f.update(6900) == "B" and f.update(6900) == "C"


def test_noise_of_half_a_volt_around_a_level_never_changes_the_state():
    rng = random.Random(5)
    for level, state in ((9000, "B"), (6000, "C"), (7200, "C")):
        f = pilot.StateFilter()
        f.update(level)
        assert all(f.update(level + round(rng.gauss(0, 300))) == state for _ in range(5000))


def test_diode_check_and_split():
    assert pilot.diode_ok(-11500) and not pilot.diode_ok(-9000) and not pilot.diode_ok(None)
    assert pilot.split([6000] * 7 + [-12000] * 18) == (6000, -12000)
    assert pilot.split([12000] * 25) == (12000, None)
    with pytest.raises(pilot.PilotError):
        pilot.split([])


def test_calibration_round_trips_and_refuses_nonsense():
    cal = pilot.Calibration(1250, 12)
    for mv in range(-12000, 12001, 250):
        assert abs(cal.mv(cal.code(mv)) - mv) <= 12  # one code is ~9.7 mV on the pilot
    for args in ((5000, 12), (1250, 0), (1250, True)):
        with pytest.raises(pilot.PilotError):
            pilot.Calibration(*args)


@pytest.mark.parametrize("args", [(1250, 12), (0, 1), (3300, 100, 4000), (1000, 12.5, 500)])
def test_calibration_is_within_2_mv_of_the_exact_conversion(args):
    cal = pilot.Calibration(*args)
    for code in range(4096):
        pin_v = code * cal.full_uv / 4095 / 1e6
        exact_mv = (pin_v - cal.bias_uv / 1e6) * cal.ratio_milli
        assert abs(cal.mv(code) - exact_mv) < 2, code


def test_the_usual_divider_converts_with_small_ints_only():
    """Every product in mv() fits MicroPython's small int on a 32-bit board (below 2**30):
    a poll's 30 conversions every 20 ms then allocate nothing."""
    cal = pilot.Calibration(1250, 12)
    assert 4095 * cal._slope < 2 ** 30 and cal._offset < 2 ** 30


class _Line:
    """A pilot line on a stub board whose vehicle state is set directly."""

    def __init__(self, state="C"):
        self.site = types.SimpleNamespace(ev_pilot_state=lambda t: self.state)
        self.state = state
        self.board = types.SimpleNamespace(
            clock=VirtualClock(1000.0, true_epoch_s=1782000000), pwm={}, pin_outputs={},
            analog=None, output_hooks=[], fault_handlers={}, add_fault=None, set_pin=None)
        world = types.SimpleNamespace(site=self.site, world=types.SimpleNamespace(seed=3),
                                      sync_controls=lambda t: None)
        self.line = PilotLine(self.board, world, EVSE, noise_lsb=0.0)


def test_line_is_high_for_the_duty_fraction_of_each_period_and_low_through_the_diode():
    stub = _Line("C")
    stub.board.pwm[25] = (1000, pilot.duty_u16(16))  # 26.7 %
    levels = [stub.line.voltage_mv(5.0 + k * 1e-6) for k in range(3000)]  # 3 periods
    assert set(levels) == {6000, -12000}
    assert levels.count(6000) == pytest.approx(3000 * 0.2667, abs=3)
    stub.state = "B"
    assert max(stub.line.voltage_mv(5.0 + k * 1e-5) for k in range(100)) == 9000


def test_line_dc_levels_f_and_faults():
    stub = _Line("A")
    assert stub.line.voltage_mv(1.0) == 12000  # no PWM object: held at +12 V ...
    stub.state = "B"
    stub.board.pwm[25] = (1000, 65535)
    assert stub.line.voltage_mv(1.1) == 9000  # ... which a plugged vehicle loads to 9 V
    stub.board.pwm[25] = (1000, 0)
    assert stub.line.voltage_mv(1.2) == -12000  # F
    stub.board.pwm[25] = (1000, pilot.duty_u16(10))
    faults = stub.line.board.fault_handlers
    faults["diode_missing"](types.SimpleNamespace(kind="diode_missing", at_s=2.0, for_s=1.0))
    lows = {stub.line.voltage_mv(2.5 + k * 4e-5) for k in range(25)}
    assert lows == {9000, -9000}  # no diode: the low phase mirrors the high level
    assert min(stub.line.voltage_mv(3.5 + k * 4e-5) for k in range(25)) == -12000
    faults["pilot_short"](types.SimpleNamespace(kind="pilot_short", at_s=4.0, for_s=0.0))
    assert stub.line.voltage_mv(3.99) != 0 and stub.line.voltage_mv(100.0) == 0


def test_codes_follow_the_divider_and_the_vehicle_override():
    stub = _Line("B")
    stub.board.pwm[25] = (1000, 65535)
    cal = pilot.Calibration(1250, 12)
    assert stub.line.read_code(35, 1.0, 3) == cal.code(9000)
    stub.line.set_vehicle("C", at_s=2.0)
    stub.line.set_vehicle(None, at_s=3.0)
    assert [stub.line.vehicle_state(t) for t in (1.0, 2.5, 3.5)] == ["B", "C", "B"]
    with pytest.raises(ValueError, match="vehicle state"):
        stub.line.set_vehicle("X")
    with pytest.raises(ValueError, match="11 dB"):
        stub.line.read_code(35, 1.0, 0)
    with pytest.raises(ValueError, match="not an analog input"):
        stub.line.read_code(36, 1.0, 3)


def test_a_pilot_line_needs_the_evse_pins():
    stub = _Line()
    world = types.SimpleNamespace(site=stub.site, world=types.SimpleNamespace(seed=3),
                                  sync_controls=lambda t: None)
    with pytest.raises(ValueError, match="evse.rcd: expected a GPIO number"):
        PilotLine(stub.board, world, dict(EVSE, rcd="34"))
