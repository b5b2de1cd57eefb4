# ADC metering math, after EmonLibCM: voltage and current are sampled back to
# back; each window is cut to whole mains cycles (rising zero crossings of the
# voltage, confirmed over several samples), the offset is removed by
# subtracting the mean over exactly those cycles (no settling filter), the
# voltage is interpolated to the instant the current was sampled (which
# corrects both the channel skew and the VT/CT phase error), and Vrms, Irms,
# real and apparent power, power factor and frequency follow. All sums are
# exact integers; only the final scaling uses floats.
#
# Energy: each window's power is applied to the time since the previous window
# (the caller measures it), in integer mW x us = nJ with the remainder carried,
# so no energy is lost to rounding. Creep: one short window of an ESP32 ADC at
# zero load shows a few watts of noise power, so the decision is taken over a
# block of creep_windows windows (the noise of their mean falls with the square
# root of the count): the block's energy is held and added only when the
# block's mean power reaches the creep threshold, so noise at zero load never
# turns into kWh while a real small load loses nothing.
import math

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

_FRAC_BITS = const(12)  # fixed-point interpolation weights
_CONFIRM = const(3)  # samples on the new side that confirm a zero crossing
# Products summed per chunk in analyse(): 64 * 4095 * 4095 < 2**30, so with 12-bit codes and
# offsets inside the code range every partial sum stays a small int on a 32-bit ESP32.
_CHUNK = const(64)
NJ_PER_WH = 3600000000000
_CREEP_CLEAR = const(4)  # mean power this many times the creep threshold counts at once


class Window:
    """The result of one window; powers in W, None for a window without two crossings."""

    __slots__ = ("vrms", "irms", "power_w", "apparent_va", "pf", "frequency_hz", "cycles",
                 "samples", "power_mw")


class Metering:
    """Turns sample windows into readings and accumulates import/export energy.

    voltage_cal / current_cal: volts / amps per ADC count; phase_us: how far the voltage
    must be shifted to line up with the current (channel skew plus VT/CT phase error;
    positive when the current sample is taken after its voltage sample or leads it);
    sample_us: time between two sample pairs; creep_mw: mean |power| below which no energy
    accumulates; creep_windows: how many windows (accumulate calls with time elapsed) that
    mean is taken over.
    """

    def __init__(self, voltage_cal, current_cal, phase_us, sample_us, creep_mw=1000,
                 creep_windows=1):
        if sample_us <= 0 or voltage_cal <= 0 or current_cal <= 0 or creep_mw < 0:
            raise ValueError("bad metering calibration")
        if not 1 <= creep_windows <= 1000:
            raise ValueError("creep_windows must be 1..1000")
        self.creep_windows = int(creep_windows)
        self.voltage_cal = voltage_cal
        self.current_cal = current_cal
        self.sample_us = sample_us
        self.creep_mw = creep_mw
        shift = phase_us / sample_us
        self._shift = int(math.floor(shift))
        self._weight = int(round((shift - self._shift) * (1 << _FRAC_BITS)))
        if self._weight == 1 << _FRAC_BITS:
            self._shift += 1
            self._weight = 0
        self.import_wh = 0
        self.export_wh = 0
        self._import_nj = 0
        self._export_nj = 0
        self._hold_import_nj = 0
        self._hold_export_nj = 0
        self._hold_us = 0
        self._hold_count = 0

    def set_registers(self, import_wh, export_wh):
        """Continue from persisted registers (the remainders start at zero)."""
        if import_wh < 0 or export_wh < 0:
            raise ValueError("negative energy register")
        self.import_wh = import_wh
        self.export_wh = export_wh

    def _crossings(self, v, n, threshold):
        found = []
        below = v[0] < threshold
        k = 1
        while k < n - _CONFIRM:
            if below and v[k] >= threshold:
                ok = True
                for j in range(1, _CONFIRM):
                    if v[k + j] < threshold:
                        ok = False
                        break
                if ok:
                    found.append(k)
                    below = False
                    k += _CONFIRM
                    continue
            elif not below and v[k] < threshold:
                ok = True
                for j in range(1, _CONFIRM):
                    if v[k + j] >= threshold:
                        ok = False
                        break
                if ok:
                    below = True
                    k += _CONFIRM
                    continue
            k += 1
        return found

    def analyse(self, v, i, n):
        """A Window from n sample pairs v[k], i[k] (ADC counts), or None without 2 crossings."""
        if n < 8:
            return None
        total_v = total_i = 0
        for k in range(n):
            total_v += v[k]
            total_i += i[k]
        threshold = total_v // n
        shift = self._shift
        lo = max(0, -shift)
        hi = min(n, n - shift - 1)
        cross = [k for k in self._crossings(v, n, threshold) if lo <= k < hi]
        if len(cross) < 2:
            return None
        a = cross[0]
        count = cross[-1] - a
        w1 = self._weight
        w0 = (1 << _FRAC_BITS) - w1
        # The sums of the interpolated voltage vs = w0*p + w1*q (p = v[k+shift], q = the next
        # code) expand into sums of p, p*p, p*q, p*i, q*i, whose terms are small ints.
        s0, s00, s01, x0, x1, si, sii = _sums(v, i, a + shift, a, count, threshold,
                                              total_i // n)
        p_first = v[a + shift] - threshold
        q_last = v[a + shift + count] - threshold
        s1 = s0 - p_first + q_last  # the q sums are the p sums moved on by one sample
        s11 = s00 - p_first * p_first + q_last * q_last
        sv = w0 * s0 + w1 * s1
        svv = w0 * w0 * s00 + 2 * w0 * w1 * s01 + w1 * w1 * s11
        svi = w0 * x0 + w1 * x1
        # Variance and covariance numerators (count*sum(xy) - sum(x)*sum(y)) do not change when
        # a constant is subtracted from every sample: the offsets above leave them exact.
        scale = 1 << _FRAC_BITS
        var_v = (count * svv - sv * sv) / (count * count * scale * scale)
        var_i = (count * sii - si * si) / (count * count)
        cov = (count * svi - sv * si) / (count * count * scale)
        w = Window()
        w.cycles = len(cross) - 1
        w.samples = count
        w.vrms = math.sqrt(max(var_v, 0.0)) * self.voltage_cal
        w.irms = math.sqrt(max(var_i, 0.0)) * self.current_cal
        w.power_w = cov * self.voltage_cal * self.current_cal
        w.apparent_va = w.vrms * w.irms
        w.pf = w.power_w / w.apparent_va if w.apparent_va > 0 else 0.0
        w.frequency_hz = w.cycles * 1000000 / (count * self.sample_us)
        w.power_mw = int(round(w.power_w * 1000))
        return w

    def accumulate(self, power_mw, elapsed_us):
        """Add power_mw applied for elapsed_us to the registers; returns (import, export) Wh.

        The energy is held until creep_windows calls with elapsed time have come in; the
        block then counts only if its mean |net power| reaches creep_mw. A block whose mean
        is already _CREEP_CLEAR times the threshold counts at once: a real load never waits
        (with a long sampling interval the hold would otherwise delay the register by minutes),
        while a single window of noise stays far below it.
        """
        if elapsed_us < 0:
            raise ValueError("time went backwards")
        if elapsed_us == 0:
            return self.import_wh, self.export_wh
        energy_nj = power_mw * elapsed_us
        if energy_nj > 0:
            self._hold_import_nj += energy_nj
        else:
            self._hold_export_nj -= energy_nj
        self._hold_us += elapsed_us
        self._hold_count += 1
        net_nj = self._hold_import_nj - self._hold_export_nj
        if net_nj < 0:
            net_nj = -net_nj
        clear = net_nj >= _CREEP_CLEAR * self.creep_mw * self._hold_us
        if self._hold_count < self.creep_windows and not clear:
            return self.import_wh, self.export_wh
        if clear or net_nj >= self.creep_mw * self._hold_us:
            self._import_nj += self._hold_import_nj
            whole = self._import_nj // NJ_PER_WH
            self.import_wh += whole
            self._import_nj -= whole * NJ_PER_WH
            self._export_nj += self._hold_export_nj
            whole = self._export_nj // NJ_PER_WH
            self.export_wh += whole
            self._export_nj -= whole * NJ_PER_WH
        self._hold_import_nj = self._hold_export_nj = self._hold_us = self._hold_count = 0
        return self.import_wh, self.export_wh

    def energy_nj(self):
        """(import, export) energy counted so far in nJ, remainders included, for tests."""
        return (self.import_wh * NJ_PER_WH + self._import_nj,
                self.export_wh * NJ_PER_WH + self._export_nj)

    def held(self):
        """How many windows are waiting for the creep decision (0 right after a block)."""
        return self._hold_count


def _sums(v, i, base, start, count, v_off, i_off):
    """Sums over count samples of p, p*p, p*q, p*c, q*c, c, c*c, with p = v[base+k] - v_off,
    q = v[base+k+1] - v_off and c = i[start+k] - i_off, as exact ints.

    Why in chunks: a product of two 12-bit codes is a small int, but a window's sum of them is
    not, and every operation on a big int allocates a new object (one window of 500 samples
    made about 100 KB of garbage). Each chunk sums at most _CHUNK products, which stays a
    small int, and only the fold of a chunk into the totals may allocate.
    """
    t0 = t00 = t01 = tx0 = tx1 = ti = tii = 0
    p = v[base] - v_off
    k = 0
    while k < count:
        end = k + _CHUNK if k + _CHUNK < count else count
        c0 = c00 = c01 = cx0 = cx1 = ci = cii = 0
        for j in range(k, end):
            q = v[base + j + 1] - v_off
            c = i[start + j] - i_off
            c0 += p
            c00 += p * p
            c01 += p * q
            cx0 += p * c
            cx1 += q * c
            ci += c
            cii += c * c
            p = q
        t0 += c0
        t00 += c00
        t01 += c01
        tx0 += cx0
        tx1 += cx1
        ti += ci
        tii += cii
        k = end
    return t0, t00, t01, tx0, tx1, ti, tii
