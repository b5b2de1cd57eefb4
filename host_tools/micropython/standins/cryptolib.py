# Stand-in for MicroPython's `cryptolib` on the WebAssembly port, which lacks it. Used only by
# `energo bench firmware-mem` so the keystore can wrap and unwrap its key there.
#
# THIS IS NOT AES AND NOT A CIPHER TO PROTECT ANYTHING: it XORs the data with a SHA-256
# keystream of (key, iv, block number). It keeps cryptolib.aes's API (a new object per
# operation, mode 1 = ECB and 2 = CBC accepted, data a multiple of 16 bytes) and its allocation
# behaviour (each call returns one new bytes object as long as its input), which is all a
# memory measurement needs.
import hashlib

MODE_ECB = 1
MODE_CBC = 2
_BLOCK = 16


class aes:  # noqa: N801 - the name cryptolib uses
    def __init__(self, key, mode, iv=None):
        if len(key) not in (16, 24, 32):
            raise ValueError("key must be 16, 24 or 32 bytes")
        if mode not in (MODE_ECB, MODE_CBC):
            raise ValueError("stand-in cryptolib supports modes 1 and 2 only")
        if mode == MODE_CBC and (iv is None or len(iv) != _BLOCK):
            raise ValueError("CBC needs a 16-byte IV")
        self._seed = bytes(key) + (bytes(iv) if iv is not None else b"")
        self._used = False

    def _apply(self, data):
        if len(data) % _BLOCK:
            raise ValueError("data length must be a multiple of 16")
        if self._used:
            raise OSError("stand-in cryptolib: one operation per object")
        self._used = True
        out = bytearray(data)
        for block in range(len(out) // _BLOCK):
            stream = hashlib.sha256(self._seed + bytes((block,))).digest()
            for k in range(_BLOCK):
                out[block * _BLOCK + k] ^= stream[k]
        return bytes(out)

    def encrypt(self, data):
        return self._apply(data)

    def decrypt(self, data):
        return self._apply(data)
