"""Power cuts at every flash write of a metering run (register + counter + outbox + acks), on
the emulator's LittleFS model (sim_board.flash): after each cut and reboot, nothing published is
lost or changed, no counter is reused, no energy value goes backwards."""
import errno
import os
import types

import pytest

from energo import counter as counter_mod
from energo import outbox as outbox_mod
from energo import register as register_mod

flash_mod = pytest.importorskip("sim_board.flash")


def flash_os(flash):
    """The subset of MicroPython's os the storage modules use, on the flash model."""
    def listdir(path):
        return sorted(os.listdir(flash.host_path(path)))

    def stat(path):
        host = flash.host_path(path)
        if not os.path.exists(host):
            raise flash_mod.oserror(errno.ENOENT)
        return (0x8000, 0, 0, 0, 0, 0, os.path.getsize(host), 0, 0, 0)

    def remove(path):
        host = flash.host_path(path)
        if not os.path.exists(host):
            raise flash_mod.oserror(errno.ENOENT)
        flash.metadata_op(lambda: os.remove(host))

    def rename(old, new):
        src, dst = flash.host_path(old), flash.host_path(new)
        if not os.path.exists(src):
            raise flash_mod.oserror(errno.ENOENT)
        flash.metadata_op(lambda: os.replace(src, dst))

    return types.SimpleNamespace(listdir=listdir, stat=stat, remove=remove, rename=rename)


class Board:
    """Storage modules wired to one Flash; a new Board on the same directory is a reboot."""

    def __init__(self, root, monkeypatch, cut_at_write=None):
        self.flash = flash_mod.Flash(root)
        self.flash.cut_at_write = cut_at_write
        fos = flash_os(self.flash)
        for mod in (outbox_mod, register_mod):
            monkeypatch.setattr(mod, "os", fos)
            monkeypatch.setattr(mod, "open", self.flash.open, raising=False)
        self.register = register_mod.EnergyRegister("/", save_delta_wh=1,
                                                    save_interval_min_ms=0)
        self.register.load()
        self.outbox = outbox_mod.Outbox("/", segment_bytes=4096, record_bytes_max=700,
                                        capacity_bytes=8 * 4096)
        self.outbox.open()
        self.counter = counter_mod.RecordCounter(self.register, self.outbox, block=3)
        self.counter.open()


def run(board, published, state, steps):
    """Meter for `steps` minutes: record, publish, save the register, sometimes an ack."""
    for _ in range(steps):
        state["energy_wh"] += 7
        c = board.counter.next_counter()
        record = b"F%d %d " % (c, state["energy_wh"]) + b"x" * 600
        board.outbox.append(c, record)
        board.counter.commit(c)
        published[c] = record  # publish happens only now
        board.register.maybe_save(state["energy_wh"], 0, state["minute"] * 60_000,
                                  board.counter.last())
        state["saved_wh"] = board.register.import_wh
        state["minute"] += 1
        if c % 4 == 0:
            board.outbox.ack(c - 2)


def check_after_boot(board, published, state):
    stored = board.outbox.peek(1000)
    for c, record in stored:
        assert published.get(c, record) == record, f"counter {c} holds another record"
        published.setdefault(c, record)  # stored but not yet published: it will be
    acked = board.outbox.acked()
    for c in published:
        assert c <= acked or c in dict(stored), f"published record {c} lost"
    assert board.counter.peek() > max(published, default=0)
    assert board.register.import_wh >= state["saved_wh"]
    assert board.register.status in ("ok", "recovered", "fresh")
    state["energy_wh"] = max(state["energy_wh"], board.register.import_wh)


def test_cut_at_every_write(tmp_path, monkeypatch):
    probe = Board(tmp_path / "probe", monkeypatch)
    start = probe.flash.write_count
    run(probe, {}, {"energy_wh": 0, "minute": 0, "saved_wh": 0}, 14)
    writes = probe.flash.write_count - start
    assert writes > 40
    for k in range(1, writes + 1):
        root = tmp_path / f"cut{k}"
        board = Board(root, monkeypatch)
        published = {}
        state = {"energy_wh": 0, "minute": 0, "saved_wh": 0}
        board.flash.cut_at_write = k
        with pytest.raises(flash_mod.PowerCut):
            run(board, published, state, 14)
        board = Board(root, monkeypatch)  # power back on
        check_after_boot(board, published, state)
        assert board.outbox.healthy and board.counter.skipped is None, k
        run(board, published, state, 3)
        board = Board(root, monkeypatch)
        check_after_boot(board, published, state)
        assert board.outbox.healthy and board.counter.skipped is None, k
        assert sorted(published) == list(range(1, max(published) + 1)), k  # no gap


def test_cut_during_the_boot_repair(tmp_path, monkeypatch):
    """A torn tail is repaired at boot (temp copy + rename); a cut in that repair, or in the
    ack-level save after a damaged ack file, is repaired at the next boot instead."""
    def damaged(root):
        board = Board(root, monkeypatch)
        published = {}
        run(board, published, {"energy_wh": 0, "minute": 0, "saved_wh": 0}, 6)
        seg = sorted(n for n in os.listdir(root) if n.endswith(".seg"))[-1]
        with open(root / seg, "ab") as f:
            f.write(b"\x0e\xb1\x10\x00")  # the start of a frame whose append was cut
        (root / "ob.ack").write_bytes(b"torn")
        return published

    damaged(tmp_path / "probe")
    writes = Board(tmp_path / "probe", monkeypatch).flash.write_count
    assert writes >= 3  # repair copy, its rename, the ack level
    for k in range(1, writes + 1):
        root = tmp_path / f"cut{k}"
        published = damaged(root)
        with pytest.raises(flash_mod.PowerCut):
            Board(root, monkeypatch, cut_at_write=k)
        board = Board(root, monkeypatch)
        assert [c for c, _ in board.outbox.peek(100)] == sorted(
            c for c in published if c > board.outbox.acked())
        assert board.counter.peek() > max(published)
        assert Board(root, monkeypatch).outbox.healthy
