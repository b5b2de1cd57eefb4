"""Scenario files and the faults an emulated board can suffer.

A scenario is a JSON object; every key is optional:

    {
      "start_epoch_s": 1795000000,      # true world time at virtual 0 (default: host time now)
      "speed": 60,                       # virtual seconds per wall second (--speed wins)
      "seed": 7,                         # seeds os.urandom / random on the board (--seed wins)
      "flash_size_bytes": 2097152,       # a multiple of 4096
      "ntp_offset_s": 0.0,               # error of the NTP time the board gets
      "wifi": {"ssid": "energo", "password": "secret", "rssi_dbm": -60},
      "uart_ports": {"1": "/dev/pts/7"}, # UART id -> pty of a simulated Modbus meter
      "faults": [
        {"kind": "power_cut", "at_s": 120, "off_s": 5},
        {"kind": "power_cut", "at_write": 37, "off_s": 1},
        {"kind": "brownout", "at_s": 300},
        {"kind": "wifi_down", "at_s": 60, "for_s": 30},
        {"kind": "clock_jump", "at_s": 90, "by_s": -3600},
        {"kind": "rcd_trip", "at_s": 200, "for_s": 1}
      ],
      "world": {...}                     # the simulated world's own section (sim_board.world)
    }

`at_s` is virtual seconds since the emulator started; `at_write` counts flash writes from start
(see sim_board.flash). A power cut keeps the board off for `off_s` virtual seconds and then powers
it on (reset cause PWRON_RESET, RTC back at 2000-01-01); a brown-out is a power cut of zero length
(ESP-IDF reports a brown-out as a power-on reset too). `wifi_down` makes the access point vanish:
open sockets are aborted and the station reconnects when it is back. `clock_jump` moves the RTC.
On a charger board with its pilot line (sim_board.pilot_line): `pilot_short` pulls the pilot
to 0 V, `diode_missing` removes the vehicle's diode, `rcd_trip` raises the residual-current
monitor's output, each for `for_s` seconds (0: for the rest of the run; an RCD output that
stays up is lowered by `rcd_release`).
"""
import json

KINDS = ("power_cut", "brownout", "wifi_down", "clock_jump", "pilot_short", "diode_missing",
         "rcd_trip", "rcd_release")
_TOP_KEYS = {"start_epoch_s", "speed", "seed", "flash_size_bytes", "ntp_offset_s", "wifi",
             "uart_ports", "faults", "world"}
_FAULT_KEYS = {"power_cut": {"at_s", "at_write", "off_s"}, "brownout": {"at_s", "at_write"},
               "wifi_down": {"at_s", "for_s"}, "clock_jump": {"at_s", "by_s"},
               "pilot_short": {"at_s", "for_s"}, "diode_missing": {"at_s", "for_s"},
               "rcd_trip": {"at_s", "for_s"}, "rcd_release": {"at_s"}}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the offending key."""


class Fault:
    def __init__(self, kind, at_s=None, at_write=None, off_s=0.0, for_s=0.0, by_s=0.0):
        self.kind = kind
        self.at_s = at_s
        self.at_write = at_write
        self.off_s = off_s
        self.for_s = for_s
        self.by_s = by_s

    def __repr__(self):
        return f"Fault({self.kind!r}, at_s={self.at_s}, at_write={self.at_write})"


def _number(value, where, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"{where}: must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def parse_fault(entry, where="faults"):
    if not isinstance(entry, dict):
        raise ScenarioError(f"{where}: must be an object")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ScenarioError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(entry) - _FAULT_KEYS[kind] - {"kind"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys for {kind}: {', '.join(sorted(unknown))}")
    has_time, has_write = "at_s" in entry, "at_write" in entry
    if has_time == has_write:
        raise ScenarioError(f"{where}: give exactly one of at_s / at_write")
    fault = Fault(kind)
    if has_time:
        fault.at_s = _number(entry["at_s"], f"{where}.at_s", 0)
    else:
        at_write = entry["at_write"]
        if isinstance(at_write, bool) or not isinstance(at_write, int) or at_write < 1:
            raise ScenarioError(f"{where}.at_write: must be an integer >= 1")
        fault.at_write = at_write
    fault.off_s = _number(entry.get("off_s", 1.0 if kind == "power_cut" else 0.0),
                          f"{where}.off_s", 0)
    fault.for_s = _number(entry.get("for_s", 0.0), f"{where}.for_s", 0)
    fault.by_s = _number(entry.get("by_s", 0.0), f"{where}.by_s")
    if kind == "wifi_down" and not fault.for_s > 0:
        raise ScenarioError(f"{where}.for_s: wifi_down needs for_s > 0")
    return fault


def parse_scenario(data):
    """Validate a scenario object; returns a dict with `faults` as Fault objects."""
    if not isinstance(data, dict):
        raise ScenarioError("scenario: must be a JSON object")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"scenario: unknown keys: {', '.join(sorted(unknown))}")
    out = dict(data)
    for key, minimum in (("start_epoch_s", 0), ("speed", 1e-6), ("ntp_offset_s", None)):
        if key in data:
            _number(data[key], key, minimum)
    if "seed" in data and (isinstance(data["seed"], bool) or not isinstance(data["seed"], int)):
        raise ScenarioError("seed: must be an integer")
    size = data.get("flash_size_bytes")
    if size is not None and (not isinstance(size, int) or size % 4096 or size < 4 * 4096):
        raise ScenarioError("flash_size_bytes: must be a multiple of 4096, at least 16384")
    wifi = data.get("wifi", {})
    if not isinstance(wifi, dict) or set(wifi) - {"ssid", "password", "rssi_dbm"}:
        raise ScenarioError("wifi: must be an object with ssid, password, rssi_dbm")
    ports = data.get("uart_ports", {})
    if not isinstance(ports, dict) or not all(
            k in ("0", "1", "2") and isinstance(v, str) for k, v in ports.items()):
        raise ScenarioError('uart_ports: must map "0"/"1"/"2" to a device path')
    out["uart_ports"] = {int(k): v for k, v in ports.items()}
    faults = data.get("faults", [])
    if not isinstance(faults, list):
        raise ScenarioError("faults: must be a list")
    out["faults"] = [parse_fault(f, f"faults[{i}]") for i, f in enumerate(faults)]
    return out


def load_scenario(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"scenario {path} is not JSON: {exc}") from None
    return parse_scenario(data)
