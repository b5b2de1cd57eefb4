# Modbus RTU master for an RS485 energy meter (Eastron SDM630 / SDM120).
#
# One request at a time: wait the t3.5 silent interval, drop stale input, drive
# the transceiver's DE pin high, write the frame, wait until it has left the
# UART, release DE, then collect the reply into a preallocated buffer until it
# is complete or the response timeout expires. Replies are checked for CRC,
# slave address, function code and byte count; exception replies raise with
# their code. Failed attempts are retried a bounded number of times and
# counted by kind, so a noisy bus shows up in the device's health report.
import struct
import time

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

_FRAME_BYTES_MAX = const(256)
_REGISTERS_MAX = const(125)  # Modbus limit for function 0x03/0x04
_BITS_PER_CHAR = const(11)  # start + 8 data + parity/stop + stop

READ_HOLDING = const(0x03)
READ_INPUT = const(0x04)


class ModbusError(Exception):
    """A failed Modbus transaction; `kind` says which check failed."""

    kind = "error"


class ModbusTimeout(ModbusError):
    kind = "timeout"


class ModbusCrcError(ModbusError):
    kind = "crc"


class ModbusFrameError(ModbusError):
    kind = "frame"


class ModbusException(ModbusError):
    """The slave answered with an exception code (1 illegal function, 2 illegal address, ...)."""

    kind = "exception"

    def __init__(self, code):
        super().__init__("slave exception code %d" % code)
        self.code = code


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data, length=None):
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) of data[:length]."""
    crc = 0xFFFF
    table = _CRC_TABLE
    n = len(data) if length is None else length
    for i in range(n):
        crc = (crc >> 8) ^ table[(crc ^ data[i]) & 0xFF]
    return crc


def read_request(slave, function, address, count):
    """The 8-byte RTU frame that reads `count` registers from `address`."""
    if not 1 <= slave <= 247:
        raise ValueError("slave address must be 1..247")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= _REGISTERS_MAX:
        raise ValueError("bad register range")
    frame = bytearray(struct.pack(">BBHH", slave, function, address, count))
    crc = crc16(frame)
    frame.append(crc & 0xFF)
    frame.append(crc >> 8)
    return bytes(frame)


def check_reply(frame, length, slave, function, count):
    """The register bytes of a complete reply frame[:length]; ModbusError if it is not one."""
    if length < 5:
        raise ModbusTimeout("reply too short (%d bytes)" % length)
    if crc16(frame, length - 2) != frame[length - 2] | (frame[length - 1] << 8):
        raise ModbusCrcError("reply CRC mismatch")
    if frame[0] != slave:
        raise ModbusFrameError("reply from slave %d, asked %d" % (frame[0], slave))
    if frame[1] == function | 0x80:
        raise ModbusException(frame[2])
    if frame[1] != function:
        raise ModbusFrameError("reply function 0x%02x, asked 0x%02x" % (frame[1], function))
    if frame[2] != 2 * count or length != 5 + 2 * count:
        raise ModbusFrameError("reply byte count %d, want %d" % (frame[2], 2 * count))
    return bytes(frame[3 : 3 + 2 * count])


def float32_milli(data, offset=0):
    """An IEEE-754 float32 (big-endian) times 1000 as an exact, rounded int.

    Decoded with integer arithmetic: an ESP32's single-precision float would round
    a large kWh register when scaled to Wh.
    """
    bits = (data[offset] << 24) | (data[offset + 1] << 16) | (data[offset + 2] << 8) | data[
        offset + 3]
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    if exponent == 0xFF:
        raise ValueError("register holds NaN or infinity")
    if exponent:
        mantissa |= 0x800000
    else:
        exponent = 1
    shift = exponent - 150  # value = mantissa * 2**shift
    if shift >= 0:
        value = mantissa * 1000 << shift
    else:
        den = 1 << -shift
        value = (mantissa * 1000 * 2 + den) // (2 * den)  # round half up
    return -value if bits >> 31 else value


class RtuMaster:
    """Modbus RTU master over a MicroPython-style UART (write, readinto, any, flush).

    `de_pin` (a machine.Pin or None) drives the RS485 transceiver; `clock` provides
    ticks_ms/ticks_us/ticks_diff/sleep_us (the time module on a board, injectable in tests).
    """

    def __init__(self, uart, baudrate=9600, de_pin=None, timeout_ms=200, retries=2, clock=time):
        if not 1200 <= baudrate <= 115200:
            raise ValueError("baud rate out of range")
        if not 10 <= timeout_ms <= 5000 or not 0 <= retries <= 5:
            raise ValueError("timeout or retries out of range")
        self.uart = uart
        self.de_pin = de_pin
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.clock = clock
        self.char_us = _BITS_PER_CHAR * 1000000 // baudrate
        # t3.5 silent interval; fixed 1750 us above 19200 baud (Modbus over serial line, 2.5.1.1)
        self.silent_us = 3500 * _BITS_PER_CHAR * 1000 // baudrate if baudrate <= 19200 else 1750
        self.buf = bytearray(_FRAME_BYTES_MAX)
        self.errors = {"timeout": 0, "crc": 0, "frame": 0, "exception": 0}
        self.transactions = 0
        self._last_us = clock.ticks_us()
        if de_pin is not None:
            de_pin.value(0)

    def read_steps(self, slave, address, count, function=READ_INPUT):
        """Register bytes (2 per register, big-endian), as a steps-generator: it yields the
        microseconds it waits (the silent interval, the reply on its way) and raises the last
        ModbusError after the retries (an exception reply is not retried: the slave answered
        clearly). Why steps: at 9600 baud an SDM630 poll is ~120 ms on the wire; a board's
        event loop blocked that long would hold up the Evse (the contactor must open within
        100 ms of the vehicle's C -> B). sources.wait_steps runs it from an asyncio task.
        Only the transceiver's DE hold after the request is slept here: releasing DE late
        would put our driver on the bus while the meter answers."""
        request = read_request(slave, function, address, count)
        self.transactions += 1
        error = None
        for _ in range(self.retries + 1):
            try:
                length = yield from self._transact(request, 5 + 2 * count)
                return check_reply(self.buf, length, slave, function, count)
            except ModbusError as exc:
                self.errors[exc.kind] += 1
                error = exc
                if isinstance(exc, ModbusException):
                    break
        raise error

    def _transact(self, request, expect):
        clock = self.clock
        wait_us = self.silent_us - clock.ticks_diff(clock.ticks_us(), self._last_us)
        if wait_us > 0:
            yield wait_us
        while self.uart.any():  # stale bytes from an earlier, late reply
            self.uart.read()
        if self.de_pin is not None:
            self.de_pin.value(1)
        self.uart.write(request)
        # Hold DE until the last stop bit has left the shift register.
        self.uart.flush()
        clock.sleep_us(self.char_us)
        if self.de_pin is not None:
            self.de_pin.value(0)
        return (yield from self._receive(expect))

    def _receive(self, expect):
        clock = self.clock
        buf = self.buf
        got = 0
        start = clock.ticks_ms()
        view = memoryview(buf)
        while got < expect:
            if self.uart.any():  # read what came before looking at the clock: a late look
                n = self.uart.readinto(view[got:expect])  # must not lose a whole reply
                if n:
                    got += n
                    if got >= 2 and buf[1] & 0x80:
                        expect = 5  # an exception reply is 5 bytes long
                    continue
            if clock.ticks_diff(clock.ticks_ms(), start) >= self.timeout_ms:
                break
            # The rest of the reply cannot come sooner than its characters take on the wire
            # (the UART keeps what arrives meanwhile): one wake-up, not one per character.
            yield (expect - got) * self.char_us
        self._last_us = clock.ticks_us()
        if got < expect:
            raise ModbusTimeout("no complete reply within %d ms (%d bytes)"
                                % (self.timeout_ms, got))
        return got
