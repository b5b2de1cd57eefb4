# CRC-32 (the ZIP / zlib / IEEE 802.3 checksum) for framing data on flash.
#
# Why our own: MicroPython's binascii.crc32 exists only when the port is built with
# MICROPY_PY_BINASCII_CRC32. The WebAssembly port has it and the stock ESP32 build
# normally does too, but nothing documents it as guaranteed on every ESP32 firmware, and
# storage must not fail to import on a board built without it. So binascii.crc32 is used
# when present (C speed) and a table-driven version with identical results otherwise.
# The table (256 ints, ~1 KB) is built on first use only when the fallback is needed.
import binascii

_POLY = 0xEDB88320  # reflected 0x04C11DB7
_table = None


def _build_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


def crc32_table(data, value=0):
    """CRC-32 of data continuing from value, computed in Python (the fallback path)."""
    global _table
    if _table is None:
        _table = _build_table()
    table = _table
    c = value ^ 0xFFFFFFFF
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


_native = getattr(binascii, "crc32", None)


def crc32(data, value=0):
    """CRC-32 of data (bytes-like) continuing from value; always an int in [0, 2**32)."""
    if _native is not None:
        return _native(data, value) & 0xFFFFFFFF
    return crc32_table(data, value)
