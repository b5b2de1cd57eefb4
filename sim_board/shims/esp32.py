"""`esp32`: NVS (persisted per board, beside its flash) and a few chip helpers."""
import errno
import types

from sim_board.flash import oserror

_ESP_ERR_NVS_NOT_FOUND = -0x1102  # what MicroPython raises as OSError for a missing key
_KEY_LEN_MAX = 15


def build(board, runtime):
    m = types.ModuleType("esp32")
    m.HEAP_DATA = 4
    m.HEAP_EXEC = 1
    m.WAKEUP_ALL_LOW = False
    m.WAKEUP_ANY_HIGH = True

    class NVS:
        """A namespace of the board's NVS; writes land at commit(), as on the chip."""

        def __init__(self, namespace):
            if not isinstance(namespace, str) or not 0 < len(namespace) <= _KEY_LEN_MAX:
                raise ValueError("invalid NVS namespace")
            self._ns = namespace
            self._pending = {}

        def _key(self, key):
            if not isinstance(key, str) or not 0 < len(key) <= _KEY_LEN_MAX:
                raise ValueError("invalid NVS key")
            return key

        def _get(self, key, kind):
            key = self._key(key)
            if key in self._pending:
                value = self._pending[key]
            else:
                value = board.nvs.get(self._ns, key)
            if value is None or value[0] != kind:
                raise OSError(_ESP_ERR_NVS_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
            return value[1]

        def set_i32(self, key, value):
            if not -(2**31) <= value < 2**31:
                raise OverflowError("value out of range for i32")
            self._pending[self._key(key)] = ("i32", int(value))

        def get_i32(self, key):
            return self._get(key, "i32")

        def set_blob(self, key, value):
            data = bytes(value)
            if len(data) > 508_000:
                raise oserror(errno.ENOSPC)
            self._pending[self._key(key)] = ("blob", data)

        def get_blob(self, key, buffer):
            data = self._get(key, "blob")
            if len(buffer) < len(data):
                raise OSError(-0x110C, "ESP_ERR_NVS_INVALID_LENGTH")
            buffer[: len(data)] = data
            return len(data)

        def erase_key(self, key):
            key = self._key(key)
            if self._pending.get(key, ("x",))[0] is None:
                raise OSError(_ESP_ERR_NVS_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
            if key not in self._pending and board.nvs.get(self._ns, key) is None:
                raise OSError(_ESP_ERR_NVS_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
            self._pending[key] = (None, None)

        def commit(self):
            board.nvs.commit(self._ns, self._pending)
            self._pending = {}

    def raw_temperature():
        return 120  # Fahrenheit-ish raw reading of the internal sensor, as the chip gives

    def idf_heap_info(capabilities):
        return [(110_000, 60_000, 50_000, 40_000)]

    m.NVS = NVS
    m.raw_temperature = raw_temperature
    m.idf_heap_info = idf_heap_info
    return m
