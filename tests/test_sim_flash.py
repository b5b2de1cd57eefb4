"""Flash power-loss semantics (LittleFS model): atomic rename, torn plain overwrites, ENOSPC."""
import errno

import pytest

from sim_board.flash import BLOCK_SIZE, Flash, PowerCut

OLD = b"A" * 6000
NEW = b"B" * 6000


def _write(flash, path, data):
    with flash.open(path, "wb") as f:
        f.write(data)


def _safe_update(flash, data):
    _write(flash, "/state.tmp", data)
    flash.metadata_op(lambda: __import__("os").replace(flash.host_path("/state.tmp"),
                                                       flash.host_path("/state")))


def _count_writes(tmp_path, update):
    flash = Flash(tmp_path / "count")
    _write(flash, "/state", OLD)
    start = flash.write_count
    update(flash, NEW)
    return flash.write_count - start


def _after_cut(tmp_path, k, update):
    flash = Flash(tmp_path / f"cut{k}")
    _write(flash, "/state", OLD)
    flash.cut_at_write = k
    with pytest.raises(PowerCut):
        update(flash, NEW)
    return flash.host_path("/state")


def test_write_temp_then_rename_leaves_old_or_new_at_every_cut(tmp_path):
    writes = _count_writes(tmp_path, _safe_update)
    assert writes >= 3  # create, data blocks, rename
    seen = set()
    for k in range(1, writes + 1):
        with open(_after_cut(tmp_path, k, _safe_update), "rb") as f:
            content = f.read()
        assert content in (OLD, NEW), f"cut at write {k} left a mix"
        seen.add(content)
    assert seen == {OLD}  # the rename is the last write; cut there, it did not happen


def test_plain_overwrite_can_leave_a_torn_file(tmp_path):
    writes = _count_writes(tmp_path, lambda fl, d: _write(fl, "/state", d))
    torn = []
    for k in range(1, writes + 1):
        with open(_after_cut(tmp_path, k, lambda fl, d: _write(fl, "/state", d)), "rb") as f:
            content = f.read()
        if content not in (OLD, NEW):
            torn.append(k)
    assert torn, "no cut point tore a plain overwrite"


def test_unflushed_data_is_lost_but_the_file_exists(tmp_path):
    flash = Flash(tmp_path / "f")
    f = flash.open("/log", "w")
    f.write("hello")
    flash.power_lost()
    assert (tmp_path / "f" / "log").read_bytes() == b""
    f2 = flash.open("/log2", "w")
    f2.write("kept")
    f2.flush()
    flash.power_lost()
    assert (tmp_path / "f" / "log2").read_bytes() == b"kept"


def test_flash_is_bounded_and_statvfs_is_truthful(tmp_path):
    flash = Flash(tmp_path / "small", size_bytes=8 * BLOCK_SIZE)
    bsize, _, blocks, free, *_ = flash.statvfs()
    assert (bsize, blocks) == (4096, 8)
    with flash.open("/a", "wb") as f:
        f.write(b"x" * BLOCK_SIZE * 2)
    assert flash.statvfs()[3] == free - 2
    f = flash.open("/b", "wb")
    with pytest.raises(OSError) as info:
        f.write(b"y" * BLOCK_SIZE * 8)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == "[Errno 28] ENOSPC"
    f.close()
    for i in range(8):  # fill the rest with one-block files; creating one more does not fit
        try:
            flash.open(f"/small{i}", "wb").close()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
    else:
        raise AssertionError("the flash never filled up")
    assert flash.statvfs()[3] == 0
    assert not (tmp_path / "small" / f"small{i}").exists()


def test_paths_cannot_escape_the_flash(tmp_path):
    flash = Flash(tmp_path / "root")
    assert flash.host_path("/../../etc/passwd") == str(tmp_path / "root" / "etc" / "passwd")
    with pytest.raises(ValueError):
        flash.open("/x", "rw")


def test_block_count_kept_up_to_date_equals_a_fresh_count(tmp_path):
    """The count of used blocks is kept up to date op by op (not recounted on every create);
    after any sequence of the firmware's file operations it equals a walk over the tree."""
    import random
    import types

    from sim_board.shims import mp_os

    flash = Flash(tmp_path / "count", size_bytes=64 * BLOCK_SIZE)
    board = types.SimpleNamespace(flash=flash)
    runtime = types.SimpleNamespace(check_alive=lambda: None, cwd="/")
    board_os = mp_os.build(board, runtime)
    rng = random.Random(7)
    names = ["/a", "/b", "/d/x", "/d/y", "/d", "/e"]
    done = set()
    for _ in range(600):
        op, name, other = rng.randrange(6), rng.choice(names), rng.choice(names)
        try:
            if op == 0:
                with flash.open(name, rng.choice(["wb", "ab"])) as f:
                    f.write(bytes(rng.choice([0, 10, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE])))
            elif op == 1:
                board_os.mkdir(name)
            elif op == 2:
                board_os.rmdir(name)
            elif op == 3:
                board_os.remove(name)
            elif op == 4:
                board_os.rename(name, other)
            else:
                board_os.statvfs("/")
            done.add(op)
        except OSError:
            pass
        assert flash.used_blocks() == flash._count_used(), (op, name, other)
    assert done == set(range(6)), "every kind of operation succeeded at least once"
