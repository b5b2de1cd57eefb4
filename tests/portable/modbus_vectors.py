# Modbus RTU framing, CRC and float32 decoding; identical on CPython and MicroPython.
import struct

import check

from energo import modbus

# Known frames: "read 2 input registers at 0x0000 from slave 1" = 01 04 00 00 00 02 71 CB.
check.eq(modbus.read_request(1, 4, 0, 2), bytes.fromhex("01040000000271cb"), "SDM voltage request")
check.eq(modbus.read_request(1, 3, 0x0001, 1), bytes.fromhex("010300010001d5ca"), "holding request")
check.eq(modbus.crc16(b"123456789"), 0x4B37, "CRC-16/MODBUS check value")

# float32 -> milli-units, exact with integer arithmetic.
for value, want in ((230.0, 230000), (0.0, 0), (-1.5, -1500), (1.0e-6, 0), (12345.678, None),
                    (49.98, None), (4.0e6, 4000000000)):
    raw = struct.pack(">f", value)
    got = modbus.float32_milli(raw)
    exact = struct.unpack(">f", raw)[0]
    print("float32", raw.hex(), got)
    if want is not None:
        check.eq(got, want, "float32 %s" % raw.hex())
    check.true(abs(got - exact * 1000) <= 0.5 + abs(exact) * 1e-9, "rounding %s" % raw.hex())
check.raises(ValueError, lambda: modbus.float32_milli(bytes.fromhex("7fc00000")), "NaN")


def reply(slave, function, payload):
    frame = bytearray([slave, function, len(payload)]) + payload
    crc = modbus.crc16(frame)
    return frame + bytearray([crc & 0xFF, crc >> 8])


good = reply(1, 4, struct.pack(">f", 231.5))
check.eq(modbus.check_reply(good, len(good), 1, 4, 2), struct.pack(">f", 231.5), "good reply")
bad_crc = bytearray(good)
bad_crc[-1] ^= 0xFF
for frame, slave, count, kind in ((bad_crc, 1, 2, "crc"), (good, 2, 2, "frame"),
                                  (good, 1, 3, "frame"), (good[:4], 1, 2, "timeout")):
    try:
        modbus.check_reply(frame, len(frame), slave, 4, count)
        raise AssertionError("accepted a bad reply")
    except modbus.ModbusError as exc:
        check.eq(exc.kind, kind, "reply error kind")
        print("rejected:", kind, exc)
exc_frame = bytearray([1, 0x84, 2])
crc = modbus.crc16(exc_frame)
exc_frame += bytearray([crc & 0xFF, crc >> 8])
try:
    modbus.check_reply(exc_frame, 5, 1, 4, 2)
except modbus.ModbusException as exc:
    check.eq(exc.code, 2, "exception code")
check.raises(ValueError, lambda: modbus.read_request(0, 4, 0, 2), "slave 0")
check.raises(ValueError, lambda: modbus.read_request(1, 4, 0, 126), "too many registers")
check.done()
