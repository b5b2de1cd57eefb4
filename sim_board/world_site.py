"""One metered connection point as a meter sees it: waveforms, RMS values, controls.

Built on `sim_board.world_energy.SiteEnergy` (the power model and its exact integral); this
half turns that power into the voltage and current a sensor samples, and takes the controls
that change it: a fixed accuracy test point, and the EV charger's pilot and contactor.
"""
import math

import numpy as np

from sim_board import world_models as models
from sim_board.world_energy import DAY_S, SiteEnergy, _is_scalar
from sim_board.world_scenario import HARMONIC_ORDERS

SQRT2 = math.sqrt(2.0)


class Site(SiteEnergy):
    """One metered connection point: its waveforms, power and exact energy.

    Power flows: load + battery charging + EV - PV = net import (W, positive from the grid).
    """

    def __init__(self, world, name, cfg):
        super().__init__(world, name, cfg)
        self.phases = cfg["phases"]
        rng = models.rng_for(world.seed, name, "site")
        self.voltage_offset = float(rng.uniform(-0.015, 0.015))  # position on the feeder
        self._harmonics_on = cfg["harmonics"]
        self.current_harmonics = [
            (k, cfg["current_harmonics_pct"][k], float(rng.uniform(0, 2 * math.pi)))
            for k in HARMONIC_ORDERS
        ]
        sign = 1.0 if cfg["reactive"] == "inductive" else -1.0
        self._phi = sign * math.acos(cfg["pf_displacement"])
        self.noise_enabled = True
        self.late_control_count = 0

    # ---- waveforms and RMS values --------------------------------------------------------

    def harmonics_on(self):
        """Whether the waveforms carry harmonics now (the test point may switch them off)."""
        tp = self._test_point
        return self._harmonics_on if tp is None else tp["harmonics"]

    def _voltage_fundamental_v(self, t_s):
        if self._test_point is not None:
            voltage_v = self._test_point["voltage_v"]
            return voltage_v if _is_scalar(t_s) else np.full(np.shape(t_s), voltage_v)
        return self.world.voltage_rms_v(t_s) * (1.0 + self.voltage_offset)

    def _theta(self, t_s, phase):
        if phase not in (1, 2, 3) or phase > self.phases:
            raise ValueError(f"phase must be 1..{self.phases}, got {phase!r}")
        tp = self._test_point
        if tp is None:
            theta = self.world.phase_rad(t_s)
        else:
            t = float(t_s) if _is_scalar(t_s) else np.asarray(t_s, dtype=np.float64)
            theta = tp["theta0"] + 2 * math.pi * tp["frequency_hz"] * (t - tp["t_s"])
        return theta - 2 * math.pi * (phase - 1) / 3.0

    def _phi_rad(self):
        return self._phi if self._test_point is None else self._test_point["phi"]

    def _harmonic_power_factor(self):
        """Sum of h_k*g_k*cos(alpha_k - beta_k): the harmonics' share of real power per V1*I1."""
        if not self.harmonics_on():
            return 0.0
        return sum(
            hv * hi * math.cos(av - ai)
            for (_, hv, av), (_, hi, ai) in zip(
                self.world.voltage_harmonics, self.current_harmonics, strict=True
            )
        )

    def _fundamental_current_a(self, t_s):
        """Signed per-phase fundamental current RMS: negative while the site exports."""
        per_phase_w = self._power_w(t_s) / self.phases
        v1 = self._voltage_fundamental_v(t_s)
        return per_phase_w / (v1 * (math.cos(self._phi_rad()) + self._harmonic_power_factor()))

    def voltage_v(self, t_s, phase=1):
        """Instantaneous line-to-neutral voltage (V); `t_s` may be a numpy array."""
        self.world.check_time(t_s)
        sin = math.sin if _is_scalar(t_s) else np.sin
        theta = self._theta(t_s, phase)
        wave = sin(theta)
        if self.harmonics_on():
            for k, frac, alpha in self.world.voltage_harmonics:
                wave = wave + frac * sin(k * theta + alpha)
        return SQRT2 * self._voltage_fundamental_v(t_s) * wave

    def current_a(self, t_s, phase=1):
        """Instantaneous line current (A, import positive); `t_s` may be a numpy array."""
        i1 = self._fundamental_current_a(t_s)
        sin = math.sin if _is_scalar(t_s) else np.sin
        theta = self._theta(t_s, phase)
        wave = sin(theta - self._phi_rad())
        if self.harmonics_on():
            for k, frac, beta in self.current_harmonics:
                wave = wave + frac * sin(k * theta + beta)
        return SQRT2 * i1 * wave

    def _thd_factor(self, harmonics):
        return math.sqrt(1.0 + sum(f * f for _, f, _ in harmonics)) if self.harmonics_on() else 1.0

    def voltage_rms_v(self, t_s):
        """True RMS voltage per phase, harmonics included."""
        self.world.check_time(t_s)
        return self._voltage_fundamental_v(t_s) * self._thd_factor(self.world.voltage_harmonics)

    def current_rms_a(self, t_s):
        """True RMS current per phase (A, >= 0), harmonics included."""
        return abs(self._fundamental_current_a(t_s)) * self._thd_factor(self.current_harmonics)

    def apparent_power_va(self, t_s):
        """Total apparent power S = sum over phases of Vrms * Irms."""
        return self.phases * self.voltage_rms_v(t_s) * self.current_rms_a(t_s)

    def reactive_power_var(self, t_s):
        """Total fundamental reactive power (var; positive = inductive while importing)."""
        v1 = self._voltage_fundamental_v(t_s)
        return self.phases * v1 * self._fundamental_current_a(t_s) * math.sin(self._phi_rad())

    def power_factor(self, t_s):
        """True power factor P / S, signed like P (1.0 when there is no current)."""
        s = self.apparent_power_va(t_s)
        return 1.0 if s == 0.0 else self.power_w(t_s) / s

    def frequency_hz(self, t_s):
        """Frequency seen at this site (the grid's, or the test point's)."""
        self.world.check_time(t_s)
        tp = self._test_point
        return float(self.world.frequency_hz(t_s)) if tp is None else tp["frequency_hz"]

    # ---- control: test points and the EV's pilot -----------------------------------------

    def _at(self, t_s):
        """Bring the integrator to `t_s` before a control; a late control applies now."""
        self.world.check_time(t_s)
        if float(t_s) < self._t_done:
            self.late_control_count += 1
        self._advance(float(t_s))
        return self._t_done

    def set_test_point(self, t_s, current_a, pf=1.0, reactive="inductive", voltage_v=230.0,
                       frequency_hz=50.0, harmonics=False, noise=False):
        """Hold the site at a fixed accuracy-test point from `t_s` on (IEC 62053-21 style).

        `current_a` is the true RMS current per phase, `pf` the displacement power factor,
        `reactive` "inductive" (current lags) or "capacitive" (leads). Energy keeps
        integrating at the point's exact power. `noise=False` tells sensors to add none.
        """
        for name, value, lo, hi in (("current_a", current_a, 0.0, 1000.0), ("pf", pf, 0.05, 1.0),
                                    ("voltage_v", voltage_v, 1.0, 1000.0),
                                    ("frequency_hz", frequency_hz, 40.0, 70.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and lo <= value <= hi
            ):
                raise ValueError(f"test point {name}: {value!r} is outside {lo}..{hi}")
        if reactive not in ("inductive", "capacitive"):
            raise ValueError("test point reactive: must be 'inductive' or 'capacitive'")
        t_now = self._at(t_s)
        theta0 = float(self._theta(t_now, 1))
        phi = math.acos(pf) * (1.0 if reactive == "inductive" else -1.0)
        tp = {"voltage_v": float(voltage_v), "frequency_hz": float(frequency_hz), "phi": phi,
              "harmonics": bool(harmonics), "t_s": t_now, "theta0": theta0, "power_w": 0.0}
        self._test_point = tp
        i1 = current_a / self._thd_factor(self.current_harmonics)
        tp["power_w"] = self.phases * voltage_v * i1 * (
            math.cos(phi) + self._harmonic_power_factor()
        )
        self.noise_enabled = bool(noise)
        self._refresh_current_step()

    def clear_test_point(self, t_s):
        """Return to the modelled household from `t_s` on."""
        self._at(t_s)
        self._test_point = None
        self.noise_enabled = True
        self._refresh_current_step()

    def _refresh_current_step(self):
        k = int(math.floor(self._t_done - self.world.start_s))
        day, i = divmod(k, DAY_S)
        rec = self._record(day)
        rec.real_w[i] = self._power_now_w(rec, i, self._t_done)

    def _need_ev(self):
        if self.ev is None:
            raise ValueError(f"site {self.name!r} has no EV")
        return self.ev

    def ev_pilot_state(self, t_s):
        """'A' (no EV), 'B' (plugged, not charging) or 'C' (asking for energy) at `t_s`."""
        ev = self._need_ev()
        self.world.check_time(t_s)
        self._advance(float(t_s))  # a reading, not a control: lagging is not counted
        ev.sync_session(self._t_done)
        return ev.pilot_state()

    def ev_set_pilot_duty(self, t_s, duty_pct, frequency_hz=1000.0):
        """The charger's pilot PWM duty cycle (%) from `t_s` on; 100 means no PWM (DC high)."""
        if isinstance(duty_pct, bool) or not isinstance(duty_pct, (int, float)) or not (
            0.0 <= duty_pct <= 100.0
        ):
            raise ValueError(f"pilot duty must be 0..100 %, got {duty_pct!r}")
        if isinstance(frequency_hz, bool) or not isinstance(frequency_hz, (int, float)) or not (
            1.0 <= frequency_hz <= 100000.0
        ):
            raise ValueError(f"pilot frequency must be 1..100000 Hz, got {frequency_hz!r}")
        ev = self._need_ev()
        self._at(t_s)
        ev.duty_pct = float(duty_pct)
        ev.pwm_frequency_hz = float(frequency_hz)
        self._refresh_current_step()

    def ev_pilot_voltage_v(self, t_s):
        """Control-pilot voltage at time(s) `t_s`: the PWM between the state's level and -12 V.

        High level: +12 V in state A, +9 V in B, +6 V in C (the EV's resistors load the
        oscillator). The state is the one at the newest of the times.
        """
        ev = self._need_ev()
        arr = np.asarray(t_s, dtype=np.float64)
        self.world.check_time(arr)
        self._advance(float(arr.max()))
        ev.sync_session(self._t_done)
        high_v = {"A": 12.0, "B": 9.0, "C": 6.0}[ev.pilot_state()]
        duty = ev.duty_pct / 100.0
        if duty >= 1.0:
            return np.full(arr.shape, high_v) if arr.ndim else high_v
        in_high = np.mod((arr - self.world.start_s) * ev.pwm_frequency_hz, 1.0) < duty
        out = np.where(in_high, high_v, -12.0)
        return out if arr.ndim else float(out)

    def ev_set_contactor(self, t_s, closed):
        """The charger's contactor from `t_s` on (True = closed, EV can draw)."""
        ev = self._need_ev()
        self._at(t_s)
        ev.contactor_closed = bool(closed)
        self._refresh_current_step()

