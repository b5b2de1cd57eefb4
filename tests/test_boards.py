"""Board definitions: every shipped board is valid; mistakes are caught with their config path."""
import copy
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energo import boardcfg

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOARDS = sorted((ROOT / "boards").glob("*.json"))
CT = json.loads((ROOT / "boards" / "esp32-meter-ct.json").read_text())
SDM = json.loads((ROOT / "boards" / "esp32-meter-sdm630.json").read_text())


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_shipped_boards_are_valid_without_warnings(path):
    cfg = json.loads(path.read_text())
    assert boardcfg.check(cfg) == ([], [])
    assert cfg["name"] == path.stem


def test_the_three_meter_boards_exist():
    assert {p.stem for p in BOARDS} >= {"esp32-meter-ct", "esp32-meter-sdm630",
                                       "esp32-meter-sdm120"}


def _with(cfg, path, value):
    cfg = copy.deepcopy(cfg)
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[parts[-1]] = value
    return cfg


@pytest.mark.parametrize("cfg,message", [
    (_with(SDM, "modbus.de", 35), "modbus.de: GPIO35 is input-only"),
    (_with(SDM, "modbus.tx", 7), "modbus.tx: GPIO7 is wired to the SPI flash"),
    (_with(SDM, "modbus.tx", 24), "modbus.tx: GPIO24 does not exist"),
    (_with(SDM, "modbus.rx", 17), "modbus.rx: GPIO17 is already used by modbus.tx"),
    (_with(SDM, "modbus.baudrate", 1234), "modbus.baudrate: must be one of"),
    (_with(SDM, "modbus.uart", 0), "modbus.uart: must be 1 or 2"),
    (_with(CT, "adc.channels.1.pin", 25), "adc.channels[1].pin: GPIO25 is on ADC2"),
    (_with(CT, "adc.channels.0.pin", 23), "adc.channels[0].pin: GPIO23 has no ADC channel"),
    (_with(CT, "adc.channels.0.atten", 5), "adc.channels[0].atten: must be one of"),
    (_with(CT, "adc.channels.1.ct_ratio", -5), "adc.channels[1].ct_ratio: must be a number"),
    (_with(CT, "adc.channels", []), "adc.channels: must be a list"),
    (_with(CT, "adc.channels.0.gain", 3.0), "adc.channels[0].gain: must be a number"),
    (_with(CT, "adc.phase_cal_us", 5000), "adc.phase_cal_us: must be a number"),
    (_with(CT, "adc.creep_windows", 0), "adc.creep_windows: must be an integer"),
    (_with(CT, "role", "toaster"), "role: must be one of"),
    (_with(CT, "meter", "x"), "meter: must be adc, sdm630 or sdm120"),
])
def test_mistakes_are_errors_naming_the_path(cfg, message):
    errors, _ = boardcfg.check(cfg)
    assert any(message in e for e in errors), errors
    with pytest.raises(boardcfg.BoardError, match=message.split(":")[0].replace("[", r"\[")
                       .replace("]", r"\]")):
        boardcfg.load(json.dumps(cfg))


def test_adc2_is_allowed_without_wifi_and_strapping_pins_warn():
    cfg = _with(_with(CT, "adc.channels.1.pin", 25), "wifi", False)
    assert boardcfg.check(cfg)[0] == []
    errors, warnings = boardcfg.check(_with(SDM, "modbus.de", 12))
    assert errors == [] and warnings == [
        "modbus.de: GPIO12 is a strapping pin; make sure the circuit does not hold it at the "
        "wrong level during reset"]


def test_not_json_is_a_board_error():
    with pytest.raises(boardcfg.BoardError, match="not valid JSON"):
        boardcfg.load("{nope")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "role", "meter", "wifi", "adc", "modbus",
                                        "status_led", "chip"]), json_values))
def test_random_board_files_never_crash_the_checker(cfg):
    errors, warnings = boardcfg.check(cfg)
    assert isinstance(errors, list) and isinstance(warnings, list)


EVSE = json.loads((ROOT / "boards" / "esp32-evse.json").read_text())


@pytest.mark.parametrize("cfg,message", [
    (_with(EVSE, "evse.pilot_adc", 26), "evse.pilot_adc: GPIO26 is on ADC2"),
    (_with(_with(EVSE, "wifi", False), "evse.pilot_adc", 26), "evse.pilot_adc: GPIO26 is on ADC2;"),
    (_with(EVSE, "evse.pilot_adc", 23), "evse.pilot_adc: GPIO23 has no ADC channel"),
    (_with(EVSE, "evse.pilot_pwm", 39), "evse.pilot_pwm: GPIO39 is input-only"),
    (_with(EVSE, "evse.contactor", 6), "evse.contactor: GPIO6 is wired to the SPI flash"),
    (_with(EVSE, "evse.rcd", 25), "evse.rcd: GPIO25 is already used by evse.pilot_pwm"),
    (_with(EVSE, "evse.max_current_a", 5), "evse.max_current_a: must be an integer from 6"),
    (_with(EVSE, "evse.max_current_a", 81), "evse.max_current_a: must be an integer from 6"),
    (_with(EVSE, "evse.phases", 2), "evse.phases: must be 1 or 3"),
    (_with(EVSE, "evse.sense_ratio", 0), "evse.sense_ratio: must be a number"),
    (_with(EVSE, "evse.samples", 10), "evse.samples: must be an integer from 25"),
    (_with(EVSE, "evse", None), "evse: a charger needs this object"),
    (_with(EVSE, "vehicle_link", None), "vehicle_link: a charger needs this object"),
    (_with(EVSE, "vehicle_link.uart", 2), "vehicle_link.uart: UART2 is already used"),
    (_with(EVSE, "vehicle_link.uart", 0), "vehicle_link.uart: must be 1 or 2"),
    (_with(EVSE, "vehicle_link.tx", 10), "vehicle_link.tx: GPIO10 is wired to the SPI flash"),
    (_with(EVSE, "vehicle_link.rx", 17), "vehicle_link.rx: GPIO17 is already used by modbus.tx"),
    (_with(EVSE, "vehicle_link.baudrate", 1234), "vehicle_link.baudrate: must be one of"),
    (_with(EVSE, "meter", None), "meter: must be adc, sdm630 or sdm120"),
])
def test_charger_mistakes_are_errors_naming_the_path(cfg, message):
    errors, _ = boardcfg.check(cfg)
    assert any(message in e for e in errors), errors


def test_charger_board_needs_its_pins():
    cfg = copy.deepcopy(EVSE)
    del cfg["evse"]["rcd"], cfg["vehicle_link"]["rx"]
    errors, _ = boardcfg.check(cfg)
    assert "evse.rcd: missing" in errors and "vehicle_link.rx: missing" in errors
