# The record counter (OCMF PG F<n>): +1 per record, never reused, no gap after a power cut.
#
# Why it is built this way. The settlement service settles each (device, counter) once and
# waits for a missing counter, so a reused counter would make two different records claim the
# same place and a skipped one stalls that device's settlement until announced. Use:
#
#     c = counters.next_counter()      # may first persist a new reservation block
#     record = sign(... "F%d" % c ...)
#     outbox.append(c, record)         # flushed; raises OutboxFull -> do NOT commit
#     counters.commit(c)
#     publish(record)                  # only now can anyone see counter c
#
# The argument. A record is published only after its frame is flushed to the outbox, so every
# counter anyone has seen is on flash, and the outbox (its newest frame, or its persisted ack
# level once drained) is the truth for the last used counter:
# - cut before the append is flushed: c was never published; after boot the outbox says c - 1
#   and c is used again for a new record. Nobody saw the first one: no reuse, no gap.
# - cut after the append: the outbox says c; the next record is c + 1: no gap. (The record
#   itself is published from the outbox after boot.)
# - cut while persisting a reservation: atomic rename; the old reservation is still on flash and
#   covers every counter handed out so far.
# Only when the outbox cannot vouch for itself (a corrupted frame or ack file, the ack file
# missing while segments exist, the outbox wiped while the register holds a reservation, or the
# register's committed counter above the outbox's) does open() jump past `reserved_until`, the
# highest counter that could ever have been handed out: counters are handed out only after a
# reservation covering them is on flash. That jump is a gap, bounded by the block size, and it
# is reported in `skipped` (first, last) for the hello message: first is one above the highest
# counter still known on flash, so the range may include counters that were used and published
# before the damage (the service already has those). The jump is persisted as the register's
# last_counter before any record uses it, so a cut right after cannot fall back below it.
# If the register is unreadable too, there is no bound; the counter then jumps a whole block past
# the highest counter known anywhere and sets `uncertain`.
try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

BLOCK = const(64)  # one reservation save per 64 records (~1 h at one a minute)
COUNTER_MAX = const(0xFFFFFFFF)


class CounterError(ValueError):
    """A commit out of order, or the counter space is exhausted."""


class RecordCounter:
    """Hands out record counters backed by an EnergyRegister and an Outbox (both opened)."""

    def __init__(self, register, outbox, block=BLOCK):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.register = register
        self.outbox = outbox
        self.block = block
        self.skipped = None  # (first, last) skipped at open, or None
        self.uncertain = False
        self._next = 1

    def open(self):
        """Work out the next counter after boot; returns it. Persists a jump before using it."""
        reg = self.register
        box = self.outbox
        known = max(box.last_counter(), reg.last_counter)
        trusted = box.healthy and reg.last_counter <= box.last_counter() and \
            not (box.fresh and reg.reserved_until > 0)
        self.skipped = None
        self.uncertain = False
        if trusted:
            self._next = known + 1
            return self._next
        floor = max(known, reg.reserved_until)
        if reg.status == "lost":
            floor = known + self.block
            self.uncertain = True
        if floor > known:
            self.skipped = (known + 1, floor)
        if floor > COUNTER_MAX - 1:
            raise CounterError("counter space exhausted")
        if floor > reg.last_counter:
            reserved = floor if floor > reg.reserved_until else reg.reserved_until
            reg.save(reg.import_wh, reg.export_wh, floor, reserved)
        self._next = floor + 1
        return self._next

    def peek(self):
        """The counter the next record will get (no reservation made)."""
        return self._next

    def last(self):
        """The last committed counter (0 before the first record)."""
        return self._next - 1

    def next_counter(self):
        """The counter for the record about to be signed, reserved on flash first."""
        counter = self._next
        if counter > COUNTER_MAX:
            raise CounterError("counter space exhausted")
        if counter > self.register.reserved_until:
            self.register.reserve(min(counter - 1 + self.block, COUNTER_MAX))
        return counter

    def commit(self, counter):
        """Mark counter used: call after outbox.append(counter, ...) returned."""
        if counter != self._next:
            raise CounterError("commit %r out of order; expected %d" % (counter, self._next))
        if counter > self.register.reserved_until:
            raise CounterError("counter %d was never reserved" % counter)
        self._next = counter + 1
