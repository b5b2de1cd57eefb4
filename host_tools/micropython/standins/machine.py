# Stand-in for MicroPython's `machine` on the WebAssembly port (which has none), used only by
# `energo bench firmware-mem`. Not an emulator: just enough for the meter role's ADC source.
#
# The ADC returns a 50 Hz sine as 12-bit codes, looked up in a table built once at import, so
# read() allocates nothing (on the chip it returns a small int without allocating either; a
# float sin() per read would add heap traffic the firmware does not cause).
import math
import time
from array import array

_CYCLE_US = 20000  # 50 Hz
_STEPS = 250  # table entries per cycle: one per 80 us
_STEP_US = _CYCLE_US // _STEPS
_FULL_SCALE_MV = (1100, 1500, 2200, 3300)
_BIAS_MV = 1250
# Pin levels for the meter-ct board: 230 V rms through a 460:1 VT, 10 A rms through a
# 2000:1 CT into 18 ohm (90 mV rms); the current lags by 10 degrees.
_VOLTAGE_PEAK_MV = 707
_CURRENT_PEAK_MV = 127
_CURRENT_LAG_STEPS = 7  # 10 degrees of 360, in table steps


def _table(peak_mv, lag_steps, atten):
    full = _FULL_SCALE_MV[atten]
    out = array("H", bytes(2 * _STEPS))
    for k in range(_STEPS):
        mv = _BIAS_MV + peak_mv * math.sin(2 * math.pi * (k - lag_steps) / _STEPS)
        out[k] = max(0, min(4095, int(mv * 4095 / full)))
    return out


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, pin, mode=IN, value=None):
        self.pin = pin
        self.mode = mode
        self._value = value or 0

    def value(self, level=None):
        if level is None:
            return self._value
        self._value = 1 if level else 0
        return None

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0


class ADC:
    """Channel by pin: 36 is the voltage transformer, 39 the current clamp (meter-ct)."""

    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    _tables = {}

    def __init__(self, pin, atten=ATTN_11DB):
        if pin.pin == 36:
            peak, lag = _VOLTAGE_PEAK_MV, 0
        elif pin.pin == 39:
            peak, lag = _CURRENT_PEAK_MV, _CURRENT_LAG_STEPS
        else:
            raise ValueError(f"stand-in ADC: no signal on pin {pin.pin}")
        key = pin.pin * 4 + atten
        if key not in ADC._tables:
            ADC._tables[key] = _table(peak, lag, atten)
        self._table = ADC._tables[key]

    def read(self):
        return self._table[(time.ticks_us() % _CYCLE_US) // _STEP_US]

    def read_u16(self):
        return self.read() << 4


def prebuild(atten=3):
    """Build the meter-ct tables now, so their bytes are counted as stand-in memory."""
    ADC(Pin(36), atten)
    ADC(Pin(39), atten)


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout_ms = timeout
        self.feeds = 0

    def feed(self):
        self.feeds += 1


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset_cause():
    return PWRON_RESET


def reset():
    raise SystemExit("machine.reset() called")


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"
