"""MicroPython's `sys`, `gc` and `micropython` for one firmware run."""
import types

from sim_board.runtime import format_exception

VERSION = "3.4.0; MicroPython v1.29.0 on 2026-01-01"
_GC_HEAP_BYTES = 110_000  # what a plain ESP32 (no PSRAM) leaves to the Python heap


class _Implementation(tuple):
    """sys.implementation: a tuple with attributes, like MicroPython's."""

    def __new__(cls):
        return super().__new__(cls, ("micropython", (1, 29, 0, ""), 0x0A06))

    name = property(lambda self: self[0])
    version = property(lambda self: self[1])
    _machine = "Generic ESP32 module with ESP32"
    _mpy = property(lambda self: self[2])


def build_sys(board, runtime):
    m = types.ModuleType("sys")
    m.path = runtime.path
    m.modules = runtime.modules
    m.argv = []
    m.byteorder = "little"
    m.maxsize = 2**31 - 1
    m.platform = "esp32"
    m.version = VERSION
    m.version_info = (3, 4, 0)
    m.implementation = _Implementation()
    m.ps1 = ">>> "
    m.ps2 = "... "
    m.stdin = board.console.stdin
    m.stdout = board.console.stdout
    m.stderr = board.console.stdout

    def exit(retval=0):
        raise SystemExit(retval)

    def print_exception(exc, file=None, /):
        (file or board.console.stdout).write(format_exception(exc))

    def exc_info():
        import sys as host_sys

        return host_sys.exc_info()

    def atexit(func):
        runtime.atexit = func
        return None

    for f in (exit, print_exception, exc_info, atexit):
        setattr(m, f.__name__, f)
    return m


def build_gc(board, runtime):
    m = types.ModuleType("gc")
    state = {"enabled": True, "threshold": -1}

    def collect():
        return None

    def enable():
        state["enabled"] = True

    def disable():
        state["enabled"] = False

    def isenabled():
        return state["enabled"]

    def mem_alloc():
        return min(_GC_HEAP_BYTES - 4096, 20_000 + 200 * len(runtime.modules))

    def mem_free():
        return _GC_HEAP_BYTES - mem_alloc()

    def threshold(amount=None):
        if amount is None:
            return state["threshold"]
        state["threshold"] = int(amount)
        return None

    for f in (collect, enable, disable, isenabled, mem_alloc, mem_free, threshold):
        setattr(m, f.__name__, f)
    return m


def build_micropython(board, runtime):
    m = types.ModuleType("micropython")

    def const(expr):
        return expr

    def native(func):
        return func

    def opt_level(level=None):
        if level is None:
            return runtime.opt_level
        runtime.opt_level = int(level)
        return None

    def alloc_emergency_exception_buf(size):
        return None

    def mem_info(verbose=None):
        used = runtime.modules and len(runtime.modules)
        board.console.write_text(
            f"stack: 736 out of 15360\nGC: total: {_GC_HEAP_BYTES}, used: {20_000 + 200 * used}, "
            f"free: {_GC_HEAP_BYTES - 20_000 - 200 * used}\n")

    def qstr_info(verbose=None):
        board.console.write_text("qstr pool: n_pool=1, n_qstr=0, n_str_data_bytes=0\n")

    def stack_use():
        return 736

    def kbd_intr(chr):
        board.console.interrupt_char = int(chr)

    def schedule(func, arg):
        if not board.schedule(func, arg):
            raise RuntimeError("schedule queue full")

    def heap_lock():
        return 0

    def heap_unlock():
        return 0

    for f in (const, native, opt_level, alloc_emergency_exception_buf, mem_info, qstr_info,
              stack_use, kbd_intr, schedule, heap_lock, heap_unlock):
        setattr(m, f.__name__, f)
    m.viper = native
    return m
