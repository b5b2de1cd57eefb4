"""The emulated Eastron SDM630/SDM120 on a pseudo-terminal: registers, silence, faults."""
import os
import select
import struct
import tty

import pytest
from pymodbus.client import ModbusSerialClient

from sim_board.sdm import SdmServer, crc16_modbus, float_registers
from sim_board.world import World

START_S = 1782000000
NOON_S = START_S + 11 * 3600 + 0.25


@pytest.fixture
def world():
    faults = [{"kind": "modbus", "site": "h1", "fault": "timeout", "at_s": 7200.0,
               "duration_s": 60.0}]
    return World({"start_s": START_S, "faults": faults,
                  "sites": {"h1": {"pv_kwp": 5.0}, "h3": {"phases": 3}}}, 4)


@pytest.fixture
def clock():
    return {"t": NOON_S}


@pytest.fixture
def meter(world, clock):
    server = SdmServer(world, "h1", model="SDM630", slave_id=7, clock=lambda: clock["t"])
    with server:
        yield server


@pytest.fixture
def bus(meter):
    fd = os.open(meter.client_path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    yield fd
    os.close(fd)


def frame(slave, function, address, count):
    body = bytes([slave, function]) + struct.pack(">HH", address, count)
    return body + crc16_modbus(body).to_bytes(2, "little")


def exchange(fd, request, quiet_s=0.25):
    """Write a request; collect the reply until the line is quiet (no reply: `quiet_s`)."""
    os.write(fd, request)
    reply = b""
    while len(reply) < 512:
        ready, _, _ = select.select([fd], [], [], 0.05 if reply else quiet_s)
        if not ready:
            break
        reply += os.read(fd, 256)
    return reply


def floats(reply):
    """Decode a 0x03/0x04 reply (checking its CRC) into float32 values."""
    assert crc16_modbus(reply[:-2]).to_bytes(2, "little") == reply[-2:]
    data = reply[3 : 3 + reply[2]]
    return list(struct.unpack(f">{len(data) // 4}f", data))


def f32(value):
    return struct.unpack(">f", struct.pack(">f", value))[0]


def test_crc16_modbus_known_vector():
    # "123456789" -> 0x4B37 (CRC-16/MODBUS check value)
    assert crc16_modbus(b"123456789") == 0x4B37
    assert float_registers(230.0) == [0x4366, 0x0000]


def test_pymodbus_client_reads_the_worlds_values(world, meter, clock):
    site = world.site("h1")
    client = ModbusSerialClient(port=meter.client_path, baudrate=9600, timeout=1.0, retries=0)
    assert client.connect()
    try:
        rr = client.read_input_registers(0x0000, count=2, device_id=7)
        assert not rr.isError()
        voltage = struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]
        assert voltage == f32(float(site.voltage_rms_v(NOON_S)))
        rr = client.read_input_registers(0x0048, count=4, device_id=7)
        imp, exp = struct.unpack(">ff", struct.pack(">HHHH", *rr.registers))
        assert imp == f32(site.energy_import_wh(NOON_S) / 1000.0)
        assert exp == f32(site.energy_export_wh(NOON_S) / 1000.0)
        assert exp > 1.0  # PV has been exporting all morning
        clock["t"] = NOON_S + 600  # the board's virtual time moves: so do the readings
        rr = client.read_input_registers(0x004A, count=2, device_id=7)
        later = struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]
        assert later == f32(site.energy_export_wh(NOON_S + 600) / 1000.0) and later > exp
    finally:
        client.close()


def test_raw_frames_read_the_eastron_map(world, meter, bus):
    site = world.site("h1")
    values = floats(exchange(bus, frame(7, 0x04, 0x0000, 0x50)))  # 0x00..0x4E in one read
    assert len(values) == 40
    by_address = {2 * n: v for n, v in enumerate(values)}
    assert by_address[0x06] == f32(site.current_rms_a(NOON_S))
    assert by_address[0x0C] == f32(site.power_w(NOON_S)) and by_address[0x0C] < 0  # exporting
    assert by_address[0x1E] == f32(site.power_factor(NOON_S))
    assert by_address[0x46] == f32(site.frequency_hz(NOON_S))
    assert by_address[0x02] == 0.0  # a single-phase site leaves L2 and L3 empty
    total = floats(exchange(bus, frame(7, 0x04, 0x0156, 2)))[0]
    expected = (site.energy_import_wh(NOON_S) + site.energy_export_wh(NOON_S)) / 1000.0
    assert total == f32(expected)
    assert floats(exchange(bus, frame(7, 0x03, 0x0014, 2))) == [7.0]  # node address
    assert floats(exchange(bus, frame(7, 0x03, 0x001C, 2))) == [2.0]  # 9600 baud


def test_silent_for_other_addresses_and_corrupted_requests(meter, bus):
    assert exchange(bus, frame(8, 0x04, 0x0000, 2)) == b""
    bad = bytearray(frame(7, 0x04, 0x0000, 2))
    bad[-1] ^= 0x01
    assert exchange(bus, bytes(bad)) == b""
    assert len(exchange(bus, frame(7, 0x04, 0x0000, 2))) == 9  # still alive afterwards


def test_exceptions_for_bad_address_and_function(meter, bus):
    reply = exchange(bus, frame(7, 0x04, 0x0300, 2))
    assert reply[:3] == bytes([7, 0x84, 0x02])
    reply = exchange(bus, frame(7, 0x01, 0x0000, 1))
    assert reply[:3] == bytes([7, 0x81, 0x01])


@pytest.mark.parametrize("code", [0x02, 0x04])
def test_injected_exception(meter, bus, code):
    meter.inject("exception", exception_code=code)
    reply = exchange(bus, frame(7, 0x04, 0x0000, 2))
    assert reply[:3] == bytes([7, 0x84, code])
    assert crc16_modbus(reply[:-2]).to_bytes(2, "little") == reply[-2:]
    assert len(exchange(bus, frame(7, 0x04, 0x0000, 2))) == 9  # one request only


def test_injected_timeout_crc_and_wrong_slave(meter, bus):
    meter.inject("timeout", count=2)
    assert exchange(bus, frame(7, 0x04, 0x0000, 2)) == b""
    assert exchange(bus, frame(7, 0x04, 0x0000, 2)) == b""
    meter.inject("crc")
    reply = exchange(bus, frame(7, 0x04, 0x0000, 2))
    assert len(reply) == 9 and reply[0] == 7
    assert crc16_modbus(reply[:-2]).to_bytes(2, "little") != reply[-2:]
    meter.inject("wrong_slave")
    reply = exchange(bus, frame(7, 0x04, 0x0000, 2))
    assert reply[0] != 7 and reply[1] == 0x04
    assert crc16_modbus(reply[:-2]).to_bytes(2, "little") == reply[-2:]
    good = exchange(bus, frame(7, 0x04, 0x0000, 2))
    assert good[0] == 7 and good[3:7] == reply[3:7]  # same reading, right address


def test_scenario_timeout_window(meter, bus, clock):
    clock["t"] = START_S + 7200 + 30  # inside the scenario's 60 s timeout window
    assert exchange(bus, frame(7, 0x04, 0x0000, 2)) == b""
    clock["t"] = START_S + 7200 + 61
    assert len(exchange(bus, frame(7, 0x04, 0x0000, 2))) == 9


def test_sdm120_has_only_the_single_phase_map(world, clock):
    with SdmServer(world, "h1", model="SDM120", slave_id=1, clock=lambda: clock["t"]) as meter:
        fd = os.open(meter.client_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            assert exchange(fd, frame(1, 0x04, 0x0002, 2))[:3] == bytes([1, 0x84, 0x02])
            imp = floats(exchange(fd, frame(1, 0x04, 0x0048, 2)))[0]
            assert imp == f32(world.site("h1").energy_import_wh(NOON_S) / 1000.0)
        finally:
            os.close(fd)


def test_three_phase_sdm630_splits_power_over_phases(world, clock):
    site = world.site("h3")
    with SdmServer(world, "h3", clock=lambda: clock["t"]) as meter:
        values = meter.input_values(NOON_S)
    assert values[0x0C] == values[0x0E] == values[0x10] == pytest.approx(site.power_w(NOON_S) / 3)
    assert values[0x34] == pytest.approx(site.power_w(NOON_S))
    assert values[0x04] == pytest.approx(float(site.voltage_rms_v(NOON_S)))


def test_bad_arguments_are_refused(world):
    for kwargs in ({"model": "SDM72"}, {"slave_id": 0}, {"slave_id": 248}, {"baudrate": 1234},
                   {"clock": 5}):
        with pytest.raises(ValueError):
            SdmServer(world, "h1", **kwargs).stop()
    with pytest.raises(ValueError, match="single-phase"):
        SdmServer(world, "h3", model="SDM120")
    with pytest.raises(ValueError, match="unknown site"):
        SdmServer(world, "nowhere")
    server = SdmServer(world, "h1")
    try:
        for args, kwargs in ((("smoke",), {}), (("crc",), {"count": 0}),
                             (("exception",), {"exception_code": 1})):
            with pytest.raises(ValueError):
                server.inject(*args, **kwargs)
        assert not server._faults  # nothing half-queued
    finally:
        server.stop()
