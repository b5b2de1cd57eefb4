"""Charge-and-pay bookkeeping: vehicles, station fees, sessions, and the community's signatures.

Vehicles are registered by key (their id derives from it, as a device's does) with the member
whose money pays for their charging and an offline limit; a charger is an enrolled device of
role `charger` whose member is the owner paid for its sessions, with a per-station service fee
(the config's default until set). The community key is the service key the ledger's
checkpoints are signed with, so one key vouches for both. Tables live in the ledger's database
(SQLite or PostgreSQL, same SQL) and are created on first use, like the registry's.
"""
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import evproto
from energo.evproto import ProtocolError
from host_tools.settlement.ledger import validate_amount

EV_SCHEMA_VERSION = 1
CERT_VALIDITY_S = 30 * 86_400
ALLOW_VALIDITY_S = 86_400
_SIGNATURE_HEX_MAX = 146

_TABLES = [
    """CREATE TABLE IF NOT EXISTS ev_vehicles (
        vehicle_id TEXT PRIMARY KEY,
        public_key_hex TEXT NOT NULL UNIQUE,
        member TEXT NOT NULL,
        offline_limit_micro BIGINT NOT NULL CHECK (offline_limit_micro >= 0),
        added_at_s BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ev_stations (
        station_id TEXT PRIMARY KEY REFERENCES devices (device_id),
        fee_micro_per_kwh BIGINT NOT NULL CHECK (fee_micro_per_kwh >= 0))""",
    # One row per nonce ever granted or settled: the nonce table and the session journal.
    """CREATE TABLE IF NOT EXISTS ev_sessions (
        session TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        vehicle TEXT NOT NULL,
        member TEXT NOT NULL,
        owner TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('authorized', 'settled')),
        offline INTEGER NOT NULL,
        price_micro_per_kwh BIGINT NOT NULL,
        fee_micro_per_kwh BIGINT NOT NULL,
        hold_micro BIGINT NOT NULL,
        emax_wh BIGINT NOT NULL,
        offer TEXT NOT NULL,
        auth TEXT NOT NULL,
        grant_msg TEXT,
        wh BIGINT,
        energy_micro BIGINT,
        fee_micro BIGINT,
        total_micro BIGINT,
        released_micro BIGINT,
        stop TEXT,
        receipt TEXT,
        begin_record TEXT,
        end_record TEXT,
        meter TEXT,
        authorized_at_s BIGINT NOT NULL,
        settled_at_s BIGINT)""",
    "CREATE INDEX IF NOT EXISTS ev_sessions_member ON ev_sessions (member, authorized_at_s)",
]


class EvError(ValueError):
    """An administrative request refused (bad key, unknown member…); nothing was written."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def ensure_schema(db):
    """Create the charge-and-pay tables once; refuse a version this code does not know."""
    with db.transaction():
        found = db.get_meta("ev_schema_version")
        if found is not None:
            if found != str(EV_SCHEMA_VERSION):
                raise EvError("bad_schema", f"ev schema version {found} is not supported")
            return
        if db.backend == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(7231959)")
        for statement in _TABLES:
            db.execute(statement)
        db.set_meta("ev_schema_version", str(EV_SCHEMA_VERSION))


class EvAccounts:
    """Vehicles, stations and signed documents over a ledger (and its device registry)."""

    def __init__(self, ledger, registry, community=None, clock_s=None):
        if community is not None:  # None: administration only, nothing community-signed
            evproto._check("community", community, "community")
        self.ledger, self.registry, self.db = ledger, registry, ledger.db
        self.community = community
        self.clock_s = clock_s or (lambda: int(time.time()))
        ensure_schema(self.db)
        self._key = None

    # --- vehicles -----------------------------------------------------------------------------

    def add_vehicle(self, public_key, member, offline_limit_micro=None):
        """Register a vehicle key for `member`; the same registration again is a no-op."""
        try:
            pub_hex = evproto.spki_hex(public_key)
        except ProtocolError:
            raise EvError("bad_key", "the vehicle key is not a P-256 public key") from None
        vehicle_id = evproto.key_id(pub_hex, "vehicle")
        limit = self.ledger.config.ev_offline_limit_micro if offline_limit_micro is None \
            else offline_limit_micro
        try:
            validate_amount("offline limit", limit, minimum=0)
        except ValueError as exc:
            raise EvError("bad_limit", str(exc)) from None
        with self.db.transaction():
            self.ledger.lock()
            if not self.ledger.is_member(member):
                raise EvError("unknown_member", f"no member {member!r}")
            existing = self.vehicle(vehicle_id)
            if existing is not None:
                if (existing["member"], existing["offline_limit_micro"]) == (member, limit):
                    return existing
                raise EvError("vehicle_taken", f"vehicle {vehicle_id} is already registered "
                              f"for member {existing['member']}")
            self.db.execute("INSERT INTO ev_vehicles (vehicle_id, public_key_hex, member, "
                            "offline_limit_micro, added_at_s) VALUES (?, ?, ?, ?, ?)",
                            (vehicle_id, pub_hex, member, limit, self.clock_s()))
            seq = int(self.db.get_meta("ev_allow_seq") or "0") + 1
            self.db.set_meta("ev_allow_seq", str(seq))
        return self.vehicle(vehicle_id)

    def vehicle(self, vehicle_id):
        row = self.db.one("SELECT vehicle_id, public_key_hex, member, offline_limit_micro, "
                          "added_at_s FROM ev_vehicles WHERE vehicle_id = ?", (vehicle_id,))
        return None if row is None else _vehicle_dict(row)

    def vehicles(self):
        return [_vehicle_dict(row) for row in self.db.all(
            "SELECT vehicle_id, public_key_hex, member, offline_limit_micro, added_at_s "
            "FROM ev_vehicles ORDER BY vehicle_id")]

    # --- stations -----------------------------------------------------------------------------

    def station(self, station_id):
        """{"station", "pub" (SPKI hex), "owner", "fee"} of an enrolled charger, or None."""
        device = self.registry.get(station_id)
        if device is None or device["role"] != "charger":
            return None
        row = self.db.one("SELECT fee_micro_per_kwh FROM ev_stations WHERE station_id = ?",
                          (station_id,))
        fee = self.ledger.config.ev_station_fee_micro_per_kwh if row is None else row[0]
        return {"station": station_id, "pub": device["public_key_hex"].lower(),
                "owner": device["member"], "fee": fee}

    def set_station_fee(self, station_id, fee_micro_per_kwh):
        """Set a charger's service fee (µ/kWh); its next certificate carries it."""
        try:
            evproto._check("price", fee_micro_per_kwh, "fee")
        except ProtocolError:
            raise EvError("bad_fee", "the fee must be an integer of µ/kWh, 0 to 10^9") from None
        with self.db.transaction():
            if self.station(station_id) is None:
                raise EvError("unknown_station", f"{str(station_id)[:64]!r} is not an enrolled "
                              "charger")
            updated = self.db.execute("UPDATE ev_stations SET fee_micro_per_kwh = ? "
                                      "WHERE station_id = ?", (fee_micro_per_kwh, station_id))
            if not updated.rowcount:
                self.db.execute("INSERT INTO ev_stations (station_id, fee_micro_per_kwh) "
                                "VALUES (?, ?)", (station_id, fee_micro_per_kwh))
        return self.station(station_id)

    # --- the community's signatures -----------------------------------------------------------

    def _signing_key(self):
        if self._key is None:
            self._key = self.ledger.signing_key()
        return self._key

    def community_key_hex(self):
        """The community (service) key as lower-case hex SPKI, as messages carry keys."""
        der = self._signing_key().public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return der.hex()

    def sign(self, body):
        """A signed line of `body` under the community key (bytes written by evproto)."""
        text = evproto.write_body(body)
        sig = self._signing_key().sign(text.encode(), ec.ECDSA(hashes.SHA256()))
        return evproto.join_signed(text, sig)

    def certificate(self, station_id):
        station = self.station(station_id)
        if station is None:
            raise ProtocolError("unknown-station", f"{station_id} is not an enrolled charger")
        return self.sign({"t": "cert", "community": self.community, "station": station_id,
                          "pub": station["pub"], "owner": station["owner"],
                          "fee": station["fee"], "exp": self.clock_s() + CERT_VALIDITY_S})

    def allow_list(self):
        """The signed allow-list: vehicles allowed offline, as many as fit in one message."""
        entries = []
        body = {"t": "allow", "community": self.community,
                "seq": int(self.db.get_meta("ev_allow_seq") or "0"),
                "exp": self.clock_s() + ALLOW_VALIDITY_S, "vehicles": entries}
        for vehicle in self.vehicles():
            if not vehicle["offline_limit_micro"]:
                continue
            entries.append({"id": vehicle["vehicle_id"], "pub": vehicle["public_key_hex"],
                            "limit": vehicle["offline_limit_micro"]})
            if len(evproto.write_body(body)) + 1 + _SIGNATURE_HEX_MAX > evproto.MESSAGE_MAX:
                entries.pop()
                break
        return self.sign(body)


def _vehicle_dict(row):
    return {"vehicle_id": row[0], "public_key_hex": row[1], "member": row[2],
            "offline_limit_micro": row[3], "added_at_s": row[4]}
