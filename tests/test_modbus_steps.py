"""The Modbus master and the SDM source as steps-generators: the waits are yielded (so a board's
event loop runs while the bus is busy), the reply is assembled however it arrives, faults are
counted and retried, and two polls never share the bus."""
import asyncio
import struct

import pytest

from energo import modbus, sources


class Clock:
    """Virtual time: moves only when the test says so (and by the DE hold's sleep)."""

    def __init__(self):
        self.us = 0
        self.slept = []

    def ticks_us(self):
        return self.us

    def ticks_ms(self):
        return self.us // 1000

    def ticks_diff(self, a, b):
        return a - b

    def sleep_us(self, us):
        self.slept.append(us)
        self.us += us


class Uart:
    """A meter on the far end: answers each request with `reply(request)`, `delay` waits later,
    `chunk` bytes per wait."""

    def __init__(self, reply, delay=3, chunk=16):
        self.reply, self.delay, self.chunk = reply, delay, chunk
        self.rx = bytearray()
        self.pending = b""
        self.waits = 0
        self.requests = []

    def tick(self):
        """One wait of the master has passed: the line delivers a little more."""
        self.waits += 1
        if self.pending and self.waits >= self.delay:
            self.rx += self.pending[:self.chunk]
            self.pending = self.pending[self.chunk:]

    def any(self):
        return len(self.rx)

    def read(self, n=None):
        data, self.rx = bytes(self.rx), bytearray()
        return data

    def readinto(self, view):
        n = min(len(view), len(self.rx))
        view[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def write(self, data):
        self.requests.append(bytes(data))
        self.pending, self.waits = self.reply(bytes(data)), 0
        return len(data)

    def flush(self):
        pass


def sdm630(import_kwh=12.5):
    values = {0x00: 230.0, 0x06: 4.0, 0x0C: 920.0, 0x1E: 1.0, 0x46: 50.0, 0x48: import_kwh,
              0x4A: 0.0}

    def reply(request):
        slave, function, address, count = struct.unpack(">BBHH", request[:6])
        data = bytearray(2 * count)
        for n in range(0, count, 2):
            struct.pack_into(">f", data, 2 * n, values.get(address + n, 0.0))
        body = bytes([slave, function, 2 * count]) + bytes(data)
        return body + struct.pack("<H", modbus.crc16(body))
    return reply


def drive(steps, clock, uart):
    """Run steps the way wait_steps does, time passing by each yielded wait."""
    waits = []
    try:
        while True:
            us = next(steps)
            waits.append(us)
            clock.us += us
            uart.tick()
    except StopIteration as done:
        return done.value, waits


def test_read_steps_yields_its_waits_and_returns_the_registers():
    clock = Clock()
    uart = Uart(sdm630(), delay=4, chunk=5)
    master = modbus.RtuMaster(uart, 9600, clock=clock)
    data, waits = drive(master.read_steps(1, 0x48, 2), clock, uart)
    assert modbus.float32_milli(data) == 12500
    # the silent interval first, then the time the rest of the reply needs on the wire
    assert waits[0] <= master.silent_us and len(waits) >= 3
    assert waits[1] == (5 + 4) * master.char_us  # nothing in yet: the whole reply's time
    assert all(w % master.char_us == 0 and w > 0 for w in waits[1:])
    assert waits[1:] == sorted(waits[1:], reverse=True)
    assert clock.slept == [master.char_us]  # only the DE hold is slept, the rest is yielded
    assert uart.requests == [modbus.read_request(1, modbus.READ_INPUT, 0x48, 2)]


def test_a_silent_meter_times_out_after_the_retries_and_is_counted():
    clock = Clock()
    uart = Uart(lambda request: b"")
    master = modbus.RtuMaster(uart, 9600, timeout_ms=50, retries=2, clock=clock)
    with pytest.raises(modbus.ModbusTimeout):
        drive(master.read_steps(1, 0, 2), clock, uart)
    assert master.errors["timeout"] == 3 and len(uart.requests) == 3


def _source(uart, clock):
    board = {"meter": "sdm630", "modbus": {"uart": 2, "tx": 17, "rx": 16, "baudrate": 9600,
                                           "slave": 1}}

    class Machine:
        class Pin:
            OUT = 1

        @staticmethod
        def UART(*args, **kwargs):  # noqa: N802 - machine's name
            return uart
    return sources.ModbusSource(board, Machine, clock=clock)


def test_the_event_loop_runs_while_a_poll_waits_on_the_bus(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep_ms", lambda ms: asyncio.sleep(ms / 1000), raising=False)
    clock = Clock()
    uart = Uart(sdm630(import_kwh=7.25), delay=2)
    source = _source(uart, clock)
    ticks = []

    async def other():
        while True:
            ticks.append(clock.us)
            clock.us += 500
            uart.tick()
            await asyncio.sleep(0)

    async def main():
        side = asyncio.create_task(other())
        try:
            return await sources.wait_steps(source.sample_steps())
        finally:
            side.cancel()

    assert asyncio.run(main()) == (7250, 0)
    assert source.ready and len(ticks) > 3


def test_two_polls_take_turns_on_the_bus():
    clock = Clock()
    uart = Uart(sdm630(), delay=2, chunk=128)
    source = _source(uart, clock)
    first, second = source.sample_steps(), source.sample_steps()
    while not uart.requests:  # the first poll goes on the bus and waits for the reply
        clock.us += next(first)
    for _ in range(5):
        assert next(second) == source.master.char_us  # the second waits its turn
    assert len(uart.requests) == 1
    result, _ = drive(first, clock, uart)
    assert result == (12500, 0)
    result, _ = drive(second, clock, uart)
    assert result == (12500, 0) and len(uart.requests) == 4  # two block reads each


def test_a_cancelled_poll_frees_the_bus(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep_ms", lambda ms: asyncio.sleep(ms / 1000), raising=False)
    clock = Clock()
    uart = Uart(lambda request: b"")  # never answers: the poll waits until cancelled
    source = _source(uart, clock)

    async def main():
        task = asyncio.create_task(sources.wait_steps(source.sample_steps()))
        await asyncio.sleep(0.01)
        assert source._polling
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not source._polling


def test_a_register_that_goes_backwards_is_refused_and_counted():
    """A swapped meter (or a reply that passed the CRC garbled) reads less than the board
    holds: the board keeps its registers, counts the poll under `backwards`, and stays not
    ready when it never had a good reading."""
    clock = Clock()
    uart = Uart(sdm630(import_kwh=3.0), delay=1, chunk=128)
    source = _source(uart, clock)
    source.set_registers(5000, 0)  # what the board read back from flash
    assert drive(source.sample_steps(), clock, uart)[0] == (5000, 0)
    assert source.errors == {"backwards": 1} and not source.ready
    uart.reply = sdm630(import_kwh=5.5)
    assert drive(source.sample_steps(), clock, uart)[0] == (5500, 0)
    assert source.errors == {"backwards": 1} and source.ready
