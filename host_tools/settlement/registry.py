"""The device registry: which public key may sign records for which member.

Devices live in the ledger's own database (same adapter, same transactions),
so enrolling a device and settling its first record can never disagree about
whether it exists. The ledger's schema version is the ledger's business; the
tables here carry their own version under the meta key `ingest_schema_version`
and are created on first use by `ensure_schema` (shared with the ingest).

A device id is derived from its key (`energo.identity.device_id`), so nobody
can enroll a key under someone else's id; an identical enrollment is a no-op,
so provisioning scripts can simply run again.
"""
import time

from energo import identity, p256
from host_tools.settlement.ledger import Ledger

INGEST_SCHEMA_VERSION = 1
ROLES = ("meter", "charger")
_DEVICE_ID_CHARS_MAX = 64


class RegistryError(ValueError):
    """An enrollment was refused; nothing was written. `code` is stable for APIs."""

    code = "registry_refused"

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _tables(backend):
    # BIGSERIAL/INTEGER PRIMARY KEY: each engine's own way to number audit rows in order.
    serial = "BIGSERIAL PRIMARY KEY" if backend == "postgresql" else "INTEGER PRIMARY KEY"
    return [
        """CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            member TEXT NOT NULL,
            public_key_hex TEXT NOT NULL UNIQUE,
            enrolled_at_s BIGINT NOT NULL)""",
        # Per device: the highest counter settled with no gap (the ack) and the registers,
        # signature hash and event time of that record: everything the next record is
        # checked against. pending_count says whether stored, unsettled records wait.
        """CREATE TABLE IF NOT EXISTS ingest_devices (
            device_id TEXT PRIMARY KEY REFERENCES devices (device_id),
            settled_counter BIGINT NOT NULL,
            import_wh BIGINT NOT NULL,
            export_wh BIGINT NOT NULL,
            sig_hash TEXT,
            last_event_s BIGINT NOT NULL,
            pending_count BIGINT NOT NULL)""",
        # Every accepted record, raw, once: the UNIQUE key is what makes delivery idempotent.
        """CREATE TABLE IF NOT EXISTS ingest_records (
            device_id TEXT NOT NULL REFERENCES devices (device_id),
            counter BIGINT NOT NULL,
            state TEXT NOT NULL,
            received_at_s BIGINT NOT NULL,
            event_s BIGINT NOT NULL,
            sync TEXT NOT NULL,
            import_wh BIGINT NOT NULL,
            export_wh BIGINT NOT NULL,
            sig_hash TEXT NOT NULL,
            chain_hash TEXT,
            interval_start_s BIGINT,
            import_delta_wh BIGINT,
            export_delta_wh BIGINT,
            raw TEXT NOT NULL,
            PRIMARY KEY (device_id, counter))""",
        "CREATE INDEX IF NOT EXISTS ingest_records_state ON ingest_records (device_id, state)",
        # Energy of intervals not closed yet, per member, summed from settled records.
        """CREATE TABLE IF NOT EXISTS ingest_open_energy (
            interval_start_s BIGINT NOT NULL,
            member TEXT NOT NULL,
            import_wh BIGINT NOT NULL,
            export_wh BIGINT NOT NULL,
            PRIMARY KEY (interval_start_s, member))""",
        """CREATE TABLE IF NOT EXISTS ingest_skips (
            device_id TEXT NOT NULL REFERENCES devices (device_id),
            first_counter BIGINT NOT NULL,
            last_counter BIGINT NOT NULL,
            PRIMARY KEY (device_id, first_counter))""",
        f"""CREATE TABLE IF NOT EXISTS ingest_rejections (
            id {serial},
            device_id TEXT,
            counter BIGINT,
            reason TEXT NOT NULL,
            received_at_s BIGINT NOT NULL,
            topic TEXT NOT NULL,
            detail TEXT NOT NULL,
            head TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS ingest_events (
            id {serial},
            device_id TEXT,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            at_s BIGINT NOT NULL)""",
    ]


def ensure_schema(db):
    """Create the registry and ingest tables once; refuse a version this code does not know."""
    with db.transaction():
        found = db.get_meta("ingest_schema_version")
        if found is not None:
            if found != str(INGEST_SCHEMA_VERSION):
                raise RegistryError("bad_schema", f"ingest schema version {found} is not "
                                    f"supported (this code knows {INGEST_SCHEMA_VERSION})")
            return False
        if db.backend == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(7231958)")
        for statement in _tables(db.backend):
            db.execute(statement)
        db.set_meta("ingest_schema_version", str(INGEST_SCHEMA_VERSION))
        return True


def _row_dict(row):
    return {"device_id": row[0], "role": row[1], "member": row[2], "public_key_hex": row[3],
            "enrolled_at_s": row[4]}


class Registry:
    """Enrolled devices over a `Ledger`'s database."""

    def __init__(self, ledger, clock_s=None):
        if not isinstance(ledger, Ledger):
            raise TypeError("Registry needs a Ledger")
        self.ledger = ledger
        self.db = ledger.db
        self.clock_s = clock_s or (lambda: int(time.time()))
        ensure_schema(self.db)

    def enroll(self, device_id, spki_der, role, member):
        """Register `device_id` with its key for `member`; returns the stored device.

        Checks, in order: role, key (a P-256 SPKI), id derived from that key, member
        exists, and that neither id nor key is taken by a different enrollment.
        """
        if role not in ROLES:
            raise RegistryError("bad_role", f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(spki_der, bytes | bytearray):
            raise RegistryError("bad_key", "the public key must be DER bytes")
        try:
            point = p256.spki_decode(bytes(spki_der))
        except ValueError as exc:
            raise RegistryError("bad_key", f"not a P-256 public key: {exc}") from None
        expected = identity.device_id(point, role)
        if not isinstance(device_id, str) or device_id != expected:
            raise RegistryError(
                "id_mismatch", f"device id {str(device_id)[:_DEVICE_ID_CHARS_MAX]!r} does not "
                f"belong to this key (its {role} id is {expected})")
        key_hex = p256.spki_encode(point).hex().upper()
        with self.db.transaction():
            self.ledger.lock()
            if not self.ledger.is_member(member):
                raise RegistryError("unknown_member", f"no member {member!r}")
            existing = self.get(device_id)
            if existing is not None:
                if (existing["role"], existing["member"], existing["public_key_hex"]) == (
                        role, member, key_hex):
                    return existing
                raise RegistryError(
                    "device_taken", f"device {device_id} is already enrolled "
                    f"as {existing['role']} of member {existing['member']}")
            if self.db.one("SELECT 1 FROM devices WHERE public_key_hex = ?", (key_hex,)):
                raise RegistryError("device_taken", "this key is already enrolled")
            enrolled_at_s = self.clock_s()
            self.db.execute(
                "INSERT INTO devices (device_id, role, member, public_key_hex, enrolled_at_s) "
                "VALUES (?, ?, ?, ?, ?)", (device_id, role, member, key_hex, enrolled_at_s))
        return {"device_id": device_id, "role": role, "member": member,
                "public_key_hex": key_hex, "enrolled_at_s": enrolled_at_s}

    def get(self, device_id):
        if not isinstance(device_id, str) or len(device_id) > _DEVICE_ID_CHARS_MAX:
            return None
        row = self.db.one("SELECT device_id, role, member, public_key_hex, enrolled_at_s "
                          "FROM devices WHERE device_id = ?", (device_id,))
        return None if row is None else _row_dict(row)

    def list(self):
        return [_row_dict(row) for row in self.db.all(
            "SELECT device_id, role, member, public_key_hex, enrolled_at_s FROM devices "
            "ORDER BY device_id")]
