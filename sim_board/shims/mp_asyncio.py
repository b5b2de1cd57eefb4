"""MicroPython's `asyncio` on the board's virtual clock.

The simplest faithful approach: CPython's own event loop, with `time()` read from the board's
clock and the selector's wait going through the clock's pacing. Everything that schedules by
`loop.time()` (sleep, wait_for, call_later) is then virtual. MicroPython extras (`sleep_ms`,
`wait_for_ms`, `ThreadSafeFlag`) are added; on KeyboardInterrupt, like MicroPython, `run` does
not cancel the remaining tasks.
"""
import asyncio
import selectors
import types

_NAMES = ("CancelledError", "Event", "Lock", "Task", "TimeoutError", "create_task",
          "current_task", "gather", "open_connection", "sleep", "start_server", "wait_for",
          "StreamReader", "StreamWriter")


class _PacedSelector(selectors.DefaultSelector):
    def __init__(self, clock):
        super().__init__()
        self._clock = clock

    def select(self, timeout=None):
        events = []

        def ready(real_s):
            events[:] = super(_PacedSelector, self).select(real_s)
            return bool(events)

        self._clock.wait(timeout, ready)
        return events


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock, console):
        super().__init__(_PacedSelector(clock))
        self._clock = clock
        # Timers due within a microsecond are run together (the virtual clock is exact, so the
        # host's nanosecond resolution would only add rounding spins).
        self._clock_resolution = 1e-6
        self._console = console
        self.set_exception_handler(self._report)

    def _report(self, loop, context):
        """Like MicroPython: report a task's uncaught exception on the console. Tasks left
        pending when the board resets are simply gone, as in RAM."""
        exc = context.get("exception")
        if exc is None or not isinstance(exc, Exception):
            return  # the emulator stopping or resetting the board (Shutdown, HardReset): no report
        from sim_board.runtime import format_exception

        self._console.write_text("Task exception wasn't retrieved\n" + format_exception(exc))

    def time(self):
        return self._clock.now_s()


def build(board, runtime):
    m = types.ModuleType("asyncio")
    for name in _NAMES:
        setattr(m, name, getattr(asyncio, name))

    def get_event_loop():
        if runtime.loop is None or runtime.loop.is_closed():
            runtime.loop = _VirtualLoop(board.clock, board.console)
        return runtime.loop

    def new_event_loop():
        if runtime.loop is not None and not runtime.loop.is_running():
            runtime.loop.close()
        runtime.loop = None
        return get_event_loop()

    def run(coro):
        loop = get_event_loop()
        return loop.run_until_complete(coro)

    def sleep_ms(t):
        return asyncio.sleep(t / 1000)

    def wait_for_ms(aw, timeout):
        return asyncio.wait_for(aw, timeout / 1000)

    class ThreadSafeFlag:
        """An event that may be set from another thread or an interrupt handler."""

        def __init__(self):
            self._flag = False
            self._waiter = None
            self._loop = None

        def set(self):
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._set)
            else:
                self._flag = True

        def _set(self):
            self._flag = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

        def clear(self):
            self._flag = False

        async def wait(self):
            if not self._flag:
                self._loop = asyncio.get_running_loop()
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            self._flag = False

    for f in (get_event_loop, new_event_loop, run, sleep_ms, wait_for_ms):
        setattr(m, f.__name__, f)
    m.ThreadSafeFlag = ThreadSafeFlag
    return m
