"""The energy register on flash: A/B slots, recovery from damaged slots, never backwards,
the save policy, and the CRC-32 it relies on."""
import binascii
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energo import crc, register
from energo.register import EnergyRegister, RegisterError


def slot_paths(root):
    return [os.path.join(root, "energy.a"), os.path.join(root, "energy.b")]


def values(reg):
    return (reg.import_wh, reg.export_wh, reg.last_counter, reg.reserved_until)


# --- CRC-32 ---------------------------------------------------------------------------------

@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32_table_matches_zlib(data, start):
    assert crc.crc32_table(data, start) == zlib.crc32(data, start)
    assert crc.crc32(data, start) == binascii.crc32(data, start)


def test_crc32_check_value():
    assert crc.crc32_table(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value


# --- load and save --------------------------------------------------------------------------

def test_first_boot_is_fresh_and_saves_alternate(tmp_path):
    reg = EnergyRegister(str(tmp_path))
    assert reg.load() == "fresh"
    assert values(reg) == (0, 0, 0, 0) and reg.slot_errors == 0
    reg.save(10, 1, 0, 64)
    assert os.path.exists(slot_paths(tmp_path)[0]) and not os.path.exists(slot_paths(tmp_path)[1])
    again = EnergyRegister(str(tmp_path))
    assert again.load() == "ok" and values(again) == (10, 1, 0, 64)  # one save: B not due yet
    again.save(20, 2, 5)
    assert os.path.exists(slot_paths(tmp_path)[1])
    third = EnergyRegister(str(tmp_path))
    assert third.load() == "ok" and values(third) == (20, 2, 5, 64) and third.sequence == 2
    third.save(30, 3)
    assert register.decode_slot(open(slot_paths(tmp_path)[0], "rb").read())[0] == 3
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_never_backwards(tmp_path):
    reg = EnergyRegister(str(tmp_path))
    reg.load()
    reg.save(100, 50, 3, 64)
    for bad in ((99, 50, 3, 64), (100, 49, 3, 64), (100, 50, 2, 64), (100, 50, 3, 63)):
        with pytest.raises(RegisterError):
            reg.save(*bad)
    with pytest.raises(RegisterError):
        reg.save(100, 50, 65, 64)  # last counter above its reservation
    with pytest.raises(RegisterError):
        reg.save(100.5, 50)  # a float never reaches flash
    with pytest.raises(RegisterError):
        reg.save(2**63, 50)
    with pytest.raises(RegisterError):
        reg.reserve(64)
    assert values(reg) == (100, 50, 3, 64) and reg.sequence == 1
    reopened = EnergyRegister(str(tmp_path))
    reopened.load()
    assert values(reopened) == (100, 50, 3, 64)


def _two_saves(root):
    reg = EnergyRegister(root)
    reg.load()
    reg.save(1000, 10, 1, 64)   # slot a, seq 1
    reg.save(2000, 20, 2, 64)   # slot b, seq 2
    return slot_paths(root)


def test_truncation_of_newest_slot_at_every_offset_recovers_older(tmp_path):
    paths = _two_saves(str(tmp_path))
    good = open(paths[1], "rb").read()
    for cut in range(len(good)):
        with open(paths[1], "wb") as f:
            f.write(good[:cut])
        reg = EnergyRegister(str(tmp_path))
        assert reg.load() == "recovered", cut
        assert values(reg) == (1000, 10, 1, 64) and reg.slot_errors == 1
        assert reg.problems
    with open(paths[1], "wb") as f:
        f.write(good + b"\x00")  # too long is damaged as well
    reg = EnergyRegister(str(tmp_path))
    assert reg.load() == "recovered" and reg.import_wh == 1000


def test_bit_flip_anywhere_is_detected(tmp_path):
    paths = _two_saves(str(tmp_path))
    good = open(paths[1], "rb").read()
    for bit in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with open(paths[1], "wb") as f:
            f.write(flipped)
        reg = EnergyRegister(str(tmp_path))
        assert reg.load() == "recovered", bit
        assert values(reg) == (1000, 10, 1, 64)


def test_missing_newest_and_both_bad(tmp_path):
    paths = _two_saves(str(tmp_path))
    os.remove(paths[0])
    reg = EnergyRegister(str(tmp_path))
    assert reg.load() == "recovered" and reg.import_wh == 2000 and reg.slot_errors == 1
    assert reg.problems == ["slot a missing"]
    reg.save(2500, 25)  # goes to the missing slot, repairing it
    assert os.path.exists(paths[0])
    assert EnergyRegister(str(tmp_path)).load() == "ok"
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"garbage")
    lost = EnergyRegister(str(tmp_path))
    assert lost.load() == "lost" and lost.slot_errors == 2 and values(lost) == (0, 0, 0, 0)
    lost.save(2500, 25)  # the caller restores a floor (from the outbox) and carries on
    back = EnergyRegister(str(tmp_path))
    assert back.load() == "recovered" and back.import_wh == 2500


def test_older_slot_with_higher_values_never_loses_them(tmp_path):
    # A CRC-valid slot pair where the newer sequence holds less (forged): keep the higher.
    paths = slot_paths(str(tmp_path))
    with open(paths[0], "wb") as f:
        f.write(register.encode_slot(1, 500, 60, 7, 64))
    with open(paths[1], "wb") as f:
        f.write(register.encode_slot(2, 400, 70, 6, 64))
    reg = EnergyRegister(str(tmp_path))
    assert reg.load() == "recovered"
    assert values(reg) == (500, 70, 7, 64)


def test_decode_slot_rejects_inconsistent_content():
    good = register.encode_slot(1, 1, 1, 1, 1)
    assert register.decode_slot(good) == (1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="reservation"):
        register.decode_slot(register.encode_slot(1, 1, 1, 5, 4))
    forged = b"XREG" + good[4:36]
    forged += crc.crc32(forged).to_bytes(4, "little")
    with pytest.raises(ValueError, match="magic"):
        register.decode_slot(forged)


def test_stale_temp_file_is_ignored_and_removed(tmp_path):
    paths = _two_saves(str(tmp_path))
    with open(paths[0] + ".tmp", "wb") as f:
        f.write(b"\x01\x02")  # a save cut before its rename
    reg = EnergyRegister(str(tmp_path))
    assert reg.load() == "ok" and reg.import_wh == 2000
    assert not os.path.exists(paths[0] + ".tmp")


# --- save policy ----------------------------------------------------------------------------

def test_policy_defaults_fit_the_wear_budget():
    minutes_15y = 15 * 365 * 24 * 60
    saves_max = minutes_15y * 60_000 // register.SAVE_INTERVAL_MIN_MS
    budget = 384 * 100_000  # 1.5 MB of 4 KB blocks, 100k cycles each, wear-levelled
    outbox_erases = minutes_15y * 660 // 4096
    assert 2 * saves_max + outbox_erases < budget // 2


def test_save_policy(tmp_path):
    reg = EnergyRegister(str(tmp_path), save_delta_wh=10, save_interval_min_ms=60_000,
                         save_interval_max_ms=900_000)
    reg.load()
    assert not reg.maybe_save(0, 0, 0)              # starts the policy clock
    assert not reg.maybe_save(50, 0, 30_000)        # enough energy, too soon
    assert reg.maybe_save(50, 0, 60_000)            # enough energy, a minute passed
    assert not reg.maybe_save(55, 0, 200_000)       # too little energy
    assert reg.maybe_save(55, 0, 960_000)           # but the 15-minute ceiling
    assert not reg.maybe_save(55, 0, 5_000_000)     # nothing changed: nothing to write
    assert reg.maybe_save(55, 12, 5_000_001)        # export counts too
    assert reg.save_count == 3
    assert EnergyRegister(str(tmp_path)).load() == "ok"
    with pytest.raises(RegisterError):
        reg.maybe_save(54, 100, 9_000_000)
    with pytest.raises(ValueError):
        EnergyRegister(str(tmp_path), save_interval_min_ms=10, save_interval_max_ms=5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.booleans(),
                          st.integers(0, 39)), max_size=12))
def test_property_reopen_never_lower_than_last_completed_save(tmp_path_factory, steps):
    """Saves of growing values, each followed by damage to one slot (never both, the damage a
    power-cut-safe rename leaves impossible), never load below the newest intact save."""
    root = str(tmp_path_factory.mktemp("reg"))
    reg = EnergyRegister(root)
    reg.load()
    imp = exp = 0
    history = []
    for add_imp, add_exp, damage, offset in steps:
        imp += add_imp
        exp += add_exp
        reg.save(imp, exp)
        history.append((imp, exp))
        if damage:
            newest = slot_paths(root)[reg._current]
            data = bytearray(open(newest, "rb").read())
            data[offset] ^= 0xFF
            with open(newest, "wb") as f:
                f.write(data)
        reg = EnergyRegister(root)
        reg.load()
        want = history[-1] if not damage else (history[-2] if len(history) > 1 else (0, 0))
        assert (reg.import_wh, reg.export_wh) == want
        history[-1] = want  # what survives is the new truth
        imp, exp = want


def test_save_before_load_is_refused(tmp_path):
    _two_saves(str(tmp_path))
    blind = EnergyRegister(str(tmp_path))
    with pytest.raises(RegisterError, match="load"):
        blind.save(1, 1)
    loaded = EnergyRegister(str(tmp_path))
    assert loaded.load() == "ok" and loaded.import_wh == 2000
