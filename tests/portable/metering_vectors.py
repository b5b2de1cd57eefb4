# ADC metering math on synthetic, exactly known waveforms; identical on CPython and MicroPython.
import math

import check

from energo import metering

SAMPLE_US = 400  # 2.5 kS/s per channel pair
N = 1000  # 0.4 s: about 20 cycles at 50 Hz
V_CAL = 0.5  # V per count: 230 V rms = 460 counts rms
I_CAL = 0.02  # A per count


def waveforms(vrms, irms, phase_deg, freq_hz, skew_us, h3=0.0, h5=0.0, offset=2048):
    """v[k], i[k] as ADC codes; the current sample is taken skew_us after its voltage sample."""
    v = []
    i = []
    w = 2 * math.pi * freq_hz
    phi = math.radians(phase_deg)
    for k in range(N):
        t = k * SAMPLE_US * 1e-6
        tv = t
        ti = t + skew_us * 1e-6
        volts = vrms * math.sqrt(2) * (math.sin(w * tv) + h3 * math.sin(3 * w * tv)
                                       + h5 * math.sin(5 * w * tv))
        amps = irms * math.sqrt(2) * math.sin(w * ti - phi)
        v.append(offset + int(round(volts / V_CAL)))
        i.append(offset + int(round(amps / I_CAL)))
    return v, i


def run(vrms, irms, phase_deg, freq_hz=50.0, skew_us=0, h3=0.0, h5=0.0, phase_us=None):
    m = metering.Metering(V_CAL, I_CAL, skew_us if phase_us is None else phase_us, SAMPLE_US)
    v, i = waveforms(vrms, irms, phase_deg, freq_hz, skew_us, h3, h5)
    return m.analyse(v, i, N)


def close(got, want, tol, what):
    check.true(abs(got - want) <= tol, "%s: got %.4f want %.4f" % (what, got, want))


for vrms, irms, phase, freq in ((230.0, 10.0, 0.0, 50.0), (230.0, 5.0, 60.0, 50.0),
                                (240.0, 2.0, -36.87, 49.8), (220.0, 20.0, 180.0, 50.2)):
    w = run(vrms, irms, phase, freq)
    p = vrms * irms * math.cos(math.radians(phase))
    close(w.vrms, vrms, vrms * 0.002, "Vrms")
    close(w.irms, irms, irms * 0.005, "Irms")
    close(w.power_w, p, vrms * irms * 0.004, "P at %s deg" % phase)
    close(w.frequency_hz, freq, 0.3, "frequency")
    print("window", w.cycles, w.samples, w.power_mw, round(w.pf * 1000))

# Channel skew of 120 us (~2.2 degrees at 50 Hz) is corrected by interpolation.
skewed = run(230.0, 10.0, 60.0, skew_us=120, phase_us=0)
fixed = run(230.0, 10.0, 60.0, skew_us=120)
want = 230.0 * 10.0 * 0.5
check.true(abs(fixed.power_w - want) < abs(skewed.power_w - want) / 4, "skew correction")
print("skew", skewed.power_mw, fixed.power_mw)

# Harmonics in the voltage only: real power stays the fundamental's.
w = run(230.0, 10.0, 0.0, h3=0.05, h5=0.03)
close(w.power_w, 2300.0, 10.0, "P with harmonics")
close(w.vrms, 230.0 * math.sqrt(1 + 0.05 ** 2 + 0.03 ** 2), 0.6, "Vrms with harmonics")

# The chunked, offset sums of analyse() against the direct sums of the interpolated voltage
# (big ints, the textbook formula): the same integers, so the same floats to the last bit, for
# any shift and weight and for codes at both ends of the 12-bit range.
def direct(m, v, i, n):
    scale = 1 << 12
    probe = m.analyse(v, i, n)
    if probe is None:
        return None
    shift, w1 = m._shift, m._weight
    w0 = scale - w1
    total = 0
    for k in range(n):
        total += v[k]
    cross = [k for k in m._crossings(v, n, total // n)
             if max(0, -shift) <= k < min(n, n - shift - 1)]
    sv = si = svv = sii = svi = 0
    for k in range(cross[0], cross[-1]):
        vs = v[k + shift] * w0 + v[k + shift + 1] * w1
        sv += vs
        si += i[k]
        svv += vs * vs
        sii += i[k] * i[k]
        svi += vs * i[k]
    count = cross[-1] - cross[0]
    return ((count * svv - sv * sv) / (count * count * scale * scale),
            (count * sii - si * si) / (count * count),
            (count * svi - sv * si) / (count * count * scale), probe)


seed = [12345]


def rand(n):
    seed[0] = (seed[0] * 1103515245 + 12345) % 2147483648
    return seed[0] % n


for phase_us, amp, offset in ((0, 900, 2048), (40, 2047, 2048), (-930, 2047, 2047),
                              (123, 4000, 2100), (399, 300, 3900), (-1, 60, 30)):
    v, i = waveforms(amp * V_CAL / math.sqrt(2), amp * I_CAL / math.sqrt(2), 30.0, 50.0, 0,
                     offset=offset)
    v = [max(0, min(4095, x + rand(7) - 3)) for x in v]
    i = [max(0, min(4095, x + rand(31) - 15)) for x in i]
    i[N // 2] = 4095  # the extremes of the code range, inside the summed span
    i[N // 2 + 1] = 0
    m = metering.Metering(V_CAL, I_CAL, phase_us, SAMPLE_US)
    var_v, var_i, cov, w = direct(m, v, i, N)
    check.eq(w.vrms, math.sqrt(max(var_v, 0.0)) * V_CAL, "Vrms exact at %d us" % phase_us)
    check.eq(w.irms, math.sqrt(max(var_i, 0.0)) * I_CAL, "Irms exact at %d us" % phase_us)
    check.eq(w.power_w, cov * V_CAL * I_CAL, "P exact at %d us" % phase_us)
    print("exact", phase_us, w.samples, w.power_mw)

# A window without two confirmed crossings gives nothing.
check.eq(metering.Metering(V_CAL, I_CAL, 0, SAMPLE_US).analyse([2048] * N, [2048] * N, N), None,
         "flat voltage")

# Energy: integer accumulation with carried remainder, creep threshold, export.
m = metering.Metering(V_CAL, I_CAL, 0, SAMPLE_US, creep_mw=2000)
for _ in range(3600):
    m.accumulate(1000000, 1000000)  # 1 kW for 1 s, an hour long
check.eq((m.import_wh, m.export_wh), (1000, 0), "1 kWh imported")
for _ in range(7200):
    m.accumulate(-333333, 1000000)  # 333.333 W export for two hours
check.eq(m.export_wh, 666, "export with remainder carried")
for _ in range(100000):
    m.accumulate(1999, 1000000)  # below creep: nothing
check.eq(m.import_wh, 1000, "no creep")
m.accumulate(1, 3600 * 10 ** 9)
check.eq(m.import_wh, 1000, "creep applies to tiny power over long time")
check.raises(ValueError, lambda: m.accumulate(1000000, -1), "negative time")
check.raises(ValueError, lambda: metering.Metering(0, I_CAL, 0, SAMPLE_US), "bad calibration")
check.done()
