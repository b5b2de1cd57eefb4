"""`machine` for the emulated ESP32: pins, ADC, PWM, UART, RTC, WDT, Timer and resets.

Numeric constants are those of MicroPython's esp32 port (reset causes follow ESP-IDF's mapping:
a `machine.reset()` is ESP_RST_SW, which MicroPython reports as SOFT_RESET).
"""
import select
import time as host_time
import types

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6
IDLE = 0
SLEEP = 2
DEEPSLEEP = 4

# Full-scale input of each attenuation when mapped linearly (ESP32 datasheet ranges).
_ATTEN_FULL_SCALE_UV = (950_000, 1_250_000, 1_750_000, 2_450_000)
# One ADC.read() from MicroPython on an ESP32 takes about 40 us (conversion plus call
# overhead); the emulated read takes the same virtual time, so two channels read back to back
# are really sampled that far apart, as the board file's skew_us says.
ADC_READ_NS = 40_000
_ADC_PINS = frozenset((32, 33, 34, 35, 36, 37, 38, 39, 0, 2, 4, 12, 13, 14, 15, 25, 26, 27))
_UART_PARITY = {None: "N", 0: "E", 1: "O"}


def build(board, runtime):
    m = types.ModuleType("machine")
    for name in ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET",
                 "PIN_WAKE", "EXT0_WAKE", "EXT1_WAKE", "TIMER_WAKE", "TOUCHPAD_WAKE", "ULP_WAKE",
                 "IDLE", "SLEEP", "DEEPSLEEP"):
        setattr(m, name, globals()[name])
    state = {"freq": 160_000_000, "irq": True}

    def reset():
        board.hard_reset(SOFT_RESET)

    def soft_reset():
        board.soft_reset()

    def reset_cause():
        return board.reset_cause

    def unique_id():
        return board.mac

    def freq(hz=None):
        if hz is None:
            return state["freq"]
        if hz not in (20_000_000, 40_000_000, 80_000_000, 160_000_000, 240_000_000):
            raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
        state["freq"] = hz
        return None

    def idle():
        board.clock.wait(0.001)

    def lightsleep(time_ms=None):
        board.clock.sleep((time_ms or 0) / 1000)

    def deepsleep(time_ms=None):
        board.deepsleep(time_ms)

    def disable_irq():
        was, state["irq"] = state["irq"], False
        return was

    def enable_irq(was=True):
        state["irq"] = bool(was)

    def wake_reason():
        return board.wake_reason

    for f in (reset, soft_reset, reset_cause, unique_id, freq, idle, lightsleep, deepsleep,
              disable_irq, enable_irq, wake_reason):
        setattr(m, f.__name__, f)
    m.sleep = lightsleep
    m.Pin = _pin_class(board)
    m.ADC = _adc_class(board, m.Pin)
    m.PWM = _pwm_class(board)
    m.UART = _uart_class(board)
    m.RTC = _rtc_class(board)
    m.WDT = _wdt_class(board)
    m.Timer = _timer_class(board)
    return m


def _pin_id(pin):
    pid = getattr(pin, "_id", pin)
    if not isinstance(pid, int) or not 0 <= pid <= 39:
        raise ValueError("invalid pin")
    return pid


def _pin_class(board):
    class Pin:
        IN = 1
        OUT = 3
        OPEN_DRAIN = 7
        PULL_UP = 2
        PULL_DOWN = 1
        PULL_HOLD = 4
        IRQ_RISING = 1
        IRQ_FALLING = 2
        WAKE_LOW = 4
        WAKE_HIGH = 5
        DRIVE_0 = 0
        DRIVE_1 = 1
        DRIVE_2 = 2
        DRIVE_3 = 3

        def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
            self._id = _pin_id(id)
            self._mode = None
            self._pull = None
            self.init(mode, pull, value=value, drive=drive, hold=hold)

        def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
            if mode != -1:
                if mode not in (None, self.IN, self.OUT, self.OPEN_DRAIN):
                    raise ValueError("invalid pin mode")
                if mode in (self.OUT, self.OPEN_DRAIN) and 34 <= self._id <= 39:
                    raise ValueError("pin can only be input")
                self._mode = mode
            if pull != -1:
                self._pull = pull
            if value is not None:
                board.pin_outputs[self._id] = 1 if value else 0
                board.output_changed(self._id)

        def value(self, x=None):
            if x is None:
                if self._mode in (self.OUT,) and self._id not in board.pin_inputs:
                    return board.pin_outputs.get(self._id, 0)
                if self._id in board.pin_inputs:
                    return board.pin_inputs[self._id]
                return 1 if self._pull == self.PULL_UP else 0
            board.pin_outputs[self._id] = 1 if x else 0
            board.output_changed(self._id)
            return None

        def __call__(self, x=None):
            return self.value(x)

        def on(self):
            self.value(1)

        def off(self):
            self.value(0)

        def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
            board.pin_irqs[self._id] = (handler, trigger, self)
            return None

        def mode(self, mode=None):
            if mode is None:
                return self._mode
            self.init(mode)
            return None

        def pull(self, pull=None):
            if pull is None:
                return self._pull
            self._pull = pull
            return None

        def __repr__(self):
            return f"Pin({self._id})"

    return Pin


def _adc_class(board, pin_class):
    class ADC:
        ATTN_0DB = 0
        ATTN_2_5DB = 1
        ATTN_6DB = 2
        ATTN_11DB = 3
        WIDTH_9BIT = 9
        WIDTH_10BIT = 10
        WIDTH_11BIT = 11
        WIDTH_12BIT = 12

        def __init__(self, pin, *, atten=0):
            self._pin = _pin_id(pin)
            if self._pin not in _ADC_PINS:
                raise ValueError("invalid Pin for ADC")
            self._atten = 0
            self._width = 12
            self.atten(atten)

        def init(self, *, atten=None):
            if atten is not None:
                self.atten(atten)

        def atten(self, atten):
            if atten not in (0, 1, 2, 3):
                raise ValueError("invalid atten")
            self._atten = atten

        def width(self, bits):
            if bits not in (9, 10, 11, 12):
                raise ValueError("invalid width")
            self._width = bits

        def _code12(self):
            analog = board.analog
            if analog is None:
                return 2048
            code = int(analog.read_code(self._pin, board.clock.now_s(), self._atten))
            board.clock.advance_ns(ADC_READ_NS)
            return max(0, min(4095, code))

        def read(self):
            return self._code12() >> (12 - self._width)

        def read_u16(self):
            raw = self._code12()
            return (raw << 4) | (raw >> 8)

        def read_uv(self):
            return self._code12() * _ATTEN_FULL_SCALE_UV[self._atten] // 4095

    return ADC


def _pwm_class(board):
    class PWM:
        def __init__(self, dest, *, freq=None, duty=None, duty_u16=None, duty_ns=None,
                     invert=False):
            self._pin = _pin_id(dest)
            self._freq = 5000
            self._duty_u16 = 0
            self.init(freq=freq, duty=duty, duty_u16=duty_u16, duty_ns=duty_ns)

        def init(self, *, freq=None, duty=None, duty_u16=None, duty_ns=None, invert=False):
            if freq is not None:
                self.freq(freq)
            if duty is not None:
                self.duty(duty)
            if duty_u16 is not None:
                self.duty_u16(duty_u16)
            if duty_ns is not None:
                self.duty_ns(duty_ns)
            self._publish()

        def _publish(self):
            board.pwm[self._pin] = (self._freq, self._duty_u16)
            board.output_changed(self._pin)

        def deinit(self):
            board.pwm.pop(self._pin, None)
            board.output_changed(self._pin)

        def freq(self, value=None):
            if value is None:
                return self._freq
            if not 1 <= value <= 40_000_000:
                raise ValueError("frequency out of range")
            self._freq = int(value)
            self._publish()
            return None

        def duty(self, value=None):
            if value is None:
                return self._duty_u16 * 1023 // 65535
            self._duty_u16 = max(0, min(1023, int(value))) * 65535 // 1023
            self._publish()
            return None

        def duty_u16(self, value=None):
            if value is None:
                return self._duty_u16
            self._duty_u16 = max(0, min(65535, int(value)))
            self._publish()
            return None

        def duty_ns(self, value=None):
            period_ns = 1_000_000_000 // self._freq
            if value is None:
                return self._duty_u16 * period_ns // 65535
            self._duty_u16 = max(0, min(65535, int(value) * 65535 // period_ns))
            self._publish()
            return None

    return PWM


PEER_WALL_S = 0.25  # real time a UART peer may take to start its reply
PEER_GAP_S = 0.003  # a pause this long (real time) ends the peer's reply


def _uart_class(board):
    class UART:
        """A UART; when the board's world wires it to a pty (a Modbus meter), it talks to it."""

        def __init__(self, id, baudrate=115200, **kwargs):
            if id not in (0, 1, 2):
                raise ValueError(f"UART({id}) does not exist")
            self._id = id
            self._port = None
            self._awaiting = False
            self._timeout_ms = 0
            self._rx = bytearray()
            self.init(baudrate, **kwargs)

        def init(self, baudrate=115200, bits=8, parity=None, stop=1, *, tx=None, rx=None,
                 rts=None, cts=None, txbuf=None, rxbuf=None, timeout=0, timeout_char=0,
                 invert=0, flow=0):
            if bits not in (5, 6, 7, 8) or parity not in _UART_PARITY or stop not in (1, 2):
                raise ValueError("invalid UART framing")
            if not 300 <= int(baudrate) <= 5_000_000:
                raise ValueError("invalid baudrate")
            self._timeout_ms = int(timeout)
            # Start bit, data bits, parity bit, stop bits: the line time of one byte.
            self._byte_ns = (1 + bits + (parity is not None) + stop) * 1_000_000_000 // int(baudrate)
            self.deinit()
            path = board.uart_ports.get(self._id)
            if path is not None and not isinstance(path, str):  # an in-process peer
                self._port = path.open(int(baudrate))
                board.closables.append(self._port)
            elif path:
                import serial  # pyserial: opening a pty sets raw mode and the line settings

                self._port = serial.Serial(path, int(baudrate), bytesize=bits,
                                           parity=_UART_PARITY[parity], stopbits=stop,
                                           timeout=0)
                board.closables.append(self._port)

        def deinit(self):
            if self._port is not None:
                self._port.close()
                self._port = None

        def _pull(self):
            if self._port is not None:
                waiting = self._port.in_waiting
                if waiting:
                    self._rx += self._port.read(waiting)

        def _wait_rx(self, nbytes):
            def ready(real_s):
                if self._port is None:
                    host_time.sleep(real_s)
                    return False
                r, _, _ = select.select([self._port.fileno()], [], [], real_s)
                self._pull()
                return len(self._rx) >= nbytes if nbytes else bool(r)
            self._pull()
            if (nbytes and len(self._rx) >= nbytes) or self._timeout_ms <= 0:
                return
            board.clock.wait(self._timeout_ms / 1000, ready)

        def _await_peer(self):
            """After a request, give the real peer (a pymodbus meter on a pty, answering in
            wall time) up to PEER_WALL_S of real time to reply, and collect the whole reply,
            without advancing the virtual clock: to a board sped up 900x the meter answers as
            promptly as a real one does. Without this, a 200 ms reply timeout would be a
            fraction of a real millisecond."""
            self._awaiting = False
            fd = self._port.fileno()
            deadline = host_time.monotonic() + PEER_WALL_S
            while not self._rx:
                left = deadline - host_time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return
                self._pull()
            while select.select([fd], [], [], PEER_GAP_S)[0]:  # the rest of the frame
                before = len(self._rx)
                self._pull()
                if len(self._rx) == before:
                    return

        def any(self):
            self._pull()
            if not self._rx and self._awaiting and self._port is not None:
                self._await_peer()
            return len(self._rx)

        def read(self, nbytes=None):
            self._wait_rx(nbytes or 0)
            if not self._rx:
                return None
            n = len(self._rx) if nbytes is None else min(nbytes, len(self._rx))
            data = bytes(self._rx[:n])
            del self._rx[:n]
            return data

        def readinto(self, buf, nbytes=None):
            data = self.read(len(buf) if nbytes is None else nbytes)
            if data is None:
                return None
            buf[: len(data)] = data
            return len(data)

        def readline(self):
            self._wait_rx(0)
            i = self._rx.find(b"\n")
            n = len(self._rx) if i < 0 else i + 1
            if not n:
                return None
            data = bytes(self._rx[:n])
            del self._rx[:n]
            return data

        def write(self, buf):
            data = bytes(buf)
            if self._port is not None:
                board.clock.catch_up()  # the peer must not see a board that ran ahead early
                self._port.write(data)
                self._awaiting = getattr(self._port, "awaits_reply", True)
            board.clock.advance_ns(len(data) * self._byte_ns)  # modelled cost: line time
            return len(data)

        def flush(self):
            if self._port is not None:
                self._port.flush()

        def txdone(self):
            return True

        def sendbreak(self):
            if self._port is not None:
                self._port.send_break(0.001)

    return UART


def _rtc_class(board):
    class RTC:
        def __init__(self, id=0):
            pass

        def init(self, datetime=None):
            if datetime is not None:
                self.datetime(datetime)

        def datetime(self, datetimetuple=None):
            if datetimetuple is None:
                now_s = board.clock.rtc_time_s()
                t = host_time.gmtime(int(now_s))
                us = int((now_s - int(now_s)) * 1_000_000)
                return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min,
                        t.tm_sec, us)
            if len(datetimetuple) < 7:
                raise ValueError("need (year, month, day, weekday, hours, minutes, seconds[, us])")
            y, mo, d, _wd, h, mi, s = (int(x) for x in datetimetuple[:7])
            us = int(datetimetuple[7]) if len(datetimetuple) > 7 else 0
            import calendar

            board.clock.set_rtc(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + us / 1e6)
            return None

        def memory(self, data=None):
            if data is None:
                return bytes(board.rtc_memory)
            if len(data) > 2048:
                raise ValueError("buffer too long")
            board.rtc_memory[:] = bytes(data)
            return None

    return RTC


def _wdt_class(board):
    class WDT:
        def __init__(self, id=0, timeout=5000):
            if timeout < 1:
                raise ValueError("WDT timeout too short")
            board.wdt_start(int(timeout))

        def feed(self):
            board.wdt_feed()

    return WDT


def _timer_class(board):
    class Timer:
        ONE_SHOT = 0
        PERIODIC = 1

        def __init__(self, id, *args, **kwargs):
            if not isinstance(id, int) or not -1 <= id <= 3:
                raise ValueError("invalid Timer number")
            self._id = id
            if args or kwargs:
                self.init(*args, **kwargs)

        def init(self, *, mode=PERIODIC, freq=None, period=None, callback=None, hard=False):
            if freq is not None:
                period_ms = 1000 / freq
            elif period is not None:
                period_ms = period
            else:
                period_ms = 1000
            if period_ms <= 0:
                raise ValueError("period must be > 0")
            if mode not in (0, 1):
                raise ValueError("invalid mode")
            board.timer_start(self, int(period_ms * 1_000_000), mode == 1, callback)

        def deinit(self):
            board.timer_stop(self)

        def value(self):
            return board.timer_value_ms(self)

    return Timer
