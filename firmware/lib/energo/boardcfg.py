# Board definitions (boards/*.json, copied to flash as /board.json): checked
# against the ESP32's pins before flashing and again on boot, with every
# message naming the config path, so a wrong pin is a clear error instead of a
# board that boots into a dead sensor or a stuck contactor.

ROLES = ("meter", "charger")
# GPIOs that exist on an ESP32 (WROOM/WROVER modules).
_VALID = tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_INPUT_ONLY = (34, 35, 36, 37, 38, 39)
_FLASH = (6, 7, 8, 9, 10, 11)  # wired to the SPI flash
_STRAPPING = (0, 2, 5, 12, 15)
_ADC1 = (32, 33, 34, 35, 36, 37, 38, 39)
_ADC2 = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27)
ATTENUATIONS = (0, 1, 2, 3)  # ADC.ATTN_0DB, _2_5DB, _6DB, _11DB

# (config path, how the pin is used): "out" drives, "in" reads, "adc" samples.
# ADC pins live in adc.channels[] and are checked there.
_PIN_FIELDS = (
    ("modbus.tx", "out"), ("modbus.rx", "in"), ("modbus.de", "out"),
    ("pilot.pwm", "out"), ("pilot.sense", "adc"), ("contactor.pin", "out"),
    ("contactor.feedback", "in"), ("rcd.pin", "in"), ("vehicle_link.tx", "out"),
    ("vehicle_link.rx", "in"), ("status_led", "out"),
    ("evse.pilot_pwm", "out"), ("evse.pilot_adc", "adc"), ("evse.contactor", "out"),
    ("evse.rcd", "in"),
)
_LINK_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class BoardError(ValueError):
    """A board definition that cannot work; the message names every problem and its path."""


def _get(cfg, path):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(cfg, path, low, high, errors, required=True, where=None):
    value = _get(cfg, path)
    if where is not None:
        path = where + "." + path
    if value is None:
        if required:
            errors.append("%s: missing" % path)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        errors.append("%s: must be a number from %s to %s, got %r" % (path, low, high, value))
        return None
    return value


def check(cfg):
    """(errors, warnings) for a parsed board definition; both lists of 'path: message'."""
    errors = []
    warnings = []
    if not isinstance(cfg, dict):
        return ["board: must be a JSON object"], warnings
    name = cfg.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        errors.append("name: must be a string of 1 to 64 characters")
    if cfg.get("role") not in ROLES:
        errors.append("role: must be one of %s, got %r" % (", ".join(ROLES), cfg.get("role")))
    if cfg.get("chip", "esp32") != "esp32":
        errors.append("chip: only esp32 is supported, got %r" % (cfg.get("chip"),))
    wifi = cfg.get("wifi", True)
    if not isinstance(wifi, bool):
        errors.append("wifi: must be true or false")
    used = {}
    for path, use in _PIN_FIELDS:
        pin = _get(cfg, path)
        if pin is None:
            continue
        _check_pin(path, pin, use, wifi is True, used, errors, warnings)
    meter = cfg.get("meter")
    if cfg.get("role") in ROLES and meter not in ("adc", "sdm630", "sdm120"):
        errors.append("meter: must be adc, sdm630 or sdm120, got %r" % (meter,))
    if meter == "adc" or _get(cfg, "adc") is not None:
        _check_adc(cfg, wifi is True, used, errors, warnings)
    if meter in ("sdm630", "sdm120") or _get(cfg, "modbus") is not None:
        _check_modbus(cfg, errors)
    if cfg.get("role") == "charger":
        _check_charger(cfg, errors)
    return errors, warnings


def _check_pin(path, pin, use, wifi, used, errors, warnings):
    if isinstance(pin, bool) or not isinstance(pin, int):
        errors.append("%s: pin must be an integer GPIO number, got %r" % (path, pin))
        return
    if pin in _FLASH:
        errors.append("%s: GPIO%d is wired to the SPI flash and cannot be used" % (path, pin))
        return
    if pin not in _VALID:
        errors.append("%s: GPIO%d does not exist on the ESP32" % (path, pin))
        return
    if use == "out" and pin in _INPUT_ONLY:
        errors.append("%s: GPIO%d is input-only and cannot drive an output" % (path, pin))
    if use == "adc":
        if pin in _ADC2 and wifi:
            errors.append("%s: GPIO%d is on ADC2, which cannot be read while Wi-Fi is on; "
                          "use an ADC1 pin (GPIO32-39)" % (path, pin))
        elif pin not in _ADC1 and pin not in _ADC2:
            errors.append("%s: GPIO%d has no ADC channel" % (path, pin))
    if pin in _STRAPPING:
        warnings.append("%s: GPIO%d is a strapping pin; make sure the circuit does not hold it "
                        "at the wrong level during reset" % (path, pin))
    if pin in used:
        errors.append("%s: GPIO%d is already used by %s" % (path, pin, used[pin]))
    else:
        used[pin] = path


_CHANNEL_NUMBERS = {
    "voltage": (("vt_ratio", 1.0, 100000.0, True),),
    "current": (("ct_ratio", 1.0, 100000.0, True), ("burden_ohm", 0.1, 10000.0, True),
                ("ratio_error_pct", -10.0, 10.0, False)),
    "pilot": (("pilot_ratio", 1.0, 100.0, True),),
}


def _check_adc(cfg, wifi, used, errors, warnings):
    channels = _get(cfg, "adc.channels")
    if not isinstance(channels, list) or not channels or len(channels) > 8:
        errors.append("adc.channels: must be a list of 1 to 8 channels")
        return
    kinds = []
    for n, channel in enumerate(channels):
        base = "adc.channels[%d]" % n
        if not isinstance(channel, dict):
            errors.append("%s: must be an object" % base)
            continue
        kind = channel.get("kind")
        if kind not in _CHANNEL_NUMBERS:
            errors.append("%s.kind: must be voltage, current or pilot, got %r" % (base, kind))
            continue
        kinds.append(kind)
        if "pin" not in channel:
            errors.append("%s.pin: missing" % base)
        else:
            _check_pin(base + ".pin", channel["pin"], "adc", wifi, used, errors, warnings)
        if channel.get("atten") not in ATTENUATIONS:
            errors.append("%s.atten: must be one of 0, 1, 2, 3 (ADC.ATTN_*), got %r"
                          % (base, channel.get("atten")))
        _number(channel, "bias_mv", 0.0, 3300.0, errors, where=base)
        _number(channel, "gain", 0.5, 2.0, errors, required=False, where=base)
        _number(channel, "phase_error_deg", -20.0, 20.0, errors, required=False, where=base)
        for key, low, high, required in _CHANNEL_NUMBERS[kind]:
            _number(channel, key, low, high, errors, required=required, where=base)
    if cfg.get("meter") == "adc" and ("voltage" not in kinds or "current" not in kinds):
        errors.append("adc.channels: an ADC meter needs a voltage and a current channel")
    _number(cfg, "adc.sample_us", 50, 5000, errors)
    _number(cfg, "adc.skew_us", -1000, 1000, errors, required=False)
    _number(cfg, "adc.creep_w", 0, 100, errors, required=False)
    _number(cfg, "adc.phase_cal_us", -2000, 2000, errors, required=False)
    windows = _get(cfg, "adc.creep_windows")
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int)
                                or not 1 <= windows <= 1000):
        errors.append("adc.creep_windows: must be an integer from 1 to 1000, got %r" % (windows,))


def _check_modbus(cfg, errors):
    for key in ("uart", "tx", "rx"):
        if _get(cfg, "modbus." + key) is None:
            errors.append("modbus.%s: missing" % key)
    if _get(cfg, "modbus.uart") not in (None, 1, 2):
        errors.append("modbus.uart: must be 1 or 2 (UART0 is the REPL)")
    baud = _get(cfg, "modbus.baudrate")
    if baud not in (2400, 4800, 9600, 19200, 38400):
        errors.append("modbus.baudrate: must be one of 2400, 4800, 9600, 19200, 38400, got %r"
                      % (baud,))
    _number(cfg, "modbus.slave", 1, 247, errors)
    _number(cfg, "modbus.timeout_ms", 10, 5000, errors, required=False)


def _check_charger(cfg, errors):
    """A charger needs its pilot, contactor, RCD and vehicle link; pins were checked above."""
    for block in ("evse", "vehicle_link"):
        if not isinstance(cfg.get(block), dict):
            errors.append("%s: a charger needs this object" % block)
    if not isinstance(cfg.get("evse"), dict):
        return
    for key in ("pilot_pwm", "pilot_adc", "contactor", "rcd"):
        if _get(cfg, "evse." + key) is None:
            errors.append("evse.%s: missing" % key)
    sense = _get(cfg, "evse.pilot_adc")
    if sense in _ADC2 and cfg.get("wifi", True) is not True:  # with Wi-Fi: reported above
        errors.append("evse.pilot_adc: GPIO%d is on ADC2; the pilot sense needs ADC1 "
                      "(GPIO32-39), which reads the same with or without the radio" % sense)
    amps = _get(cfg, "evse.max_current_a")
    if isinstance(amps, bool) or not isinstance(amps, int) or not 6 <= amps <= 80:
        errors.append("evse.max_current_a: must be an integer from 6 to 80, got %r" % (amps,))
    if _get(cfg, "evse.phases") not in (1, 3):
        errors.append("evse.phases: must be 1 or 3, got %r" % (_get(cfg, "evse.phases"),))
    _number(cfg, "evse.sense_bias_mv", 0, 3300, errors, required=False)
    _number(cfg, "evse.sense_ratio", 1, 100, errors, required=False)
    samples = _get(cfg, "evse.samples")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not 25 <= samples <= 200):
        errors.append("evse.samples: must be an integer from 25 to 200 (one 1 ms PWM period "
                      "or more), got %r" % (samples,))
    if not isinstance(cfg.get("vehicle_link"), dict):
        return
    for key in ("uart", "tx", "rx"):
        if _get(cfg, "vehicle_link." + key) is None:
            errors.append("vehicle_link.%s: missing" % key)
    uart = _get(cfg, "vehicle_link.uart")
    if uart not in (None, 1, 2):
        errors.append("vehicle_link.uart: must be 1 or 2 (UART0 is the REPL)")
    elif uart is not None and uart == _get(cfg, "modbus.uart"):
        errors.append("vehicle_link.uart: UART%d is already used by modbus.uart" % uart)
    baud = _get(cfg, "vehicle_link.baudrate")
    if baud not in _LINK_BAUDS:
        errors.append("vehicle_link.baudrate: must be one of %s, got %r"
                      % (", ".join([str(b) for b in _LINK_BAUDS]), baud))


def load(text):
    """A checked board definition from JSON text; BoardError listing every problem."""
    import json

    try:
        cfg = json.loads(text)
    except ValueError:
        raise BoardError("board: not valid JSON")
    errors, _ = check(cfg)
    if errors:
        raise BoardError("; ".join(errors))
    return cfg
