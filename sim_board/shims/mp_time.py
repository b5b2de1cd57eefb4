"""MicroPython's `time` on the board's virtual clock (ticks wrap at 2**30 as on the device)."""
import calendar
import time as host_time
import types

_TICKS_PERIOD = 1 << 30
_TICKS_MASK = _TICKS_PERIOD - 1
_TICKS_HALF = _TICKS_PERIOD // 2


def _tuple8(secs):
    t = host_time.gmtime(int(secs))
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday, t.tm_yday)


def build(board, runtime):
    clock = board.clock
    m = types.ModuleType("time")

    def time():
        return int(clock.rtc_time_s())

    def time_ns():
        return int(clock.rtc_time_s() * 1e9)

    def ticks_ms():
        return (clock.now_ns() // 1_000_000) & _TICKS_MASK

    def ticks_us():
        return (clock.now_ns() // 1_000) & _TICKS_MASK

    def ticks_cpu():
        return ticks_us()

    def ticks_add(ticks, delta):
        return (ticks + delta) & _TICKS_MASK

    def ticks_diff(ticks1, ticks2):
        return ((ticks1 - ticks2 + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF

    def sleep(seconds):
        clock.sleep(seconds)

    def sleep_ms(ms):
        clock.sleep(ms / 1000)

    def sleep_us(us):
        clock.sleep(us / 1_000_000)

    def gmtime(secs=None):
        return _tuple8(clock.rtc_time_s() if secs is None else secs)

    def localtime(secs=None):
        return gmtime(secs)

    def mktime(t):
        if len(t) < 6:
            raise TypeError("mktime needs (year, month, mday, hour, minute, second, ...)")
        return calendar.timegm(tuple(int(x) for x in t[:6]) + (0, 0, 0))

    for f in (time, time_ns, ticks_ms, ticks_us, ticks_cpu, ticks_add, ticks_diff, sleep,
              sleep_ms, sleep_us, gmtime, localtime, mktime):
        setattr(m, f.__name__, f)
    return m
