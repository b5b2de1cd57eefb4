"""A meter's periodic record is signed in slices with the event loop run in between
(Meter.make_record_in_slices): the same record as signing in one go, one pause per slice, and
the refusals (no reading yet, outbox full) before any counter is used."""
import asyncio
import hashlib
import sys

import pytest

from energo import meter as meter_module
from energo import ocmf, p256
from energo.meter import Meter

PRIV = bytes(range(1, 33))


class Keystore:
    def sign(self, payload):
        return p256.sign(PRIV, payload)

    def sign_steps(self, payload):
        return p256.sign_steps(PRIV, hashlib.sha256(payload).digest())


class Counter:
    def __init__(self):
        self.next = 7
        self.committed = []

    def next_counter(self):
        return self.next

    def commit(self, counter):
        assert counter == self.next
        self.committed.append(counter)
        self.next += 1


class Outbox:
    def __init__(self, full=False):
        self.full = full
        self.records = []

    def is_full(self):
        return self.full

    def append(self, counter, record):
        self.records.append((counter, record))


class Source:
    ready = True

    class instant:  # noqa: N801 - an attribute holder, as sources.Instant
        power_mw, voltage_mv, current_ma, pf_milli = 2300000, 230000, 10000, 985


class Pauses:
    """Stands in for asyncio: counts the pauses between slices."""

    def __init__(self):
        self.calls = []

    async def sleep_ms(self, ms):
        self.calls.append(ms)


def _meter(full=False, ready=True):
    m = Meter.__new__(Meter)
    m.board = {"meter": "adc"}
    m.device_id = "dev-slices"
    m.keystore = Keystore()
    m.counter = Counter()
    m.outbox = Outbox(full)
    m.source = Source()
    m.source.ready = ready
    m.import_wh, m.export_wh = 123456, 789
    m.prev_sig_hash = None
    m.errors = {"outbox_full": 0, "no_reading": 0}
    m.crypto_lock = asyncio.Lock()
    return m


def _run(coro):
    try:
        while True:
            coro.send(None)
    except StopIteration as done:
        return done.value


@pytest.fixture
def pauses(monkeypatch):
    fake = Pauses()
    monkeypatch.setitem(sys.modules, "asyncio", fake)  # p256.sliced imports it when it runs
    monkeypatch.setattr(meter_module.wallclock, "now_ms", lambda: 1763700000000)
    return fake


def test_slices_give_the_record_signing_in_one_go_gives(pauses):
    whole, sliced = _meter(), _meter()
    expected = whole.make_record()
    record = _run(sliced.make_record_in_slices())
    assert record == expected
    assert sliced.outbox.records == [(7, record)] and sliced.counter.committed == [7]
    assert sliced.prev_sig_hash == whole.prev_sig_hash is not None
    parsed = ocmf.parse(record.decode(), strict=True)
    assert parsed.pagination == ("F", 7)
    assert ocmf.verify(parsed, p256.public_key(PRIV))
    # The loop ran between every two slices: one pause per STEP_COLUMNS comb columns and more.
    assert len(pauses.calls) > 256 // 8 // p256.STEP_COLUMNS
    assert set(pauses.calls) == {Meter.slice_pause_ms}
    assert Meter.slice_pause_ms > 0  # 0 would not end the loop's pass


def test_the_next_record_chains_to_the_last_one(pauses):
    m = _meter()
    first = _run(m.make_record_in_slices())
    second = _run(m.make_record_in_slices(pg="T", tx="B", tail=(("XS", "abc"),)))
    assert m.counter.committed == [7, 8]
    sig = ocmf.parse(first.decode()).signature
    chained = ocmf.parse(second.decode(), strict=True)
    assert chained.pagination == ("T", 8)
    assert chained.get("XC") == meter_module._sig_hash(sig)
    assert chained.get("XS") == "abc"


@pytest.mark.parametrize("full, ready, error", [(True, True, "outbox_full"),
                                                (False, False, "no_reading")])
def test_refusals_use_no_counter_and_sign_nothing(pauses, full, ready, error):
    m = _meter(full=full, ready=ready)
    assert _run(m.make_record_in_slices()) is False
    assert m.errors[error] == 1
    assert m.counter.committed == [] and m.outbox.records == [] and pauses.calls == []


def test_two_stepwise_computations_take_turns(monkeypatch):
    """Meter.crypto: a second signature waits for the first to finish; their slices never
    alternate (alternating, two slices could fall due in one loop pass)."""
    monkeypatch.setattr(asyncio, "sleep_ms", lambda ms: asyncio.sleep(ms / 1000), raising=False)
    m = _meter()
    trace = []

    def steps(name):
        for _ in range(5):
            trace.append(name)
            yield
        return name

    async def main():
        return await asyncio.gather(m.crypto(steps("a")), m.crypto(steps("b")))

    assert asyncio.run(main()) == ["a", "b"]
    assert trace == ["a"] * 5 + ["b"] * 5
