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
