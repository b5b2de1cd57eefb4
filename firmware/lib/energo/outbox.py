# The outbox: every signed record the service has not acknowledged yet, on flash, so a power
# cut or a long network outage loses nothing.
#
# Files under `root`: segments o<first counter, 10 digits>.seg (append-only, up to
# segment_bytes each) and the ack level ob.ack (written as ob.ack.tmp, then renamed). Each record
# is framed: magic (2 bytes), length (2), length XOR 0xFFFF (2), counter (4), CRC-32 over those
# 10 bytes and the record (4), then the record bytes exactly as signed: the signature covers the exact OCMF text, so no
# compact form is stored. append() flushes before it returns, and the firmware publishes a
# record only after append() returned, so whatever the service has seen is on flash.
#
# Power cuts, point by point (LittleFS: rename is atomic, unflushed data may be lost):
# - during append: the tail frame is missing or truncated. open() sees a frame whose header or
#   body runs past the end of the file (a "torn tail"), drops it (rewriting the segment's valid
#   frames to a temp file and renaming it over) and stays `healthy`: that record was never
#   published, so its counter may be used again for a new record without anyone seeing a reuse.
# - during the ack-level save: ob.ack.tmp is torn or unrenamed; ob.ack still has the older level.
#   Records between the two levels are published again; the service dedupes (device, counter).
# - during segment deletion: the ack level is persisted before any delete, so a segment left
#   behind holds only acked records and open() deletes it.
# - during the torn-tail rewrite at open: the temp file is dropped, the original is still there
#   and is repaired at the next open.
# Anything else that fails its CRC (a bit flip, a bad block, a file edited by hand) is skipped by
# resynchronising on the next valid frame, counted in `corrupt_frames`/`problems`, and makes the
# outbox not `healthy`: then last_counter() cannot be trusted as the last counter ever used, and
# the counter allocator jumps to its flash reservation instead (see counter.py).
#
# Capacity. A meter record (two readings, vendor keys XC/XP/XU/XI/XF, signature) is ~650 bytes,
# ~666 framed: 98 per 64 KB segment. Stock ESP32 firmware has no deflate *compression*
# (MICROPY_PY_DEFLATE_COMPRESS is only on at the "full features" level), so records are stored
# as they are. capacity_for_filesystem() gives the default: 60% of the filesystem (the rest is
# code, config, register, keystore and LittleFS's own blocks):
#   4 MB flash, 2 MiB LittleFS  -> 19 segments, 1862 records, ~31 h at one record a minute;
#   8 MB flash, ~6 MiB          -> 57 segments, 5586 records, ~3.9 days;
#   16 MB flash, ~14 MiB        -> 134 segments, 13132 records, ~9 days.
# Seven days (10080 records) needs >= 11 MiB of LittleFS, i.e. a 16 MB board; a 4 MB board
# rides out about a day of broker outage.
# When full, append() raises OutboxFull and stores nothing: metering goes on in the register and
# the next record is made (with the next counter, so no gap) once an ack frees a segment.
import os
import struct

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo.crc import crc32

SEGMENT_BYTES = const(65536)
CAPACITY_BYTES = const(1048576)  # 16 segments; use capacity_for_filesystem() on a real board
RECORD_BYTES_MAX = const(2048)
COUNTER_MAX = const(0xFFFFFFFF)
HEADER_BYTES = const(14)
_MAGIC = const(0xB10E)
_MAGIC_BYTES = b"\x0e\xb1"  # _MAGIC little-endian, for resynchronising after a bad frame
_HEADER = "<HHHII"
_ACK_MAGIC = b"EOAK"
_ACK_BYTES = const(12)
_ACK_NAME = "ob.ack"
_CHUNK_BYTES = const(256)
_PROBLEMS_MAX = const(8)


class OutboxError(ValueError):
    """Bad input (counter, record, ack) or an outbox that cannot be used."""


class OutboxFull(Exception):
    """append() found no room; nothing was stored."""


def capacity_for_filesystem(fs_bytes, segment_bytes=SEGMENT_BYTES):
    """Default capacity: 60% of the filesystem in whole segments (at least 2)."""
    return max(2, fs_bytes * 3 // 5 // segment_bytes) * segment_bytes


def frame_bytes(record_len):
    """Bytes a record of record_len bytes takes in a segment."""
    return HEADER_BYTES + record_len


def _segment_name(first):
    return "o%010d.seg" % first


def _parse_segment_name(name):
    if len(name) != 15 or name[0] != "o" or not name.endswith(".seg"):
        return None
    digits = name[1:11]
    if not digits.isdigit():
        return None
    return int(digits)


class Outbox:
    """Append-only, power-loss-safe log of unacknowledged records; call open() first."""

    def __init__(self, root, capacity_bytes=CAPACITY_BYTES, segment_bytes=SEGMENT_BYTES,
                 record_bytes_max=RECORD_BYTES_MAX):
        if segment_bytes < frame_bytes(record_bytes_max) or record_bytes_max > 0xFFFF:
            raise ValueError("segment_bytes must hold at least one maximal record")
        if capacity_bytes < segment_bytes:
            raise ValueError("capacity_bytes must be at least one segment")
        self.root = root
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.record_bytes_max = record_bytes_max
        self._header = bytearray(HEADER_BYTES)
        # [first, last, frame count, size in bytes, offset of the last frame], oldest first.
        # The newest segment is kept even when fully acked, so peek_last() always has the
        # newest record: the floor for the energy register if its slots are ever lost.
        self._segments = []
        self._ack = 0
        self._head_pos = 0  # offset of the first unacked frame in the oldest segment
        self._head_acked = 0  # frames before _head_pos in the oldest segment
        self._new_segment = False  # after a failed write: never append behind a partial frame
        self.healthy = True
        self.fresh = False
        self._opened = False
        self.torn_bytes = 0
        self.corrupt_frames = 0
        self.read_errors = 0
        self.problems = []

    def _path(self, name):
        return self.root + "/" + name

    # --- opening and repair ---------------------------------------------------------------

    def open(self):
        """Load the ack level and index every segment, repairing torn tails. Returns healthy."""
        self._segments = []
        self.healthy = True
        self.fresh = False
        self.problems = []
        self._ack = self._load_ack()
        ack_missing = self._ack is None
        ack_bad = self._ack is False
        if ack_missing or ack_bad:
            self._ack = 0
        names = []
        for name in os.listdir(self.root):
            if name == _ACK_NAME + ".tmp" or \
                    (name.endswith(".seg.tmp") and _parse_segment_name(name[:-4]) is not None):
                self._remove(name)  # a save or a repair cut short: the original is intact
                continue
            first = _parse_segment_name(name)
            if first is not None:
                names.append((first, name))
        names.sort()
        for first, name in names:
            info = self._scan(name, self._segments[-1][1] if self._segments else 0)
            if info is not None:
                self._segments.append(info)
        if ack_missing:
            # The ack file is written at the first open, so it is missing only on a new device
            # (no segments either) or when flash lost it: then earlier counters are unknown.
            if self._segments:
                self.healthy = False
                self._problem("ack level file missing; acked records may be sent again")
            else:
                self.fresh = True
        if ack_missing or ack_bad:
            self._save_ack(self._ack)  # repaired now, so the next boot is healthy again
        while len(self._segments) > 1 and self._segments[0][1] <= self._ack:
            self._remove(_segment_name(self._segments.pop(0)[0]))
        self._head_pos = 0
        self._head_acked = 0
        self._advance_head()
        self._opened = True
        return self.healthy

    def _load_ack(self):
        path = self._path(_ACK_NAME)
        try:
            with open(path, "rb") as f:
                data = f.read(_ACK_BYTES + 1)
        except OSError:
            return None
        if len(data) != _ACK_BYTES or data[:4] != _ACK_MAGIC or \
                crc32(data[:8]) != int.from_bytes(data[8:], "little"):
            self.healthy = False
            self._problem("ack level file invalid; acked records may be sent again")
            return False
        return int.from_bytes(data[4:8], "little")

    def _problem(self, text):
        if len(self.problems) < _PROBLEMS_MAX:  # bounded: counters keep the totals
            self.problems.append(text)

    def _remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    def _read_frame(self, f, pos, size, floor):
        """(counter, body) of a valid frame at pos with counter > floor, else None, or "torn"
        when the frame's header or body runs past the end of the file."""
        hdr = self._header
        f.seek(pos)
        if pos + HEADER_BYTES > size:
            return "torn"
        if f.readinto(hdr) != HEADER_BYTES:
            return "torn"
        magic, length, check, counter, crc = struct.unpack(_HEADER, hdr)
        # The length has its own check, so a flipped length bit is never taken for a frame
        # that merely runs past the end of the file (a torn append).
        if magic != _MAGIC or length ^ check != 0xFFFF or length == 0 or \
                length > self.record_bytes_max:
            return None
        if pos + HEADER_BYTES + length > size:
            return "torn"
        body = f.read(length)
        if len(body) != length or crc32(body, crc32(memoryview(hdr)[:10])) != crc:
            return None
        if counter <= floor:
            return None
        return counter, body

    def _resync(self, f, pos, size, floor):
        """Offset of the next valid frame after pos, or size when there is none."""
        pos += 1
        while pos < size:
            f.seek(pos)
            chunk = f.read(_CHUNK_BYTES + 1)
            at = chunk.find(_MAGIC_BYTES)
            if at < 0:
                pos += _CHUNK_BYTES
                continue
            got = self._read_frame(f, pos + at, size, floor)
            if got is not None and got != "torn":
                return pos + at
            pos += at + 1
        return size

    def _scan(self, name, floor):
        """Index one segment; rewrite it without bad bytes if needed. None if it ends empty."""
        path = self._path(name)
        size = os.stat(path)[6]
        frames = []
        pos = 0
        bad_bytes = 0
        with open(path, "rb") as f:
            while pos < size:
                got = self._read_frame(f, pos, size, floor)
                if got is not None and got != "torn":
                    length = len(got[1])
                    frames.append((pos, length))
                    floor = got[0]
                    last = got[0]
                    if len(frames) == 1:
                        first = got[0]
                    pos += HEADER_BYTES + length
                    continue
                nxt = self._resync(f, pos, size, floor)
                if got == "torn" and nxt == size and bad_bytes == 0:
                    self.torn_bytes += size - pos  # a cut append: never published, drop it
                else:
                    self.corrupt_frames += 1
                    self.healthy = False
                    self._problem("%s: %d bad bytes at %d" % (name, nxt - pos, pos))
                bad_bytes += nxt - pos
                pos = nxt
        if bad_bytes and frames:
            self._rewrite(name, frames)
        if not frames:
            self._remove(name)
            return None
        if first != _parse_segment_name(name):  # the first frame was bad: rename after the
            os.rename(self._path(name), self._path(_segment_name(first)))  # first valid one
        return [first, last, len(frames), size - bad_bytes, frames[-1][0]]

    def _rewrite(self, name, frames):
        """Copy the valid frames to name.tmp, then rename it over the segment (atomic)."""
        path = self._path(name)
        buf = bytearray(_CHUNK_BYTES)
        with open(path, "rb") as src, open(path + ".tmp", "wb") as dst:
            for pos, length in frames:
                src.seek(pos)
                left = HEADER_BYTES + length
                while left:
                    n = src.readinto(memoryview(buf)[:min(left, _CHUNK_BYTES)])
                    if not n:
                        raise OSError("segment shrank during repair")
                    dst.write(memoryview(buf)[:n])
                    left -= n
            dst.flush()
        os.rename(path + ".tmp", path)

    def _advance_head(self):
        """Move the head cursor past frames with counter <= the ack level."""
        if not self._segments:
            self._head_pos = 0
            self._head_acked = 0
            return
        seg = self._segments[0]
        hdr = self._header
        with open(self._path(_segment_name(seg[0])), "rb") as f:
            while self._head_pos < seg[3]:
                f.seek(self._head_pos)
                if f.readinto(hdr) != HEADER_BYTES:
                    break
                magic, length, _check, counter, _crc = struct.unpack(_HEADER, hdr)
                if magic != _MAGIC or counter > self._ack:
                    break
                self._head_pos += HEADER_BYTES + length
                self._head_acked += 1

    # --- the public interface -------------------------------------------------------------

    def append(self, counter, record):
        """Store one record under its counter and flush; returns the bytes it took.

        counter must exceed last_counter(). Raises OutboxFull (nothing stored) when the
        capacity would be exceeded, OutboxError for bad input, OSError if flash fails.
        """
        if not self._opened:
            raise OutboxError("open() first: appending blind could tear an existing segment")
        if isinstance(record, str):
            record = record.encode()
        if not isinstance(record, (bytes, bytearray)):
            raise OutboxError("record must be bytes or str")
        if not 0 < len(record) <= self.record_bytes_max:
            raise OutboxError("record is %d bytes; allowed 1..%d"
                              % (len(record), self.record_bytes_max))
        if not isinstance(counter, int) or counter > COUNTER_MAX:
            raise OutboxError("counter must be an integer <= %d" % COUNTER_MAX)
        if counter <= self.last_counter():
            raise OutboxError("counter %d not above the last %d" % (counter, self.last_counter()))
        need = frame_bytes(len(record))
        if self.bytes_used() + need > self.capacity_bytes:
            raise OutboxFull("outbox full: %d of %d bytes used"
                             % (self.bytes_used(), self.capacity_bytes))
        if self._new_segment or not self._segments or \
                self._segments[-1][3] + need > self.segment_bytes:
            self._segments.append([counter, counter - 1, 0, 0, 0])
            self._new_segment = False
        seg = self._segments[-1]
        path = self._path(_segment_name(seg[0]))
        hdr = self._header
        struct.pack_into("<HHHI", hdr, 0, _MAGIC, len(record), len(record) ^ 0xFFFF, counter)
        struct.pack_into("<I", hdr, 10, crc32(record, crc32(memoryview(hdr)[:10])))
        try:
            with open(path, "ab") as f:
                f.write(hdr)
                f.write(record)
                f.flush()
            size = os.stat(path)[6]
            # Invariant after writing: the file grew by exactly one frame.
            if size != seg[3] + need:
                raise OSError("segment %s is %d bytes, want %d" % (path, size, seg[3] + need))
        except OSError:
            # Whatever part of the frame landed must never have a frame appended behind it.
            self._new_segment = True
            if seg[2] == 0:
                self._segments.pop()
                self._remove(_segment_name(seg[0]))
            raise
        seg[1] = counter
        seg[2] += 1
        seg[4] = seg[3]
        seg[3] = size
        return need

    def peek(self, n):
        """Up to n oldest unacknowledged records as (counter, bytes), oldest first."""
        out = []
        for index in range(len(self._segments)):
            if len(out) >= n:
                break
            seg = self._segments[index]
            pos = self._head_pos if index == 0 else 0
            with open(self._path(_segment_name(seg[0])), "rb") as f:
                while pos < seg[3] and len(out) < n:
                    got = self._read_frame(f, pos, seg[3], self._ack)
                    if got is None or got == "torn":
                        self.read_errors += 1  # changed on flash after open(): nothing to send
                        self._problem("segment %d unreadable at %d" % (seg[0], pos))
                        break
                    out.append(got)
                    pos += HEADER_BYTES + len(got[1])
        return out

    def peek_last(self):
        """The newest stored record as (counter, bytes), acked or not; None before the first.

        Why: it carries the newest signed register values, so a meter whose register slots
        were lost restarts from them instead of from zero."""
        if not self._segments or not self._segments[-1][2]:
            return None
        seg = self._segments[-1]
        with open(self._path(_segment_name(seg[0])), "rb") as f:
            got = self._read_frame(f, seg[4], seg[3], 0)
        if got is None or got == "torn":
            self.read_errors += 1
            return None
        return got

    def ack(self, counter):
        """Drop every record with counter <= counter (cumulative). Returns how many went.

        An ack at or below the current level changes nothing; one above last_counter() is
        refused (OutboxError): the service cannot have settled a record we never made.
        """
        if not self._opened:
            raise OutboxError("open() first")
        if not isinstance(counter, int) or counter < 0:
            raise OutboxError("ack must be a non-negative integer")
        if counter > self.last_counter():
            raise OutboxError("ack %d above the last counter %d" % (counter, self.last_counter()))
        if counter <= self._ack:
            return 0
        before = self.count()
        self._save_ack(counter)  # persisted before any segment goes
        self._ack = counter
        while len(self._segments) > 1 and self._segments[0][1] <= counter:
            seg = self._segments.pop(0)
            self._head_pos = 0
            self._head_acked = 0
            self._remove(_segment_name(seg[0]))
        self._advance_head()
        return before - self.count()

    def _save_ack(self, counter):
        data = _ACK_MAGIC + counter.to_bytes(4, "little")
        data += crc32(data).to_bytes(4, "little")
        path = self._path(_ACK_NAME)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
            f.flush()
        os.rename(path + ".tmp", path)

    def count(self):
        """Records stored and not yet acknowledged."""
        total = 0
        for seg in self._segments:
            total += seg[2]
        return total - self._head_acked

    def bytes_used(self):
        """Flash taken by segments (acked records in the oldest segment included)."""
        total = 0
        for seg in self._segments:
            total += seg[3]
        return total

    def acked(self):
        """The persisted ack level."""
        return self._ack

    def last_counter(self):
        """The highest counter ever stored (acked or not); 0 when none."""
        if self._segments and self._segments[-1][2]:
            return max(self._ack, self._segments[-1][1])
        return self._ack

    def is_full(self):
        """True when a record of the maximum size would not fit."""
        return self.bytes_used() + frame_bytes(self.record_bytes_max) > self.capacity_bytes
