"""The record counter across simulated restarts: +1 per record, never reused, no gap after a
normal power cut, a bounded and reported jump when the outbox cannot vouch for itself."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energo.counter import CounterError, RecordCounter
from energo.outbox import Outbox
from energo.register import EnergyRegister


class Device:
    """Register + outbox + counter opened on one directory, as at boot."""

    def __init__(self, root, block=8):
        self.root = str(root)
        self.register = EnergyRegister(self.root)
        self.register.load()
        self.outbox = Outbox(self.root, segment_bytes=4096, record_bytes_max=256,
                             capacity_bytes=64 * 4096)
        self.outbox.open()
        self.counter = RecordCounter(self.register, self.outbox, block=block)
        self.counter.open()

    def produce(self, stage=3):
        """One record; stage says how far it gets before the power goes (3 = all the way)."""
        c = self.counter.next_counter()
        record = b"rec %d %s" % (c, os.urandom(4).hex().encode())
        if stage < 1:
            return c, None
        self.outbox.append(c, record)
        if stage < 2:
            return c, record
        self.counter.commit(c)
        return c, record


def test_normal_sequence_reserves_before_use(tmp_path):
    dev = Device(tmp_path, block=4)
    assert dev.register.reserved_until == 0
    got = [dev.produce()[0] for _ in range(9)]
    assert got == list(range(1, 10))
    assert dev.register.reserved_until == 12 and dev.register.save_count == 3
    again = Device(tmp_path, block=4)
    assert again.counter.peek() == 10 and again.counter.skipped is None


def test_cut_before_append_reuses_nothing_visible(tmp_path):
    dev = Device(tmp_path)
    for _ in range(3):
        dev.produce()
    c, record = dev.produce(stage=0)  # signed, never stored, never published
    assert c == 4 and record is None
    again = Device(tmp_path)
    assert again.counter.peek() == 4 and again.counter.skipped is None


def test_cut_after_append_before_commit_has_no_gap(tmp_path):
    dev = Device(tmp_path)
    dev.produce()
    c, _ = dev.produce(stage=1)
    again = Device(tmp_path)
    assert again.counter.peek() == c + 1 and again.counter.skipped is None
    assert [x for x, _ in again.outbox.peek(5)] == [1, 2]


def test_corrupt_outbox_jumps_past_the_reservation_and_persists_it(tmp_path):
    dev = Device(tmp_path, block=8)
    for _ in range(5):
        dev.produce()
    dev.outbox.ack(5)
    (tmp_path / "ob.ack").write_bytes(b"garbage")  # the ack level is gone
    again = Device(tmp_path, block=8)
    assert not again.outbox.healthy
    # The kept newest segment still shows 1..5; 6..8 may have been handed out: skip them.
    assert again.counter.peek() == 9 and again.counter.skipped == (6, 8)
    # A cut right after boot: the jump is on flash, so the next boot cannot go back to 1.
    third = Device(tmp_path, block=8)
    assert third.outbox.healthy and third.counter.peek() == 9 and third.register.last_counter == 8
    assert third.produce()[0] == 9


def test_wiped_outbox_with_a_reservation_jumps(tmp_path):
    dev = Device(tmp_path, block=8)
    for _ in range(3):
        dev.produce()
    for name in os.listdir(tmp_path):
        if name.startswith("o"):
            os.remove(tmp_path / name)
    again = Device(tmp_path, block=8)
    assert again.outbox.fresh and again.counter.peek() == 9 and again.counter.skipped == (1, 8)


def test_lost_register_trusts_a_healthy_outbox(tmp_path):
    dev = Device(tmp_path, block=8)
    for _ in range(3):
        dev.produce()
    for name in ("energy.a", "energy.b"):
        if os.path.exists(tmp_path / name):
            (tmp_path / name).write_bytes(b"x")
    again = Device(tmp_path, block=8)
    assert again.register.status == "lost" and again.counter.peek() == 4
    assert again.produce()[0] == 4 and again.register.reserved_until == 11


def test_both_lost_is_uncertain_but_moves_forward(tmp_path):
    dev = Device(tmp_path, block=8)
    for _ in range(3):
        dev.produce()
    (tmp_path / "ob.ack").write_bytes(b"x")
    (tmp_path / "energy.a").write_bytes(b"x")
    again = Device(tmp_path, block=8)
    assert again.counter.uncertain and again.counter.peek() == 3 + 8 + 1
    assert again.counter.skipped == (4, 11)


def test_commit_out_of_order_is_refused(tmp_path):
    dev = Device(tmp_path)
    c = dev.counter.next_counter()
    with pytest.raises(CounterError):
        dev.counter.commit(c + 1)
    with pytest.raises(ValueError):
        RecordCounter(dev.register, dev.outbox, block=0)


STEPS = st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=25)


@settings(max_examples=50, deadline=None)
@given(STEPS, st.integers(1, 6))
def test_property_no_counter_ever_published_twice(tmp_path_factory, steps, block):
    """Records made with power cuts at random stages: every published counter keeps its one
    record, new counters are always above every published one, and a gap appears only when
    the counter reported a skip."""
    root = tmp_path_factory.mktemp("dev")
    dev = Device(root, block=block)
    published = {}
    for stage, corrupt in steps:
        c, record = dev.produce(stage)
        if stage >= 2:
            published[c] = record  # the firmware publishes only after append+commit
        if stage == 3:
            continue
        # power cut; whatever is in the outbox will be published after boot
        if corrupt and os.path.exists(root / "ob.ack"):
            (root / "ob.ack").write_bytes(b"bad")
        dev = Device(root, block=block)
        for counter, stored in dev.outbox.peek(1000):
            assert published.setdefault(counter, stored) == stored
        nxt = dev.counter.peek()
        assert nxt > max(published, default=0)
        if dev.counter.skipped is None:
            assert nxt == max(published, default=0) + 1 or not published and nxt == 1
    assert sorted(published) == list(published)
