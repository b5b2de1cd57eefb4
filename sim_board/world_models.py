"""Day-by-day models of what happens behind one meter: household load, PV, a battery, an EV.

The world (`sim_board.world`) asks these models for one day at a time, on a fixed grid of one
second, so that a query at any virtual time is an array lookup and the ground-truth energy is an
exact sum. Every random choice comes from a generator seeded by (world seed, site, component,
day), never from call order, so two runs with the same seed produce the same day no matter how
the boards interleave their queries.

The EV is different: what it draws depends on the charger's pilot PWM and contactor, which the
emulated firmware drives while the world runs. `Ev` therefore keeps state (state of charge,
duty cycle, contactor) and is advanced by the world's integrator; only its plug-in schedule is a
pure function of the seed.
"""
import math
import zlib

import numpy as np

DAY_S = 86400

# Appliances of a default household: (name, power_w, duration_s, mean_events_per_day,
# preferred local hour, spread of that hour in hours). The figures are typical nameplate values;
# they only need to make a plausible, bursty load with realistic step sizes.
DEFAULT_APPLIANCES = (
    ("kettle", 2000, 180, 3.0, 8.0, 4.0),
    ("toaster", 900, 240, 0.6, 7.5, 1.0),
    ("oven", 2200, 2700, 0.4, 18.5, 1.0),
    ("hob", 1800, 1200, 0.9, 12.5, 4.0),
    ("washing_machine", 2000, 900, 0.5, 10.0, 3.0),
    ("dishwasher", 1200, 3600, 0.6, 20.5, 1.5),
    ("television", 120, 10800, 0.9, 20.0, 1.0),
    ("vacuum", 700, 1200, 0.2, 11.0, 2.0),
)
_FRIDGE_POWER_W = 90
_FRIDGE_ON_S = 900
_FRIDGE_PERIOD_S = 2700


def rng_for(seed, *parts):
    """A generator that depends only on the seed and the named parts (stable across runs)."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    for part in parts:
        if isinstance(part, str):
            words.append(zlib.crc32(part.encode()))
        else:
            words.append(int(part) & 0xFFFFFFFF)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def household_load_day_w(seed, site_name, day, cfg, local_hour_at_midnight):
    """Household consumption for one day on the 1 s grid, in W (float64, >= 0).

    A constant base, a smooth daily shape (morning and evening peaks), a fridge cycling
    with a seeded phase, and appliance events drawn per day (Poisson count, normal start
    time around the appliance's preferred hour). An event that would run past midnight is
    cut at midnight: days stay independent, which keeps a day computable on its own.
    """
    rng = rng_for(seed, site_name, "load", day)
    scale = cfg["scale"]
    seconds = np.arange(DAY_S, dtype=np.float64)
    local_h = (local_hour_at_midnight + seconds / 3600.0) % 24.0
    shape = 250.0 * np.exp(-0.5 * ((local_h - 7.5) / 1.2) ** 2)
    shape += 400.0 * np.exp(-0.5 * ((local_h - 19.5) / 2.0) ** 2)
    load = cfg["base_w"] + scale * shape
    if cfg["appliances"]:
        phase_s = int(rng.integers(0, _FRIDGE_PERIOD_S))
        fridge_on = ((np.arange(DAY_S) + phase_s) % _FRIDGE_PERIOD_S) < _FRIDGE_ON_S
        load += fridge_on * _FRIDGE_POWER_W
        for _name, power_w, duration_s, per_day, hour, spread_h in DEFAULT_APPLIANCES:
            count = int(rng.poisson(per_day * scale))
            for _ in range(count):
                start_local_h = rng.normal(hour, spread_h) % 24.0
                start = int(((start_local_h - local_hour_at_midnight) % 24.0) * 3600.0)
                end = min(DAY_S, start + int(duration_s * rng.uniform(0.7, 1.3)))
                load[start:end] += power_w
    return load


def solar_elevation_sin(t_s, latitude_deg, longitude_deg):
    """Sine of the sun's elevation at Unix time(s) `t_s` (Cooper's declination, no refraction)."""
    t = np.asarray(t_s, dtype=np.float64)
    day_of_year = (t / DAY_S - 10957.0) % 365.2425 + 1.0  # 10957: days 1970 to 2000-01-01
    declination = math.radians(23.44) * np.sin(2.0 * math.pi * (284.0 + day_of_year) / 365.0)
    solar_hour = ((t % DAY_S) / 3600.0 + longitude_deg / 15.0) % 24.0
    hour_angle = np.radians(15.0 * (solar_hour - 12.0))
    lat = math.radians(latitude_deg)
    return math.sin(lat) * np.sin(declination) + math.cos(lat) * np.cos(declination) * np.cos(
        hour_angle
    )


def clear_sky_ghi_w_per_m2(sin_elevation):
    """Global horizontal irradiance under a clear sky (Haurwitz model); zero below the horizon."""
    s = np.asarray(sin_elevation, dtype=np.float64)
    safe = np.maximum(s, 1e-6)
    ghi = 1098.0 * safe * np.exp(-0.057 / safe)
    return np.where(s > 0.0, ghi, 0.0)


def pv_day_w(seed, site_name, day, day_start_s, pv_kwp, performance_ratio, lat, lon):
    """PV output for one day on the 1 s grid, in W (>= 0): clear sky x seeded clouds x kWp.

    Clouds: a per-day clearness level (some days overcast, most mixed or clear) plus an AR(1)
    process per minute, linearly interpolated to seconds, so power ramps like a passing cloud
    rather than jumping every second.
    """
    if pv_kwp <= 0:
        return np.zeros(DAY_S)
    rng = rng_for(seed, site_name, "clouds", day)
    t = day_start_s + np.arange(DAY_S, dtype=np.float64)
    ghi = clear_sky_ghi_w_per_m2(solar_elevation_sin(t, lat, lon))
    clearness = float(rng.beta(4.0, 1.6))
    minutes = DAY_S // 60 + 1
    steps = rng.normal(0.0, 1.0, minutes)
    ar = np.empty(minutes)
    level = 0.0
    for i in range(minutes):
        level = 0.97 * level + 0.24 * steps[i]
        ar[i] = level
    minute_transmittance = np.clip(clearness + 0.18 * ar, 0.08, 1.0)
    transmittance = np.interp(np.arange(DAY_S) / 60.0, np.arange(minutes), minute_transmittance)
    return pv_kwp * performance_ratio * ghi * transmittance


def battery_day_w(net_w, cfg, soc_wh_start):
    """A self-consumption battery for one day: charge from surplus, discharge to cover load.

    `net_w` is the site's load minus PV per second (positive = the site would import).
    Returns (battery power per second in W, positive = charging, i.e. drawn from the site
    bus; state of charge in Wh at the end of the day). Charging and discharging are limited
    by `power_w_max` and by the capacity; `efficiency` is applied on charging, so energy
    that goes in is more than what comes back out.
    """
    capacity_wh = cfg["capacity_kwh"] * 1000.0
    power_max_w = cfg["power_w_max"]
    efficiency = cfg["efficiency"]
    out = np.empty_like(net_w)
    soc_wh = soc_wh_start
    for i, net in enumerate(net_w.tolist()):
        if net < 0.0:
            room_w = (capacity_wh - soc_wh) * 3600.0 / efficiency
            power_w = min(-net, power_max_w, room_w)
            soc_wh += power_w * efficiency / 3600.0
        else:
            room_w = soc_wh * 3600.0
            power_w = -min(net, power_max_w, room_w)
            soc_wh += power_w / 3600.0
        out[i] = power_w
    return out, soc_wh


def pilot_current_a(duty_pct):
    """Current an EV may draw for a control-pilot duty cycle (IEC 61851-1, Annex A).

    10 % to 85 %: duty x 0.6 A; above 85 % up to 96 %: (duty - 64) x 2.5 A; between 8 % and
    10 % a vehicle treats the signal as 6 A. Anything else (no PWM, 5 % digital
    communication, 100 %) allows no AC charging.
    """
    if 8.0 <= duty_pct < 10.0:
        return 6.0
    if 10.0 <= duty_pct <= 85.0:
        return duty_pct * 0.6
    if 85.0 < duty_pct <= 96.0:
        return (duty_pct - 64.0) * 2.5
    return 0.0


class Ev:
    """One EV that plugs into a site on a seeded schedule and charges as the pilot allows.

    State A: not plugged. B: plugged, not asking for energy (full, or the charger offers no
    valid PWM). C: plugged and asking. The EV draws current only in state C with the
    contactor closed, at min(pilot current, acceptance current); above 80 % state of charge
    the acceptance tapers linearly to zero at 100 % (the constant-voltage phase).

    A scripted vehicle (`sim_board.vehicle`) takes over with the hooks `plug`/`unplug` (at
    chosen virtual times, replacing the seeded schedule from the first one on), `set_asking`
    (stop asking: C to B, and resume) and `set_ignore_limit` (draw more than the pilot
    offers). `session_energy_wh` is the energy that went into the battery since the current
    plug-in: the ground truth a vehicle compares the charger's meter with.
    """

    def __init__(self, seed, site_name, cfg, start_s):
        self.cfg = cfg
        self._seed = seed
        self._site_name = site_name
        self._start_s = start_s
        self._sessions = {}
        self.capacity_wh = cfg["battery_kwh"] * 1000.0
        self.acceptance_a = cfg["acceptance_a"]
        self.phases = cfg["phases"]
        self.duty_pct = 100.0
        self.pwm_frequency_hz = 1000.0
        self.contactor_closed = False
        self.soc_wh = 0.0
        self.session = None
        self.energy_charged_wh = 0.0
        # control hooks for a scripted vehicle (sim_board.vehicle); the defaults are the plain
        # EV above: it asks whenever it can take energy and obeys the pilot's limit
        self.asking = True
        self.ignore_limit_a = None
        self.session_energy_wh = 0.0
        self._manual = []  # [plug_s, unplug_s, soc at plug-in], chosen by a script

    def sessions_of_day(self, day):
        """Plug-in sessions starting on `day`: list of (plug_s, unplug_s, soc at arrival)."""
        if day in self._sessions:
            return self._sessions[day]
        day_start = self._start_s + day * DAY_S
        explicit = self.cfg["sessions"]
        if explicit is not None:
            sessions = [
                (self._start_s + s["plug_s"], self._start_s + s["unplug_s"], s["soc_start"])
                for s in explicit
                if day_start <= self._start_s + s["plug_s"] < day_start + DAY_S
            ]
        else:
            rng = rng_for(self._seed, self._site_name, "ev", day)
            arrive_h = rng.normal(self.cfg["arrive_hour"], 1.0) % 24.0
            stay_h = max(1.0, rng.normal(self.cfg["stay_hours"], 1.5))
            soc = float(np.clip(rng.normal(0.4, 0.15), 0.05, 0.9))
            plug = day_start + round(arrive_h * 3600.0)
            # one session a day, at most 20 h long; should a late session still run when the
            # next one starts, `session_at` prefers the newer day's session
            unplug = plug + round(min(stay_h, 20.0) * 3600.0)
            sessions = [(plug, unplug, soc)]
        if len(self._sessions) > 16:
            self._sessions.pop(min(self._sessions))
        self._sessions[day] = sessions
        return sessions

    def plug(self, t_s, soc_start):
        """Plug the EV in at virtual time `t_s` (now or later) with the given state of charge.

        A scripted plug-in takes precedence over the seeded schedule while it lasts; it stays
        plugged until `unplug`. The site's integrator must be told (see sim_board.vehicle).
        """
        if isinstance(soc_start, bool) or not isinstance(soc_start, (int, float)) or not (
            0.0 <= soc_start <= 1.0
        ):
            raise ValueError(f"state of charge must be 0..1, got {soc_start!r}")
        if any(p <= t_s < u for p, u, _ in self._manual) or any(
            p >= t_s for p, _, _ in self._manual
        ):
            raise ValueError(f"the EV is already plugged in (or will be) at {t_s!r}")
        self._manual.append([float(t_s), math.inf, float(soc_start)])
        if len(self._manual) > 64:
            self._manual.pop(0)

    def unplug(self, t_s):
        """End the scripted plug-in that covers `t_s` at `t_s` (ValueError if none does)."""
        for entry in self._manual:
            if entry[0] <= t_s < entry[1]:
                entry[1] = float(t_s)
                return
        raise ValueError(f"no scripted plug-in covers {t_s!r}")

    def session_at(self, t_s):
        """The session covering `t_s`, or None (unplugged)."""
        for plug, unplug, soc in self._manual:
            if plug <= t_s < unplug:
                return (plug, unplug, soc)
        if self._manual and t_s >= self._manual[0][0]:
            return None  # under a script: the seeded schedule no longer applies
        day = int((t_s - self._start_s) // DAY_S)
        for d in (day, day - 1):
            if d < 0:
                continue
            for session in self.sessions_of_day(d):
                if session[0] <= t_s < session[1]:
                    return session
        return None

    def next_event_s(self, t_s):
        """The first plug or unplug time strictly after `t_s` (bounded search of 3 days)."""
        day = int((t_s - self._start_s) // DAY_S)
        best = math.inf
        for plug, unplug, _soc in self._manual:
            for edge in (plug, unplug):
                if t_s < edge < best:
                    best = edge
        for d in range(max(0, day - 1), day + 3):
            for plug, unplug, _soc in self.sessions_of_day(d):
                for edge in (plug, unplug):
                    if t_s < edge < best:
                        best = edge
        return best

    def sync_session(self, t_s):
        """Track plug-in and unplug at `t_s`; a new session resets the state of charge."""
        session = self.session_at(t_s)
        if session != self.session:
            # a session is known by its plug-in time: a scripted unplug time set later does
            # not make it a new session
            new = session is None or self.session is None or session[0] != self.session[0]
            self.session = session
            if session is not None and new:
                self.soc_wh = session[2] * self.capacity_wh
                self.session_energy_wh = 0.0

    def _acceptance_a(self):
        """What the battery accepts now: full current up to 80 %, then a linear taper."""
        soc = self.soc_wh / self.capacity_wh
        if soc <= 0.8:
            return self.acceptance_a
        return self.acceptance_a * max(0.0, (1.0 - soc) / 0.2)

    def full(self):
        """Whether the battery takes less than 1 A: a vehicle ends its charge there."""
        return self._acceptance_a() < 1.0

    def pilot_state(self):
        """'A', 'B' or 'C' as the EV presents it on the pilot line right now.

        The EV ends the charge (back to B) once the taper falls below 1 A, as real ones do.
        """
        if self.session is None:
            return "A"
        if not self.asking or self._acceptance_a() < 1.0 or pilot_current_a(self.duty_pct) <= 0.0:
            return "B"
        return "C"

    def current_a(self):
        """Per-phase current drawn now (A); zero unless in state C with the contactor closed."""
        if not self.contactor_closed or self.pilot_state() != "C":
            return 0.0
        acceptance = self._acceptance_a()
        limit = pilot_current_a(self.duty_pct)
        if self.ignore_limit_a is not None:
            # a misbehaving EV draws what it likes, only the battery's taper still applies
            acceptance = self.ignore_limit_a * acceptance / self.acceptance_a
            limit = self.ignore_limit_a
        # an on-board charger regulates in 0.1 A steps; it also keeps the power piecewise
        # constant for the world's integrator
        return math.floor(min(acceptance, limit) * 10.0) / 10.0

    def constant_current_headroom_wh(self):
        """Energy the EV can take before its acceptance starts to taper (0 when tapering)."""
        return max(0.0, 0.8 * self.capacity_wh - self.soc_wh)

    def charge(self, energy_wh):
        """Account energy delivered into the EV battery (never beyond full)."""
        self.soc_wh = min(self.capacity_wh, self.soc_wh + energy_wh)
        self.energy_charged_wh += energy_wh
        self.session_energy_wh += energy_wh

    def set_asking(self, asking):
        """The vehicle asks for energy (C when it can) or not (B: done, paused, waiting)."""
        self.asking = bool(asking)

    def set_ignore_limit(self, amps):
        """Misbehaviour: draw up to `amps` whatever the pilot offers (None: obey the pilot)."""
        if amps is not None and (isinstance(amps, bool) or not isinstance(amps, (int, float))
                                 or not 0.0 < amps <= 80.0):
            raise ValueError(f"ignored limit must be 0..80 A or None, got {amps!r}")
        self.ignore_limit_a = None if amps is None else float(amps)
