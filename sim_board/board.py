"""An emulated ESP32: runs `boot.py` then `main.py` from its flash, then the REPL, and restarts
on resets and power cuts in the same process with fresh RAM (a new Runtime) and the same flash.

Each board runs its firmware in one thread of its own. Another thread (a serial endpoint, a test,
a fleet runner) talks to it only through `Console.feed`, `inject`, and `stop`; anything that must
happen in the firmware (Ctrl-C, a power cut at a time, a watchdog reset) is raised there from the
clock's `on_advance` hook, which runs at every virtual-time step.
"""
import ctypes
import hashlib
import json
import os
import random
import threading

from sim_board import faults as faults_mod
from sim_board.clock import VirtualClock
from sim_board.flash import DEFAULT_SIZE_BYTES, Flash, PowerCut
from sim_board.repl import Repl
from sim_board.runtime import Runtime, format_exception

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
_RESET_BANNERS = {PWRON_RESET: "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                  WDT_RESET: "rst:0x7 (TG0WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                  SOFT_RESET: "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                  DEEPSLEEP_RESET: "rst:0x5 (DEEPSLEEP_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                  HARD_RESET: "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"}
_SCHEDULE_DEPTH_MAX = 8  # MicroPython's default schedule queue
_BUSY_INTERRUPT_DELAY_S = 0.5
_EMULATOR_ERRORS_MAX = 3
_CONSOLE_RX_BYTES_MAX = 1024 * 1024
_WIFI_STAT_IDLE, _WIFI_STAT_CONNECTING, _WIFI_STAT_GOT_IP = 1000, 1001, 1010
_WIFI_STAT_NO_AP_FOUND, _WIFI_STAT_WRONG_PASSWORD = 201, 202


class SoftReset(BaseException):
    """Ctrl-D, machine.soft_reset() or sys.exit(): RAM is cleared, the chip keeps running."""


class HardReset(BaseException):
    """The chip restarts (machine.reset(), watchdog, deep-sleep wake) with `cause`."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


class Shutdown(BaseException):
    """The emulator is stopping this board."""


class BoardConfigError(ValueError):
    """A board file the emulator cannot use; the message names the key."""


def load_board_config(path):
    """Read and check a board JSON file: at least {"name": str, "role": str}."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise BoardConfigError(f"cannot read board file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BoardConfigError(f"board file {path} is not JSON: {exc}") from None
    return check_board_config(data)


def check_board_config(data):
    if not isinstance(data, dict):
        raise BoardConfigError("board: must be a JSON object")
    for key in ("name", "role"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise BoardConfigError(f"board.{key}: must be a non-empty string")
    for key in ("pins", "uart", "adc"):
        if key in data and not isinstance(data[key], (dict, list)):
            raise BoardConfigError(f"board.{key}: must be an object or a list")
    return data


def attach_world(board, scenario):
    """Let the simulated world wire ADCs and meters to the board; returns what it attached."""
    if "world" not in scenario:
        return None
    try:
        from sim_board import world
    except ImportError:
        raise ValueError("this scenario has a world section but sim_board.world is missing") \
            from None
    return world.attach(board, scenario["world"])


def _fault_ns(fault):
    """A timed fault's instant in virtual nanoseconds. The one conversion both the wait's
    deadline and the check that applies the fault use: an `at_s` of n / 1e9 multiplies back to
    a float a hair above n now and then (~3 % of instants), and a deadline truncated to n with
    a check against the float would never fire, the board's wait stepping to n for ever."""
    return round(fault.at_s * 1e9)


def _nvs_value(kind, value):
    if kind == "blob" and isinstance(value, str):
        return kind, bytes.fromhex(value)
    if kind == "i32" and isinstance(value, int) and -(2**31) <= value < 2**31:
        return kind, value
    raise ValueError(f"bad entry {kind!r}")


class Nvs:
    """The board's NVS partition, kept in a JSON file beside (not inside) its flash directory."""

    def __init__(self, path):
        self.path = path
        self._data = {}
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    raw = json.load(f)
                for ns, keys in raw.items():
                    self._data[ns] = {k: _nvs_value(kind, v) for k, (kind, v) in keys.items()}
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"NVS file {path} is damaged: {exc}") from None

    def get(self, ns, key):
        return self._data.get(ns, {}).get(key)

    def commit(self, ns, changes):
        space = self._data.setdefault(ns, {})
        for key, value in changes.items():
            if value[0] is None:
                space.pop(key, None)
            else:
                space[key] = value
        raw = {n: {k: [kind, v.hex() if kind == "blob" else v] for k, (kind, v) in keys.items()}
               for n, keys in self._data.items()}
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(raw, f, sort_keys=True)
        os.replace(tmp, self.path)


class Wifi:
    """The station interface and the access point it talks to."""

    def __init__(self, board, ssid=None, password=None, rssi_dbm=-60):
        self.board = board
        self.ap_ssid, self.ap_password = ssid, password
        self.rssi_dbm = rssi_dbm
        self.active = False
        self.ssid = ""
        self.static = None
        self._wanted = None  # (ssid, key) after connect()
        self._ready_at_s = 0.0
        self.down_windows = []  # (start_s, end_s)
        self.was_up = False

    def connect(self, ssid, key, ready_at_s):
        self._wanted = (ssid, key)
        self.ssid = ssid or ""
        self._ready_at_s = ready_at_s

    def disconnect(self):
        self._wanted = None
        self.board.abort_sockets()

    def ap_present(self):
        now_s = self.board.clock.now_s()
        return not any(start <= now_s < end for start, end in self.down_windows)

    def status(self):
        if not self.active or self._wanted is None:
            return _WIFI_STAT_IDLE
        ssid, key = self._wanted
        if not self.ap_present() or (self.ap_ssid is not None and ssid != self.ap_ssid):
            return _WIFI_STAT_NO_AP_FOUND
        if self.ap_password is not None and key != self.ap_password:
            return _WIFI_STAT_WRONG_PASSWORD
        if self.board.clock.now_s() < self._ready_at_s:
            return _WIFI_STAT_CONNECTING
        return _WIFI_STAT_GOT_IP

    def link_up(self):
        return self.status() == _WIFI_STAT_GOT_IP

    def ifconfig(self):
        if self.static:
            return self.static
        if not self.link_up():
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return (f"192.168.4.{2 + self.board.mac[-1] % 250}", "255.255.255.0",
                "192.168.4.1", "192.168.4.1")

    def note_down_window(self, start_s, end_s):
        self.down_windows.append((start_s, end_s))
        # After the AP is back the station reconnects, which takes a moment.
        self._ready_at_s = max(self._ready_at_s, end_s + 1.5)


class Console:
    """The board's UART0: bytes in from a serial endpoint, bytes out to every sink."""

    def __init__(self, board):
        self.board = board
        self.interrupt_char = 3
        self.sinks = []
        self._in = bytearray()
        self._cond = threading.Condition()
        self.stdout = _ConsoleStream(self)
        self.stdin = self.stdout

    def feed(self, data):
        """Bytes arriving from the host; Ctrl-C while code runs interrupts it instead.

        Input beyond the receive buffer is dropped, as a UART's overflowing FIFO drops it.
        """
        with self._cond:
            for b in bytes(data):
                if b == self.interrupt_char and self.board.executing:
                    self.board.keyboard_interrupt()
                    continue
                if len(self._in) < _CONSOLE_RX_BYTES_MAX:
                    self._in.append(b)
            self._cond.notify_all()

    def clear_input(self):
        with self._cond:
            self._in.clear()

    def write(self, data):
        for sink in list(self.sinks):
            try:
                sink(bytes(data))
            except OSError:
                pass

    def write_text(self, text):
        self.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

    def read_byte(self):
        """Next input byte; waits on the virtual clock (watchdog and faults stay live)."""
        def ready(real_s):
            with self._cond:
                if not self._in:
                    self._cond.wait(real_s)
                return bool(self._in)

        while True:
            with self._cond:
                if self._in:
                    b = self._in[0]
                    del self._in[0]
                    return b
            self.board.clock.wait(None, ready)

    def wake(self):
        with self._cond:
            self._cond.notify_all()

    def readline_echo(self):
        line = bytearray()
        while True:
            b = self.read_byte()
            if b in (10, 13):
                self.write(b"\r\n")
                return line.decode(errors="replace")
            if b in (8, 127):
                if line:
                    line.pop()
                    self.write(b"\x08 \x08")
                continue
            line.append(b)
            self.write(bytes([b]))


class _ConsoleStream:
    """sys.stdout / sys.stdin of the board."""

    def __init__(self, console):
        self._console = console

    def write(self, data):
        if isinstance(data, str):
            self._console.write_text(data)
        else:
            self._console.write(data)
        return len(data)

    def read(self, n=1):
        return "".join(chr(self._console.read_byte()) for _ in range(n))

    def readline(self):
        return self._console.readline_echo() + "\n"

    def flush(self):
        return None

    @property
    def buffer(self):
        return self


class Board:
    """One emulated ESP32."""

    def __init__(self, flash_dir, config=None, scenario=None, speed=None, seed=None,
                 echo=None):
        self.config = check_board_config(config or {"name": "board", "role": "meter"})
        scenario = faults_mod.parse_scenario(scenario or {})
        self.name = self.config["name"]
        # No seed: fresh entropy, so a restarted emulator never repeats its nonces. A seed makes
        # the board's randomness (keys, nonces) reproducible; it is mixed with the board name
        # so that two boards never share a stream.
        self.seed = seed if seed is not None else scenario.get("seed")
        seed_text = f"{self.name}/{self.seed if self.seed is not None else os.urandom(16).hex()}"
        self.speed = speed if speed is not None else scenario.get("speed", 1.0)
        self.clock = VirtualClock(self.speed, scenario.get("start_epoch_s"))
        self.clock.on_advance = self._on_advance
        self.clock.next_deadline_ns = self._next_deadline_ns
        self.flash = Flash(flash_dir, scenario.get("flash_size_bytes", DEFAULT_SIZE_BYTES))
        self.flash.rtc_s = self.clock.rtc_time_s
        self.flash.on_cut = self._flash_cut
        self.nvs = Nvs(os.path.abspath(flash_dir).rstrip(os.sep) + ".nvs.json")
        digest = hashlib.sha256(self.name.encode()).digest()  # the MAC is fixed per board name
        self.mac = bytes([0x24, 0x0A, 0xC4]) + digest[:3]
        self._rng = random.Random(seed_text)
        wifi = scenario.get("wifi", {})
        self.wifi = Wifi(self, wifi.get("ssid"), wifi.get("password"), wifi.get("rssi_dbm", -60))
        self.ntp_offset_s = scenario.get("ntp_offset_s", 0.0)
        self.uart_ports = dict(scenario.get("uart_ports", {}))
        self.scenario = scenario
        self.analog = None  # set by the world: read_code(pin, t_s, atten) -> 12-bit code
        self.console = Console(self)
        if echo is not None:
            self.console.sinks.append(echo)
        self.repl = Repl(self)
        self.reset_cause = PWRON_RESET
        self.wake_reason = 0
        self.rtc_memory = bytearray()
        self.boot_count = 0
        self.executing = False
        self.runtime = None
        # Hardware state the world can observe and drive.
        self.pin_outputs, self.pin_inputs, self.pin_irqs, self.pwm = {}, {}, {}, {}
        # The world's reactions: called with the GPIO the firmware just drove (None: all of
        # them, at a reset), and per extra fault kind (sim_board.pilot_line registers both).
        self.output_hooks, self.fault_handlers = [], {}
        self.sockets, self.closables = set(), []
        self._wdt_timeout_ns = None
        self._wdt_deadline_ns = None
        self._timers = {}
        self._scheduled = []
        self._pending = None  # an exception (factory) to raise in the firmware thread
        self._kbd_pending = False
        self._exec_generation = 0
        self._fault_inbox = []
        self._timed_faults = sorted((f for f in scenario["faults"] if f.at_s is not None),
                                    key=lambda f: f.at_s)
        self._write_faults = sorted((f for f in scenario["faults"] if f.at_write is not None),
                                    key=lambda f: f.at_write)
        self._arm_write_fault()
        self.thread = None
        self.off_s = 0.0
        self.events = []  # (virtual seconds, what) for tests and reports

    # ----- life cycle -----
    def start(self):
        self.thread = threading.Thread(target=self._thread_main, name=f"board-{self.name}",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout_s=5.0):
        self.inject(Shutdown)
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _thread_main(self):
        errors_in_a_row = 0
        while True:
            self.boot_count += 1
            self.events.append((self.clock.now_s(), f"boot cause={self.reset_cause}"))
            self.runtime = Runtime(self)
            self.clock.set_speed(self.speed)
            try:
                try:
                    self._run_file("boot.py")
                    if self.repl.friendly:
                        self._run_file("main.py")
                    # At the REPL a person or mpremote is in charge, in real time: a watchdog
                    # the firmware left running gives them its real-time window, not 1/speed.
                    self.clock.set_speed(1.0)
                    self.repl.run(self.runtime)
                finally:
                    self._teardown()
            except SoftReset:
                self._run_atexit()
                # A soft reset runs the finalizers of open files, which flushes them.
                try:
                    self.flash.sync()
                except BaseException:
                    self.flash.power_lost()
                self.console.write(b"MPY: soft reboot\r\n")
            except HardReset as reset:
                self.flash.power_lost()  # a chip reset: cached file data is lost
                self._hardware_reset(reset.cause)
            except PowerCut:
                self._power_off()
            except Shutdown:
                return
            except BaseException as exc:  # an emulator bug must not kill the board silently
                self.console.write_text("emulator error: " + format_exception(exc))
                errors_in_a_row += 1
                if errors_in_a_row >= _EMULATOR_ERRORS_MAX:
                    self.console.write_text("emulator: board halted after repeated errors\n")
                    return
                self._hardware_reset(HARD_RESET)
                continue
            errors_in_a_row = 0

    def _run_file(self, name):
        if os.path.isfile(self.flash.host_path(name)):
            self.console.write_text(self.run_code(lambda: self.runtime.exec_file(name)))

    def _run_atexit(self):
        """MicroPython calls the sys.atexit function on a soft reset."""
        func = getattr(self.runtime, "atexit", None)
        if func is not None:
            self.runtime.atexit = None
            try:
                self.console.write_text(self.run_code(func))
            except (SoftReset, HardReset, PowerCut):
                pass

    def run_code(self, run):
        """Run firmware or REPL code; returns its traceback text ('' when it finished).

        Ctrl-C may interrupt it; resets and power cuts pass through; sys.exit() soft-resets,
        as in MicroPython's pyexec.
        """
        self._exec_generation += 1
        self.executing = True
        try:
            run()
            return ""
        except SystemExit:
            raise SoftReset() from None
        except (Exception, KeyboardInterrupt) as exc:
            self._pending_check()  # firmware that swallowed a reset does not get to keep running
            return format_exception(exc)
        finally:
            self.executing = False
            self._kbd_pending = False

    def _teardown(self):
        # The RAM is gone: this run's tasks never run again. The event loop is left to the
        # garbage collector (which closes it) so that a dropped task finalized later does not
        # trip over a closed loop; its code can no longer reach flash or console.
        self.runtime.alive = False
        for s in list(self.sockets):
            try:
                s._s.close()
            except OSError:
                pass
        self.sockets.clear()
        for c in self.closables:
            try:
                c.close()
            except Exception:
                pass
        self.closables.clear()
        self._timers.clear()
        self._scheduled.clear()
        self.pin_irqs.clear()
        self.executing = False
        self._kbd_pending = False

    def _hardware_reset(self, cause):
        self._pending = None
        self.reset_cause = cause
        self.repl.friendly = True
        self.console.clear_input()
        self._wdt_timeout_ns = self._wdt_deadline_ns = None
        self.pin_outputs.clear()
        self.pwm.clear()
        self.output_changed(None)
        self.wifi.active = False
        self.wifi.disconnect()
        self.console.write_text("\n" + _RESET_BANNERS.get(cause, "rst:0x0") + "\n")

    def _power_off(self):
        """Off for the fault's off time (nothing runs, nothing is counted), then power on."""
        self._pending = None
        off_s, self.off_s = self.off_s, 0.0
        self.flash.power_lost()
        self.events.append((self.clock.now_s(), f"power off {off_s}s"))
        self.pin_outputs.clear()  # unpowered: relays drop, the pilot oscillator stops
        self.pwm.clear()
        self.output_changed(None)
        hooks = self.clock.on_advance, self.clock.next_deadline_ns
        self.clock.on_advance = self.clock.next_deadline_ns = None
        try:
            self.clock.sleep(off_s)
        finally:
            self.clock.on_advance, self.clock.next_deadline_ns = hooks
        self.clock.reset_rtc()
        self.rtc_memory.clear()
        self._hardware_reset(PWRON_RESET)

    # ----- requests from firmware (firmware thread) -----
    def hard_reset(self, cause):
        self._pending = lambda: HardReset(cause)
        raise HardReset(cause)

    def soft_reset(self):
        raise SoftReset()

    def deepsleep(self, time_ms):
        if time_ms:
            self.clock.sleep(time_ms / 1000)
        self.wake_reason = 4 if time_ms else 0
        self.hard_reset(DEEPSLEEP_RESET)

    def random_seed(self):
        """A seed for the board's `random` module, drawn from its stream."""
        return self._rng.getrandbits(64)

    def abort_sockets(self):
        """The link went down: lwIP aborts every open connection."""
        for sock in list(self.sockets):
            sock._abort()
        self.sockets.clear()

    def urandom(self, n):
        return bytes(self._rng.getrandbits(8) for _ in range(n))

    def schedule(self, func, arg):
        if len(self._scheduled) >= _SCHEDULE_DEPTH_MAX:
            return False
        self._scheduled.append((func, arg))
        return True

    def wdt_start(self, timeout_ms):
        self._wdt_timeout_ns = timeout_ms * 1_000_000
        self.wdt_feed()

    def wdt_feed(self):
        if self._wdt_timeout_ns is not None:
            self._wdt_deadline_ns = self.clock.now_ns() + self._wdt_timeout_ns

    def timer_start(self, timer, period_ns, periodic, callback):
        self._timers[id(timer)] = [self.clock.now_ns() + period_ns, period_ns, periodic,
                                   callback, timer]

    def timer_stop(self, timer):
        self._timers.pop(id(timer), None)

    def timer_value_ms(self, timer):
        entry = self._timers.get(id(timer))
        return 0 if entry is None else max(0, (entry[0] - self.clock.now_ns()) // 1_000_000)

    def output_changed(self, pin):
        for hook in self.output_hooks:
            hook(pin)

    # ----- requests from other threads -----
    def set_pin(self, pin, level):
        """The world drives an input pin; a matching edge schedules the pin's irq handler."""
        level = 1 if level else 0
        old = self.pin_inputs.get(pin, 0)
        self.pin_inputs[pin] = level
        irq = self.pin_irqs.get(pin)
        if irq is None or irq[0] is None or old == level:
            return
        handler, trigger, pin_obj = irq
        if trigger & (1 if level else 2):  # IRQ_RISING = 1, IRQ_FALLING = 2
            self.schedule(handler, pin_obj)
            self._wake()

    def inject(self, exc_factory):
        """Raise `exc_factory()` in the firmware thread at its next clock step."""
        self._pending = exc_factory
        self._wake()

    def keyboard_interrupt(self):
        self._kbd_pending = True
        self._wake()
        timer = threading.Timer(_BUSY_INTERRUPT_DELAY_S, self._force_interrupt,
                                (self._exec_generation,))
        timer.daemon = True
        timer.start()

    def power_cut(self, off_s=1.0):
        """Cut the power now (from any thread); the board is off for `off_s` virtual seconds."""
        self.add_fault({"kind": "power_cut", "at_s": self.clock.now_s(), "off_s": off_s})

    def add_fault(self, entry):
        """Schedule a fault given as a scenario entry (see sim_board.faults); `at_s` is virtual
        seconds since start, `at_write` counts flash writes since start. Raises ScenarioError."""
        fault = faults_mod.parse_fault(entry, "fault")
        if fault.at_write is not None and fault.at_write <= self.flash.write_count:
            raise faults_mod.ScenarioError("fault.at_write: that write already happened")
        self._fault_inbox.append(fault)  # merged by the firmware thread at its next step
        self._wake()

    def _merge_faults(self):
        while self._fault_inbox:
            fault = self._fault_inbox.pop(0)
            if fault.at_write is not None:
                self._write_faults = sorted(self._write_faults + [fault],
                                            key=lambda f: f.at_write)
                self._arm_write_fault()
            else:
                self._timed_faults = sorted(self._timed_faults + [fault], key=lambda f: f.at_s)

    def _wake(self):
        self.clock.interrupt()
        self.console.wake()
        loop = getattr(self.runtime, "loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: None)
            except RuntimeError:
                pass

    def _force_interrupt(self, generation):
        """Firmware spinning without waiting: raise KeyboardInterrupt asynchronously, but only
        into the same code the Ctrl-C was meant for."""
        if (self._kbd_pending and self.executing and generation == self._exec_generation
                and self.thread is not None):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread.ident), ctypes.py_object(KeyboardInterrupt))

    # ----- the clock hook (firmware thread) -----
    def _pending_check(self):
        if self._pending is not None:
            raise self._pending()

    def _next_deadline_ns(self):
        if self._fault_inbox:
            self._merge_faults()
        deadline_ns = self._wdt_deadline_ns
        if self._timed_faults:
            fault_ns = _fault_ns(self._timed_faults[0])
            deadline_ns = fault_ns if deadline_ns is None else min(deadline_ns, fault_ns)
        for entry in self._timers.values():
            deadline_ns = entry[0] if deadline_ns is None else min(deadline_ns, entry[0])
        return deadline_ns

    def _on_advance(self, now_ns):
        self._pending_check()
        if self._kbd_pending and self.executing:
            self._kbd_pending = False
            raise KeyboardInterrupt()
        while self._timed_faults and _fault_ns(self._timed_faults[0]) <= now_ns:
            self._apply_fault(self._timed_faults.pop(0))
        if self._wdt_deadline_ns is not None and now_ns >= self._wdt_deadline_ns:
            self._wdt_deadline_ns = None
            self.hard_reset(WDT_RESET)
        if self._timers or self._scheduled:  # this runs on every ADC read: skip the empty case
            self._run_callbacks(now_ns)

    def _run_callbacks(self, now_ns):
        for entry in list(self._timers.values()):
            if entry[0] <= now_ns:
                if entry[2]:
                    entry[0] += entry[1]
                else:
                    self._timers.pop(id(entry[4]), None)
                if entry[3] is not None:
                    self._scheduled.append((entry[3], entry[4]))
        while self._scheduled:
            func, arg = self._scheduled.pop(0)
            try:
                func(arg)
            except Exception as exc:  # MicroPython reports it and carries on
                self.console.write_text("Uncaught exception in IRQ callback handler\n"
                                        + format_exception(exc))

    def _apply_fault(self, fault):
        self.events.append((self.clock.now_s(), fault.kind))
        if fault.kind in ("power_cut", "brownout"):
            self.off_s = fault.off_s
            self._pending = PowerCut
            self.flash.power_lost()
            raise PowerCut()
        if fault.kind == "wifi_down":
            now_s = self.clock.now_s()
            self.wifi.note_down_window(now_s, now_s + fault.for_s)
            self.abort_sockets()
        elif fault.kind == "clock_jump":
            self.clock.jump_rtc(fault.by_s)
        elif fault.kind in self.fault_handlers:
            self.fault_handlers[fault.kind](fault)

    def _arm_write_fault(self):
        if self._write_faults:
            fault = self._write_faults[0]
            self.flash.cut_at_write = fault.at_write - self.flash.write_count

    def _flash_cut(self):
        fault = self._write_faults.pop(0) if self._write_faults else None
        self.events.append((self.clock.now_s(), "power_cut at flash write"))
        self.off_s = fault.off_s if fault else 1.0
        self._pending = PowerCut
        self._arm_write_fault()
