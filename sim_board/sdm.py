"""An Eastron SDM630 / SDM120 energy meter on an emulated RS485 bus, served by pymodbus.

The meter is an independent Modbus implementation (pymodbus' RTU server), so the firmware's
own Modbus master is tested against someone else's framing and CRC, as it would be against a
real meter. Its readings come from the simulated world at the board's virtual time.

The bus: two pseudo-terminal pairs joined by a relay inside the server's event loop. pymodbus
opens one pair's terminal through pyserial; the board's UART opens the other (`client_path`).
Bytes pass unpaced (no baud-rate delay: the boards run on virtual time, so wall-clock pacing
would be wrong at any speed factor other than 1).

Registers (Eastron map, IEEE 754 float32, big-endian, high word first):
- input (function 0x04): voltage 0x0000 (L1..L3 at 0x0000/02/04), current 0x0006/08/0A,
  active power 0x000C/0E/10, apparent power 0x0012/14/16, reactive power 0x0018/1A/1C, power
  factor 0x001E/20/22, phase angle 0x0024/26/28, total power 0x0034, total VA 0x0038, total
  var 0x003C, total PF 0x003E, total phase angle 0x0042, frequency 0x0046, import kWh 0x0048,
  export kWh 0x004A, import/export kvarh 0x004C/4E, total kWh 0x0156 (import + export), total
  kvarh 0x0158. The SDM120 has only the L1 and single-phase entries. Reactive energy is not
  modelled and reads 0.
- holding (function 0x03, read-only here): node address 0x0014 and baud-rate code 0x001C
  (0 = 2400, 1 = 4800, 2 = 9600, 3 = 19200, 4 = 38400), both as float32, as Eastron stores them.
A request for another address, or with a bad CRC, gets no reply, as on a real bus; a function
other than 0x03, 0x04 or 0x10 gets an illegal-function exception (0x01).

Faults (`inject(kind, count)` or scenario faults of kind "modbus" for this site):
"timeout" (no reply), "crc" (reply with a corrupted CRC), "exception" (exception reply, code
0x02 or 0x04), "wrong_slave" (reply from another address, valid CRC).
"""
import asyncio
import contextlib
import math
import os
import struct
import threading
import time
import tty
from collections import deque

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.transaction import TransactionManager

MODELS = ("SDM630", "SDM120")
FAULT_KINDS = ("timeout", "crc", "exception", "wrong_slave")
BAUD_CODES = {2400: 0, 4800: 1, 9600: 2, 19200: 3, 38400: 4}
_PENDING_FAULTS_MAX = 10000
_FUNCTIONS = (0x03, 0x04, 0x10)  # what an Eastron meter implements
_SDM120_INPUTS = (0x00, 0x06, 0x0C, 0x12, 0x18, 0x1E, 0x24, 0x46, 0x48, 0x4A, 0x4C, 0x4E,
                  0x156, 0x158)


def float_registers(value):
    """Two 16-bit registers of an IEEE 754 float32, big-endian, high word first."""
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def crc16_modbus(data):
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class SdmServer:
    """One emulated SDM meter: `start()`, give the board `client_path`, `stop()`.

    `clock` returns the board's virtual time in seconds (Unix); without one, the world's
    start plus wall-clock seconds since the server was created.
    """

    def __init__(self, world, site_name, model="SDM630", slave_id=1, baudrate=9600, clock=None):
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
        if isinstance(slave_id, bool) or not isinstance(slave_id, int) or not 1 <= slave_id <= 247:
            raise ValueError(f"slave_id must be 1..247, got {slave_id!r}")
        if baudrate not in BAUD_CODES:
            raise ValueError(f"baudrate must be one of {sorted(BAUD_CODES)}, got {baudrate!r}")
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning virtual seconds")
        self.site = world.site(site_name)
        if model == "SDM120" and self.site.phases != 1:
            raise ValueError(f"an SDM120 is single-phase; site {site_name!r} has 3 phases")
        self.world = world
        self.model = model
        self.slave_id = slave_id
        self.baudrate = baudrate
        wall0 = time.monotonic()
        self.clock = clock or (lambda: world.start_s + (time.monotonic() - wall0))
        self.exception_code = 0x02
        self.requests_served = 0
        self.relay_dropped_bytes = 0
        self._faults = deque()
        self._lock = threading.Lock()
        self._thread = None
        self._loop = None
        self._stop = None
        self._ready = threading.Event()
        self._error = None
        self._meter_master, self._meter_slave = os.openpty()
        self._board_master, self._board_slave = os.openpty()
        for fd in (self._meter_slave, self._board_slave):
            tty.setraw(fd)  # no echo, no line discipline: a serial line, not a terminal
        for fd in (self._meter_master, self._board_master):
            os.set_blocking(fd, False)
        self.meter_path = os.ttyname(self._meter_slave)
        self.client_path = os.ttyname(self._board_slave)

    # ---- fault injection ---------------------------------------------------------------

    def inject(self, kind, count=1, exception_code=None):
        """Apply fault `kind` to the next `count` requests addressed to this meter."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise ValueError(f"fault count must be 1..1000, got {count!r}")
        if exception_code is None:
            exception_code = self.exception_code
        if exception_code not in (0x02, 0x04):
            raise ValueError("exception_code must be 0x02 (illegal address) or 0x04 (failure)")
        with self._lock:
            if len(self._faults) + count > _PENDING_FAULTS_MAX:
                raise ValueError(f"at most {_PENDING_FAULTS_MAX} faults may be pending")
            self._faults.extend([(kind, exception_code)] * count)

    def _take_fault(self, t_s):
        """The fault for this request: injected ones first, then the scenario's."""
        with self._lock:
            if self._faults:
                return self._faults.popleft()
        for fault in self.world.faults_at("modbus", t_s, site=self.site.name):
            return fault["fault"], fault["exception_code"]
        return None, None

    # ---- register values ---------------------------------------------------------------

    def _now(self):
        t_s = float(self.clock())
        if not math.isfinite(t_s):
            raise ValueError(f"clock returned {t_s!r}")
        return max(t_s, float(self.world.start_s))

    def input_values(self, t_s):
        """{register address: float value} of every input register at virtual time `t_s`."""
        with self.world.lock:
            return self._input_values(t_s)

    def _input_values(self, t_s):
        site = self.site
        phases = site.phases
        voltage_v = float(site.voltage_rms_v(t_s))
        current_a = float(site.current_rms_a(t_s))
        power_w = float(site.power_w(t_s))
        reactive_var = float(site.reactive_power_var(t_s))
        pf = float(site.power_factor(t_s))
        angle_deg = math.degrees(math.atan2(reactive_var, power_w)) if current_a else 0.0
        import_kwh = site.energy_import_wh(t_s) / 1000.0
        export_kwh = site.energy_export_wh(t_s) / 1000.0
        values = {}
        for p in range(3):
            live = p < phases
            values[0x00 + 2 * p] = voltage_v if live else 0.0
            values[0x06 + 2 * p] = current_a if live else 0.0
            values[0x0C + 2 * p] = power_w / phases if live else 0.0
            values[0x12 + 2 * p] = voltage_v * current_a if live else 0.0
            values[0x18 + 2 * p] = reactive_var / phases if live else 0.0
            values[0x1E + 2 * p] = pf if live else 1.0
            values[0x24 + 2 * p] = angle_deg if live else 0.0
        values.update({
            0x34: power_w, 0x38: phases * voltage_v * current_a, 0x3C: reactive_var, 0x3E: pf,
            0x42: angle_deg, 0x46: float(site.frequency_hz(t_s)), 0x48: import_kwh,
            0x4A: export_kwh, 0x4C: 0.0, 0x4E: 0.0, 0x156: import_kwh + export_kwh, 0x158: 0.0,
        })
        if self.model == "SDM120":
            values = {a: values[a] for a in _SDM120_INPUTS}
        return values

    def _device(self):
        inputs = sorted(self.input_values(float(self.world.start_s)))
        if self.model == "SDM630":
            # every float from 0x00 to 0x4E exists, so block reads across it work
            inputs = sorted(set(range(0x00, 0x50, 2)) | set(inputs))
        input_block = [SimData(a, values=0.0, datatype=DataType.FLOAT32) for a in inputs]
        holding = [
            SimData(0x14, values=float(self.slave_id), datatype=DataType.FLOAT32, readonly=True),
            SimData(0x1C, values=float(BAUD_CODES[self.baudrate]), datatype=DataType.FLOAT32,
                    readonly=True),
        ]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.slave_id, simdata=(bits, list(bits), holding, input_block), action=self._action
        )

    async def _action(self, function_code, start_address, _address, _count, registers, _values):
        """Fill the input registers from the world just before pymodbus answers a read."""
        if function_code != 4:
            return None
        for address, value in self.input_values(self._now()).items():
            offset = address - start_address
            if 0 <= offset < len(registers) - 1:
                registers[offset : offset + 2] = float_registers(value)
        return None

    # ---- the server thread -------------------------------------------------------------

    def start(self, timeout_s=5.0):
        """Start serving in a background thread; returns once the meter listens."""
        if self._thread is not None:
            raise RuntimeError("SdmServer already started")
        self._thread = threading.Thread(target=self._run, name=f"sdm-{self.site.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("SdmServer did not start in time")
        if self._error is not None:
            raise RuntimeError(f"SdmServer failed to start: {self._error}")
        return self

    def stop(self):
        """Stop serving and close the pseudo-terminals."""
        if self._thread is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5.0)
        self._thread = None
        for fd in (self._meter_master, self._meter_slave, self._board_master, self._board_slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc):
        self.stop()

    def _run(self):
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # reported to start(), never lost silently
            self._error = exc
            self._ready.set()

    async def _serve(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = _MeterServer(
            self, self._device(), framer=FramerType.RTU, port=self.meter_path,
            baudrate=self.baudrate, ignore_missing_devices=True,
        )
        await server.serve_forever(background=True)
        self._loop.add_reader(self._board_master, self._relay, self._board_master,
                              self._meter_master)
        self._loop.add_reader(self._meter_master, self._relay, self._meter_master,
                              self._board_master)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self._loop.remove_reader(self._board_master)
            self._loop.remove_reader(self._meter_master)
            await server.shutdown()

    def _relay(self, src, dst):
        """Move bytes across the bus; a full receiver drops them (and they are counted)."""
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO: the far side closed; the relay stays up for a reopen
        try:
            written = os.write(dst, data)
        except (BlockingIOError, OSError):
            written = 0
        self.relay_dropped_bytes += len(data) - written


class _MeterServer(ModbusSerialServer):
    def __init__(self, meter, device, **kwargs):
        self.meter = meter
        super().__init__(device, **kwargs)

    def callback_new_connection(self):
        return _MeterHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _MeterHandler(ServerRequestHandler):
    """pymodbus' request handler, made to behave like one slave on a shared RS485 line."""

    _mangle = None

    def callback_data(self, data, addr=None):
        meter = self.server.meter
        try:
            used_len = TransactionManager.callback_data(self, data, addr)
        except ModbusIOException as exc:
            if exc.dev_id == meter.slave_id:  # ours but undecodable: illegal function
                self.server_send(ExceptionResponse(
                    exc.fcode or 0, exception_code=ExcCodes.ILLEGAL_FUNCTION,
                    device_id=exc.dev_id), addr)
            return len(data)
        if self.last_pdu:
            if self.last_pdu.dev_id == meter.slave_id:
                self.loop.call_soon(self.handle_later)
            else:
                self.last_pdu = None  # another slave's request: stay silent
        return used_len

    async def handle_request(self):
        meter = self.server.meter
        pdu = self.last_pdu
        if not pdu:
            return
        if pdu.function_code not in _FUNCTIONS:
            self.server_send(ExceptionResponse(pdu.function_code,
                                               exception_code=ExcCodes.ILLEGAL_FUNCTION,
                                               device_id=pdu.dev_id), self.last_addr)
            return
        kind, code = meter._take_fault(meter._now())
        meter.requests_served += 1
        if kind == "timeout":
            return
        if kind == "exception":
            response = ExceptionResponse(pdu.function_code, exception_code=code,
                                         device_id=pdu.dev_id)
            self.server_send(response, self.last_addr)
            return
        self._mangle = kind
        await super().handle_request()

    def server_send(self, pdu, addr):
        mangle, self._mangle = self._mangle, None
        if not pdu or mangle is None:
            super().server_send(pdu, addr)
            return
        frame = bytearray(self.framer.buildFrame(pdu))
        if mangle == "crc":
            frame[-1] ^= 0xFF
        elif mangle == "wrong_slave":
            frame[0] = (frame[0] % 247) + 1
            frame[-2:] = crc16_modbus(frame[:-2]).to_bytes(2, "little")
        self.low_level_send(bytes(frame), addr=addr)
