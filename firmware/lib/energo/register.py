# The energy register on flash: import/export Wh, the last record counter and the counter
# reservation, kept so that a power cut can never make them go backwards.
#
# Layout. Two slot files, <name>.a and <name>.b, each 40 bytes: magic "EREG", version,
# sequence, import_wh, export_wh, last_counter, reserved_until, CRC-32. A save writes the
# slot that does NOT hold the newest state, as <slot>.tmp first (flushed and closed), then
# renames it over the slot; LittleFS renames atomically, so a power cut leaves either the old
# or the new slot, never a torn one. The second slot is for what rename cannot protect against:
# a bit flip or a block going bad in the newest slot, a file removed by hand. load() takes the
# valid slot with the highest sequence; a missing, truncated or corrupted slot is counted in
# `slot_errors` and described in `problems`, and the other slot is used: no exception, so no
# boot loop. save() refuses (ValueError) any value lower than the persisted one.
# last_counter here is only a floor that lags behind (saved with the energy); the outbox is the
# truth for the last counter used, and reserved_until bounds it (see counter.py).
#
# Save policy (ADC boards). Flash is NOR rated ~100k erase cycles per 4 KB sector. A 4 MB ESP32
# gives MicroPython's LittleFS ~2 MB; count 1.5 MB usable = 384 blocks. LittleFS wear-levels
# (MicroPython sets block_cycles=100, so hot metadata moves around), so the budget over the
# device's life is ~384 * 100k = 38.4M block erases. 15 years = 7.9M minutes. A save is two
# small metadata commits (write + rename; a 40-byte file is inlined in the directory's metadata
# log), really ~0.1 erase; the worst case of 2 whole erases per save still allows 19M saves, one
# per 25 s. The outbox (one ~660-byte record a minute: 7.9M * 660 B = 5.2 GB = 1.3M erases)
# shares the budget. Defaults: save at most once a minute when >= 10 Wh accumulated
# (SAVE_DELTA_WH, SAVE_INTERVAL_MIN_MS) and at least every 15 minutes when anything changed
# (SAVE_INTERVAL_MAX_MS): <= 7.9M saves = <= 15.8M erases + 1.3M for the outbox, under half of
# the 38.4M budget even in the worst case.
# Worst-case energy lost by a power cut: what flowed since the last save, i.e. at most one minute
# at full power (or 10 Wh if that is more): 242 Wh for 63 A single-phase (14.5 kW), 725 Wh for
# 63 A three-phase (43.5 kW); at 15 minutes if below 10 Wh/min (under 600 W) that is < 150 Wh.
# Every signed record (one a minute) carries the register too, and is flushed to the outbox
# before it is published, so a meter that takes max(register, newest outbox record) at boot
# loses at most the energy since its last record, and never reports a value it did not measure.
# On a Modbus board the external meter is the authority: its own non-volatile register is read
# back after boot, so losing RAM state (or even this file) loses no energy; the register then
# only keeps the counter reservation and a floor that catches a replaced or reset meter.
import os
import struct

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo.crc import crc32

SAVE_DELTA_WH = const(10)
SAVE_INTERVAL_MIN_MS = const(60_000)
SAVE_INTERVAL_MAX_MS = const(900_000)

_MAGIC = b"EREG"
_VERSION = const(1)
_BODY = "<4sHHIQQII"  # magic, version, flags, sequence, import, export, last, reserved
_BODY_BYTES = const(36)
SLOT_BYTES = const(40)
_ENERGY_WH_MAX = const(0x7FFFFFFFFFFFFFFF)
COUNTER_MAX = const(0xFFFFFFFF)
_SEQUENCE_MAX = const(0xFFFFFFFF)


class RegisterError(ValueError):
    """A save that would move the register backwards, or a value out of range."""


def _ticks_diff(a, b):
    try:
        import time

        return time.ticks_diff(a, b)
    except AttributeError:  # CPython: plain integers, no wrap
        return a - b


def encode_slot(sequence, import_wh, export_wh, last_counter, reserved_until):
    """The 40 bytes of one slot (used by save and by tests that forge slots)."""
    body = struct.pack(_BODY, _MAGIC, _VERSION, 0, sequence, import_wh, export_wh,
                       last_counter, reserved_until)
    return body + crc32(body).to_bytes(4, "little")


def decode_slot(data):
    """(sequence, import_wh, export_wh, last_counter, reserved_until); ValueError if invalid."""
    if len(data) != SLOT_BYTES:
        raise ValueError("slot is %d bytes, want %d" % (len(data), SLOT_BYTES))
    body = data[:_BODY_BYTES]
    if crc32(body) != int.from_bytes(data[_BODY_BYTES:], "little"):
        raise ValueError("slot CRC mismatch")
    magic, version, _flags, seq, imp, exp, last, reserved = struct.unpack(_BODY, body)
    if magic != _MAGIC:
        raise ValueError("slot magic wrong")
    if version != _VERSION:
        raise ValueError("slot version %d unknown" % version)
    if last > reserved:
        raise ValueError("slot last counter above its reservation")
    return seq, imp, exp, last, reserved


class EnergyRegister:
    """Persisted import/export Wh and counter state; call load() once at boot."""

    def __init__(self, root, name="energy", save_delta_wh=SAVE_DELTA_WH,
                 save_interval_min_ms=SAVE_INTERVAL_MIN_MS,
                 save_interval_max_ms=SAVE_INTERVAL_MAX_MS):
        if save_delta_wh < 1 or save_interval_min_ms < 0 or \
                save_interval_max_ms < save_interval_min_ms:
            raise ValueError("bad save policy")
        self._paths = (root + "/" + name + ".a", root + "/" + name + ".b")
        self.save_delta_wh = save_delta_wh
        self.save_interval_min_ms = save_interval_min_ms
        self.save_interval_max_ms = save_interval_max_ms
        self.import_wh = 0
        self.export_wh = 0
        self.last_counter = 0
        self.reserved_until = 0
        self.sequence = 0
        self.status = "unloaded"
        self.slot_errors = 0
        self.problems = []
        self.save_count = 0
        self._current = 1  # index of the slot holding the newest state; first save writes A
        self._saved_ms = None

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read(SLOT_BYTES + 1)
        except OSError:
            return None
        return decode_slot(data)

    def load(self):
        """Read both slots and keep the newest valid one. Returns the status:

        "fresh" (no slot existed: first boot), "ok" (both valid), "recovered" (one slot
        missing or invalid, the other used), "lost" (slot files exist but none is valid: the
        values are 0 and the caller must restore a floor, e.g. from the newest outbox record,
        and announce it). Never raises for bad files.
        """
        self.problems = []
        found = []
        exists = 0
        for index in (0, 1):
            path = self._paths[index]
            try:
                os.stat(path)
                exists += 1
            except OSError:
                self.problems.append("slot %s missing" % "ab"[index])
                continue
            try:
                slot = self._read(path)
            except ValueError as exc:
                self.problems.append("slot %s: %s" % ("ab"[index], exc.args[0]))
                continue
            if slot is None:
                self.problems.append("slot %s unreadable" % "ab"[index])
                continue
            found.append((slot, index))
        self.slot_errors = 2 - len(found)
        self._remove_temps()
        if not found:
            self._set((0, 0, 0, 0, 0), 1)
            self.status = "fresh" if not exists else "lost"
            if not exists:
                self.slot_errors = 0
                self.problems = []
            return self.status
        found.sort()
        best, index = found[-1]
        if exists == 1 and len(found) == 1 and best[0] == 1:
            self.slot_errors = 0  # only one save ever happened: the other slot is not due yet
            self.problems = []
        values = list(best)
        if len(found) == 2:
            other = found[0][0]
            for i in (1, 2, 3, 4):
                if other[i] > values[i]:  # valid CRC but older sequence holds more: never go back
                    self.problems.append("older slot holds a higher value; kept the higher")
                    values[i] = other[i]
        self._set(values, index)
        self.status = "ok" if self.slot_errors == 0 and len(self.problems) == 0 else "recovered"
        return self.status

    def _set(self, values, index):
        self.sequence, self.import_wh, self.export_wh, self.last_counter, \
            self.reserved_until = values
        self._current = index
        self._saved_ms = None

    def _remove_temps(self):
        for path in self._paths:
            try:
                os.remove(path + ".tmp")
            except OSError:
                pass

    def save(self, import_wh, export_wh, last_counter=None, reserved_until=None):
        """Persist now. Values not given keep their persisted value. Refuses to go backwards."""
        if self.status == "unloaded":
            raise RegisterError("load() first: saving blind could overwrite a newer slot")
        if last_counter is None:
            last_counter = self.last_counter
        if reserved_until is None:
            reserved_until = self.reserved_until
        for value, floor, limit, what in (
                (import_wh, self.import_wh, _ENERGY_WH_MAX, "import_wh"),
                (export_wh, self.export_wh, _ENERGY_WH_MAX, "export_wh"),
                (last_counter, self.last_counter, COUNTER_MAX, "last_counter"),
                (reserved_until, self.reserved_until, COUNTER_MAX, "reserved_until")):
            if not isinstance(value, int) or value > limit:
                raise RegisterError("%s must be an integer <= %d" % (what, limit))
            if value < floor:
                raise RegisterError("%s %d is below the persisted %d" % (what, value, floor))
        if last_counter > reserved_until:
            raise RegisterError("last_counter %d above reserved_until %d"
                                % (last_counter, reserved_until))
        if self.sequence >= _SEQUENCE_MAX:
            raise RegisterError("sequence exhausted")
        sequence = self.sequence + 1
        data = encode_slot(sequence, import_wh, export_wh, last_counter, reserved_until)
        # Invariant before writing: what we write decodes to what we meant.
        assert decode_slot(data)[1:] == (import_wh, export_wh, last_counter, reserved_until)
        target = 1 - self._current
        path = self._paths[target]
        with open(path + ".tmp", "wb") as f:
            f.write(data)
            f.flush()
        os.rename(path + ".tmp", path)
        self.sequence = sequence
        self.import_wh = import_wh
        self.export_wh = export_wh
        self.last_counter = last_counter
        self.reserved_until = reserved_until
        self._current = target
        self.save_count += 1
        if self.status in ("fresh", "lost", "unloaded"):
            self.status = "ok"
        return sequence

    def reserve(self, reserved_until):
        """Persist a new counter reservation, keeping the persisted energy values."""
        if not isinstance(reserved_until, int) or reserved_until <= self.reserved_until:
            raise RegisterError("reservation must grow past %d" % self.reserved_until)
        return self.save(self.import_wh, self.export_wh, None, reserved_until)

    def save_due(self, import_wh, export_wh, now_ms):
        """True when the save policy says the given live values should be persisted now."""
        delta_wh = (import_wh - self.import_wh) + (export_wh - self.export_wh)
        if self._saved_ms is None:  # the policy clock starts at the first call after load
            self._saved_ms = now_ms
        if delta_wh <= 0:
            return False
        age_ms = _ticks_diff(now_ms, self._saved_ms)
        if age_ms >= self.save_interval_max_ms:
            return True
        return delta_wh >= self.save_delta_wh and age_ms >= self.save_interval_min_ms

    def maybe_save(self, import_wh, export_wh, now_ms, last_counter=None):
        """Save if due (see the module docstring for the policy); True when it saved."""
        if not self.save_due(import_wh, export_wh, now_ms):
            return False
        if last_counter is not None and last_counter > self.reserved_until:
            last_counter = None  # a reservation is always saved first; never save above it
        self.save(import_wh, export_wh, last_counter)
        self._saved_ms = now_ms
        return True
