"""The simulated world behind the meters: grid voltage, sites, and their exact energy.

Everything is a function of (scenario, seed, virtual time t_s), where t_s is virtual Unix time
in seconds (float) as the emulated boards' clocks report it. Boards query at their own pace and
from several threads, so:

- The power model is piecewise constant on a 1 s grid from the scenario's start (appliance
  steps, PV and the battery are computed a day at a time, vectorised); an EV and a fixed test
  point change the power at the exact instant the charger or the benchmark acts.
- Ground truth (`energy_import_wh` / `energy_export_wh`) is the exact integral of that power:
  a sum of constant pieces, so its only error is float64 rounding (relative 1e-12 over a year),
  not a step-size error. It counts from the scenario's start.
- Waveforms carry the power: the voltage is a fundamental with drifting RMS and frequency plus
  3rd, 5th and 7th harmonics; the current is a fundamental at the site's displacement angle
  plus its own harmonics, scaled so that the mean of v*i over a cycle is exactly the model's
  real power per phase (harmonic power included). A meter that integrates samples therefore
  converges on the ground truth, to within its own errors.

Sign convention: positive power and energy "import" flow from the grid into the site; when the
site exports, the current waveform is inverted (real power negative). Power factor is signed the
same way (P / S).

Layout: `World` (grid and sites, here), `sim_board.world_site.Site` (waveforms, controls),
`sim_board.world_energy` (power model and exact integral), `sim_board.world_models` (load, PV,
battery, EV), `sim_board.world_scenario` (checking a scenario), `sim_board.world_attach`
(wiring into an emulated board). Callers on other threads than the one driving a site take
`world.lock` (the sensors, the Modbus meter and the board wiring do).

Queries are cheap when time moves forward (amortised O(1)); a query up to ~2 days behind the
newest one is answered from a per-second record (exact except inside a second in which an EV
control or test point changed the power). Older queries raise `ValueError`.
"""
import math
import threading

import numpy as np

from sim_board import world_models as models
from sim_board.world_energy import DAY_S, _is_scalar
from sim_board.world_scenario import HARMONIC_ORDERS, ScenarioError, normalise
from sim_board.world_site import Site

__all__ = ["DAY_S", "ScenarioError", "Site", "World", "attach"]


class World:
    """A seeded world: `World(scenario, seed)`; sites by name via `world.site(name)`."""

    def __init__(self, scenario, seed):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ScenarioError(f"seed: expected an integer 0..2**63-1, got {seed!r}")
        self.seed = seed
        # boards, meters and tests may query from several threads; the integrators are not
        # reentrant, so every caller outside the board thread takes this lock
        self.lock = threading.RLock()
        self.config = normalise(scenario)
        self.start_s = self.config["start_s"]
        grid = self.config["grid"]
        rng = models.rng_for(seed, "grid")
        self.nominal_voltage_v = grid["voltage_v"]
        self.nominal_frequency_hz = grid["frequency_hz"]
        # slow drift: three sines each for RMS voltage (relative) and frequency (Hz)
        scale = 1.0 if grid["drift"] else 0.0
        self._v_drift = [
            (scale * a, float(rng.uniform(lo, hi)), float(rng.uniform(0, 2 * math.pi)))
            for a, lo, hi in ((0.012, 1800, 7200), (0.006, 300, 900), (0.003, 60, 180))
        ]
        self._f_drift = [
            (scale * a, float(rng.uniform(lo, hi)), float(rng.uniform(0, 2 * math.pi)))
            for a, lo, hi in ((0.03, 600, 1800), (0.01, 60, 180))
        ]
        self.voltage_harmonics = [
            (k, grid["harmonics"][k], float(rng.uniform(0, 2 * math.pi)))
            for k in HARMONIC_ORDERS
        ]
        self.sites = {
            name: Site(self, name, cfg) for name, cfg in self.config["sites"].items()
        }

    def site(self, name):
        """The site called `name`; ValueError for a name the scenario does not define."""
        try:
            return self.sites[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown site {name!r}") from None

    def check_time(self, t_s):
        """Refuse a virtual time before the world's start or not a finite number."""
        if _is_scalar(t_s):
            if not math.isfinite(t_s):
                raise ValueError(f"virtual time must be finite, got {t_s!r}")
            if t_s < self.start_s:
                raise ValueError(f"virtual time {t_s} is before the world start")
            return
        arr = np.asarray(t_s, dtype=np.float64)
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(f"virtual time must be finite, got {t_s!r}")
        if float(arr.min()) < self.start_s:
            raise ValueError(f"virtual time {float(arr.min())} is before the world start")

    def voltage_rms_v(self, t_s):
        """Grid fundamental RMS voltage (before any site's offset)."""
        if _is_scalar(t_s):
            tau = float(t_s) - self.start_s
            rel = 1.0
            for a, period, phase in self._v_drift:
                rel = rel + a * math.sin(2 * math.pi * tau / period + phase)
            return self.nominal_voltage_v * rel
        tau = np.asarray(t_s, dtype=np.float64) - self.start_s
        rel = 1.0
        for a, period, phase in self._v_drift:
            rel = rel + a * np.sin(2 * math.pi * tau / period + phase)
        return self.nominal_voltage_v * rel

    def frequency_hz(self, t_s):
        """Grid frequency: nominal plus slow seeded drift (tens of mHz)."""
        scalar = _is_scalar(t_s)
        tau = float(t_s) - self.start_s if scalar else np.asarray(t_s, np.float64) - self.start_s
        sin = math.sin if scalar else np.sin
        f = self.nominal_frequency_hz
        for a, period, phase in self._f_drift:
            f = f + a * sin(2 * math.pi * tau / period + phase)
        return f

    def phase_rad(self, t_s):
        """Phase of the L1 fundamental: 2*pi times the integral of the frequency (analytic)."""
        if _is_scalar(t_s):
            tau = float(t_s) - self.start_s
            cycles, cos = math.fmod(self.nominal_frequency_hz * tau, 1.0), math.cos
        else:
            tau = np.asarray(t_s, dtype=np.float64) - self.start_s
            cycles, cos = np.mod(self.nominal_frequency_hz * tau, 1.0), np.cos
        theta = 2 * math.pi * cycles
        for a, period, phase in self._f_drift:
            theta = theta + a * period * (math.cos(phase) - cos(2 * math.pi * tau / period + phase))
        return theta

    def faults_at(self, kind, t_s, **match):
        """Scenario faults of `kind` active at `t_s` whose fields equal `match`."""
        rel = t_s - self.start_s
        out = []
        for fault in self.config["faults"]:
            if fault["kind"] != kind or not fault["at_s"] <= rel < fault["at_s"] + fault["duration_s"]:
                continue
            if all(fault.get(k) == v for k, v in match.items()):
                out.append(fault)
        return out

    def ground_truth(self, t_s):
        """{site: {"import_wh", "export_wh"}} at `t_s`, for tests and benchmarks."""
        return {
            name: {"import_wh": s.energy_import_wh(t_s), "export_wh": s.energy_export_wh(t_s)}
            for name, s in self.sites.items()
        }

def attach(board, world_cfg):
    """Wire a world into an emulated board (its ADC, its UART meters, its EV pilot).

    See `sim_board.world_attach.BoardWorld` for the `world_cfg` keys; returns that object.
    """
    from sim_board.world_attach import BoardWorld

    return BoardWorld(board, world_cfg)
