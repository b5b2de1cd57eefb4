"""Shared helpers for the charge-and-pay service tests (no tests here).

`EvKit` is a community with a driver (whose vehicle pays) and an owner (whose charger is paid),
a ledger, the device registry and the EV service, all on one clock the test moves. Records,
offers and authorizations are built with the firmware's own modules (energo.ocmf, evproto,
p256), the way a charger and a vehicle build them; no firmware runs.
"""
import hashlib
import json

from energo import evproto, ocmf, p256
from host_tools.settlement import Ledger, SettlementConfig
from host_tools.settlement.ev import EvService
from host_tools.settlement.ledger import MONEY, member_account
from host_tools.settlement.registry import Registry

T0_S = 1_795_000_500 - 1_795_000_500 % 900
COMMUNITY = "demo"
CREDIT_MICRO = 20_000_000
PRICE = 250_000
FEE = 30_000


def key(name):
    """A fixed private key per name, so every run signs the same bytes."""
    return hashlib.sha256(b"energo ev test " + name.encode()).digest()


def spki(priv):
    return evproto.spki_hex(p256.public_key(priv))


class EvKit:
    def __init__(self, url, key_path, vehicle_limit=None):
        self.now = T0_S + 100
        config = SettlementConfig(member_credit_limit_micro=CREDIT_MICRO)
        self.ledger = Ledger.open(url, config=config, key_path=str(key_path),
                                  clock_ms=lambda: self.now * 1000)
        for member in ("driver", "owner", "other"):
            self.ledger.add_member(member)
        self.registry = Registry(self.ledger, clock_s=lambda: self.now)
        self.charger = key("charger")
        self.station = self.enroll(self.charger, "owner")
        self.vehicle_key = key("vehicle")
        self.ev = EvService(self.ledger, self.registry, COMMUNITY, clock_s=lambda: self.now)
        self.vehicle = self.ev.add_vehicle(spki(self.vehicle_key), "driver",
                                           vehicle_limit)["vehicle_id"]
        self.counter = 0
        self.register_wh = 1_000_000
        self.nonces = 0

    def enroll(self, priv, member):
        station = evproto.key_id(spki(priv), "charger")
        self.registry.enroll(station, bytes.fromhex(spki(priv)), "charger", member)
        return station

    def close(self):
        self.ledger.close()

    # --- messages -----------------------------------------------------------------------------

    def nonce(self):
        self.nonces += 1
        return hashlib.sha256(b"nonce%d" % self.nonces).hexdigest()[:32]

    def offer(self, nonce, price=PRICE, fee=FEE, at=None, station=None, priv=None):
        return evproto.sign_message(priv or self.charger, {
            "t": "offer", "station": station or self.station, "nonce": nonce, "price": price,
            "fee": fee, "imax": 32, "at": self.now if at is None else at})

    def auth(self, nonce, emax=20_000, cmax=8_000_000, exp=None, station=None, priv=None):
        priv = priv or self.vehicle_key
        pub = spki(priv)
        return evproto.sign_message(priv, {
            "t": "auth", "vehicle": evproto.key_id(pub, "vehicle"), "pub": pub,
            "station": station or self.station, "nonce": nonce, "emax": emax, "cmax": cmax,
            "exp": self.now + 600 if exp is None else exp})

    def records(self, session, energy_wh, middle=1, stop="E", priv=None, counter_step=1):
        """B, `middle` C records and a stop record moving the import register by energy_wh."""
        out = []
        steps = middle + 1
        for i in range(steps + 1):
            tx = "B" if i == 0 else (stop if i == steps else "C")
            self.counter += counter_step if i else 1
            wh = self.register_wh + energy_wh * i // steps
            payload = ocmf.build_payload(
                ("energo", self.station, "0.1.0"), f"T{self.counter}",
                ("Energo", "SDM630", self.station),
                [ocmf.reading((self.now + 60 * i) * 1000, tx, wh)], [("XS", session)])
            out.append(ocmf.sign_payload(priv or self.charger, payload))
        self.register_wh += energy_wh
        return out

    def meter(self, session, last_record, wh, priv=None):
        return evproto.sign_message(priv or self.vehicle_key, {
            "t": "meter", "session": session, "vehicle": self.vehicle, "station": self.station,
            "record": evproto.record_hash(last_record), "wh": wh})

    # --- the service --------------------------------------------------------------------------

    def send(self, request, station=None):
        """The service's one reply (a dict) to a request on `<station>/ev`."""
        topic = f"energo/v1/{COMMUNITY}/{station or self.station}/ev"
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        replies = self.ev.handle(topic, payload)
        assert len(replies) == 1, replies
        assert replies[0][0] == topic + "/reply"
        return json.loads(replies[0][1])

    def authorize(self, nonce=None, **auth_kw):
        nonce = nonce or self.nonce()
        offer, auth = self.offer(nonce), self.auth(nonce, **auth_kw)
        return nonce, offer, auth, self.send({"t": "authorize", "offer": offer, "auth": auth})

    def close_request(self, session, offer, auth, records, meter=None, offline=False):
        return {"t": "close", "session": session, "offer": offer, "auth": auth,
                "records": records, "meter": meter, "offline": offline}

    def money(self):
        """Every money balance that a session may touch, and the open holds' total."""
        balances = {m: self.ledger.balance(member_account(m), MONEY)
                    for m in ("driver", "owner", "other")}
        held = self.ledger.db.one("SELECT COALESCE(SUM(amount_micro - captured_micro), 0) "
                                  "FROM holds WHERE state = 'open'")[0]
        return balances, int(held)

    def session_rows(self):
        return self.ledger.db.one("SELECT COUNT(*) FROM ev_sessions")[0]


def seed_session(ledger, payer, owner, session="ab" * 16):
    """One settled session row for API tests that need a session without running a charger."""
    from host_tools.settlement.ev_accounts import ensure_schema

    ensure_schema(ledger.db)
    ledger.db.execute(
        "INSERT INTO ev_sessions (session, station, vehicle, member, owner, state, offline, "
        "price_micro_per_kwh, fee_micro_per_kwh, hold_micro, emax_wh, offer, auth, wh, "
        "energy_micro, fee_micro, total_micro, released_micro, stop, receipt, authorized_at_s, "
        "settled_at_s) VALUES (?, 'c-000000000000', 'v-000000000000', ?, ?, 'settled', 0, "
        "250000, 30000, 1000, 4, '', '', 3, 750, 90, 840, 160, 'E', 'r', 1, 2)",
        (session, payer, owner))
    return session
