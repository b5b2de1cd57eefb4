"""`network.WLAN` on the emulated board: connects after a short virtual delay, drops when the
scenario says the Wi-Fi is down (see sim_board.faults)."""
import types

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_BEACON_TIMEOUT = 200
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_CONNECT_DELAY_S = 1.5
_CONSTANTS = ("STA_IF", "AP_IF", "STAT_IDLE", "STAT_CONNECTING", "STAT_GOT_IP",
              "STAT_NO_AP_FOUND", "STAT_WRONG_PASSWORD", "STAT_BEACON_TIMEOUT", "STAT_ASSOC_FAIL",
              "STAT_HANDSHAKE_TIMEOUT")


def build(board, runtime):
    m = types.ModuleType("network")
    for name in _CONSTANTS:
        setattr(m, name, globals()[name])
    state = {"hostname": "esp32-" + board.mac[-3:].hex()}
    wifi = board.wifi

    class WLAN:
        IF_STA = STA_IF
        IF_AP = AP_IF

        def __init__(self, interface_id=STA_IF):
            if interface_id not in (STA_IF, AP_IF):
                raise ValueError("invalid WLAN interface identifier")
            self._if = interface_id

        def active(self, is_active=None):
            if is_active is None:
                return wifi.active
            wifi.active = bool(is_active)
            if not wifi.active:
                wifi.disconnect()
            return None

        def connect(self, ssid=None, key=None, *, bssid=None):
            if not wifi.active:
                raise OSError("STA must be active")  # MicroPython's message
            wifi.connect(ssid, key, board.clock.now_s() + _CONNECT_DELAY_S)

        def disconnect(self):
            wifi.disconnect()

        def isconnected(self):
            return wifi.status() == STAT_GOT_IP

        def status(self, param=None):
            if param is None:
                return wifi.status()
            if param == "rssi":
                if wifi.status() != STAT_GOT_IP:
                    raise OSError("STA must be connected")
                return wifi.rssi_dbm
            raise ValueError("unknown status param")

        def scan(self):
            if not wifi.active:
                raise OSError("STA must be active")
            return [(wifi.ssid.encode(), b"\x02\x00\x00\x00\x00\x01", 6, wifi.rssi_dbm, 3, False)]

        def ifconfig(self, config=None):
            if config is None:
                return wifi.ifconfig()
            if len(config) != 4:
                raise ValueError("need (ip, netmask, gateway, dns)")
            wifi.static = tuple(config)
            return None

        def ipconfig(self, *args, **kwargs):
            if args:
                key = args[0]
                ip, mask, gw, dns = wifi.ifconfig()
                if key == "addr4":
                    return (ip, mask)
                if key == "gw4":
                    return gw
                if key == "dhcp4":
                    return wifi.static is None
                raise ValueError("unexpected key")
            return None

        def config(self, *args, **kwargs):
            if kwargs:
                for key, value in kwargs.items():
                    if key in ("ssid", "essid"):
                        wifi.ssid = str(value)
                    elif key in ("hostname", "dhcp_hostname"):
                        state["hostname"] = str(value)
                    elif key not in ("reconnects", "txpower", "pm", "channel"):
                        raise ValueError("unknown config param")
                return None
            key = args[0] if args else None
            if key == "mac":
                return board.mac
            if key in ("ssid", "essid"):
                return wifi.ssid
            if key in ("hostname", "dhcp_hostname"):
                return state["hostname"]
            if key == "channel":
                return 6
            raise ValueError("unknown config param")

    def hostname(name=None):
        if name is None:
            return state["hostname"]
        state["hostname"] = str(name)
        return None

    def country(code=None):
        return "XX" if code is None else None

    m.WLAN = WLAN
    m.hostname = hostname
    m.country = country
    return m
