"""One door to the exchange: the matching engine is single-threaded, HTTP requests are not.

Two ways in, same interface (`call(fn)` runs `fn(exchange)` and returns its result):
- `LockedExchange(exchange)`: a lock around an exchange built elsewhere. Enough when its port's
  ledger connection may be used from any thread (PostgreSQL, or the in-memory port).
- `ExchangeWorker(factory)`: one thread owns the exchange, built by `factory()` inside that
  thread. SQLite connections may only be used by the thread that opened them, so a service on
  SQLite builds the exchange and its `LedgerPort` in the worker and sends every operation
  (HTTP orders, agent runs, interval closes) through `call`.
"""
import queue
import threading

from host_tools.api.errors import unavailable

_QUEUE_MAX = 1024
_CALL_TIMEOUT_S = 10.0


class LockedExchange:
    def __init__(self, exchange):
        self.exchange = exchange
        self._lock = threading.Lock()

    def call(self, fn, timeout_s=_CALL_TIMEOUT_S):
        if not self._lock.acquire(timeout=timeout_s):
            raise unavailable("exchange_busy", "the exchange is busy; retry")
        try:
            return fn(self.exchange)
        finally:
            self._lock.release()

    def close(self):
        pass


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn):
        self.fn = fn
        self.done = threading.Event()
        self.result = None
        self.error = None


class ExchangeWorker:
    """A thread that owns the exchange; `call` queues work and waits for its result.

    The queue is bounded: when it is full, or a call does not finish within its timeout, the
    caller gets a 503 (`ApiError`). A call that timed out still runs later: callers must only
    send operations that are safe to complete unobserved (every exchange command is, since each
    fill is its own ledger transaction and orders carry client ids for resubmission).
    """

    def __init__(self, factory, queue_max=_QUEUE_MAX):
        self._queue = queue.Queue(maxsize=queue_max)
        self._ready = threading.Event()
        self._startup_error = None
        self.exchange = None
        self._thread = threading.Thread(target=self._run, args=(factory,),
                                        name="energo-exchange", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def _run(self, factory):
        try:
            self.exchange = factory()
        except BaseException as exc:  # reported to the constructor's caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                item.result = item.fn(self.exchange)
            except BaseException as exc:  # handed to the waiting caller, re-raised there
                item.error = exc
            item.done.set()

    def call(self, fn, timeout_s=_CALL_TIMEOUT_S):
        if not self._thread.is_alive():
            raise unavailable("exchange_stopped", "the exchange is not running")
        item = _Call(fn)
        try:
            self._queue.put(item, timeout=timeout_s)
        except queue.Full:
            raise unavailable("exchange_busy", "the exchange is busy; retry") from None
        if not item.done.wait(timeout_s):
            raise unavailable("exchange_timeout", "the exchange did not answer in time")
        if item.error is not None:
            raise item.error
        return item.result

    def close(self, timeout_s=5.0):
        """Stop after the queued work; safe to call twice."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                return  # daemon thread: it ends with the process
            self._thread.join(timeout_s)


def as_gate(exchange):
    """An exchange, or anything with `call(fn)`, as a gate (None stays None)."""
    if exchange is None or hasattr(exchange, "call"):
        return exchange
    return LockedExchange(exchange)
