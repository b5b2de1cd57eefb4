"""CT and VT front ends into ESP32 ADC codes: what an emulated meter's `machine.ADC` reads.

A board's analog inputs see the world's waveforms through a voltage transformer (VT) or a
current transformer (CT) with its burden resistor, biased to mid-supply, and then through the
ESP32's SAR ADC, with everything that makes that ADC hard to meter with: per-chip reference
spread, a dead zone and a bend near the rails, noise, quantisation, and the much worse
behaviour of ADC2 while the radio is on. Firmware calibration and filtering are therefore
tested against a realistic input, and the world's ground truth shows what they get wrong.

Board configuration (`board_cfg["adc"]`; the site may instead be given to the constructor):

    "adc": {
      "vref_mv": 1100,          # optional: this chip's ADC reference; default seeded 1000..1200
      "noise_lsb": 2.5,         # optional: RMS noise of ADC1 conversions, in LSB
      "wifi_noise_lsb": 40.0,   # optional: RMS noise of ADC2 conversions while Wi-Fi is on
      "channels": [
        {"pin": 36, "kind": "voltage", "site": "house-1", "phase": 1,
         "vt_ratio": 460.0,        # primary volts per volt at the pin (230 V -> 0.5 V RMS)
         "bias_mv": 1250.0,        # DC bias at the pin (a divider from 3.3 V)
         "phase_error_deg": 0.0},  # VT phase error, positive = secondary leads
        {"pin": 39, "kind": "current", "site": "house-1", "phase": 1,
         "ct_ratio": 2000.0,       # primary amps per secondary amp (100 A : 50 mA)
         "burden_ohm": 10.0,       # secondary burden: volts at the pin per secondary amp
         "bias_mv": 1250.0,
         "phase_error_deg": 1.0,   # CT phase error (typically lead, 0.5 to 3 degrees)
         "ratio_error_pct": 0.0},
        {"pin": 34, "kind": "pilot",   # an EV charger's control-pilot sense input
         "pilot_ratio": 10.0,      # pilot volts per volt at the pin (+12 V -> 1.2 V)
         "bias_mv": 1250.0}
      ]
    }

A pilot channel shows the IEC 61851 control pilot of the site's EV: the PWM's high level is
+12 V (state A, nothing plugged), +9 V (B) or +6 V (C) and its low level -12 V; the charger's
duty cycle and frequency are the ones last given to the site (`ev_set_pilot_duty`).

With these figures a 230 V mains peak (about 0.75 V at the pin) and a 100 A peak (0.71 V) stay
inside the 11 dB range around the 1.25 V bias.

Attenuation (MicroPython `ADC.ATTN_*`): 0 = 0 dB, 1 = 2.5 dB, 2 = 6 dB, 3 = 11 dB. Espressif
gives the accurate input ranges as 100-950, 100-1250, 150-1750 and 150-2450 mV, with full scale
near 1.1, 1.5 and 2.2 V (11 dB is limited by the 3.3 V supply rather than its nominal 3.9 V).
Below the range the code bends down to a dead zone of zeros; above it the code bends over and
clips at 4095. Phase errors are modelled as a small time advance of the signal at the nominal
frequency (exact for the fundamental).

ADC2 and Wi-Fi: the radio shares ADC2, so with Wi-Fi on, ESP-IDF lets ADC2 conversions fail or
time out, and what does come back is far noisier. Here an ADC2 pin keeps returning codes but
with `wifi_noise_lsb` of extra noise and about 1 % garbage conversions, which is what a firmware
that ignores the warning would see; ESPHome-style board validation should refuse such a pin.

Noise is a pure function of (seed, pin, sample time), never of call order, so two boards or two
runs that sample the same instants read the same codes.
"""
import math
import zlib

import numpy as np

ATTN_0DB = 0
ATTN_2_5DB = 1
ATTN_6DB = 2
ATTN_11DB = 3
CODE_MAX = 4095

# attenuation -> (dead zone end, accurate range low, accurate range high, line reaching 4095,
# input where the code clips), all mV at the nominal 1100 mV reference
_ATTEN_MV = {
    ATTN_0DB: (45.0, 100.0, 950.0, 1100.0, 1200.0),
    ATTN_2_5DB: (45.0, 100.0, 1250.0, 1500.0, 1620.0),
    ATTN_6DB: (70.0, 150.0, 1750.0, 2200.0, 2380.0),
    ATTN_11DB: (70.0, 150.0, 2450.0, 3300.0, 3500.0),
}
ADC1_PINS = frozenset((32, 33, 34, 35, 36, 37, 38, 39))
ADC2_PINS = frozenset((0, 2, 4, 12, 13, 14, 15, 25, 26, 27))
_SAMPLES_MAX = 2_000_000
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class SensorConfigError(ValueError):
    """A board's analog configuration is missing a key or has a value out of range."""


def _num(obj, key, default, lo, hi, path):
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and lo <= value <= hi
    ):
        raise SensorConfigError(f"{path}.{key}: {value!r} is not a number in {lo}..{hi}")
    return float(value)


def _splitmix64(x):
    """Counter-based hash (SplitMix64 finaliser) on uint64 arrays; wraps modulo 2**64."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def _splitmix64_int(x):
    """The same hash on one Python int (identical results to `_splitmix64`)."""
    m64 = 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9E3779B97F4A7C15) & m64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m64
    return x ^ (x >> 31)


def _gaussian_one(key, t_s):
    """`_gaussian` for a single sample, in plain Python (a conversion must be cheap)."""
    ticks = round(t_s * 1e7) & 0xFFFFFFFFFFFFFFFF
    h1 = _splitmix64_int(ticks ^ key)
    h2 = _splitmix64_int(h1)
    u1 = ((h1 >> 11) + 0.5) / 2.0**53
    u2 = (h2 >> 11) / 2.0**53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2), u2


def _gaussian(key, t_s):
    """Standard normal noise, one value per sample time, determined by (key, time)."""
    ticks = np.round(np.asarray(t_s, dtype=np.float64) * 1e7).astype(np.int64).astype(np.uint64)
    h1 = _splitmix64(ticks ^ np.uint64(key))
    h2 = _splitmix64(h1)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2), u2


class AnalogFrontEnd:
    """The analog inputs of one emulated board, read as raw 12-bit ESP32 ADC codes.

    `wifi_active` is a bool or a callable returning one (the emulator's WLAN shim), read at
    each conversion: ADC2 pins are much noisier and sometimes return garbage while it is true.
    """

    def __init__(self, world, board_cfg, seed, site=None, wifi_active=False):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SensorConfigError(f"seed: expected an integer, got {seed!r}")
        if not isinstance(board_cfg, dict) or not isinstance(board_cfg.get("adc"), dict):
            raise SensorConfigError("board.adc: expected an object with 'channels'")
        analog = board_cfg["adc"]
        path = "board.adc"
        rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, 0xADC]))
        default_vref = float(np.clip(rng.normal(1100.0, 35.0), 1000.0, 1200.0))
        self.vref_mv = _num(analog, "vref_mv", default_vref, 1000.0, 1200.0, path)
        self.offset_lsb = float(rng.normal(0.0, 6.0))
        self.noise_lsb = _num(analog, "noise_lsb", 2.5, 0.0, 1000.0, path)
        self.wifi_noise_lsb = _num(analog, "wifi_noise_lsb", 40.0, 0.0, 4096.0, path)
        self.world = world
        self.seed = seed
        self.wifi_active = wifi_active
        self._bursts = []
        channels = analog.get("channels")
        if not isinstance(channels, list) or not 1 <= len(channels) <= 18:
            raise SensorConfigError(f"{path}.channels: expected a list of 1 to 18 channels")
        self.channels = {}
        for n, ch in enumerate(channels):
            checked = self._channel(ch, site, f"{path}.channels[{n}]")
            if checked["pin"] in self.channels:
                raise SensorConfigError(f"{path}.channels[{n}].pin: GPIO{checked['pin']} twice")
            self.channels[checked["pin"]] = checked

    def _channel(self, ch, default_site, path):
        if not isinstance(ch, dict):
            raise SensorConfigError(f"{path}: expected an object")
        pin = ch.get("pin")
        if not isinstance(pin, int) or pin not in ADC1_PINS | ADC2_PINS:
            raise SensorConfigError(f"{path}.pin: GPIO{pin} has no ADC on an ESP32")
        kind = ch.get("kind")
        if kind not in ("voltage", "current", "pilot"):
            raise SensorConfigError(f"{path}.kind: must be 'voltage', 'current' or 'pilot'")
        site_name = ch.get("site", default_site)
        try:
            site = self.world.site(site_name)
        except ValueError as exc:
            raise SensorConfigError(f"{path}.site: {exc}") from None
        phase = ch.get("phase", 1)
        if phase not in (1, 2, 3) or phase > site.phases:
            raise SensorConfigError(f"{path}.phase: must be 1..{site.phases}")
        if kind == "pilot" and site.ev is None:
            raise SensorConfigError(f"{path}: a pilot channel needs a site with an EV")
        out = {
            "pin": pin, "kind": kind, "site": site, "phase": phase,
            "bias_mv": _num(ch, "bias_mv", 1250.0, 0.0, 3300.0, path),
            "phase_error_deg": _num(ch, "phase_error_deg", 0.0, -20.0, 20.0, path),
            "key": zlib.crc32(f"{self.seed}:{pin}".encode()) * 2654435761 % 2**64,
        }
        if kind == "voltage":
            out["gain"] = 1000.0 / _num(ch, "vt_ratio", None, 1.0, 1e6, path)
        elif kind == "pilot":
            out["gain"] = 1000.0 / _num(ch, "pilot_ratio", None, 1.0, 1000.0, path)
        else:
            ratio = _num(ch, "ct_ratio", None, 1.0, 1e6, path)
            burden = _num(ch, "burden_ohm", None, 0.01, 1e5, path)
            error = _num(ch, "ratio_error_pct", 0.0, -50.0, 50.0, path)
            out["gain"] = 1000.0 * burden * (1.0 + error / 100.0) / ratio
        return out

    def inject_noise_burst(self, t_s, duration_s, noise_lsb, pins=None):
        """Add `noise_lsb` RMS noise to `pins` (all when None) for `duration_s` from `t_s`."""
        for name, value in (("t_s", t_s), ("duration_s", duration_s), ("noise_lsb", noise_lsb)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"noise burst {name}: expected a number >= 0, got {value!r}")
        if pins is not None and not all(p in self.channels for p in pins):
            raise ValueError(f"noise burst pins: not all of {pins!r} are analog channels")
        if len(self._bursts) >= 1000:
            raise ValueError("noise burst: at most 1000 bursts may be pending")
        self._bursts.append((float(t_s), float(t_s + duration_s), float(noise_lsb), pins))

    def _burst_sigma(self, pin, t):
        """Extra noise (LSB RMS) per sample from API bursts and scenario faults."""
        sigma = np.zeros(t.shape)
        bursts = list(self._bursts)
        start = self.world.start_s
        for fault in self.world.config["faults"]:
            if fault["kind"] == "adc_noise_burst":
                t0 = start + fault["at_s"]
                bursts.append((t0, t0 + fault["duration_s"], fault["noise_lsb"], fault["pins"]))
        for t0, t1, lsb, pins in bursts:
            if pins is None or pin in pins:
                sigma = np.where((t >= t0) & (t < t1), np.hypot(sigma, lsb), sigma)
        return sigma

    def _pin_voltage_mv(self, ch, t):
        site = ch["site"]
        shift_s = ch["phase_error_deg"] / (360.0 * self.world.nominal_frequency_hz)
        if ch["kind"] == "pilot":
            signal = site.ev_pilot_voltage_v(t)
        elif ch["kind"] == "voltage":
            signal = site.voltage_v(t + shift_s, ch["phase"])
        else:
            signal = site.current_a(t + shift_s, ch["phase"])
        return ch["bias_mv"] + ch["gain"] * signal

    def _transfer_one(self, mv, atten):
        """`_transfer` for one sample, in plain Python (same curve, same constants)."""
        dead, lo, hi, full, clip = (v * self.vref_mv / 1100.0 for v in _ATTEN_MV[atten])
        slope = CODE_MAX / full
        if mv < lo:
            at_lo = slope * lo + self.offset_lsb
            return at_lo * min(max((mv - dead) / (lo - dead), 0.0), 1.0) ** 2
        if mv > hi:
            at_hi = slope * hi + self.offset_lsb + 4.0 * math.sin(math.pi * hi / full)
            room = CODE_MAX - at_hi
            power = slope * (clip - hi) / room
            x = min(max((mv - hi) / (clip - hi), 0.0), 1.0)
            return at_hi + room * (1.0 - (1.0 - x) ** power)
        return slope * mv + self.offset_lsb + 4.0 * math.sin(math.pi * min(max(mv / full, 0.0), 1.0))

    def _transfer(self, mv, atten):
        """The ESP32 transfer curve: pin millivolts -> unrounded code, rails included."""
        dead, lo, hi, full, clip = (v * self.vref_mv / 1100.0 for v in _ATTEN_MV[atten])
        slope = CODE_MAX / full
        code = slope * mv + self.offset_lsb
        # a gentle bow of the SAR's integral non-linearity, a few LSB in mid-scale
        code = code + 4.0 * np.sin(math.pi * np.clip(mv / full, 0.0, 1.0))
        at_lo = slope * lo + self.offset_lsb
        toe = at_lo * np.clip((mv - dead) / (lo - dead), 0.0, 1.0) ** 2
        code = np.where(mv < lo, toe, code)
        at_hi = slope * hi + self.offset_lsb + 4.0 * math.sin(math.pi * hi / full)
        room = CODE_MAX - at_hi
        power = slope * (clip - hi) / room  # > 1: the knee starts with the line's slope
        x = np.clip((mv - hi) / (clip - hi), 0.0, 1.0)
        knee = at_hi + room * (1.0 - (1.0 - x) ** power)
        return np.where(mv > hi, knee, code)

    def _codes(self, pin, t, atten):
        with self.world.lock:
            return self._codes_locked(pin, t, atten)

    def _code_one(self, pin, t_s, atten):
        """One conversion in plain Python; the same model as `_codes_locked`, sample by sample."""
        ch = self.channels[pin]
        code = self._transfer_one(float(self._pin_voltage_mv(ch, t_s)), atten)
        sigma = float(self._burst_sigma(pin, np.array([t_s]))[0])
        wifi = self.wifi_active() if callable(self.wifi_active) else bool(self.wifi_active)
        adc2_wifi = wifi and pin in ADC2_PINS
        noisy = ch["site"].noise_enabled
        if noisy:
            sigma = math.hypot(sigma, self.noise_lsb)
            if adc2_wifi:
                sigma = math.hypot(sigma, self.wifi_noise_lsb)
        if sigma > 0.0:
            normal, uniform = _gaussian_one(ch["key"], t_s)
            code = code + sigma * normal
            if adc2_wifi and noisy and uniform < 0.01:
                code = uniform * 100.0 * CODE_MAX
        return min(max(math.floor(code + 0.5), 0), CODE_MAX)

    def _codes_locked(self, pin, t, atten):
        ch = self.channels[pin]
        mv = self._pin_voltage_mv(ch, t)
        code = self._transfer(mv, atten)
        noisy = ch["site"].noise_enabled
        sigma = self._burst_sigma(pin, t)
        wifi = self.wifi_active() if callable(self.wifi_active) else bool(self.wifi_active)
        adc2_wifi = wifi and pin in ADC2_PINS
        if noisy:
            sigma = np.hypot(sigma, self.noise_lsb)
            if adc2_wifi:
                sigma = np.hypot(sigma, self.wifi_noise_lsb)
        if np.any(sigma > 0.0):
            normal, uniform = _gaussian(ch["key"], t)
            code = code + sigma * normal
            if adc2_wifi and noisy:
                # the radio's bursts corrupt about one conversion in a hundred outright
                code = np.where(uniform < 0.01, uniform * 100.0 * CODE_MAX, code)
        return np.clip(np.floor(code + 0.5), 0, CODE_MAX).astype(np.int64)

    def _check(self, pins, t0_s, atten):
        if atten not in _ATTEN_MV or isinstance(atten, bool):
            raise ValueError(f"attenuation must be 0..3 (ATTN_0DB..ATTN_11DB), got {atten!r}")
        for pin in pins:
            if pin not in self.channels:
                raise ValueError(f"GPIO{pin!r} is not an analog channel of this board")
        if isinstance(t0_s, bool) or not isinstance(t0_s, (int, float)) or not math.isfinite(t0_s):
            raise ValueError(f"sample time must be a finite number, got {t0_s!r}")

    def read_code(self, pin, t_s, atten):
        """One raw 12-bit conversion of `pin` at virtual time `t_s`."""
        self._check([pin], t_s, atten)
        with self.world.lock:
            return self._code_one(pin, float(t_s), atten)

    def read_block(self, pins, t0_s, dt_s, count, atten):
        """`count` conversions of each pin, interleaved: one conversion every `dt_s`.

        Conversion n (0-based, across all pins) happens at t0_s + n * dt_s, cycling through
        `pins` in order, so pin p's j-th code was taken at t0_s + (j * len(pins) + p) * dt_s.
        Returns one list of codes per pin.
        """
        if not isinstance(pins, (list, tuple)) or not pins or len(set(pins)) != len(pins):
            raise ValueError("pins: expected a non-empty list of distinct GPIO numbers")
        self._check(pins, t0_s, atten)
        if isinstance(count, bool) or not isinstance(count, int) or not (
            1 <= count * len(pins) <= _SAMPLES_MAX
        ):
            raise ValueError(f"count: expected 1..{_SAMPLES_MAX // len(pins)} per pin")
        if isinstance(dt_s, bool) or not isinstance(dt_s, (int, float)) or not (
            math.isfinite(dt_s) and 0.0 < dt_s <= 10.0
        ):
            raise ValueError(f"dt_s: expected a positive sample spacing up to 10 s, got {dt_s!r}")
        n_pins = len(pins)
        base = float(t0_s) + np.arange(count, dtype=np.float64) * (n_pins * dt_s)
        return [self._codes(pin, base + p * dt_s, atten).tolist() for p, pin in enumerate(pins)]
