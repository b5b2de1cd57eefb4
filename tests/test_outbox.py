"""The outbox: append/peek/ack, segment rotation, a full outbox, recovery from torn tails and
corruption, the persisted ack level, capacity figures from real OCMF records, and properties
over random append/ack/reopen/power-cut sequences."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energo import ocmf, outbox, p256
from energo.outbox import Outbox, OutboxError, OutboxFull

PRIV = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")


def meter_record(counter, import_wh=123456789, export_wh=12345678):
    """A real meter record: two readings, vendor keys XC (64 hex) XP XU XI XF, signed."""
    t_ms = 1796904195000 + counter * 60_000
    readings = [ocmf.reading(t_ms, "C", import_wh),
                ocmf.reading(t_ms, "C", export_wh, ocmf.OBIS_EXPORT)]
    extra = (("XC", os.urandom(32).hex()), ("XP", -1500), ("XU", 230125), ("XI", -6521),
             ("XF", 50012))
    payload = ocmf.build_payload(("energo-meter", "m-0123456789ab", "0.1.0"), f"F{counter}",
                                 ("Energo", "CT", "m-0123456789ab"), readings, extra)
    return ocmf.sign_payload(PRIV, payload)


def rec(counter, size=100):
    """A synthetic record whose bytes name its counter (fast; no signing)."""
    head = b"R%d:" % counter
    return (head + bytes([65 + counter % 26]) * size)[:max(size, len(head))]


def segments(root):
    return sorted(n for n in os.listdir(root) if n.endswith(".seg"))


def opened(root, **kw):
    box = Outbox(str(root), **kw)
    box.open()
    return box


def test_append_peek_ack_and_reopen(tmp_path):
    box = opened(tmp_path)
    assert box.fresh and box.healthy and box.count() == 0 and box.last_counter() == 0
    for c in (1, 2, 3, 5):  # counters need not be contiguous (a reported skip)
        assert box.append(c, rec(c)) == outbox.HEADER_BYTES + 100
    box.append(6, rec(6).decode())  # str records are stored as UTF-8
    assert box.count() == 5 and box.last_counter() == 6
    assert box.bytes_used() == 5 * (outbox.HEADER_BYTES + 100) == sum(
        os.path.getsize(tmp_path / n) for n in segments(tmp_path))
    assert box.peek(2) == [(1, rec(1)), (2, rec(2))]
    assert box.ack(2) == 2 and box.count() == 3 and box.acked() == 2
    assert box.ack(1) == 0 and box.ack(2) == 0  # stale acks change nothing
    again = opened(tmp_path)
    assert not again.fresh and again.healthy
    assert again.peek(10) == [(3, rec(3)), (5, rec(5)), (6, rec(6))]
    assert again.count() == 3 and again.last_counter() == 6
    assert again.peek_last() == (6, rec(6))
    assert again.ack(6) == 3 and again.count() == 0 and again.peek(5) == []
    drained = opened(tmp_path)
    assert drained.last_counter() == 6 and drained.count() == 0 and drained.healthy
    assert drained.peek(5) == [] and drained.peek_last() == (6, rec(6))  # kept for the floor
    with pytest.raises(OutboxError):
        drained.append(6, rec(6))  # never below the last counter, even when drained


def test_bad_input_changes_nothing(tmp_path):
    box = opened(tmp_path, record_bytes_max=300, segment_bytes=4096, capacity_bytes=8192)
    box.append(10, rec(10))
    before = (box.count(), box.bytes_used(), box.last_counter())
    for counter, record in ((10, rec(11)), (9, rec(9)), (11, b""), (11, b"x" * 301),
                            (11, 12345), ("11", rec(11)), (2**32, rec(1)), (11.0, rec(11))):
        with pytest.raises(OutboxError):
            box.append(counter, record)
    for bad_ack in (11, -1, "5", 5.0):
        with pytest.raises(OutboxError):
            box.ack(bad_ack)
    assert (box.count(), box.bytes_used(), box.last_counter()) == before
    assert opened(tmp_path).peek(5) == [(10, rec(10))]
    with pytest.raises(ValueError):
        Outbox(str(tmp_path), segment_bytes=1000, record_bytes_max=2048)


def test_segment_rotation_and_deletion(tmp_path):
    box = opened(tmp_path, segment_bytes=500, record_bytes_max=200, capacity_bytes=5000)
    for c in range(1, 13):
        box.append(c, rec(c))  # 114 bytes: 4 per 500-byte segment
    assert segments(tmp_path) == ["o0000000001.seg", "o0000000005.seg", "o0000000009.seg"]
    assert box.ack(3) == 3 and len(segments(tmp_path)) == 3  # first segment still has #4
    assert box.ack(5) == 2 and segments(tmp_path)[0] == "o0000000005.seg"
    assert box.peek(3) == [(6, rec(6)), (7, rec(7)), (8, rec(8))]
    assert box.ack(12) == 7 and segments(tmp_path) == ["o0000000009.seg"]  # newest kept
    assert box.count() == 0 and box.peek(5) == [] and box.peek_last() == (12, rec(12))
    box.append(13, rec(13))  # a fresh segment: the kept one is full
    assert box.ack(13) == 1 and segments(tmp_path) == ["o0000000013.seg"]
    assert opened(tmp_path, segment_bytes=500, record_bytes_max=200).peek_last() == (13, rec(13))


def test_full_outbox_refuses_then_frees(tmp_path):
    box = opened(tmp_path, segment_bytes=500, record_bytes_max=200, capacity_bytes=1000)
    for c in range(1, 9):
        box.append(c, rec(c))
    assert box.is_full()
    used = box.bytes_used()
    with pytest.raises(OutboxFull):
        box.append(9, rec(9))
    assert box.bytes_used() == used and box.last_counter() == 8  # nothing stored: no gap
    assert box.ack(4) == 4 and not box.is_full()
    box.append(9, rec(9))  # the same counter, once space is free
    assert [c for c, _ in opened(tmp_path).peek(10)] == [5, 6, 7, 8, 9]


def _three(tmp_path):
    box = opened(tmp_path)
    for c in (1, 2, 3):
        box.append(c, rec(c, 40 + c))
    name = tmp_path / segments(tmp_path)[0]
    return name, name.read_bytes()


def test_torn_tail_at_every_offset(tmp_path):
    """A power cut during append leaves the segment cut anywhere: drop the partial frame only."""
    name, good = _three(tmp_path)
    h = outbox.HEADER_BYTES
    ends = [h + 41, 2 * h + 83, 3 * h + 126]
    assert len(good) == ends[-1]
    for cut in range(len(good)):
        name.write_bytes(good[:cut])
        box = opened(tmp_path)
        complete = sum(1 for e in ends if e <= cut)
        assert box.healthy, cut
        assert box.count() == complete and box.last_counter() == complete, cut
        assert box.peek(5) == [(c, rec(c, 40 + c)) for c in range(1, complete + 1)]
        if complete:
            assert name.read_bytes() == good[:ends[complete - 1]]  # repaired in place
        else:
            assert not name.exists()
        box.append(complete + 1, b"new")  # the unpublished counter is used again
        assert opened(tmp_path).peek(5)[-1] == (complete + 1, b"new")
        for n in segments(tmp_path):
            os.remove(tmp_path / n)


def test_bit_flips_are_detected_and_skipped(tmp_path):
    name, good = _three(tmp_path)
    h = outbox.HEADER_BYTES
    for bit in range((h + 41) * 8, (2 * h + 83) * 8):  # every bit of the middle frame
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        name.write_bytes(bytes(data))
        box = opened(tmp_path)
        assert not box.healthy and box.corrupt_frames >= 1 and box.problems, bit
        got = box.peek(5)
        assert (1, rec(1, 41)) in got and (3, rec(3, 43)) in got, bit
        assert all(r == rec(c, 40 + c) for c, r in got), bit  # nothing corrupted slips through
        assert opened(tmp_path).healthy  # repaired on flash: the next boot is clean


def test_ack_level_survives_and_damage_is_reported(tmp_path):
    box = opened(tmp_path)
    for c in range(1, 6):
        box.append(c, rec(c))
    box.ack(2)
    ack = tmp_path / "ob.ack"
    (tmp_path / "ob.ack.tmp").write_bytes(b"\x01")  # a cut during the next ack save
    again = opened(tmp_path)
    assert again.healthy and again.acked() == 2 and not (tmp_path / "ob.ack.tmp").exists()
    good = ack.read_bytes()
    ack.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    damaged = opened(tmp_path)
    assert not damaged.healthy and damaged.acked() == 0
    assert [c for c, _ in damaged.peek(9)] == [1, 2, 3, 4, 5]  # re-sent; the service dedupes
    assert opened(tmp_path).healthy  # the level was rewritten
    ack.unlink()
    missing = opened(tmp_path)
    assert not missing.healthy and not missing.fresh and missing.last_counter() == 5


def test_cut_during_segment_delete(tmp_path):
    box = opened(tmp_path, segment_bytes=500, record_bytes_max=200, capacity_bytes=5000)
    for c in range(1, 7):
        box.append(c, rec(c))
    first = tmp_path / segments(tmp_path)[0]
    saved = first.read_bytes()
    box.ack(4)
    assert not first.exists()
    first.write_bytes(saved)  # as if the cut came after the ack level, before the delete
    again = opened(tmp_path, segment_bytes=500, record_bytes_max=200, capacity_bytes=5000)
    assert again.healthy and not first.exists()
    assert [c for c, _ in again.peek(9)] == [5, 6]


def test_write_failure_never_appends_behind_a_partial_frame(tmp_path, monkeypatch):
    box = opened(tmp_path)
    box.append(1, rec(1))

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[:5])
            raise OSError(28, "no space")

        def flush(self):
            pass

    real_open = open
    monkeypatch.setattr(outbox, "open", lambda p, m="r": Failing(real_open(p, m)),
                        raising=False)
    with pytest.raises(OSError):
        box.append(2, rec(2))
    monkeypatch.undo()
    box.append(2, rec(2))
    assert len(segments(tmp_path)) == 2
    again = opened(tmp_path)
    assert again.healthy and again.torn_bytes == 5
    assert again.peek(5) == [(1, rec(1)), (2, rec(2))]


def test_capacity_figures_from_real_records(tmp_path):
    sizes = [len(meter_record(c).encode()) for c in (1, 99, 123456)]
    assert 600 <= min(sizes) and max(sizes) <= 700
    framed = outbox.frame_bytes(max(sizes))
    per_segment = outbox.SEGMENT_BYTES // framed
    day = 24 * 60

    def days(fs_bytes):
        return outbox.capacity_for_filesystem(fs_bytes) // outbox.SEGMENT_BYTES \
            * per_segment / day

    assert 1.0 < days(2 << 20) < 1.5      # a 4 MB board: about a day
    assert 3 < days(6 << 20) < 5          # 8 MB
    assert days(14 << 20) >= 7            # 16 MB: a week
    assert days(11 << 20) >= 7 > days(10 << 20)
    box = opened(tmp_path, segment_bytes=8192, capacity_bytes=16384)
    records = [meter_record(c) for c in range(1, 4)]
    for c, r in enumerate(records, 1):
        box.append(c, r)
    assert [r.decode() for _, r in box.peek(3)] == records  # byte-exact: still verifies
    pub = p256.public_key(PRIV)
    assert all(ocmf.verify(ocmf.parse(r.decode()), pub) for _, r in box.peek(3))


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 3), st.integers(1, 150)),
    st.tuples(st.just("ack"), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    st.tuples(st.just("cut"), st.integers(1, 200), st.just(0)),
), max_size=30)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_property_random_operations_keep_invariants(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("ob")
    kw = dict(segment_bytes=600, record_bytes_max=180, capacity_bytes=1800)
    box = opened(root, **kw)
    pending = []  # the model: unacked (counter, record)
    acked = last = 0
    for op, a, b in ops:
        if op == "append":
            counter = last + a
            record = rec(counter, b)
            try:
                box.append(counter, record)
            except OutboxFull:
                assert box.bytes_used() + outbox.frame_bytes(len(record)) > 1800
                continue
            pending.append((counter, record))
            last = counter
        elif op == "ack":
            target = acked + (last - acked) * a // 100
            box.ack(target)
            acked = max(acked, target)
            pending = [p for p in pending if p[0] > acked]
        elif op == "reopen":
            box = opened(root, **kw)
            assert box.healthy
        elif op == "cut" and segments(root) and pending:
            # A power cut during the newest append: only the unpublished last frame is torn.
            tail = root / segments(root)[-1]
            data = tail.read_bytes()
            frame = outbox.frame_bytes(len(pending[-1][1]))
            if pending[-1][0] == box.last_counter() and len(data) >= frame:
                tail.write_bytes(data[:len(data) - min(a, frame)])
                pending.pop()
                last = max(acked, pending[-1][0] if pending else acked)
                box = opened(root, **kw)
                assert box.healthy
        assert box.peek(100) == pending
        assert box.count() == len(pending)
        assert box.last_counter() == last
        assert box.bytes_used() == sum(os.path.getsize(root / n) for n in segments(root))
        assert box.bytes_used() <= 1800


def test_use_before_open_is_refused(tmp_path):
    opened(tmp_path).append(1, rec(1))
    blind = Outbox(str(tmp_path))
    with pytest.raises(OutboxError, match="open"):
        blind.append(2, rec(2))
    with pytest.raises(OutboxError, match="open"):
        blind.ack(1)
    assert opened(tmp_path).peek(5) == [(1, rec(1))]


def test_damage_to_the_newest_frame_is_not_mistaken_for_a_torn_append(tmp_path):
    """The newest frame was published; damage to it must not let its counter be used again."""
    name, good = _three(tmp_path)
    start = 2 * outbox.HEADER_BYTES + 83  # the third (newest) frame
    for bit in range(start * 8, len(good) * 8):
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        name.write_bytes(bytes(data))
        box = opened(tmp_path)
        assert not box.healthy and box.torn_bytes == 0, bit
        assert box.last_counter() == 2
        name.write_bytes(good)
