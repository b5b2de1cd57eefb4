"""CT meter accuracy at IEC 62053-21 test points after calibration, vs uncalibrated, plus creep.

The emulated esp32-meter-ct unit (a seeded ESP32 ADC reference, CT ratio and phase errors,
ADC noise and non-linearity, 3rd and 5th harmonics in voltage and current) is calibrated once
at Ib (PF 1 and 0.5 inductive), then measured by the unmodified firmware math at 0.05 Ib,
0.1 Ib, Ib and Imax (Ib = 10 A, Imax = 60 A, 230 V, 50 Hz), each at PF 1, 0.5 inductive and
0.8 capacitive, for `--seconds` of simulated time per point. The firmware samples a 200 ms
window every 1.2 s (its meter task's cadence), so simulated time is cheap and the figure at
the small currents is limited by ADC noise over the windows taken. The error is the energy
the firmware counted (from its exact nJ accumulators) against the world's exact energy over
the same interval. Baseline: the same samples through the same firmware without the
calibration. Creep: the calibrated unit at zero current for 10 simulated minutes.
"""
import json
import pathlib

from host_tools.errors import UsageError

NAME = "accuracy"
TARGET_PCT = 0.5
BOARD_PATH = pathlib.Path(__file__).resolve().parents[2] / "boards" / "esp32-meter-ct.json"
CURRENTS = (("0.05Ib", 0.05), ("0.1Ib", 0.1), ("Ib", 1.0), ("Imax", None))  # x Ib; None: Imax
POWER_FACTORS = (("1", 1.0, "inductive"), ("0.5L", 0.5, "inductive"),
                 ("0.8C", 0.8, "capacitive"))
CREEP_SECONDS = 600
_SECONDS_RANGE = (30, 7200)


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the unit (chip, CT) and of the noise (default 1)")
    parser.add_argument("--seconds", type=int, default=900,
                        help="simulated seconds per test point (30..7200; default 900)")


def _board():
    try:
        return json.loads(BOARD_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the CT board definition: {exc}") from None


def run(args):
    seed = args.seed
    seconds = args.seconds
    if not _SECONDS_RANGE[0] <= seconds <= _SECONDS_RANGE[1]:
        raise UsageError(f"--seconds must be between {_SECONDS_RANGE[0]} and "
                         f"{_SECONDS_RANGE[1]}")
    if not 0 <= seed < 2**63:
        raise UsageError("--seed must be between 0 and 2**63-1")
    # Imported here, not at the top: every `energo` command loads the bench modules to list
    # them, and this one brings numpy and the world model (a tenth of a second per start).
    from host_tools import calibrate

    board = _board()
    try:
        rig = calibrate.Rig(board, seed)
        calibrated, cal = calibrate.calibrate(rig)
        points = []
        for current_name, times_ib in CURRENTS:
            current_a = calibrate.IMAX_A if times_ib is None else times_ib * calibrate.IB_A
            for pf_name, pf, reactive in POWER_FACTORS:
                (error_pct, baseline_pct), true_wh = calibrate.measure_point(
                    rig, [calibrated, board], current_a, pf, reactive, seconds)
                points.append({"current": current_name, "current_a": current_a, "pf": pf_name,
                               "true_wh": round(true_wh, 4), "error_pct": round(error_pct, 4),
                               "uncalibrated_error_pct": round(baseline_pct, 4)})
        creep_wh = calibrate.creep(rig, calibrated, CREEP_SECONDS)
    except calibrate.CalibrationError as exc:
        raise UsageError(str(exc)) from None
    max_abs = max(abs(p["error_pct"]) for p in points)
    return {
        "seed": seed,
        "seconds_per_point": seconds,
        "ib_a": calibrate.IB_A,
        "imax_a": calibrate.IMAX_A,
        "unit": {k: round(v, 4) for k, v in rig.hardware.items()},
        "calibration": cal,
        "points": points,
        "max_abs_error_pct": round(max_abs, 4),
        "uncalibrated_max_abs_error_pct": round(
            max(abs(p["uncalibrated_error_pct"]) for p in points), 4),
        "target_pct": TARGET_PCT,
        "within_target": max_abs <= TARGET_PCT,
        "creep_seconds": CREEP_SECONDS,
        "creep_wh": creep_wh,
    }
