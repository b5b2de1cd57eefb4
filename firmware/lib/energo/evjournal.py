# The charging-session journal on flash: what a charger must not forget across a power cut.
#
# Files under `root` (one directory per charger), per session, named by the first 12 hex digits
# of its nonce (the session id):
#   <sid>.j  the session's state: one JSON object (offer, auth, grant, limits, state, stop
#            reason, countersignature, receipt wish) framed as magic "EVJ1", length (4 bytes,
#            little-endian), CRC-32 of the body (4), body. Written as <sid>.j.tmp, flushed,
#            then renamed over <sid>.j: LittleFS renames atomically, so a power cut at any write
#            leaves the old state or the new one, never a mix.
#   <sid>.r  the session's signed records in order (B, C..., the stop record), append-only,
#            framed: counter (4 bytes), length (2), CRC-32 over both and the record (4), record.
#            A cut during an append leaves a torn tail, dropped at open (that record was not yet
#            in the outbox either, so nobody saw it).
# The record order that makes this safe: a session record is appended here first, then to
# the outbox, then its counter is committed. A cut between the two appends leaves a record
# here whose counter the outbox does not know; open_records(floor) drops every frame above
# the outbox's last counter, so the counter is used again without two records claiming it.
# States: "charging" (the contactor may be closed), "ending" (stopped, waiting for the
# vehicle's countersignature), "closing" (the close may be sent; re-sent until the service's
# receipt arrives, after which both files go).
import json
import os
import struct

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo.crc import crc32

STATE_BYTES_MAX = const(8192)
RECORD_BYTES_MAX = const(2048)
COUNTER_MAX = const(0xFFFFFFFF)
RECORDS_MAX = const(2000)  # ~33 h at one record a minute: longer sessions end with a stop
SESSIONS_MAX = const(8)  # pending sessions kept for settlement; a full journal refuses a new one
STATES = ("charging", "ending", "closing")
_MAGIC = b"EVJ1"
_REC_HEADER = "<IHI"
_REC_HEADER_BYTES = const(10)
_CHUNK_BYTES = const(256)


class JournalError(ValueError):
    """A journal entry that does not decode, or a request the journal refuses."""


def session_id(nonce):
    """The file name stem of a session: the first 12 hex digits of its nonce."""
    if not isinstance(nonce, str) or len(nonce) != 32:
        raise JournalError("nonce must be 32 hex digits")
    for ch in nonce:
        if ch not in "0123456789abcdef":
            raise JournalError("nonce must be 32 lower-case hex digits")
    return nonce[:12]


def encode_state(state):
    """The bytes of one <sid>.j file for a state dict."""
    header, body = _state_parts(state)
    return header + body


def _state_parts(state):
    """(header, body) of one <sid>.j file; save() writes them one after the other rather than
    joined (a state is ~2 KB, and a charger saves one in the same pass as other work)."""
    check_state(state)
    body = json.dumps(state).encode()
    if len(body) > STATE_BYTES_MAX:
        raise JournalError("session state is %d bytes; at most %d" % (len(body), STATE_BYTES_MAX))
    return _MAGIC + struct.pack("<II", len(body), crc32(body)), body


def decode_state(data):
    """The state dict of one <sid>.j file; JournalError if it is torn, corrupt or odd."""
    if len(data) < 12 or data[:4] != _MAGIC:
        raise JournalError("journal entry: bad magic")
    length, crc = struct.unpack("<II", data[4:12])
    body = data[12:]
    if length != len(body) or length > STATE_BYTES_MAX:
        raise JournalError("journal entry: length %d, have %d bytes" % (length, len(body)))
    if crc32(body) != crc:
        raise JournalError("journal entry: CRC mismatch")
    try:
        state = json.loads(body)
    except ValueError:
        raise JournalError("journal entry: not JSON")
    check_state(state)
    return state


def check_state(state):
    """A session state has its nonce, a known state and the signed messages it was built on."""
    if not isinstance(state, dict):
        raise JournalError("session state must be an object")
    session_id(state.get("session"))
    if state.get("state") not in STATES:
        raise JournalError("session state %r unknown" % (state.get("state"),))
    for key in ("offer", "auth"):
        if not isinstance(state.get(key), str):
            raise JournalError("session state without %s" % key)
    for key in ("hold", "emax", "price", "fee"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise JournalError("session %s must be a non-negative integer" % key)


class Journal:
    """The session files under root; call open() once at boot."""

    def __init__(self, root):
        self.root = root
        self.problems = []
        self._cache = None  # (nonce, index) of the session being appended to

    def _path(self, name):
        return self.root + "/" + name

    def open(self):
        """Make the directory, drop cut-short temp files; the states of every kept session
        (oldest nonce order is not meaningful: sorted by session id for a stable order)."""
        try:
            os.mkdir(self.root)
        except OSError:
            pass  # exists already
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".tmp"):
                self._remove(name)  # a save cut short: the previous state is intact
                continue
            if not name.endswith(".j"):
                continue
            try:
                with open(self._path(name), "rb") as f:
                    out.append(decode_state(f.read(STATE_BYTES_MAX + 13)))
            except (OSError, JournalError) as exc:
                # Unreadable: keep the file for a technician, never crash-loop on it.
                self.problems.append("%s: %s" % (name, exc))
        return out

    def save(self, state):
        """Persist a session's state atomically (temp file, flush, rename)."""
        header, body = _state_parts(state)  # checked (check_state) before anything is written
        path = self._path(session_id(state["session"]) + ".j")
        with open(path + ".tmp", "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
        os.rename(path + ".tmp", path)

    def forget(self, nonce):
        """The session is settled: drop its state, then its records."""
        sid = session_id(nonce)
        if self._cache is not None and self._cache[0] == nonce:
            self._cache = None
        self._remove(sid + ".j")
        self._remove(sid + ".r")

    def count(self):
        return len([n for n in os.listdir(self.root) if n.endswith(".j")])

    def _remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    # --- the records of a session -----------------------------------------------------------

    def records(self, nonce):
        """[(counter, offset, length)] of the session's valid records, in order."""
        path = self._path(session_id(nonce) + ".r")
        out = []
        try:
            size = os.stat(path)[6]
        except OSError:
            return out
        hdr = bytearray(_REC_HEADER_BYTES)
        with open(path, "rb") as f:
            pos = 0
            while pos + _REC_HEADER_BYTES <= size:
                f.seek(pos)
                if f.readinto(hdr) != _REC_HEADER_BYTES:
                    break
                counter, length, crc = struct.unpack(_REC_HEADER, hdr)
                if not 0 < length <= RECORD_BYTES_MAX or pos + _REC_HEADER_BYTES + length > size:
                    break  # a torn tail (or garbage): nothing after it can be trusted
                body = f.read(length)
                if crc32(body, crc32(memoryview(hdr)[:6])) != crc:
                    break
                if out and counter != out[-1][0] + 1:
                    break  # session records are contiguous by construction
                out.append((counter, pos + _REC_HEADER_BYTES, length))
                pos += _REC_HEADER_BYTES + length
        return out

    def trim_records(self, nonce, floor):
        """Keep only the valid records with counter <= floor (the outbox's last counter);
        rewrites the file when anything goes. Returns the kept index."""
        index = self.records(nonce)
        keep = [r for r in index if r[0] <= floor]
        path = self._path(session_id(nonce) + ".r")
        try:
            size = os.stat(path)[6]
        except OSError:
            return keep
        end = keep[-1][1] + keep[-1][2] if keep else 0
        if end == size:
            return keep
        self._cache = None
        with open(path, "rb") as src, open(path + ".tmp", "wb") as dst:
            left = end
            while left:
                chunk = src.read(min(left, _CHUNK_BYTES))
                if not chunk:
                    raise OSError("record log shrank during repair")
                dst.write(chunk)
                left -= len(chunk)
            dst.flush()
        os.rename(path + ".tmp", path)
        return keep

    def append_record(self, nonce, counter, record, reserve=0):
        """Append one signed record (flushed before return). A counter at or below the last
        (a record whose outbox append failed, signed again) replaces it and what follows.
        `reserve` places are kept free (a periodic record leaves room for the stop record)."""
        if not 0 < len(record) <= RECORD_BYTES_MAX:
            raise JournalError("record is %d bytes; at most %d" % (len(record), RECORD_BYTES_MAX))
        if self._cache is not None and self._cache[0] == nonce:
            index = self._cache[1]
        else:  # first append since boot: also cuts a torn tail, so nothing hides behind it
            index = self.trim_records(nonce, COUNTER_MAX)
        if index and counter <= index[-1][0]:
            index = self.trim_records(nonce, counter - 1)
        if len(index) >= RECORDS_MAX - reserve:
            raise JournalError("session has %d records already" % len(index))
        if index and counter != index[-1][0] + 1:
            raise JournalError("record %d does not follow %d" % (counter, index[-1][0]))
        hdr = bytearray(_REC_HEADER_BYTES)
        struct.pack_into("<IH", hdr, 0, counter, len(record))
        struct.pack_into("<I", hdr, 6, crc32(record, crc32(memoryview(hdr)[:6])))
        path = self._path(session_id(nonce) + ".r")
        self._cache = None  # until the append is known to be whole
        with open(path, "ab") as f:
            f.write(hdr)
            f.write(record)
            f.flush()
        offset = index[-1][1] + index[-1][2] + _REC_HEADER_BYTES if index else _REC_HEADER_BYTES
        if os.stat(path)[6] != offset + len(record):
            raise OSError("record log %s has an unexpected size" % path)
        index.append((counter, offset, len(record)))
        self._cache = (nonce, index)

    def read_record(self, nonce, entry):
        """The bytes of one record from records()' index."""
        with open(self._path(session_id(nonce) + ".r"), "rb") as f:
            f.seek(entry[1])
            return f.read(entry[2])

    def records_path(self, nonce):
        return self._path(session_id(nonce) + ".r")
