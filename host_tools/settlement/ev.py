"""Charge-and-pay in the settlement service: authorize → hold, close → capture → receipt.

The flows of docs/charging-protocol.md. Every request is checked completely before money
moves, and every refusal is a ProtocolError whose reason goes back to the charger, signed,
and into the counters; a refused request changes nothing. Money moves only through
`holds` (place on the vehicle's member, capture to the station owner's member account,
release of the rest) inside one database transaction with the session row, under the
ledger's lock, so two workers or a repeated request can never settle a session twice.

A session that is not closed within `ev_hold_expiry_s` of its authorization (its charger died,
or lost its link for days) gives its hold back to the driver (`expire_holds`, run by the
service once a minute); the session then shows as `expired`. Its records are still on the
charger's flash, and a close that arrives later is settled all the same: the cost, never above
the old hold, is paid from the driver's account directly (within the community's credit
limit; refused as `insufficient-funds` and tried again by the charger otherwise).
"""
import json

from energo import evproto
from energo.evproto import ProtocolError
from host_tools.settlement import ev_records, holds
from host_tools.settlement.errors import LedgerError
from host_tools.settlement.ev_accounts import EvAccounts, EvError  # noqa: F401 - re-exported
from host_tools.settlement.ledger import MONEY, Leg, member_account

REQUEST_BYTES_MAX = 1 << 20
_COLUMNS = ("session, station, vehicle, member, owner, state, offline, price_micro_per_kwh, "
            "fee_micro_per_kwh, hold_micro, emax_wh, offer, auth, grant_msg, wh, energy_micro, "
            "fee_micro, total_micro, released_micro, stop, receipt, begin_record, end_record, "
            "meter, authorized_at_s, settled_at_s")
_NAMES = [name.strip() for name in _COLUMNS.split(",")]


# A price the market superseded this recently still counts in an offer: several intervals can
# close at once (the service catching up on late records), and a charger hears of each new
# price only after it was published, so an offer made a moment earlier may carry one that is
# now two or more prices old.
PRICE_GRACE_MS = 60_000
_PRICES_SCANNED = 100  # a day of intervals: more cannot have closed within the grace


def hold_id(session):
    return "ev:" + session


class EvService(EvAccounts):
    """The service side of charge-and-pay over one ledger; `handle` is the MQTT entry point."""

    def __init__(self, ledger, registry, community=None, clock_s=None):
        super().__init__(ledger, registry, community, clock_s)
        self.prefix = f"energo/v1/{community}/"
        self.counts = {"sync": 0, "granted": 0, "settled": 0, "replayed": 0, "errors": 0,
                       "expired": 0}
        self.rejected = dict.fromkeys(evproto.REASONS, 0)

    # --- prices -------------------------------------------------------------------------------

    def accepted_prices(self, at_s):
        """The reference prices valid at `at_s`: of the market's prices recorded for intervals
        before it, the published one, the one before it (an offer made just before a new
        price still counts), and any older one that was still the published price less than
        PRICE_GRACE_MS ago; or the configured price when the service runs no market.
        Before the market's first price, the configured one was published (current_price):
        it is the one before the first, so an offer made just before that closed counts."""
        if self.db.get_meta("market_schema_version") is not None:
            rows = self.db.all("SELECT price_micro_per_kwh, recorded_at_ms, interval_start_s "
                               "FROM market_reference_prices WHERE interval_start_s < ? "
                               "ORDER BY interval_start_s DESC LIMIT ?", (at_s, _PRICES_SCANNED))
            if rows:
                (first_s,) = self.db.one("SELECT MIN(interval_start_s) "
                                         "FROM market_reference_prices")
                if rows[-1][2] == first_s:
                    rows.append((self.ledger.config.ev_reference_price_micro_per_kwh, None, None))
                since_ms = self.ledger.clock_ms() - PRICE_GRACE_MS
                accepted = {row[0] for row in rows[:2]}
                # rows[i] stopped being the published price when rows[i - 1] was recorded.
                for newer, older in zip(rows[1:], rows[2:], strict=False):
                    if newer[1] < since_ms:
                        break
                    accepted.add(older[0])
                return accepted
        return {self.ledger.config.ev_reference_price_micro_per_kwh}

    def current_price(self):
        """What a charger should offer now: the market's newest recorded reference price, or
        the configured price when the service runs no market (sent in every sync answer, so
        a charger needs no retained `price` message before its first offer)."""
        if self.db.get_meta("market_schema_version") is not None:
            row = self.db.one("SELECT price_micro_per_kwh FROM market_reference_prices "
                              "ORDER BY interval_start_s DESC LIMIT 1")
            if row is not None:
                return row[0]
        return self.ledger.config.ev_reference_price_micro_per_kwh

    # --- shared checks ------------------------------------------------------------------------

    def _check_pair(self, station_id, offer_text, auth_text, price_at_s):
        """The verified offer, auth, station and vehicle of a request (authorize checks)."""
        offer = evproto.open_message(offer_text, "offer")
        if offer["station"] != station_id:
            raise ProtocolError("wrong-station", "the offer names another station")
        station = self.station(station_id)
        if station is None:
            raise ProtocolError("unknown-station", f"{station_id} is not an enrolled charger")
        evproto.verify_signature(offer_text, station["pub"])
        auth = evproto.open_message(auth_text, "auth")
        vehicle = self.vehicle(auth["vehicle"])
        if vehicle is None:
            raise ProtocolError("unknown-vehicle", f"{auth['vehicle']} is not registered")
        if vehicle["public_key_hex"] != auth["pub"]:
            raise ProtocolError("bad-signature", "the auth key is not the registered key")
        evproto.verify_signature(auth_text, vehicle["public_key_hex"])
        if auth["station"] != station_id:
            raise ProtocolError("wrong-station", "the auth is bound to another station")
        if auth["nonce"] != offer["nonce"]:
            raise ProtocolError("nonce-mismatch", "the auth nonce is not the offer's")
        if auth["exp"] < offer["at"]:
            raise ProtocolError("expired", "the auth expired before the offer was made")
        if offer["price"] not in self.accepted_prices(price_at_s):
            raise ProtocolError("stale-price", f"{offer['price']} µ/kWh is not a current "
                                "reference price")
        if offer["fee"] != station["fee"]:
            raise ProtocolError("stale-price", f"fee {offer['fee']} µ/kWh is not the station's "
                                f"fee {station['fee']}")
        return offer, auth, station, vehicle

    def _place(self, offer, auth, vehicle, cap=None):
        amount = evproto.hold_for(auth["emax"], auth["cmax"], offer["price"], offer["fee"])
        if cap is not None:
            amount = min(amount, cap)
        if amount:
            try:
                holds.place(self.ledger, hold_id(offer["nonce"]), vehicle["member"], amount)
            except LedgerError as exc:
                raise ProtocolError("insufficient-funds", str(exc)) from None
        return amount

    def _row(self, session, for_update=False):
        row = self.db.one(f"SELECT {_COLUMNS} FROM ev_sessions WHERE session = ?"
                          + (self.db.for_update if for_update else ""), (session,))
        return None if row is None else dict(zip(_NAMES, row, strict=True))

    # --- authorize ----------------------------------------------------------------------------

    def authorize(self, station_id, offer_text, auth_text):
        """{"t": "grant", "grant": …}; ProtocolError (nothing changed) when refused."""
        now = self.clock_s()
        offer, auth, station, vehicle = self._check_pair(station_id, offer_text, auth_text, now)
        session = offer["nonce"]
        with self.db.transaction():
            self.ledger.lock()
            row = self._row(session, for_update=True)
            if row is not None:
                if (row["offer"], row["auth"], row["state"]) == (offer_text, auth_text,
                                                                  "authorized"):
                    self.counts["replayed"] += 1
                    return {"t": "grant", "grant": row["grant_msg"]}
                raise ProtocolError("nonce-reused", f"session {session} was used before")
            amount = self._place(offer, auth, vehicle)
            grant = self.sign({"t": "grant", "session": session, "station": station_id,
                               "vehicle": vehicle["vehicle_id"], "price": offer["price"],
                               "fee": offer["fee"], "hold": amount, "emax": auth["emax"]})
            self.db.execute(
                "INSERT INTO ev_sessions (session, station, vehicle, member, owner, state, "
                "offline, price_micro_per_kwh, fee_micro_per_kwh, hold_micro, emax_wh, offer, "
                "auth, grant_msg, authorized_at_s) VALUES (?, ?, ?, ?, ?, 'authorized', 0, ?, ?, "
                "?, ?, ?, ?, ?, ?)",
                (session, station_id, vehicle["vehicle_id"], vehicle["member"], station["owner"],
                 offer["price"], offer["fee"], amount, auth["emax"], offer_text, auth_text,
                 grant, now))
        self.counts["granted"] += 1
        return {"t": "grant", "grant": grant}

    # --- close --------------------------------------------------------------------------------

    def close(self, station_id, request):
        """{"t": "receipt", "receipt": …} for a finished session, settled exactly once."""
        session = evproto._check("nonce", request.get("session"), "close.session")
        records = request.get("records")
        meter = evproto._check("signed?", request.get("meter"), "close.meter")
        offline = evproto._check("bool", request.get("offline"), "close.offline")
        row = self._row(session)
        if row is not None and row["station"] != station_id:
            raise ProtocolError("wrong-station", "this session belongs to another station")
        if row is not None and row["state"] == "settled":
            self.counts["replayed"] += 1
            return {"t": "receipt", "receipt": row["receipt"]}
        station = self.station(station_id)
        if station is None:
            raise ProtocolError("unknown-station", f"{station_id} is not an enrolled charger")
        checked = ev_records.check_session(records, station["pub"], session)
        if row is None:
            if not offline:
                raise ProtocolError("malformed", f"session {session} was never authorized")
            offer, auth, station, vehicle = self._check_pair(
                station_id, request.get("offer"), request.get("auth"), checked["begin_ms"] // 1000)
            if offer["nonce"] != session:
                raise ProtocolError("nonce-mismatch", "the offer is not this session's")
            if not vehicle["offline_limit_micro"]:
                raise ProtocolError("limit-exceeded", "this vehicle may not charge offline")
            terms = {"vehicle": vehicle, "price": offer["price"], "fee": offer["fee"],
                     "emax": auth["emax"], "offer": request["offer"], "auth": request["auth"]}
        else:
            vehicle = self.vehicle(row["vehicle"])
            terms = {"vehicle": vehicle, "price": row["price_micro_per_kwh"],
                     "fee": row["fee_micro_per_kwh"], "hold": row["hold_micro"]}
        countersigned = self._check_meter(meter, session, vehicle, station_id, checked)
        with self.db.transaction():
            self.ledger.lock()
            again = self._row(session, for_update=True)
            if again is not None and again["state"] == "settled":  # another worker won
                return {"t": "receipt", "receipt": again["receipt"]}
            # Its hold went back to the driver (expire_holds): the cost is paid directly.
            terms["expired"] = again is not None and again["released_micro"] is not None
            if row is None:
                if again is not None:
                    raise ProtocolError("nonce-reused", f"session {session} was used before")
                terms["hold"] = self._place(offer, auth, vehicle,
                                            cap=vehicle["offline_limit_micro"])
                self._insert_offline(session, station, terms)
            receipt = self._capture(session, station, terms, checked, countersigned,
                                    bool(offline and row is None), records, meter)
        self.counts["settled"] += 1
        return {"t": "receipt", "receipt": receipt}

    def _check_meter(self, meter, session, vehicle, station_id, checked):
        if meter is None:
            return False
        body = evproto.open_message(meter, "meter", vehicle["public_key_hex"])
        if (body["session"], body["vehicle"], body["station"]) != (
                session, vehicle["vehicle_id"], station_id):
            raise ProtocolError("bad-signature", "the countersignature is for another session")
        if body["record"] != checked["end"]:
            raise ProtocolError("bad-signature", "the countersignature covers another record")
        return True

    def _insert_offline(self, session, station, terms):
        vehicle = terms["vehicle"]
        self.db.execute(
            "INSERT INTO ev_sessions (session, station, vehicle, member, owner, state, offline, "
            "price_micro_per_kwh, fee_micro_per_kwh, hold_micro, emax_wh, offer, auth, "
            "authorized_at_s) VALUES (?, ?, ?, ?, ?, 'authorized', 1, ?, ?, ?, ?, ?, ?, ?)",
            (session, station["station"], vehicle["vehicle_id"], vehicle["member"],
             station["owner"], terms["price"], terms["fee"], terms["hold"], terms["emax"],
             terms["offer"], terms["auth"], self.clock_s()))

    def _capture(self, session, station, terms, checked, countersigned, offline, records, meter):
        hold = terms["hold"]
        energy, fee, total = evproto.cost(checked["wh"], terms["price"], terms["fee"], hold)
        owner = member_account(station["owner"])
        payments = [(owner, amount) for amount in (energy, fee) if amount]
        if terms.get("expired"):
            if payments:
                payer = member_account(terms["vehicle"]["member"])
                try:
                    self.ledger.transfer(f"ev:{session}:late", [
                        Leg(payer, account, MONEY, amount) for account, amount in payments],
                        kind="ev_late")
                except LedgerError as exc:
                    raise ProtocolError("insufficient-funds", str(exc)) from None
        elif hold:
            holds.capture(self.ledger, hold_id(session), payments)
        vehicle = terms["vehicle"]
        now = self.clock_s()
        receipt = self.sign({
            "t": "receipt", "session": session, "station": station["station"],
            "station_pub": station["pub"], "owner": station["owner"],
            "vehicle": vehicle["vehicle_id"], "vehicle_pub": vehicle["public_key_hex"],
            "wh": checked["wh"], "price": terms["price"], "fee": terms["fee"],
            "energy_micro": energy, "fee_micro": fee, "total_micro": total, "hold_micro": hold,
            "released_micro": hold - total, "begin": checked["begin"], "end": checked["end"],
            "countersigned": countersigned, "offline": offline, "at": now})
        self.db.execute(
            "UPDATE ev_sessions SET state = 'settled', wh = ?, energy_micro = ?, fee_micro = ?, "
            "total_micro = ?, released_micro = ?, stop = ?, receipt = ?, begin_record = ?, "
            "end_record = ?, meter = ?, settled_at_s = ? WHERE session = ?",
            (checked["wh"], energy, fee, total, hold - total, checked["stop"], receipt,
             records[0], records[-1], meter, now, session))
        return receipt

    # --- expiry -------------------------------------------------------------------------------

    def expire_holds(self):
        """Give back the holds of sessions authorized more than `ev_hold_expiry_s` ago and
        never closed; the sessions expired (each in its own transaction, idempotent)."""
        before_s = self.clock_s() - self.ledger.config.ev_hold_expiry_s
        due = [row[0] for row in self.db.all(
            "SELECT session FROM ev_sessions WHERE state = 'authorized' AND released_micro IS "
            "NULL AND authorized_at_s < ? ORDER BY authorized_at_s", (before_s,))]
        expired = []
        for session in due:
            with self.db.transaction():
                self.ledger.lock()
                row = self._row(session, for_update=True)
                if row is None or row["state"] != "authorized" \
                        or row["released_micro"] is not None:
                    continue  # closed or expired meanwhile (another worker)
                if row["hold_micro"]:
                    holds.release(self.ledger, hold_id(session))
                self.db.execute("UPDATE ev_sessions SET released_micro = hold_micro "
                                "WHERE session = ?", (session,))
            expired.append(session)
        self.counts["expired"] += len(expired)
        return expired

    # --- sessions (API, CLI) ------------------------------------------------------------------

    def session(self, session):
        row = self._row(session) if isinstance(session, str) and len(session) == 32 else None
        return None if row is None else _public(row)

    def sessions(self, member=None, limit=100):
        sql = f"SELECT {_COLUMNS} FROM ev_sessions"
        params = ()
        if member is not None:
            sql += " WHERE member = ? OR owner = ?"
            params = (member, member)
        rows = self.db.all(sql + " ORDER BY authorized_at_s DESC, session LIMIT ?",
                           params + (limit,))
        return [_public(dict(zip(_NAMES, row, strict=True))) for row in rows]

    # --- MQTT ---------------------------------------------------------------------------------

    def handle(self, topic, payload):
        """The replies [(topic, bytes)] to one message on `<charger>/ev`; never raises."""
        parts = topic.split("/") if isinstance(topic, str) else []
        if len(parts) != 5 or topic[:len(self.prefix)] != self.prefix or parts[4] != "ev":
            self.counts["errors"] += 1
            return []
        station_id = parts[3]
        reply_topic = self.prefix + station_id + "/ev/reply"
        request = {}
        try:
            evproto._check("station", station_id, "topic")
            if len(payload) > REQUEST_BYTES_MAX:
                raise ProtocolError("oversized", f"request over {REQUEST_BYTES_MAX} bytes")
            try:
                request = json.loads(payload)
            except (ValueError, UnicodeError):
                raise ProtocolError("malformed", "the request is not JSON") from None
            if not isinstance(request, dict):
                raise ProtocolError("malformed", "the request is not a JSON object")
            kind = request.get("t")
            if kind == "sync":
                self.counts["sync"] += 1
                reply = {"t": "sync", "cert": self.certificate(station_id),
                         "allow": self.allow_list(), "community_key": self.community_key_hex(),
                         "price": self.current_price()}
            elif kind == "authorize":
                reply = self.authorize(station_id, request.get("offer"), request.get("auth"))
            elif kind == "close":
                reply = self.close(station_id, request)
            else:
                raise ProtocolError("malformed", f"unknown request {str(kind)[:20]!r}")
        except ProtocolError as exc:
            reply = self._reject(station_id, request, exc)
        except (LedgerError, *self.db.errors) as exc:  # the charger retries; nothing settled
            self.counts["errors"] += 1
            self._audit(station_id, "ev:error", topic, str(exc), payload)
            return []
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the service
            self.counts["errors"] += 1
            self._audit(station_id, "ev:error", topic, f"{type(exc).__name__}: {exc}", payload)
            return []
        return [(reply_topic, json.dumps(reply, separators=(",", ":")).encode())]

    def _reject(self, station_id, request, exc):
        self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
        detail = "".join(ch if " " <= ch <= "~" and ch != "|" else "?" for ch in exc.detail)
        detail = detail[:evproto.DETAIL_MAX]
        session = _session_of(request)
        signed = None
        if session is not None:
            try:
                signed = self.sign({"t": "reject", "session": session, "station": station_id,
                                    "reason": exc.reason, "detail": detail})
            except ProtocolError:
                signed = None
        self._audit(station_id, "ev:" + exc.reason, self.prefix + station_id + "/ev", detail,
                    b"")
        return {"t": "reject", "reason": exc.reason, "detail": detail, "reject": signed}

    def _audit(self, station_id, reason, topic, detail, head):
        try:
            with self.db.transaction():
                self.db.execute(
                    "INSERT INTO ingest_rejections (device_id, counter, reason, received_at_s, "
                    "topic, detail, head) VALUES (?, NULL, ?, ?, ?, ?, ?)",
                    (station_id[:64], reason, self.clock_s(), topic[:200], detail[:200],
                     bytes(head[:200]).decode("utf-8", "replace")))
        except self.db.errors:  # auditing must never stop the service
            pass


def _session_of(request):
    """The session a refused request names, when it names one in a valid form."""
    if not isinstance(request, dict):
        return None
    for candidate in (request.get("session"), _offer_nonce(request.get("offer"))):
        if isinstance(candidate, str) and evproto._lowhex(candidate, 32):
            return candidate
    return None


def _offer_nonce(text):
    try:
        return evproto.open_message(text, "offer")["nonce"]
    except ProtocolError:
        return None


def _public(row):
    """A session as the API and CLI show it (the signed texts stay in the database)."""
    out = {name: row[name] for name in (
        "session", "station", "vehicle", "member", "owner", "state", "wh", "energy_micro",
        "fee_micro", "total_micro", "hold_micro", "released_micro", "stop", "authorized_at_s",
        "settled_at_s")}
    out["price_micro_per_kwh"] = row["price_micro_per_kwh"]
    out["fee_micro_per_kwh"] = row["fee_micro_per_kwh"]
    out["offline"] = bool(row["offline"])
    if row["state"] == "authorized" and row["released_micro"] is not None:
        out["state"] = "expired"  # its hold went back to the driver (expire_holds)
    out["receipt"] = row["receipt"]
    return out
