"""The power behind one site, a day at a time, and its exact integral: the ground truth.

`SiteEnergy` is the bookkeeping half of `sim_board.world_site.Site`: it builds each day's power
on the 1 s grid (load, PV, battery), adds the EV as the charger drives it, and integrates the
net power exactly, forward only, keeping a per-second record of the last few days so that a
board lagging behind the others still gets answers. The electrical half (`Site`) supplies the
voltage and the EV's watts per ampere (`_voltage_fundamental_v`, `_ev_watts_per_amp`) and the
test point (`_test_point`).

Ground truth is kept in float Wh on purpose: it is the measuring reference that meters and
settlement are checked against, never a ledger balance; compare after rounding to whole Wh.
"""
import math
from collections import OrderedDict

import numpy as np

from sim_board import world_models as models

DAY_S = models.DAY_S
_RECORD_DAYS = 3


def _is_scalar(t_s):
    """A plain number (numpy scalars included) takes the math fast path, not numpy's."""
    return isinstance(t_s, (int, float)) and not isinstance(t_s, bool)


class _DayRecord:
    """One day of a site: model power, realised power, and cumulative energy at each second."""

    __slots__ = ("base_w", "real_w", "cum_import_wh", "cum_export_wh")

    def __init__(self, base_w):
        self.base_w = base_w
        self.real_w = np.full(DAY_S, np.nan)
        self.cum_import_wh = np.full(DAY_S + 1, np.nan)
        self.cum_export_wh = np.full(DAY_S + 1, np.nan)



class SiteEnergy:
    """Power model and exact energy of one site (see the module docstring)."""

    def __init__(self, world, name, cfg):
        self.world = world
        self.name = name
        self.cfg = cfg
        self.ev = (
            models.Ev(world.seed, name, cfg["ev"], world.start_s) if cfg["ev"] else None
        )
        self._test_point = None
        self._t_done = float(world.start_s)
        self._import_wh = 0.0
        self._export_wh = 0.0
        self._ev_next_s = -math.inf
        self._records = OrderedDict()
        self._base_cache = OrderedDict()
        bat = cfg["battery"]
        self._battery_soc_wh = {0: bat["soc_start"] * bat["capacity_kwh"] * 1000.0} if bat else {}

    # ---- the power model, a day at a time -------------------------------------------------

    def _components_day(self, day):
        """(load W, PV W, battery W) arrays of one day, cached for a few days."""
        if day in self._base_cache:
            return self._base_cache[day]
        w = self.world
        cfg = self.cfg
        day_start = w.start_s + day * DAY_S
        if cfg["load"] is not None:
            local_h = ((day_start % DAY_S) / 3600.0 + w.config["utc_offset_h"]) % 24.0
            load = models.household_load_day_w(w.seed, self.name, day, cfg["load"], local_h)
        else:
            load = np.zeros(DAY_S)
        pv = models.pv_day_w(
            w.seed, self.name, day, day_start, cfg["pv_kwp"], cfg["pv_performance_ratio"],
            w.config["latitude_deg"], w.config["longitude_deg"],
        )
        battery = np.zeros(DAY_S)
        if cfg["battery"] is not None:
            known = max(d for d in self._battery_soc_wh if d <= day)
            for d in range(known, day):
                self._components_day(d)  # fills the state of charge at the start of d + 1
            battery, soc_end = models.battery_day_w(
                load - pv, cfg["battery"], self._battery_soc_wh[day]
            )
            self._battery_soc_wh[day + 1] = soc_end
        self._base_cache[day] = (load, pv, battery)
        while len(self._base_cache) > _RECORD_DAYS:
            self._base_cache.popitem(last=False)
        return self._base_cache[day]

    def _record(self, day):
        rec = self._records.get(day)
        if rec is None:
            load, pv, battery = self._components_day(day)
            rec = _DayRecord(load + battery - pv)
            self._records[day] = rec
            while len(self._records) > _RECORD_DAYS:
                self._records.popitem(last=False)
        return rec

    def _ev_watts_per_amp(self):
        """Real power per ampere of EV current per phase, over the fundamental voltage.

        Chosen so that, on a site with nothing but the EV, the site's RMS current is exactly
        the current the EV draws (the quantity IEC 61851 limits), whatever the site's power
        factor and harmonic content.
        """
        thd = self._thd_factor(self.current_harmonics)
        return self.ev.phases * (math.cos(self._phi_rad()) + self._harmonic_power_factor()) / thd

    def _ev_power_w(self, t_s):
        if self.ev is None:
            return 0.0
        current_a = self.ev.current_a()
        if current_a == 0.0:
            return 0.0
        return current_a * float(self._voltage_fundamental_v(t_s)) * self._ev_watts_per_amp()

    def _power_now_w(self, rec, i, t_s):
        if self._test_point is not None:
            return self._test_point["power_w"]
        return float(rec.base_w[i]) + self._ev_power_w(t_s)

    # ---- the integrator ---------------------------------------------------------------------

    def _advance(self, t_s):
        """Integrate power from where we are to `t_s` (forward only)."""
        start = self.world.start_s
        while self._t_done < t_s:
            t0 = self._t_done
            k = int(math.floor(t0 - start))
            day, i = divmod(k, DAY_S)
            rec = self._record(day)
            step_start = start + k
            if t0 == step_start and math.isnan(rec.cum_import_wh[i]):
                rec.cum_import_wh[i] = self._import_wh
                rec.cum_export_wh[i] = self._export_wh
            if self.ev is not None:
                if t0 >= self._ev_next_s:
                    self.ev.sync_session(t0)
                    self._ev_next_s = self.ev.next_event_s(t0)
                ev_idle = self.ev.current_a() == 0.0
            else:
                ev_idle = True
            limit_s = min(t_s, self._ev_next_s if self.ev is not None else math.inf)
            if t0 == step_start:
                n = min(int(math.floor(limit_s - start)), (day + 1) * DAY_S) - k
                if not ev_idle and self._test_point is None:
                    n = min(n, self._ev_constant_steps())
                if n >= 1:
                    self._fill_steps(rec, i, n, ev_idle)
                    continue
            seg_end = min(limit_s, step_start + 1.0)
            power_w = self._power_now_w(rec, i, t0)
            dt = seg_end - t0
            self._import_wh += max(power_w, 0.0) * dt / 3600.0
            self._export_wh += max(-power_w, 0.0) * dt / 3600.0
            if self.ev is not None and self._test_point is None:
                self.ev.charge(self._ev_power_w(t0) * dt / 3600.0)
            rec.real_w[i] = power_w
            self._t_done = seg_end
            if seg_end == step_start + 1.0:
                rec.cum_import_wh[i + 1] = self._import_wh
                rec.cum_export_wh[i + 1] = self._export_wh
        self._mark_current()

    def _ev_constant_steps(self):
        """Whole steps the EV's current stays constant for (it changes only when tapering)."""
        ev = self.ev
        headroom_wh = ev.constant_current_headroom_wh()
        per_step_wh_max = ev.current_a() * self.world.nominal_voltage_v * 1.2 * ev.phases / 3600.0
        return int(headroom_wh / per_step_wh_max)

    def _fill_steps(self, rec, i, n, ev_idle=True):
        """Integrate n whole steps of constant EV current (or a test point), vectorised."""
        if self._test_point is not None:
            power = np.full(n, self._test_point["power_w"])
        elif ev_idle:
            power = rec.base_w[i : i + n]
        else:
            t_steps = self._t_done + np.arange(n, dtype=np.float64)
            ev_w = (self.ev.current_a() * self._voltage_fundamental_v(t_steps)
                    * self._ev_watts_per_amp())
            self.ev.charge(float(np.sum(ev_w)) / 3600.0)
            power = rec.base_w[i : i + n] + ev_w
        imp = self._import_wh + np.cumsum(np.maximum(power, 0.0)) / 3600.0
        exp = self._export_wh + np.cumsum(np.maximum(-power, 0.0)) / 3600.0
        rec.real_w[i : i + n] = power
        rec.cum_import_wh[i + 1 : i + n + 1] = imp
        rec.cum_export_wh[i + 1 : i + n + 1] = exp
        self._import_wh = float(imp[-1])
        self._export_wh = float(exp[-1])
        self._t_done += n

    def _mark_current(self):
        """Record the power of the step the integrator stands in, so lookups find it."""
        k = int(math.floor(self._t_done - self.world.start_s))
        day, i = divmod(k, DAY_S)
        rec = self._record(day)
        if math.isnan(rec.real_w[i]):
            if self.ev is not None and self._t_done >= self._ev_next_s:
                self.ev.sync_session(self._t_done)
                self._ev_next_s = self.ev.next_event_s(self._t_done)
            rec.real_w[i] = self._power_now_w(rec, i, self._t_done)
        if math.isnan(rec.cum_import_wh[i]) and self._t_done == self.world.start_s + k:
            rec.cum_import_wh[i] = self._import_wh
            rec.cum_export_wh[i] = self._export_wh

    def _lookup(self, t_s):
        """(day record, index) for a time at or behind the integrator."""
        k = np.floor(np.asarray(t_s, dtype=np.float64) - self.world.start_s).astype(np.int64)
        days = np.unique(k // DAY_S)
        for day in days.tolist():
            if day not in self._records:
                raise ValueError(f"virtual time {t_s!r} is older than the kept history (2 days)")
        return k

    def _power_w(self, t_s):
        """Total real power at time(s) `t_s` (W, import positive)."""
        self.world.check_time(t_s)
        if _is_scalar(t_s):
            self._advance(float(t_s))
            day, i = divmod(int(math.floor(float(t_s) - self.world.start_s)), DAY_S)
            rec = self._records.get(day)
            if rec is None:
                raise ValueError(f"virtual time {t_s!r} is older than the kept history (2 days)")
            return float(rec.real_w[i])
        arr = np.asarray(t_s, dtype=np.float64)
        self._advance(float(arr.max()))
        k = self._lookup(arr)
        if arr.ndim == 0:
            day, i = divmod(int(k), DAY_S)
            return float(self._records[day].real_w[i])
        out = np.empty(arr.shape)
        for day in np.unique(k // DAY_S).tolist():
            mask = (k // DAY_S) == day
            out[mask] = self._records[day].real_w[k[mask] - day * DAY_S]
        return out

    def _energy_wh(self, t_s, which):
        self.world.check_time(t_s)
        t_s = float(t_s)
        if t_s >= self._t_done:
            self._advance(t_s)
            return self._import_wh if which == "import" else self._export_wh
        day, i = divmod(int(self._lookup(t_s)), DAY_S)
        rec = self._records[day]
        cum = rec.cum_import_wh if which == "import" else rec.cum_export_wh
        power_w = float(rec.real_w[i]) if which == "import" else -float(rec.real_w[i])
        frac_s = t_s - (self.world.start_s + day * DAY_S + i)
        return float(cum[i]) + max(power_w, 0.0) * frac_s / 3600.0

    # ---- ground truth and instantaneous quantities -----------------------------------------

    def energy_import_wh(self, t_s):
        """Exact energy imported from the scenario start to `t_s` (Wh, float)."""
        return self._energy_wh(t_s, "import")

    def energy_export_wh(self, t_s):
        """Exact energy exported from the scenario start to `t_s` (Wh, float)."""
        return self._energy_wh(t_s, "export")

    def power_w(self, t_s):
        """Total real power over all phases (W, import positive)."""
        return self._power_w(t_s)

    def load_w(self, t_s):
        """Household load alone (W), for tests and dashboards."""
        return self._component(t_s, 0)

    def pv_w(self, t_s):
        """PV production alone (W, >= 0)."""
        return self._component(t_s, 1)

    def battery_w(self, t_s):
        """Battery power (W, positive = charging)."""
        return self._component(t_s, 2)

    def _component(self, t_s, index):
        self.world.check_time(t_s)
        k = int(math.floor(float(t_s) - self.world.start_s))
        day, i = divmod(k, DAY_S)
        return float(self._components_day(day)[index][i])

