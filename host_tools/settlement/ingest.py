"""Ingest: signed meter records in, exactly-once settlement and cumulative acks out.

Pure logic, no MQTT: `Ingest.handle_batch([(topic, payload, received_at_s), ...])`
returns the acks to publish as `[(topic, payload_bytes)]`; `service.Service`
feeds it from the broker. A batch is checked in two stages so the expensive
part stays outside the database lock:

1. without the database: size, topic, OCMF structure, device enrolled, record
   signed by that device's enrolled key (OpenSSL via `cryptography`);
2. in ONE database transaction: counter, hash chain and registers against the
   device's last settled record, then storage, settlement and interval closing.
   A crash anywhere rolls the whole batch back; devices resend what was not
   acked, so nothing is lost and, by the UNIQUE (device, counter) key, nothing
   is settled twice.

Exactly once. A record's energy is the DELTA of its cumulative import/export
registers against the previous counter's record, so a duplicate adds nothing and
a gap is never filled: a record after a gap is stored as pending and settled
only when the gap closes (or the device declares it in its hello's `skipped`
range, after flash damage). The ack is the highest counter settled with no gap.
A device's first record is its baseline and carries no energy (see
`_Batch._before_baseline` for how the first counter is chosen).

Event time. A record's energy belongs to the interval of its time stamp (the end
of the span its delta covers, even if that span crosses a boundary). Records
with sync status U have no trustworthy time and go into the interval of the
service's receive time; that is audited. An interval closes (`Ledger.settle_interval`)
once the watermark passed its end, where

    watermark = max(min over devices of their last settled event time,
                    max over devices of their last settled event time - grace_s)

so a silent device holds intervals open for at most `grace_s` of event time.
Energy arriving later for a closed interval is booked with `Ledger.book_correction`.

Rejections (never raised out of `handle_batch`) are counted by reason in
`rejected` and written to `ingest_rejections` with the first 200 bytes.
"""
import dataclasses
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import ocmf
from energo.jsonexact import Number
from host_tools.settlement import ocmf_fast
from host_tools.settlement.errors import LedgerError
from host_tools.settlement.registry import Registry

RECORD_BYTES_MAX = 4096
HELLO_BYTES_MAX = 1024
BASELINE_WAIT_S = 10  # receive time a new device's records wait for an older first counter
PENDING_AHEAD_MAX = 4096  # counters a record may run ahead of the ack while a gap is open
CLOSES_PER_BATCH_MAX = 96  # a day of 15-minute intervals; the rest close with the next batch
AUDIT_HEAD_BYTES = 200
AUDIT_ROWS_MAX = 200_000  # per audit table; the oldest rows go first (counters keep counting)
_TRIM_EVERY_ROWS = 1000
COUNTER_MAX = 2**40
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DEVICE_ID = re.compile(r"^[a-z]-[0-9a-f]{12}$")
_ECDSA = ec.ECDSA(hashes.SHA256())

REASONS = ("oversized", "bad_topic", "unknown_device", "malformed", "wrong_topic",
           "bad_signature", "bad_hello", "counter_reused", "stale_counter", "counter_too_far",
           "chain_broken", "register_decreased", "ledger_refused")


class Rejected(ValueError):
    """A message refused with a stable `reason` (one of REASONS)."""

    def __init__(self, reason, detail, device_id=None, counter=None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id
        self.counter = counter


@dataclasses.dataclass
class Record:
    """A verified record, reduced to what settlement needs."""

    device_id: str
    counter: int
    received_at_s: int
    event_s: int
    sync: str
    import_wh: int
    export_wh: int
    sig_hash: str
    chain_hash: str | None
    raw: str
    stored: bool = False  # already a pending row in ingest_records
    interval_start_s: int | None = None
    deltas: tuple = (0, 0)


@dataclasses.dataclass
class DeviceState:
    device_id: str
    settled_counter: int
    import_wh: int
    export_wh: int
    sig_hash: str | None
    last_event_s: int
    pending_count: int
    dirty: bool = False


class Ingest:
    """Verify, deduplicate and settle records of one community into a ledger."""

    def __init__(self, ledger, registry, community, grace_s=None):
        if not isinstance(registry, Registry):
            raise TypeError("Ingest needs a Registry")
        if not isinstance(community, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", community):
            raise ValueError(f"invalid community name {community!r}")
        self.ledger = ledger
        self.registry = registry
        self.db = ledger.db
        self.community = community
        self.prefix = f"energo/v1/{community}/"
        self.interval_s = ledger.config.interval_s
        self.grace_s = self.interval_s if grace_s is None else grace_s
        if isinstance(self.grace_s, bool) or not isinstance(self.grace_s, int) or self.grace_s < 0:
            raise ValueError("grace_s must be a non-negative integer")
        self.rejected = dict.fromkeys(REASONS, 0)
        self.counts = {"settled": 0, "duplicates": 0, "pending": 0, "corrections": 0,
                       "intervals_closed": 0, "skips": 0, "unsynced": 0, "batches": 0,
                       "close_failures": 0}
        self.last_close_error = None
        self.audit_rows_max = AUDIT_ROWS_MAX
        self._rows_since_trim = 0
        self._devices = {}  # device id -> (member, public key); enrollment never changes them

    # --- stage 1: checks that need no database lock ------------------------------------------

    def _device(self, device_id):
        found = self._devices.get(device_id)
        if found is None:
            info = self.registry.get(device_id) if _DEVICE_ID.match(device_id) else None
            if info is None:
                return None
            key = serialization.load_der_public_key(bytes.fromhex(info["public_key_hex"]))
            found = self._devices[device_id] = (info["member"], key)
        return found

    def _split_topic(self, topic):
        if not isinstance(topic, str) or not topic.startswith(self.prefix):
            raise Rejected("bad_topic", f"topic is not under {self.prefix}")
        parts = topic[len(self.prefix):].split("/")
        if len(parts) != 2 or parts[1] not in ("rec", "hello") or not parts[0]:
            raise Rejected("bad_topic", "expected <device>/rec or <device>/hello")
        return parts[0], parts[1]

    def prepare(self, topic, payload, received_at_s):
        """("rec", Record) or ("hello", device_id, skipped, received_at_s); raises Rejected."""
        if not isinstance(payload, bytes | bytearray):
            raise Rejected("malformed", "payload must be bytes")
        device_id, kind = self._split_topic(topic)
        limit = RECORD_BYTES_MAX if kind == "rec" else HELLO_BYTES_MAX
        if len(payload) > limit:
            raise Rejected("oversized", f"{len(payload)} bytes, limit {limit}", device_id)
        device = self._device(device_id)
        if device is None:
            raise Rejected("unknown_device", "no enrolled device with this id",
                           device_id[:64])
        if kind == "hello":
            return ("hello", device_id, _parse_hello(payload, device_id), received_at_s)
        return ("rec", self._parse_record(device_id, device[1], payload, received_at_s))

    def _parse_record(self, device_id, key, payload, received_at_s):
        try:
            text = bytes(payload).decode()
            record = parse_record(text)
        except (UnicodeError, ocmf.OcmfError) as exc:
            raise Rejected("malformed", str(exc), device_id) from None
        letter_counter = record.pagination
        counter = letter_counter[1]
        if not 1 <= counter < COUNTER_MAX:
            raise Rejected("malformed", f"counter {counter} out of range", device_id)
        if record.get("GS") != device_id:
            raise Rejected("wrong_topic", f"record of {str(record.get('GS'))[:64]!r} "
                           "on this device's topic", device_id, counter)
        if record.algorithm != ocmf.SA_P256:
            raise Rejected("malformed", f"algorithm {record.algorithm} is not accepted",
                           device_id, counter)
        registers = {}
        for reading in record.readings:
            if reading.obis in (ocmf.OBIS_IMPORT, ocmf.OBIS_EXPORT):
                if reading.obis in registers:
                    raise Rejected("malformed", f"two readings of {reading.obis}", device_id,
                                   counter)
                try:
                    registers[reading.obis] = (reading.energy_wh(), reading)
                except ocmf.OcmfError as exc:
                    raise Rejected("malformed", str(exc), device_id, counter) from None
        if len(registers) != 2:
            raise Rejected("malformed", "a meter record needs an import and an export reading",
                           device_id, counter)
        import_wh, first = registers[ocmf.OBIS_IMPORT]
        export_wh, _ = registers[ocmf.OBIS_EXPORT]
        if import_wh < 0 or export_wh < 0 or max(import_wh, export_wh) >= 2**62:
            raise Rejected("malformed", "register out of range", device_id, counter)
        chain_hash = record.get("XC")
        if chain_hash is not None and (not isinstance(chain_hash, str)
                                       or not _HEX64.match(chain_hash)):
            raise Rejected("malformed", "XC must be 64 lower-case hex digits", device_id,
                           counter)
        try:
            key.verify(record.signature, record.payload_text.encode(), _ECDSA)
        except InvalidSignature:
            raise Rejected("bad_signature", "signature does not match the enrolled key",
                           device_id, counter) from None
        sync = first.sync
        event_s = received_at_s if sync == "U" else first.time_ms // 1000
        return Record(device_id, counter, received_at_s, event_s, sync, import_wh, export_wh,
                      hashlib.sha256(record.signature).hexdigest(), chain_hash, text)

    # --- entry points ------------------------------------------------------------------------

    def handle(self, topic, payload, received_at_s):
        """One message; see handle_batch."""
        return self.handle_batch([(topic, payload, received_at_s)])

    def handle_batch(self, messages):
        """Process messages in one transaction; returns [(ack_topic, ack_payload)].

        Never raises for bad input: each refused message is counted and audited. If the
        batch as a whole fails in the database, each message is retried on its own so
        one bad message cannot hold back the others.
        """
        prepared, rejections = [], []
        for topic, payload, received_at_s in messages:
            try:
                prepared.append(self.prepare(topic, payload, received_at_s))
            except Rejected as exc:
                rejections.append((exc, topic, payload, received_at_s))
        try:
            return self._commit(prepared, rejections)
        except (LedgerError, *self.db.errors) as exc:
            if len(prepared) <= 1:
                self._reject_alone(prepared, rejections, exc)
                return []
        acks = {}
        for item in prepared:
            try:
                for topic, payload in self._commit([item], []):
                    acks[topic] = payload
            except (LedgerError, *self.db.errors) as exc:
                self._reject_alone([item], [], exc)
        if rejections:
            self._commit([], rejections)
        return list(acks.items())

    def _reject_alone(self, prepared, rejections, exc):
        extra = []
        for item in prepared:
            if item[0] == "rec":
                rec = item[1]
                extra.append((Rejected("ledger_refused", str(exc)[:200], rec.device_id,
                                       rec.counter), self.prefix + rec.device_id + "/rec",
                              rec.raw.encode(), rec.received_at_s))
        self._commit([], rejections + extra)

    # --- stage 2: one transaction ------------------------------------------------------------

    def _commit(self, prepared, rejections):
        stats = dict.fromkeys(self.counts, 0)
        reasons = {}
        with self.db.transaction():
            self.ledger.lock()
            batch = _Batch(self, stats)
            batch.load_states({item[1].device_id if item[0] == "rec" else item[1]
                               for item in prepared})
            for item in prepared:
                if item[0] == "hello":
                    batch.hello(item[1], item[2], item[3])
                    continue
                try:
                    batch.apply(item[1])
                except Rejected as exc:
                    batch.reject(exc, item[1])
            batch.flush()
            rejections = list(rejections) + batch.rejections
            for exc, _, _, _ in rejections:
                reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            self._audit(rejections)
            self._trim(len(rejections) + batch.events)
            acks = batch.acks()
        self._close_intervals(stats)
        for name, value in stats.items():
            self.counts[name] += value
        self.counts["batches"] += 1
        for reason, value in reasons.items():
            self.rejected[reason] += value
        return acks

    def _audit(self, rejections):
        if not rejections:
            return
        rows = []
        for exc, topic, payload, received_at_s in rejections:
            head = bytes(payload[:AUDIT_HEAD_BYTES]).decode("utf-8", "replace") if isinstance(
                payload, bytes | bytearray) else ""
            rows.append((exc.device_id, exc.counter, exc.reason, int(received_at_s),
                         str(topic)[:200], exc.detail[:500], head.replace("\x00", "\ufffd")))
        cursor = self.db._conn.cursor()
        cursor.executemany(self.db._sql(
            "INSERT INTO ingest_rejections (device_id, counter, reason, received_at_s, topic, "
            "detail, head) VALUES (?, ?, ?, ?, ?, ?, ?)"), rows)

    def _trim(self, written_rows):
        """Keep the audit tables bounded: a flood of garbage must not fill the disk."""
        self._rows_since_trim += written_rows
        if self._rows_since_trim < _TRIM_EVERY_ROWS:
            return
        self._rows_since_trim = 0
        for table in ("ingest_rejections", "ingest_events"):
            self.db.execute(f"DELETE FROM {table} WHERE id <= "  # table names are ours, not input
                            f"(SELECT MAX(id) FROM {table}) - ?", (self.audit_rows_max,))

    def event(self, device_id, kind, detail, at_s):
        """Append an audited event (baseline, skip, unsynced time) to ingest_events."""
        self.db.execute("INSERT INTO ingest_events (device_id, kind, detail, at_s) "
                        "VALUES (?, ?, ?, ?)", (device_id, kind, detail, int(at_s)))

    # --- intervals ---------------------------------------------------------------------------

    def watermark_s(self):
        """Event time up to which every interval may close (None before any record)."""
        row = self.db.one("SELECT MIN(last_event_s), MAX(last_event_s) FROM ingest_devices "
                          "WHERE settled_counter > 0")
        if row is None or row[0] is None:
            return None
        return max(row[0], row[1] - self.grace_s)

    def _close_intervals(self, stats):
        """Close what the watermark passed, in its own transaction after the records'.

        A refusal here (say, a missing service key) must not send the records back to the
        devices as rejected: they are settled and acked; closing is retried next batch.
        """
        try:
            with self.db.transaction():
                self.ledger.lock()
                self._close_ready(stats)
        except (LedgerError, *self.db.errors) as exc:
            stats["close_failures"] += 1
            self.last_close_error = str(exc)[:300]

    def _close_ready(self, stats):
        watermark = self.watermark_s()
        if watermark is None:
            return
        start = self.ledger.next_open_interval()
        if start is None:
            row = self.db.one("SELECT MIN(interval_start_s) FROM ingest_open_energy")
            if row is None or row[0] is None:
                return
            start = row[0]
        for _ in range(CLOSES_PER_BATCH_MAX):
            if start + self.interval_s > watermark:
                return
            metered = {member: (import_wh, export_wh) for member, import_wh, export_wh in
                       self.db.all("SELECT member, import_wh, export_wh FROM ingest_open_energy "
                                   "WHERE interval_start_s = ?", (start,))}
            self.ledger.settle_interval(start, metered)
            self.db.execute("DELETE FROM ingest_open_energy WHERE interval_start_s = ?", (start,))
            stats["intervals_closed"] += 1
            start += self.interval_s

    # --- reporting ---------------------------------------------------------------------------

    def status(self):
        """Counters for the status line and /metrics (this process since start)."""
        watermark = self.watermark_s()
        return {"counts": dict(self.counts), "rejected": dict(self.rejected),
                "watermark_s": watermark, "next_open_interval_s": self.ledger.next_open_interval()}

    def ack_of(self, device_id):
        row = self.db.one("SELECT settled_counter FROM ingest_devices WHERE device_id = ?",
                          (device_id,))
        return None if row is None else row[0]


def parse_record(text):
    """`ocmf.parse(text, strict=True)`, with faster readers where they cannot differ.

    The firmware's exact-JSON reader is the definition, but in pure Python it costs more
    than the signature check. The layout our meters write is read by one regular
    expression (`ocmf_fast`); other plain input (ASCII, no escapes, sections that are
    bare objects, shallow, short numbers) by CPython's C JSON decoder, which yields the
    same objects, the record then being built by the same `ocmf` code. Anything else,
    and every refusal, goes through `ocmf.parse`, so accepted records and error messages
    are the firmware's.
    """
    record = ocmf_fast.parse(text)
    if record is not None:
        return record
    if text.isascii() and "\\" not in text:
        try:
            record = _fast_parse(text)
        except (ValueError, TypeError, RecursionError):
            record = None
    if record is None or record.problems:
        return ocmf.parse(text, strict=True)
    return record


def _json_number(text):
    if len(text) > 40:
        raise ValueError("number too long")
    return Number(text)


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs):
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate key")
    return found


_SCALARS = (str, Number, bool, type(None))


def _shallow(obj):
    """True for the shapes records have: scalars, lists of scalars, RD as objects of scalars.

    Anything nested deeper takes the firmware parser (which limits depth).
    """
    for key, value in obj.items():
        if isinstance(value, _SCALARS):
            continue
        if not isinstance(value, list):
            return False
        for item in value:
            if isinstance(item, dict) and key == "RD":
                if not all(isinstance(v, _SCALARS) for v in item.values()):
                    return False
            elif not isinstance(item, _SCALARS):
                return False
    return True


def _loads_object(text):
    if not (text.startswith("{") and text.endswith("}")):
        return None
    value = json.loads(text, parse_int=_json_number, parse_float=_json_number,
                       parse_constant=_refuse_constant, object_pairs_hook=_unique_pairs)
    return value if _shallow(value) else None


def _fast_parse(text):
    sections = text.strip().split("|")
    if len(sections) != 3 or sections[0] != "OCMF":
        return None
    payload, sig = _loads_object(sections[1]), _loads_object(sections[2])
    if payload is None or sig is None:
        return None
    rd = payload.get("RD")
    if not isinstance(rd, list) or not 1 <= len(rd) <= ocmf.READINGS_MAX or any(
            not isinstance(entry, dict) for entry in rd):
        return None
    signature = ocmf._signature_bytes(sig)
    problems = []
    ocmf._check_payload_fields(payload, problems)
    return ocmf.Record(sections[1], payload, sig, signature, problems)


def _parse_hello(payload, device_id):
    """The declared skipped range (first, last) of a hello, or None."""
    try:
        hello = json.loads(bytes(payload).decode())
    except (UnicodeError, ValueError):
        raise Rejected("bad_hello", "hello is not JSON", device_id) from None
    if not isinstance(hello, dict):
        raise Rejected("bad_hello", "hello must be a JSON object", device_id)
    skipped = hello.get("skipped")
    if skipped is None:
        return None
    if (not isinstance(skipped, list) or len(skipped) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in skipped)
            or not 1 <= skipped[0] <= skipped[1] < COUNTER_MAX
            or skipped[1] - skipped[0] > PENDING_AHEAD_MAX * 16):
        raise Rejected("bad_hello", "skipped must be [first, last] counters", device_id)
    return (skipped[0], skipped[1])


class _Batch:
    """The per-transaction working set: device states, new rows, open-interval energy."""

    def __init__(self, ingest, stats):
        self.ingest = ingest
        self.db = ingest.db
        self.stats = stats
        self.states = {}
        self.touched = []
        self.new_rows = {}  # (device, counter) -> Record settled in this batch, not yet written
        self.open_energy = {}
        self.rejections = []  # (Rejected, topic, payload, received_at_s)
        self.events = 0
        self.next_open = ingest.ledger.next_open_interval()

    def event(self, device_id, kind, detail, at_s):
        self.events += 1
        self.ingest.event(device_id, kind, detail, at_s)

    def reject(self, exc, rec):
        self.rejections.append((exc, f"{self.ingest.prefix}{rec.device_id}/rec",
                                rec.raw.encode(), rec.received_at_s))

    def load_states(self, device_ids):
        ids = sorted(device_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.all(
                    "SELECT device_id, settled_counter, import_wh, export_wh, sig_hash, "
                    f"last_event_s, pending_count FROM ingest_devices WHERE device_id IN ({marks})",
                    chunk):
                self.states[row[0]] = DeviceState(*row)

    def _touch(self, device_id):
        if device_id not in self.touched:
            self.touched.append(device_id)

    def _stored_hash(self, device_id, counter):
        new = self.new_rows.get((device_id, counter))
        if new is not None:
            return new.sig_hash
        row = self.db.one("SELECT sig_hash FROM ingest_records WHERE device_id = ? AND counter = ?",
                          (device_id, counter))
        return None if row is None else row[0]

    def apply(self, rec):
        self._touch(rec.device_id)
        state = self.states.get(rec.device_id)
        if state is None:
            state = DeviceState(rec.device_id, 0, 0, 0, None, rec.event_s, 0, dirty=True)
            self.states[rec.device_id] = state
        if state.settled_counter == 0:
            self._before_baseline(rec, state)
            return
        if rec.counter <= state.settled_counter or rec.counter > state.settled_counter + 1:
            known = self._stored_hash(rec.device_id, rec.counter)
            if known == rec.sig_hash:
                self.stats["duplicates"] += 1
                return
            if known is not None:
                raise Rejected("counter_reused", "a different record holds this counter",
                               rec.device_id, rec.counter)
            if rec.counter <= state.settled_counter:
                raise Rejected("stale_counter", f"counter at or below the ack "
                               f"{state.settled_counter}", rec.device_id, rec.counter)
            if rec.counter - state.settled_counter > PENDING_AHEAD_MAX:
                raise Rejected("counter_too_far", f"more than {PENDING_AHEAD_MAX} ahead of the "
                               f"ack {state.settled_counter}", rec.device_id, rec.counter)
            self._store_pending(rec, state)
            self._advance(state)
            return
        self._settle(rec, state)
        if state.pending_count:
            self._advance(state)

    def _before_baseline(self, rec, state):
        """Collect a new device's records until its baseline (first counter) is known.

        The baseline is counter 1, or else the lowest counter received once the device's
        first record waited BASELINE_WAIT_S of receive time (a device enrolled mid-life, or
        whose oldest records were lost): a record that merely overtook an older one in
        flight must not become the baseline and swallow the older one's energy.
        """
        known = self._stored_hash(rec.device_id, rec.counter)
        if known is None and rec.counter == 1 and not state.pending_count:
            self._baseline(rec, state, rec.received_at_s)  # the usual case: nothing to wait for
            return
        if known == rec.sig_hash:
            self.stats["duplicates"] += 1
        elif known is not None:
            raise Rejected("counter_reused", "a different record holds this counter",
                           rec.device_id, rec.counter)
        elif state.pending_count >= PENDING_AHEAD_MAX:
            raise Rejected("counter_too_far", f"{PENDING_AHEAD_MAX} records already wait for "
                           "this device's baseline", rec.device_id, rec.counter)
        else:
            self._store_pending(rec, state)
        row = self.db.one(
            "SELECT counter, received_at_s, event_s, sync, import_wh, export_wh, sig_hash, "
            "chain_hash, raw FROM ingest_records WHERE device_id = ? AND state = 'pending' "
            "ORDER BY counter LIMIT 1", (rec.device_id,))
        first_received_s = self.db.one(
            "SELECT MIN(received_at_s) FROM ingest_records WHERE device_id = ? "
            "AND state = 'pending'", (rec.device_id,))[0]
        if row is None or (row[0] != 1
                           and rec.received_at_s - first_received_s < BASELINE_WAIT_S):
            return
        self._baseline(Record(rec.device_id, *row, stored=True), state, rec.received_at_s)

    def _baseline(self, base, state, at_s):
        """Settle `base` as the device's first record: its registers are the starting point."""
        state.settled_counter = base.counter
        state.import_wh, state.export_wh = base.import_wh, base.export_wh
        state.sig_hash = base.sig_hash
        state.last_event_s = base.event_s
        if base.stored:
            state.pending_count -= 1
        state.dirty = True
        self._settled(base, None, 0, 0)
        self.event(base.device_id, "baseline", f"counter {base.counter} import_wh "
                   f"{base.import_wh} export_wh {base.export_wh}", at_s)
        self._advance(state)

    def _store_pending(self, rec, state):
        self.db.execute(
            "INSERT INTO ingest_records (device_id, counter, state, received_at_s, event_s, sync, "
            "import_wh, export_wh, sig_hash, chain_hash, raw) "
            "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.device_id, rec.counter, rec.received_at_s, rec.event_s, rec.sync, rec.import_wh,
             rec.export_wh, rec.sig_hash, rec.chain_hash, rec.raw))
        state.pending_count += 1
        state.dirty = True
        self.stats["pending"] += 1

    def _settle(self, rec, state):
        """Settle the record right after the ack: chain, registers, delta, interval."""
        if rec.chain_hash is not None and state.sig_hash is not None \
                and rec.chain_hash != state.sig_hash:
            raise Rejected("chain_broken", f"XC does not hash counter {state.settled_counter}",
                           rec.device_id, rec.counter)
        if rec.import_wh < state.import_wh or rec.export_wh < state.export_wh:
            raise Rejected("register_decreased", f"registers {rec.import_wh}/{rec.export_wh} Wh "
                           f"below {state.import_wh}/{state.export_wh} Wh", rec.device_id,
                           rec.counter)
        import_delta = rec.import_wh - state.import_wh
        export_delta = rec.export_wh - state.export_wh
        if rec.sync == "U":
            self.stats["unsynced"] += 1
            self.event(rec.device_id, "unsynced_time",
                              f"counter {rec.counter} settled at receive time {rec.event_s}",
                              rec.received_at_s)
        interval_s = rec.event_s - rec.event_s % self.ingest.interval_s
        state.settled_counter = rec.counter
        state.import_wh, state.export_wh = rec.import_wh, rec.export_wh
        state.sig_hash = rec.sig_hash
        state.last_event_s = max(state.last_event_s, rec.event_s)
        state.dirty = True
        self._settled(rec, interval_s, import_delta, export_delta)
        if not import_delta and not export_delta:
            return
        member = self.ingest._devices[rec.device_id][0]
        if self.next_open is not None and interval_s < self.next_open:
            result = self.ingest.ledger.book_correction(
                f"ingest:{rec.device_id}:{rec.counter}", interval_s, member, import_delta,
                export_delta)
            if not result.get("replayed"):
                self.stats["corrections"] += 1
            return
        key = (interval_s, member)
        old = self.open_energy.get(key, (0, 0))
        self.open_energy[key] = (old[0] + import_delta, old[1] + export_delta)

    def _settled(self, rec, interval_s, import_delta, export_delta):
        self.stats["settled"] += 1
        if rec.stored:
            self.db.execute(
                "UPDATE ingest_records SET state = 'settled', interval_start_s = ?, "
                "import_delta_wh = ?, export_delta_wh = ? WHERE device_id = ? AND counter = ?",
                (interval_s, import_delta, export_delta, rec.device_id, rec.counter))
        else:
            rec.interval_start_s = interval_s
            rec.deltas = (import_delta, export_delta)
            self.new_rows[(rec.device_id, rec.counter)] = rec

    def _advance(self, state):
        """Settle waiting records in counter order; jump declared skips; stop at a real gap."""
        if not state.pending_count:
            return
        rows = self.db.all(
            "SELECT counter, received_at_s, event_s, sync, import_wh, export_wh, sig_hash, "
            "chain_hash, raw FROM ingest_records WHERE device_id = ? AND state = 'pending' "
            "ORDER BY counter", (state.device_id,))
        skips = self.db.all("SELECT first_counter, last_counter FROM ingest_skips "
                            "WHERE device_id = ? ORDER BY first_counter", (state.device_id,))
        for row in rows:
            rec = Record(state.device_id, row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                         row[7], row[8], stored=True)
            while rec.counter > state.settled_counter + 1:
                wanted = state.settled_counter + 1
                skip = next((s for s in skips if s[0] <= wanted <= s[1]), None)
                if skip is None:
                    return
                jump_to = min(skip[1], rec.counter - 1)
                self.event(state.device_id, "skip_applied",
                                  f"counters {wanted}..{jump_to} declared skipped by the device",
                                  rec.received_at_s)
                self.stats["skips"] += 1
                state.settled_counter = jump_to
                state.sig_hash = None  # the chain restarts after a declared gap
                state.dirty = True
            state.pending_count -= 1
            state.dirty = True
            try:
                self._settle(rec, state)
            except Rejected as exc:
                # A stored record that fails its predecessor's checks is removed and audited;
                # the gap it leaves waits for a valid record (or a declared skip).
                self.db.execute("DELETE FROM ingest_records WHERE device_id = ? AND counter = ?",
                                (state.device_id, rec.counter))
                self.reject(exc, rec)
                return

    def hello(self, device_id, skipped, received_at_s):
        self._touch(device_id)
        if skipped is None:
            return
        inserted = self.db.execute(
            "INSERT INTO ingest_skips (device_id, first_counter, last_counter) VALUES (?, ?, ?) "
            "ON CONFLICT (device_id, first_counter) DO NOTHING",
            (device_id, skipped[0], skipped[1])).rowcount
        if inserted:
            self.event(device_id, "skip_declared",
                       f"device declared counters {skipped[0]}..{skipped[1]} skipped",
                       received_at_s)
        state = self.states.get(device_id)
        if state is not None and state.settled_counter:
            self._advance(state)

    def flush(self):
        """Write what the batch changed: new rows, device states, open-interval energy."""
        cursor = self.db._conn.cursor()
        if self.new_rows:
            cursor.executemany(self.db._sql(
                "INSERT INTO ingest_records (device_id, counter, state, received_at_s, event_s, "
                "sync, import_wh, export_wh, sig_hash, chain_hash, interval_start_s, "
                "import_delta_wh, export_delta_wh, raw) "
                "VALUES (?, ?, 'settled', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                [(r.device_id, r.counter, r.received_at_s, r.event_s, r.sync, r.import_wh,
                  r.export_wh, r.sig_hash, r.chain_hash, r.interval_start_s, r.deltas[0],
                  r.deltas[1], r.raw) for r in self.new_rows.values()])
        dirty = [s for s in self.states.values() if s.dirty]
        if dirty:
            cursor.executemany(self.db._sql(
                "INSERT INTO ingest_devices (device_id, settled_counter, import_wh, export_wh, "
                "sig_hash, last_event_s, pending_count) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET settled_counter = excluded.settled_counter, "
                "import_wh = excluded.import_wh, export_wh = excluded.export_wh, "
                "sig_hash = excluded.sig_hash, last_event_s = excluded.last_event_s, "
                "pending_count = excluded.pending_count"),
                [(s.device_id, s.settled_counter, s.import_wh, s.export_wh, s.sig_hash,
                  s.last_event_s, s.pending_count) for s in dirty])
        if self.open_energy:
            cursor.executemany(self.db._sql(
                "INSERT INTO ingest_open_energy (interval_start_s, member, import_wh, export_wh) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (interval_start_s, member) DO UPDATE SET "
                "import_wh = ingest_open_energy.import_wh + excluded.import_wh, "
                "export_wh = ingest_open_energy.export_wh + excluded.export_wh"),
                [(iv, member, imp, exp) for (iv, member), (imp, exp) in
                 sorted(self.open_energy.items())])

    def acks(self):
        prefix = self.ingest.prefix
        return [(f"{prefix}{device_id}/ack",
                 json.dumps({"ack": self.states[device_id].settled_counter}).encode())
                for device_id in self.touched if device_id in self.states]
