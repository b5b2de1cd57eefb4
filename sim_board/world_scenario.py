"""Checking and normalising a world scenario (the dict a test or `energo` run hands to `World`).

A scenario comes from outside (a JSON file, a test), so every key is checked here once, with
an error that names the path of the bad value; the models behind it can then trust their
inputs. Unknown keys are refused too: a misspelt `pv_kwp` must not silently become "no PV".

Scenario keys (all optional except `sites`):

    start_utc        "2026-06-21T00:00:00Z" (or start_s: Unix seconds); the world's epoch:
                     ground-truth energy counts from here, faults are timed from here
    latitude_deg, longitude_deg   site location for the sun (default 48.14, 11.58)
    utc_offset_h     local time for household habits (default: longitude / 15, rounded)
    grid             {"voltage_v": 230, "frequency_hz": 50, "drift": true,
                      "harmonics_pct": {"3": 0.9, "5": 2.8, "7": 1.6}}
    sites            {name: site}; see `_site`
    faults           [{"kind": "adc_noise_burst", "at_s", "duration_s", "noise_lsb", "pins"?},
                      {"kind": "modbus", "site", "fault": "timeout"|"crc"|"exception"|
                       "wrong_slave", "at_s", "duration_s", "exception_code"?}]
"""
import datetime
import math
import re

SITE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HARMONIC_ORDERS = (3, 5, 7)
MODBUS_FAULTS = ("timeout", "crc", "exception", "wrong_slave")


class ScenarioError(ValueError):
    """A scenario value is missing, of the wrong type or out of range (names the path)."""


def _check_keys(obj, allowed, path):
    if not isinstance(obj, dict):
        raise ScenarioError(f"{path}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {', '.join(unknown)}")


def number(obj, key, default, lo, hi, path, integer=False):
    """`obj[key]` as a float (or int) within [lo, hi]; `default` when absent."""
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"{path}.{key}: expected a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ScenarioError(f"{path}.{key}: expected an integer, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ScenarioError(f"{path}.{key}: {value!r} is outside {lo}..{hi}")
    return value if integer else float(value)


def _flag(obj, key, default, path):
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{path}.{key}: expected true or false, got {value!r}")
    return value


def _harmonics(obj, default, path):
    """{"3": pct, "5": pct, "7": pct} -> {3: fraction, ...}; missing orders are 0."""
    value = obj if obj is not None else default
    _check_keys(value, [str(k) for k in HARMONIC_ORDERS], path)
    return {k: number(value, str(k), 0.0, 0.0, 40.0, path) / 100.0 for k in HARMONIC_ORDERS}


def _start_s(scenario):
    if "start_s" in scenario and "start_utc" in scenario:
        raise ScenarioError("scenario: give start_s or start_utc, not both")
    if "start_s" in scenario:
        return number(scenario, "start_s", 0, 0, 2**40, "scenario", integer=True)
    text = scenario.get("start_utc", "2026-06-21T00:00:00Z")
    if not isinstance(text, str):
        raise ScenarioError(f"scenario.start_utc: expected a string, got {text!r}")
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ScenarioError(f"scenario.start_utc: not an ISO 8601 time: {text!r}") from exc
    if when.tzinfo is None:
        raise ScenarioError("scenario.start_utc: needs a UTC offset (e.g. Z)")
    return int(when.timestamp())


def _load(obj, path):
    if obj is None:
        return None
    _check_keys(obj, ("base_w", "scale", "appliances"), path)
    return {
        "base_w": number(obj, "base_w", 150.0, 0.0, 1e6, path),
        "scale": number(obj, "scale", 1.0, 0.0, 100.0, path),
        "appliances": _flag(obj, "appliances", True, path),
    }


def _battery(obj, path):
    if obj is None:
        return None
    _check_keys(obj, ("capacity_kwh", "power_w_max", "soc_start", "efficiency"), path)
    return {
        "capacity_kwh": number(obj, "capacity_kwh", 10.0, 0.1, 10000.0, path),
        "power_w_max": number(obj, "power_w_max", 3000.0, 1.0, 1e7, path),
        "soc_start": number(obj, "soc_start", 0.5, 0.0, 1.0, path),
        "efficiency": number(obj, "efficiency", 0.95, 0.5, 1.0, path),
    }


def _ev(obj, site_phases, path):
    if obj is None:
        return None
    keys = ("battery_kwh", "acceptance_a", "phases", "arrive_hour", "stay_hours", "sessions")
    _check_keys(obj, keys, path)
    phases = number(obj, "phases", site_phases, 1, 3, path, integer=True)
    if phases not in (1, 3) or phases > site_phases:
        raise ScenarioError(f"{path}.phases: must be 1 or 3 and at most the site's phases")
    sessions = obj.get("sessions")
    if sessions is not None:
        if not isinstance(sessions, list) or len(sessions) > 10000:
            raise ScenarioError(f"{path}.sessions: expected a list of at most 10000 sessions")
        checked = []
        for n, s in enumerate(sessions):
            spath = f"{path}.sessions[{n}]"
            _check_keys(s, ("plug_s", "unplug_s", "soc_start"), spath)
            plug = number(s, "plug_s", None, 0, 2**32, spath, integer=True)
            unplug = number(s, "unplug_s", None, 0, 2**32, spath, integer=True)
            if unplug <= plug:
                raise ScenarioError(f"{spath}: unplug_s must be after plug_s")
            if checked and plug < checked[-1]["unplug_s"]:
                raise ScenarioError(f"{spath}: sessions must be in order and not overlap")
            soc = number(s, "soc_start", 0.3, 0.0, 1.0, spath)
            checked.append({"plug_s": plug, "unplug_s": unplug, "soc_start": soc})
        sessions = checked
    return {
        "battery_kwh": number(obj, "battery_kwh", 60.0, 1.0, 1000.0, path),
        "acceptance_a": number(obj, "acceptance_a", 16.0, 0.0, 80.0, path),
        "phases": phases,
        "arrive_hour": number(obj, "arrive_hour", 18.0, 0.0, 24.0, path),
        "stay_hours": number(obj, "stay_hours", 12.0, 1.0, 23.0, path),
        "sessions": sessions,
    }


def _site(obj, path):
    keys = (
        "phases", "load", "pv_kwp", "pv_performance_ratio", "battery", "ev",
        "pf_displacement", "reactive", "harmonics", "current_harmonics_pct",
    )
    _check_keys(obj, keys, path)
    phases = number(obj, "phases", 1, 1, 3, path, integer=True)
    if phases not in (1, 3):
        raise ScenarioError(f"{path}.phases: must be 1 or 3")
    reactive = obj.get("reactive", "inductive")
    if reactive not in ("inductive", "capacitive"):
        raise ScenarioError(f"{path}.reactive: must be 'inductive' or 'capacitive'")
    return {
        "phases": phases,
        "load": _load(obj.get("load", {}), f"{path}.load"),
        "pv_kwp": number(obj, "pv_kwp", 0.0, 0.0, 10000.0, path),
        "pv_performance_ratio": number(obj, "pv_performance_ratio", 0.85, 0.1, 1.0, path),
        "battery": _battery(obj.get("battery"), f"{path}.battery"),
        "ev": _ev(obj.get("ev"), phases, f"{path}.ev"),
        "pf_displacement": number(obj, "pf_displacement", 0.97, 0.1, 1.0, path),
        "reactive": reactive,
        "harmonics": _flag(obj, "harmonics", True, path),
        "current_harmonics_pct": _harmonics(
            obj.get("current_harmonics_pct"), {"3": 12.0, "5": 7.0, "7": 4.0},
            f"{path}.current_harmonics_pct",
        ),
    }


def _fault(obj, sites, path):
    _check_keys(
        obj,
        ("kind", "at_s", "duration_s", "noise_lsb", "pins", "site", "fault", "exception_code"),
        path,
    )
    kind = obj.get("kind")
    fault = {
        "kind": kind,
        "at_s": number(obj, "at_s", 0.0, 0.0, 1e9, path),
        "duration_s": number(obj, "duration_s", 1.0, 0.0, 1e9, path),
    }
    if kind == "adc_noise_burst":
        fault["noise_lsb"] = number(obj, "noise_lsb", 50.0, 0.0, 4096.0, path)
        pins = obj.get("pins")
        if pins is not None and (
            not isinstance(pins, list) or not all(isinstance(p, int) for p in pins)
        ):
            raise ScenarioError(f"{path}.pins: expected a list of GPIO numbers")
        fault["pins"] = pins
    elif kind == "modbus":
        if obj.get("site") not in sites:
            raise ScenarioError(f"{path}.site: unknown site {obj.get('site')!r}")
        if obj.get("fault") not in MODBUS_FAULTS:
            raise ScenarioError(f"{path}.fault: must be one of {', '.join(MODBUS_FAULTS)}")
        fault["site"] = obj["site"]
        fault["fault"] = obj["fault"]
        code = number(obj, "exception_code", 2, 1, 11, path, integer=True)
        fault["exception_code"] = code
    else:
        raise ScenarioError(f"{path}.kind: must be 'adc_noise_burst' or 'modbus'")
    return fault


def normalise(scenario):
    """A checked copy of `scenario` with every default filled in; raises ScenarioError."""
    keys = (
        "start_s", "start_utc", "latitude_deg", "longitude_deg", "utc_offset_h", "grid",
        "sites", "faults",
    )
    _check_keys(scenario, keys, "scenario")
    lon = number(scenario, "longitude_deg", 11.58, -180.0, 180.0, "scenario")
    grid = scenario.get("grid", {})
    _check_keys(grid, ("voltage_v", "frequency_hz", "drift", "harmonics_pct"), "scenario.grid")
    sites = scenario.get("sites")
    if not isinstance(sites, dict) or not sites or len(sites) > 10000:
        raise ScenarioError("scenario.sites: expected an object with 1 to 10000 sites")
    for name in sites:
        if not isinstance(name, str) or not SITE_NAME.match(name):
            raise ScenarioError(f"scenario.sites: bad site name {name!r} (A-Z a-z 0-9 _ . -)")
    faults = scenario.get("faults", [])
    if not isinstance(faults, list) or len(faults) > 10000:
        raise ScenarioError("scenario.faults: expected a list of at most 10000 faults")
    return {
        "start_s": _start_s(scenario),
        "latitude_deg": number(scenario, "latitude_deg", 48.14, -90.0, 90.0, "scenario"),
        "longitude_deg": lon,
        "utc_offset_h": number(scenario, "utc_offset_h", round(lon / 15.0), -14, 14, "scenario"),
        "grid": {
            "voltage_v": number(grid, "voltage_v", 230.0, 50.0, 500.0, "scenario.grid"),
            "frequency_hz": number(grid, "frequency_hz", 50.0, 40.0, 70.0, "scenario.grid"),
            "drift": _flag(grid, "drift", True, "scenario.grid"),
            "harmonics": _harmonics(
                grid.get("harmonics_pct"), {"3": 0.9, "5": 2.8, "7": 1.6},
                "scenario.grid.harmonics_pct",
            ),
        },
        "sites": {name: _site(cfg, f"scenario.sites.{name}") for name, cfg in sites.items()},
        "faults": [_fault(f, sites, f"scenario.faults[{n}]") for n, f in enumerate(faults)],
    }
