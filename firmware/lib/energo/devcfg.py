# Device settings (/device.json, written at provisioning): community, MQTT
# broker and credentials, Wi-Fi, record interval. Checked on boot like any
# file read back from flash: a bad file is a clear error, never a crash loop.
import json

COMMUNITY_CHARS_MAX = 32  # keeps topics < 123 bytes (umqtt.simple mis-encodes longer SUBSCRIBEs)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


class DeviceConfigError(ValueError):
    """A device.json that cannot be used; the message names the key."""


def _text(cfg, key, max_len, required=True, default=None):
    value = cfg.get(key, default)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise DeviceConfigError("%s: must be a string of 1 to %d characters" % (key, max_len))
    return value


def parse_mqtt_url(url):
    """(host, port) from mqtt://host[:port]; DeviceConfigError otherwise."""
    if not isinstance(url, str) or not url.startswith("mqtt://"):
        raise DeviceConfigError("mqtt.url: must look like mqtt://host:1883")
    rest = url[7:].rstrip("/")
    host, sep, port_text = rest.partition(":")
    port = 1883
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise DeviceConfigError("mqtt.url: bad port %r" % port_text)
        port = int(port_text)
    if not host or len(host) > 253 or " " in host or "/" in host:
        raise DeviceConfigError("mqtt.url: bad host %r" % host)
    return host, port


def check(cfg):
    """A normalised copy of a parsed device.json; DeviceConfigError naming the bad key."""
    if not isinstance(cfg, dict):
        raise DeviceConfigError("device.json: must be a JSON object")
    community = _text(cfg, "community", COMMUNITY_CHARS_MAX)
    for ch in community:
        if ch not in _NAME_CHARS:
            raise DeviceConfigError("community: only a-z, 0-9, - and _ are allowed")
    mqtt = cfg.get("mqtt")
    if not isinstance(mqtt, dict):
        raise DeviceConfigError("mqtt: must be an object with url, user, password")
    host, port = parse_mqtt_url(mqtt.get("url"))
    out = {
        "community": community,
        "mqtt_host": host,
        "mqtt_port": port,
        "mqtt_user": _text(mqtt, "user", 64, required=False),
        "mqtt_password": _text(mqtt, "password", 128, required=False),
        "record_interval_s": 60,
        "wifi_ssid": None,
        "wifi_password": None,
        "ntp_host": _text(cfg, "ntp_host", 64, default="pool.ntp.org"),
    }
    interval = cfg.get("record_interval_s", 60)
    if isinstance(interval, bool) or not isinstance(interval, int) or not 5 <= interval <= 3600:
        raise DeviceConfigError("record_interval_s: must be an integer from 5 to 3600")
    out["record_interval_s"] = interval
    # How often the meter samples: an ADC window (~200 ms of sampling) or a Modbus poll.
    sample_ms = cfg.get("sample_interval_ms", 1000)
    if isinstance(sample_ms, bool) or not isinstance(sample_ms, int) or \
            not 200 <= sample_ms <= 60000:
        raise DeviceConfigError("sample_interval_ms: must be an integer from 200 to 60000")
    if sample_ms > interval * 1000:
        raise DeviceConfigError("sample_interval_ms: must not exceed record_interval_s")
    out["sample_interval_ms"] = sample_ms
    wifi = cfg.get("wifi")
    if wifi is not None:
        if not isinstance(wifi, dict):
            raise DeviceConfigError("wifi: must be an object with ssid and password")
        out["wifi_ssid"] = _text(wifi, "ssid", 32)
        out["wifi_password"] = _text(wifi, "password", 64, required=False)
    return out


def load(path="/device.json"):
    """The checked settings from flash; DeviceConfigError if missing or unusable."""
    try:
        with open(path) as f:
            text = f.read(4096)
    except OSError:
        raise DeviceConfigError("%s: missing (run energo provision)" % path)
    try:
        cfg = json.loads(text)
    except ValueError:
        raise DeviceConfigError("%s: not valid JSON" % path)
    return check(cfg)
