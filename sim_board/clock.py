"""One virtual clock per emulated board.

Why virtual: firmware that sleeps for a 15-minute interval must be testable in a second, and a
fleet of boards must not each need a CPU of its own. Virtual time advances only through waits
(sleeps, socket and serial waits, the asyncio selector); computing is free. Each wait is paced
against the wall clock by the speed factor: a board ahead of `wall x speed` really sleeps, a board
behind runs flat out and `behind_s` says by how much.

Monotonic time (ticks) and the board's calendar (RTC) are separate: a clock jump moves the RTC
only, as on a real ESP32 where NTP or a user can set the RTC while ticks keep counting.
"""
import math
import threading
import time

# What a freshly powered ESP32's RTC reads: 2000-01-01 00:00:00 UTC (epoch 1970, as MicroPython
# on ESP32 uses since v1.22).
RTC_POWER_ON_EPOCH_S = 946_684_800
# Longest real wait in one piece: bounds how late a Ctrl-C or an injected fault is noticed while
# a board waits on a socket (other waits are woken at once).
_SLICE_S = 0.1
# How far a board may run ahead of `wall x speed` in a short sleep without really sleeping.
# A sampling loop sleeps ~2 ms between conversions; waking a thread 500 times a second per
# board costs more than the firmware's own work, so short sleeps are paid in one real wait
# once the lead is used up. Anything a peer can see (a socket or UART write) first pays the
# lead back (`catch_up`), so peers never see a board early.
LEAD_NS = 20_000_000


class VirtualClock:
    """Virtual monotonic nanoseconds since power-on, paced by `speed` against the wall clock.

    `on_advance(now_ns)` is called after every advance (the board uses it for watchdogs and
    timed faults); it may raise to stop the firmware (power cut, watchdog reset).
    """

    def __init__(self, speed=1.0, true_epoch_s=None, wall=time.monotonic):
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._wall = wall
        self._now_ns = 0
        self._anchor_wall_s = wall()
        self._anchor_ns = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # True time of the world at virtual 0 (what an NTP server would say).
        self.true_epoch_s = time.time() if true_epoch_s is None else float(true_epoch_s)
        self.rtc_offset_s = RTC_POWER_ON_EPOCH_S - self.true_epoch_s
        self.on_advance = None
        self.next_deadline_ns = None
        self._waiting_until_ns = None
        self.lead_ns = LEAD_NS

    # ----- reading -----
    def now_ns(self):
        return self._now_ns

    def now_s(self):
        return self._now_ns / 1e9

    def true_time_s(self):
        """What a correct wall clock in the simulated world reads now (seconds since 1970)."""
        return self.true_epoch_s + self._now_ns / 1e9

    def rtc_time_s(self):
        """What the board's RTC reads now (seconds since 1970)."""
        return self.true_time_s() + self.rtc_offset_s

    def set_rtc(self, epoch_s):
        self.rtc_offset_s = float(epoch_s) - self.true_time_s()

    def jump_rtc(self, delta_s):
        """Fault: the RTC jumps by `delta_s` seconds (ticks are unaffected)."""
        self.rtc_offset_s += float(delta_s)

    def reset_rtc(self):
        """Power-on: the RTC starts again at 2000-01-01."""
        self.rtc_offset_s = RTC_POWER_ON_EPOCH_S - self.true_time_s()

    def set_speed(self, speed):
        """Change the pace from now on (virtual time does not jump)."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        if float(speed) != self.speed:
            self._anchor_wall_s = self._wall()
            self._anchor_ns = self._now_ns
            self.speed = float(speed)

    def behind_s(self):
        """How many virtual seconds the board lags behind `wall x speed` (0 when on time)."""
        target_ns = self._anchor_ns + (self._wall() - self._anchor_wall_s) * self.speed * 1e9
        # A board paced in a wait is on time up to the end of that wait step.
        done_ns = max(self._now_ns, self._waiting_until_ns or 0)
        return max(0.0, (target_ns - done_ns) / 1e9)

    # ----- advancing -----
    def advance_ns(self, delta_ns):
        """Model a cost: move virtual time forward without waiting."""
        if delta_ns < 0:
            raise ValueError("virtual time cannot go backwards")
        self._set_now(self._now_ns + int(delta_ns))

    def _set_now(self, now_ns):
        if now_ns > self._now_ns:
            self._now_ns = now_ns
        if self.on_advance is not None:
            self.on_advance(self._now_ns)

    def _wall_due_s(self, target_ns):
        return self._anchor_wall_s + (target_ns - self._anchor_ns) / 1e9 / self.speed

    def wait(self, timeout_s, waiter=None):
        """Wait up to `timeout_s` virtual seconds (None: for ever).

        `waiter(real_timeout_s)` does the real waiting (a select, an event wait) and returns a
        truthy value when something happened early. Without it the wait is a plain sleep that
        `interrupt()` can end early. Returns the waiter's result. The wait stops at every
        deadline `next_deadline_ns()` reports (timers, watchdog, timed faults) so that
        `on_advance` sees them on time.
        """
        if timeout_s is not None and timeout_s < 0:
            timeout_s = 0
        # Round up: a wait that ends a nanosecond early makes an event loop spin on a zero wait.
        target_ns = None if timeout_s is None else self._now_ns + math.ceil(timeout_s * 1e9)
        while True:
            step_ns = target_ns
            deadline_ns = self.next_deadline_ns() if self.next_deadline_ns else None
            if deadline_ns is not None and (step_ns is None or deadline_ns < step_ns):
                step_ns = max(self._now_ns, deadline_ns)
            if step_ns is None:
                real_s = _SLICE_S
            else:
                # 0 when behind schedule: poll I/O once, then skip ahead.
                real_s = min(_SLICE_S, max(0.0, self._wall_due_s(step_ns) - self._wall()))
            self._waiting_until_ns = step_ns
            try:
                result = waiter(real_s) if waiter is not None else self._plain_wait(real_s)
            finally:
                self._waiting_until_ns = None
            projected_ns = self._anchor_ns + int(
                (self._wall() - self._anchor_wall_s) * self.speed * 1e9)
            # Virtual time follows the wall (x speed) but never passes the step's end; a board
            # behind schedule jumps straight to it.
            self._set_now(projected_ns if step_ns is None else min(projected_ns, step_ns))
            if result:
                return result
            if target_ns is not None and self._now_ns >= target_ns:
                return result

    def _plain_wait(self, real_s):
        if real_s <= 0:
            return False
        fired = self._wake.wait(real_s)
        if fired:
            self._wake.clear()
        return fired

    def interrupt(self):
        """Wake a plain wait early (Ctrl-C, power cut from another thread)."""
        self._wake.set()

    def _projected_ns(self):
        return self._anchor_ns + (self._wall() - self._anchor_wall_s) * self.speed * 1e9

    def catch_up(self):
        """Really wait until the wall (x speed) has caught up with a board that ran ahead.

        Called before anything a peer can observe, so that a short sleep taken early (see
        `sleep`) never makes the board act early in real time.
        """
        if self._now_ns > self._projected_ns():
            ahead_s = (self._now_ns - self._projected_ns()) / 1e9 / self.speed
            self._waiting_until_ns = self._now_ns
            try:
                self._plain_wait(ahead_s)
            finally:
                self._waiting_until_ns = None
            self._set_now(self._now_ns)  # an interrupt (power cut, Ctrl-C) is seen here

    def sleep(self, seconds):
        """Sleep `seconds` virtual seconds; an interrupt ends it early via `on_advance`.

        A short sleep that keeps the board within `lead_ns` of its schedule and crosses no
        deadline (timer, watchdog, timed fault) advances virtual time at once; the lead is
        paid back by the next real wait or by `catch_up`.
        """
        target_ns = self._now_ns + math.ceil(max(0, seconds) * 1e9)
        if target_ns - self._now_ns <= self.lead_ns:
            deadline_ns = self.next_deadline_ns() if self.next_deadline_ns else None
            if ((deadline_ns is None or deadline_ns > target_ns)
                    and target_ns <= self._projected_ns() + self.lead_ns):
                self._set_now(target_ns)
                return
        while self._now_ns < target_ns:
            self.wait((target_ns - self._now_ns) / 1e9)
