"""Production calibration of the ADC (CT + VT) meter, and its accuracy against the world's truth.

A real ESP32 meter is calibrated once, on the production line, against a reference meter: the
chip's ADC reference differs from the nominal 1100 mV by up to about 9 %, and the CT's ratio
and phase errors differ from unit to unit, so an uncalibrated meter is off by several percent.
Here the reference meter is the simulated world (it knows the exact voltage, current and
energy), the unit under test is the board emulator's analog front end with a seeded chip and
seeded transformer errors, and the meter is the unmodified firmware math
(`energo.sources.AdcSource.make_metering` -> `energo.metering.Metering`).

Sampling is done exactly as `AdcSource.sample()` does on a board: a window of `WINDOW_MS` of
sample pairs, `sample_us` apart, the current conversion `skew_us` after its voltage conversion;
the firmware's meter task then sleeps one second, so a window starts every `WINDOW_PERIOD_MS`
and each window's power is applied to the whole time since the previous window ended.

Calibration (`calibrate`): at Ib with power factor 1 and 0.5 inductive,
- voltage gain = the true RMS voltage / the firmware's mean Vrms (noise adds only ~1e-5 here);
- phase correction: the shift (in us) at which the PF 0.5 point and the PF 1 point show the
  same relative power error, found by the secant method on the firmware's own analysis of the
  same captured samples (a gain error scales both points alike, a phase error does not);
- current gain = true power / the firmware's power at PF 1 (power, not Irms: ADC noise adds to
  Irms but averages out of the power).
The results are written into the board config as `adc.channels[i].gain` and
`adc.phase_cal_us`, which the firmware reads.
"""
import copy
import math

import numpy as np

from energo import metering
from energo.sources import AdcSource
from sim_board.sensors import AnalogFrontEnd
from sim_board.world import World

SITE = "lab"
IB_A = 10.0  # basic current of the CT meter (IEC 62053-21 direct-connected style)
IMAX_A = 60.0  # maximum current: burden 18 ohm keeps its peak inside the ADC's accurate range
VOLTAGE_V = 230.0
FREQUENCY_HZ = 50.0
WINDOW_MS = 200  # AdcSource's window
WINDOW_PERIOD_MS = 1200  # a window, then the meter task's 1000 ms sleep
START_S = 1_782_000_000  # a fixed virtual epoch (2026-06-21): results depend only on the seed
# The harmonics the bench switches on (percent of the fundamental); the 7th is left off.
VOLTAGE_HARMONICS_PCT = {"3": 0.9, "5": 2.8, "7": 0.0}
CURRENT_HARMONICS_PCT = {"3": 12.0, "5": 7.0, "7": 0.0}
_GAIN_RANGE = (0.5, 2.0)  # what the firmware accepts; outside it the wiring is wrong
_PHASE_CAL_US_MAX = 2000
_SECANT_STEPS_MAX = 12


class CalibrationError(ValueError):
    """The reference points could not be measured, or gave a calibration out of range."""


def lab_world(seed):
    """A world with one single-phase site and no household model: only test points drive it."""
    scenario = {
        "start_s": START_S,
        "grid": {"voltage_v": VOLTAGE_V, "frequency_hz": FREQUENCY_HZ, "drift": False,
                 "harmonics_pct": VOLTAGE_HARMONICS_PCT},
        "sites": {SITE: {"phases": 1, "load": None, "current_harmonics_pct": CURRENT_HARMONICS_PCT}},
    }
    return World(scenario, seed)


def _check_board(board):
    if not isinstance(board, dict) or not isinstance(board.get("adc"), dict):
        raise CalibrationError("board: expected a board definition with an 'adc' section")
    try:
        AdcSource.channels(board["adc"])
        AdcSource.make_metering(board["adc"])
    except (KeyError, TypeError, IndexError) as exc:
        raise CalibrationError(f"board.adc: incomplete ({exc!r})") from None
    except ValueError as exc:
        raise CalibrationError(f"board: {exc}") from None


class Capture:
    """Windows of sample pairs from one test point, and the true energy they should show."""

    def __init__(self, windows, true_wh, true_vrms_v, duration_s):
        self.windows = windows  # [(voltage codes, current codes, window end in us)]
        self.true_wh = true_wh  # net import from the first window's end to the last's
        self.true_vrms_v = true_vrms_v
        self.duration_s = duration_s

    @property
    def true_power_w(self):
        return self.true_wh * 3600.0 / self.duration_s


class Rig:
    """One unit on the test bench: a seeded chip and transformers, wired to a lab world.

    `board` is the board definition the firmware gets (nominal figures). The simulated
    hardware differs from it as real units do: the chip's ADC reference (`vref_mv`, seeded by
    the sensor model unless given), the CT's ratio error and phase error, the VT's phase error.
    """

    def __init__(self, board, seed, vref_mv=None, ct_ratio_error_pct=None,
                 ct_phase_error_deg=None, vt_phase_error_deg=None):
        _check_board(board)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise CalibrationError(f"seed: expected an integer 0..2**63-1, got {seed!r}")
        rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, 0xCA1]))
        volt, current = AdcSource.channels(board["adc"])
        spread = {  # typical unit-to-unit spread of class 1 CT clamps and small VTs
            "ct_ratio_error_pct": float(np.clip(rng.normal(0.0, 0.5), -1.5, 1.5)),
            "ct_phase_error_deg": current.get("phase_error_deg", 0.0) + float(
                rng.uniform(-0.5, 0.5)),
            "vt_phase_error_deg": volt.get("phase_error_deg", 0.0) + float(rng.uniform(-0.2, 0.2)),
        }
        given = {"ct_ratio_error_pct": ct_ratio_error_pct,
                 "ct_phase_error_deg": ct_phase_error_deg,
                 "vt_phase_error_deg": vt_phase_error_deg}
        for key, value in given.items():
            if value is not None:
                spread[key] = value
        hardware = copy.deepcopy(board)
        hw_adc = hardware["adc"]
        hw_volt, hw_current = AdcSource.channels(hw_adc)
        hw_current["ratio_error_pct"] = spread["ct_ratio_error_pct"]
        hw_current["phase_error_deg"] = spread["ct_phase_error_deg"]
        hw_volt["phase_error_deg"] = spread["vt_phase_error_deg"]
        if vref_mv is not None:
            hw_adc["vref_mv"] = vref_mv
        self.board = board
        self.seed = seed
        self.world = lab_world(seed)
        self.site = self.world.site(SITE)
        try:
            self.front_end = AnalogFrontEnd(self.world, hardware, seed, site=SITE)
        except ValueError as exc:
            raise CalibrationError(f"rig: {exc}") from None
        self.hardware = dict(spread, vref_mv=self.front_end.vref_mv)
        adc = board["adc"]
        self.v_pin = hw_volt["pin"]
        self.i_pin = hw_current["pin"]
        self.v_atten = hw_volt["atten"]
        self.i_atten = hw_current["atten"]
        self.sample_us = int(adc["sample_us"])
        self.skew_us = adc.get("skew_us", 0)
        self.count = max(16, WINDOW_MS * 1000 // self.sample_us)
        self._t_s = float(START_S + 1)

    def windows(self, current_a, pf=1.0, reactive="inductive", seconds=60.0, period_ms=None,
                window_count_multiple=1):
        """Hold a test point and yield its windows as the firmware samples them.

        Yields (voltage codes, current codes, end_us) per window; when exhausted, `last`
        holds the Capture totals (true energy between the first and last window ends).
        """
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise CalibrationError(f"seconds: expected a positive number, got {seconds!r}")
        period_s = (period_ms or WINDOW_PERIOD_MS) / 1000.0
        t_set = math.ceil(self._t_s)
        self.site.set_test_point(t_set, current_a, pf, reactive, VOLTAGE_V, FREQUENCY_HZ,
                                 harmonics=True, noise=True)
        t0 = t_set + 1.0  # whole seconds after the change: the truth there is exact
        steps = max(1, int(seconds / period_s))
        steps = -(-steps // window_count_multiple) * window_count_multiple
        dt_s = self.sample_us / 1e6
        window_s = self.count * dt_s
        first_end = last_end = None
        for k in range(steps + 1):  # the first window only starts the clock, as on a board
            start = t0 + k * period_s
            v = self.front_end.read_block([self.v_pin], start, dt_s, self.count, self.v_atten)[0]
            i = self.front_end.read_block([self.i_pin], start + self.skew_us / 1e6, dt_s,
                                          self.count, self.i_atten)[0]
            end = start + window_s
            if first_end is None:
                first_end = end
            last_end = end
            yield v, i, int(round((end - t0) * 1e6))
        self._t_s = last_end + 1.0
        site = self.site
        true_wh = (site.energy_import_wh(last_end) - site.energy_import_wh(first_end)) - (
            site.energy_export_wh(last_end) - site.energy_export_wh(first_end))
        self.last = Capture(None, true_wh, site.voltage_rms_v(last_end), last_end - first_end)

    def capture(self, current_a, pf=1.0, reactive="inductive", seconds=60.0, period_ms=None):
        """A test point's windows kept in memory (for calibration, which replays them)."""
        windows = list(self.windows(current_a, pf, reactive, seconds, period_ms))
        cap = self.last
        cap.windows = windows
        return cap


class Reading:
    """What one firmware calibration made of a test point."""

    def __init__(self, meter):
        self.meter = meter
        self.windows_bad = 0
        self.vrms_sum_v = 0.0
        self.power_sum_w = 0.0
        self.windows_good = 0
        self._last_us = None

    def feed(self, v, i, end_us):
        """One window, as AdcSource.sample() handles it."""
        meter = self.meter
        elapsed = 0 if self._last_us is None else end_us - self._last_us
        self._last_us = end_us
        window = meter.analyse(v, i, len(v))
        if window is None:
            self.windows_bad += 1
            return
        self.windows_good += 1
        self.vrms_sum_v += window.vrms
        self.power_sum_w += window.power_w
        meter.accumulate(window.power_mw, elapsed)

    @property
    def energy_wh(self):
        """Net import counted (float Wh from the exact nJ accumulators; a report, not a ledger)."""
        imp, exp = self.meter.energy_nj()
        return (imp - exp) / metering.NJ_PER_WH

    @property
    def gross_energy_wh(self):
        """Import plus export counted: what creep would show at zero load."""
        imp, exp = self.meter.energy_nj()
        return (imp + exp) / metering.NJ_PER_WH

    def mean_power_w(self):
        return self.power_sum_w / self.windows_good if self.windows_good else 0.0

    def mean_vrms_v(self):
        return self.vrms_sum_v / self.windows_good if self.windows_good else 0.0


def replay(windows, adc_cfg):
    """Run captured windows through the firmware math built from `adc_cfg`."""
    reading = Reading(AdcSource.make_metering(adc_cfg))
    for v, i, end_us in windows:
        reading.feed(v, i, end_us)
    return reading


def _good(reading, what):
    if reading.windows_good < max(3, 0.9 * (reading.windows_good + reading.windows_bad)):
        raise CalibrationError(f"{what}: too few whole-cycle windows "
                               f"({reading.windows_good} good, {reading.windows_bad} bad)")
    return reading


def with_calibration(board, voltage_gain=1.0, current_gain=1.0, phase_cal_us=0.0):
    """A copy of `board` with the given calibration keys (the firmware reads these)."""
    _check_board(board)
    out = copy.deepcopy(board)
    volt, current = AdcSource.channels(out["adc"])
    volt["gain"] = round(float(voltage_gain), 6)
    current["gain"] = round(float(current_gain), 6)
    out["adc"]["phase_cal_us"] = round(float(phase_cal_us), 2)
    AdcSource.make_metering(out["adc"])  # the firmware must accept what we write
    return out


def calibrate(rig, seconds=60.0):
    """Calibrate `rig`'s unit at Ib (PF 1 and PF 0.5 inductive); returns (board, details).

    The board is a copy of `rig.board` with `gain` on both channels and `phase_cal_us`.
    """
    base = with_calibration(rig.board)
    unity = rig.capture(IB_A, 1.0, "inductive", seconds)
    lagging = rig.capture(IB_A, 0.5, "inductive", seconds)
    if unity.true_power_w <= 0 or lagging.true_power_w <= 0:
        raise CalibrationError("reference: no power at the calibration points")
    first = _good(replay(unity.windows, base["adc"]), "Ib PF 1")
    if first.mean_vrms_v() <= 0:
        raise CalibrationError("Ib PF 1: no voltage seen")
    voltage_gain = unity.true_vrms_v / first.mean_vrms_v()

    def ratio_error(phase_cal_us):
        cfg = with_calibration(rig.board, voltage_gain, 1.0, phase_cal_us)["adc"]
        p1 = _good(replay(unity.windows, cfg), "Ib PF 1").mean_power_w() / unity.true_power_w
        p2 = _good(replay(lagging.windows, cfg), "Ib PF 0.5").mean_power_w() / (
            lagging.true_power_w)
        return p2 / p1 - 1.0

    # Secant on the phase: a 1 us error moves a PF 0.5 point by ~0.05 %; 0.01 us is plenty.
    x0, x1 = 0.0, 50.0
    f0, f1 = ratio_error(x0), ratio_error(x1)
    for _ in range(_SECANT_STEPS_MAX):
        if f1 == f0:
            break
        x0, x1, f0 = x1, x1 - f1 * (x1 - x0) / (f1 - f0), f1
        if not abs(x1) <= _PHASE_CAL_US_MAX:
            raise CalibrationError(f"phase correction out of range: {x1:.1f} us")
        f1 = ratio_error(x1)
        if abs(x1 - x0) < 0.01:
            break
    else:
        raise CalibrationError("phase correction did not converge")
    phase_cal_us = x1
    cfg = with_calibration(rig.board, voltage_gain, 1.0, phase_cal_us)["adc"]
    measured_w = _good(replay(unity.windows, cfg), "Ib PF 1").mean_power_w()
    if measured_w <= 0:
        raise CalibrationError("Ib PF 1: no power seen (is the CT reversed?)")
    current_gain = unity.true_power_w / measured_w
    for name, gain in (("voltage", voltage_gain), ("current", current_gain)):
        if not _GAIN_RANGE[0] <= gain <= _GAIN_RANGE[1]:
            raise CalibrationError(f"{name} gain {gain:.4f} is out of range: check the wiring")
    board = with_calibration(rig.board, voltage_gain, current_gain, phase_cal_us)
    details = {"voltage_gain": round(voltage_gain, 6), "current_gain": round(current_gain, 6),
               "phase_cal_us": round(phase_cal_us, 2)}
    return board, details


def measure_point(rig, boards, current_a, pf, reactive, seconds):
    """Error in % of each of `boards` (firmware configs) at one test point, same samples."""
    readings = [Reading(AdcSource.make_metering(b["adc"])) for b in boards]
    multiple = max(r.meter.creep_windows for r in readings)
    for v, i, end_us in rig.windows(current_a, pf, reactive, seconds,
                                    window_count_multiple=multiple):
        for reading in readings:
            reading.feed(v, i, end_us)
    true_wh = rig.last.true_wh
    for reading in readings:
        # whole creep blocks were run, so nothing is left waiting for its decision
        assert reading.meter.held() == 0
    if true_wh == 0:
        raise CalibrationError("test point has no energy to compare with")
    return [(r.energy_wh - true_wh) / true_wh * 100.0 for r in readings], true_wh


def creep(rig, board, seconds):
    """Gross energy (Wh) the firmware counts with no current at all, noise on."""
    reading = Reading(AdcSource.make_metering(board["adc"]))
    multiple = reading.meter.creep_windows
    for v, i, end_us in rig.windows(0.0, 1.0, "inductive", seconds,
                                    window_count_multiple=multiple):
        reading.feed(v, i, end_us)
    return reading.gross_energy_wh
