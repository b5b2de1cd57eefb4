"""Charge-and-pay in the settlement service: authorize → hold, close → capture → signed receipt,
every refusal with its reason and no money moving, replays, offline sessions and power cuts —
at library level, on PostgreSQL, and over a real Mosquitto."""
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energo import evproto
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.service import Service
from tests.test_ev_support import COMMUNITY, FEE, PRICE, T0_S, EvKit, key, spki


@pytest.fixture
def kit(tmp_path):
    kit = EvKit(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem")
    yield kit
    kit.close()


def _settle(kit, energy_wh=10_000, meter=True, **auth_kw):
    session, offer, auth, reply = kit.authorize(**auth_kw)
    assert reply["t"] == "grant", reply
    records = kit.records(session, energy_wh)
    countersig = kit.meter(session, records[-1], energy_wh) if meter else None
    request = kit.close_request(session, offer, auth, records, countersig)
    return session, request, kit.send(request)


def _receipt(kit, reply):
    assert reply["t"] == "receipt", reply
    return evproto.open_message(reply["receipt"], "receipt", kit.ev.community_key_hex())


def test_happy_path_moves_exactly_the_cost(kit):
    before, _ = kit.money()
    session, offer, auth, reply = kit.authorize(emax=20_000, cmax=8_000_000)
    grant = evproto.open_message(reply["grant"], "grant", kit.ev.community_key_hex())
    hold = evproto.hold_for(20_000, 8_000_000, PRICE, FEE)
    assert (grant["session"], grant["hold"], grant["price"], grant["fee"]) == (
        session, hold, PRICE, FEE)
    during, held = kit.money()
    assert during["driver"] == before["driver"] - hold and held == hold
    records = kit.records(session, 12_345, middle=3)
    reply = kit.send(kit.close_request(session, offer, auth, records,
                                       kit.meter(session, records[-1], 12_345)))
    receipt = _receipt(kit, reply)
    energy, fee = 12_345 * PRICE // 1000, 12_345 * FEE // 1000
    assert (receipt["wh"], receipt["energy_micro"], receipt["fee_micro"]) == (12_345, energy, fee)
    assert receipt["total_micro"] == energy + fee
    assert receipt["released_micro"] == hold - energy - fee
    assert receipt["countersigned"] is True and receipt["offline"] is False
    assert receipt["begin"] == evproto.record_hash(records[0])
    assert receipt["end"] == evproto.record_hash(records[-1])
    after, held = kit.money()
    assert after["driver"] == before["driver"] - energy - fee
    assert after["owner"] == before["owner"] + energy + fee
    assert held == 0
    assert kit.ledger.check().ok
    assert kit.ev.session(session)["state"] == "settled"
    assert [s["session"] for s in kit.ev.sessions("owner")] == [session]


def test_repeats_get_the_same_answer_and_move_nothing(kit):
    session, offer, auth, grant = kit.authorize()
    assert kit.send({"t": "authorize", "offer": offer, "auth": auth}) == grant
    records = kit.records(session, 5_000)
    request = kit.close_request(session, offer, auth, records)
    first = kit.send(request)
    money = kit.money()
    assert kit.send(request) == first
    assert kit.send(dict(request, offline=True)) == first
    assert kit.money() == money
    assert kit.ev.counts["settled"] == 1 and kit.ev.counts["replayed"] == 3
    again = kit.send({"t": "authorize", "offer": offer, "auth": auth})  # settled: nonce is used
    assert again["reason"] == "nonce-reused"
    assert kit.money() == money


def test_a_used_nonce_is_refused_with_new_terms(kit):
    session, offer, auth, _ = kit.authorize()
    kit.now += 5
    reply = kit.send({"t": "authorize", "offer": kit.offer(session), "auth": kit.auth(session)})
    assert reply["reason"] == "nonce-reused"
    signed = evproto.open_message(reply["reject"], "reject", kit.ev.community_key_hex())
    assert (signed["session"], signed["reason"]) == (session, "nonce-reused")


def _refusals(kit):
    """(name, request, expected reason, topic station) for every way an authorize goes wrong."""
    n = kit.nonce
    stranger = key("stranger")
    other_station = kit.enroll(key("other charger"), "other")
    cases = []
    s = n()
    forged = evproto.sign_message(stranger, {
        "t": "auth", "vehicle": kit.vehicle, "pub": spki(kit.vehicle_key), "station": kit.station,
        "nonce": s, "emax": 1000, "cmax": 1000, "exp": kit.now + 60})
    cases.append(("auth signed by another key", kit.offer(s), forged, None, "bad-signature"))
    s = n()
    bad_offer = kit.offer(s, priv=stranger, station=kit.station)
    cases.append(("offer not by the charger", bad_offer, kit.auth(s), None, "bad-signature"))
    s = n()
    cases.append(("unknown vehicle", kit.offer(s), kit.auth(s, priv=stranger), None,
                  "unknown-vehicle"))
    s = n()
    rogue = key("rogue charger")
    rogue_id = evproto.key_id(spki(rogue), "charger")
    cases.append(("unknown station", kit.offer(s, priv=rogue, station=rogue_id),
                  kit.auth(s, station=rogue_id), rogue_id, "unknown-station"))
    s = n()
    cases.append(("offer on another charger's topic", kit.offer(s), kit.auth(s), other_station,
                  "wrong-station"))
    s = n()
    cases.append(("auth for another station", kit.offer(s), kit.auth(s, station=other_station),
                  None, "wrong-station"))
    s = n()
    cases.append(("nonce mismatch", kit.offer(s), kit.auth(n()), None, "nonce-mismatch"))
    s = n()
    cases.append(("expired", kit.offer(s), kit.auth(s, exp=kit.now - 1), None, "expired"))
    s = n()
    cases.append(("stale price", kit.offer(s, price=PRICE + 1), kit.auth(s), None, "stale-price"))
    s = n()
    cases.append(("wrong fee", kit.offer(s, fee=FEE + 1), kit.auth(s), None, "stale-price"))
    s = n()
    cases.append(("insufficient funds", kit.offer(s), kit.auth(s, emax=10**8, cmax=10**9), None,
                  "insufficient-funds"))
    s = n()
    cases.append(("unsigned offer", kit.offer(s).rsplit("|", 1)[0], kit.auth(s), None,
                  "malformed"))
    s = n()
    cases.append(("oversized auth", kit.offer(s), kit.auth(s) + "0" * 5000, None, "oversized"))
    return cases


def test_every_refusal_has_its_reason_and_moves_no_money(kit):
    for name, offer, auth, station, reason in _refusals(kit):
        money, rows = kit.money(), kit.session_rows()
        reply = kit.send({"t": "authorize", "offer": offer, "auth": auth}, station=station)
        assert (reply["t"], reply["reason"]) == ("reject", reason), name
        assert kit.money() == money and kit.session_rows() == rows, name
        if reply["reject"] is not None:
            body = evproto.open_message(reply["reject"], "reject", kit.ev.community_key_hex())
            assert body["reason"] == reason
    assert kit.ledger.check().ok
    assert kit.ev.rejected["wrong-station"] == 2


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "malformed"), (b"[1]", "malformed"), (b'{"t":"dance"}', "malformed"),
    (b'{"t":"close","session":"nope"}', "malformed"), (b" " * (1 << 21), "oversized")])
def test_garbage_requests_are_refused(kit, payload, reason):
    money = kit.money()
    reply = kit.send(payload)
    assert (reply["reason"], reply["reject"]) == (reason, None)
    assert kit.money() == money


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10**16) | st.text(max_size=40)
    | st.sampled_from(["OCMF|{}|{}", "0" * 32, "c-000000000000"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["authorize", "close", "sync", None]), st.dictionaries(
    st.sampled_from(["session", "offer", "auth", "records", "meter", "offline"]), _ANY))
def test_random_requests_are_refused_cleanly(kit, kind, fields):
    money = kit.money()
    reply = kit.send(dict(fields, t=kind))
    assert reply["t"] == ("sync" if kind == "sync" else "reject"), reply
    assert reply["t"] == "sync" or reply["reason"] in evproto.REASONS
    assert kit.money() == money and kit.ev.counts["errors"] == 0


def _tampered_records(kit, session):
    records = kit.records(session, 4_000, middle=2)
    swapped = records[:]
    swapped[1] = swapped[1].replace('"XS":"' + session + '"', '"XS":"' + "0" * 32 + '"')
    foreign = kit.records("f" * 32, 4_000)
    gap = kit.records(session, 4_000, middle=2, counter_step=2)
    return {
        "tampered signature": records[:-1] + [records[-1].replace("4.", "5.", 1)],
        "record of another session": records[:1] + foreign[1:],
        "missing middle record": records[:1] + records[2:],
        "out of order": [records[0], records[2], records[1], records[3]],
        "gap in T counters": gap,
        "no stop record": records[:-1],
        "not B first": records[1:],
        "one record": records[:1],
        "not a list": "OCMF|x",
        "edited XS": swapped,
    }


def test_bad_records_are_refused_and_the_hold_stays(kit):
    session, offer, auth, _ = kit.authorize()
    money = kit.money()
    for name, records in _tampered_records(kit, session).items():
        reply = kit.send(kit.close_request(session, offer, auth, records))
        assert reply["reason"] == "bad-records", (name, reply)
        assert kit.money() == money, name
    good = kit.records(session, 2_000)
    wrong_meter = kit.meter(session, good[0], 2_000)
    reply = kit.send(kit.close_request(session, offer, auth, good, wrong_meter))
    assert reply["reason"] == "bad-signature"
    forged_meter = kit.meter(session, good[-1], 2_000, priv=key("stranger"))
    reply = kit.send(kit.close_request(session, offer, auth, good, forged_meter))
    assert reply["reason"] == "bad-signature" and kit.money() == money
    assert _receipt(kit, kit.send(kit.close_request(session, offer, auth, good)))["wh"] == 2_000


def test_backwards_register_is_refused(kit):
    session, offer, auth, _ = kit.authorize()
    kit.register_wh += 10_000
    records = kit.records(session, 1_000)
    kit.register_wh -= 20_000
    records[-1:] = kit.records(session, 0)[-1:]
    assert kit.send(kit.close_request(session, offer, auth, records))["reason"] == "bad-records"


def test_cost_never_exceeds_the_hold(kit):
    before, _ = kit.money()
    session, request, reply = _settle(kit, energy_wh=50_000, emax=1_000, cmax=10**9)
    receipt = _receipt(kit, reply)
    hold = evproto.hold_for(1_000, 10**9, PRICE, FEE)
    assert receipt["total_micro"] == receipt["hold_micro"] == hold
    assert receipt["energy_micro"] == hold and receipt["fee_micro"] == 0  # the fee is cut first
    after, held = kit.money()
    assert after["driver"] == before["driver"] - hold and held == 0


def test_power_cut_close_settles_once(kit):
    session, offer, auth, _ = kit.authorize()
    records = kit.records(session, 3_000, stop="P")
    request = kit.close_request(session, offer, auth, records)
    receipt = _receipt(kit, kit.send(request))
    assert receipt["wh"] == 3_000 and kit.ev.session(session)["stop"] == "P"
    money = kit.money()
    assert kit.send(request)["receipt"] == kit.send(request)["receipt"]
    assert kit.money() == money and kit.ledger.check().ok


def test_offline_close_authorizes_holds_and_captures_once(kit):
    before, _ = kit.money()
    session = kit.nonce()
    offer, auth = kit.offer(session), kit.auth(session)
    records = kit.records(session, 8_000)
    request = kit.close_request(session, offer, auth, records,
                                kit.meter(session, records[-1], 8_000), offline=True)
    receipt = _receipt(kit, kit.send(request))
    assert receipt["offline"] is True and receipt["countersigned"] is True
    assert receipt["hold_micro"] <= kit.ev.vehicle(kit.vehicle)["offline_limit_micro"]
    after, held = kit.money()
    assert after["driver"] == before["driver"] - receipt["total_micro"] and held == 0
    assert after["owner"] == before["owner"] + receipt["total_micro"]
    for _ in range(2):
        assert _receipt(kit, kit.send(request)) == receipt
    assert kit.money() == (after, 0)
    reply = kit.send({"t": "authorize", "offer": offer, "auth": auth})
    assert reply["reason"] == "nonce-reused"
    never = kit.nonce()
    online_close = kit.close_request(never, kit.offer(never), kit.auth(never),
                                     kit.records(never, 100))
    assert kit.send(online_close)["reason"] == "malformed"  # never authorized, not offline
    assert kit.money() == (after, 0)


def test_offline_refusals_move_no_money(tmp_path):
    kit = EvKit(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem", vehicle_limit=0)
    try:
        money = kit.money()
        session = kit.nonce()
        records = kit.records(session, 1_000)
        reply = kit.send(kit.close_request(session, kit.offer(session), kit.auth(session),
                                           records, offline=True))
        assert reply["reason"] == "limit-exceeded"
        session = kit.nonce()
        reply = kit.send(kit.close_request(session, kit.offer(session, price=1),
                                           kit.auth(session), kit.records(session, 1_000),
                                           offline=True))
        assert reply["reason"] == "stale-price"
        assert kit.money() == money and kit.session_rows() == 0
    finally:
        kit.close()


def test_sync_answers_certificate_and_allow_list(kit):
    reply = kit.send({"t": "sync"})
    community = reply["community_key"]
    cert = evproto.open_message(reply["cert"], "cert", community)
    assert (cert["station"], cert["owner"], cert["fee"]) == (kit.station, "owner", FEE)
    allow = evproto.open_message(reply["allow"], "allow", community)
    assert [v["id"] for v in allow["vehicles"]] == [kit.vehicle]
    # the price to offer: here no market runs, so the configured reference price
    assert reply["price"] == kit.ev.ledger.config.ev_reference_price_micro_per_kwh
    kit.ev.set_station_fee(kit.station, 45_000)
    kit.ev.add_vehicle(spki(key("second car")), "other", 1_000)
    again = kit.send({"t": "sync"})
    assert evproto.open_message(again["cert"], "cert", community)["fee"] == 45_000
    assert evproto.open_message(again["allow"], "allow", community)["seq"] > allow["seq"]
    rogue = evproto.key_id(spki(key("rogue charger")), "charger")
    assert kit.send({"t": "sync"}, station=rogue)["reason"] == "unknown-station"


def test_main_flow_on_postgresql(postgres_url, tmp_path):
    kit = EvKit(postgres_url, tmp_path / "key.pem")
    try:
        before, _ = kit.money()
        session, request, reply = _settle(kit, energy_wh=7_000)
        receipt = _receipt(kit, reply)
        assert kit.send(request) == reply
        assert kit.send({"t": "authorize", "offer": request["offer"],
                         "auth": request["auth"]})["reason"] == "nonce-reused"
        after, held = kit.money()
        assert after["driver"] == before["driver"] - receipt["total_micro"] and held == 0
        assert kit.ledger.check().ok
    finally:
        kit.close()


@pytest.mark.mosquitto
def test_over_mosquitto(tmp_path, mosquitto):
    url, key_path = f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem"
    kit = EvKit(url, key_path)
    session = kit.nonce()
    offer, auth = kit.offer(session), kit.auth(session)
    records = kit.records(session, 6_000)
    kit.close()
    service = Service(url, mosquitto.url, COMMUNITY, key_path=str(key_path), market=False)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    replies, got = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="charger-test")
    client.on_message = lambda c, u, m: (replies.append(json.loads(m.payload)), got.set())
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    base = f"energo/v1/{COMMUNITY}/{kit.station}/ev"
    try:
        assert service.connected.wait(10)
        client.subscribe(base + "/reply", 1)[1]
        time.sleep(0.3)  # the SUBACK: replies published before it would be lost

        def ask(request):
            got.clear()
            client.publish(base, json.dumps(request), qos=1)
            assert got.wait(10), "no reply from the service"
            return replies.pop()

        assert ask({"t": "sync"})["t"] == "sync"
        assert ask({"t": "authorize", "offer": offer, "auth": auth})["t"] == "grant"
        assert ask({"t": "authorize", "offer": offer, "auth": "x"})["reason"] == "malformed"
        receipt = ask(kit.close_request(session, offer, auth, records))
        assert receipt["t"] == "receipt"
        assert ask(kit.close_request(session, offer, auth, records)) == receipt
        assert 'energo_ev_total{event="settled"} 1' in service.metrics_text()
        assert 'energo_ev_rejected_total{reason="malformed"} 1' in service.metrics_text()
    finally:
        client.loop_stop()
        client.disconnect()
        service.stop_event.set()
        thread.join(10)
    with Ledger.open(url, key_path=str(key_path)) as ledger:
        assert ledger.check().ok
        assert ledger.db.one("SELECT state, wh FROM ev_sessions")[:2] == ("settled", 6_000)


def _record_prices(kit, *rows):
    """The market's reference prices as it records them: (interval, price, recorded at ms)."""
    from host_tools.settlement import market as settlement_market

    db = kit.ledger.db
    with db.transaction():
        settlement_market.ensure_tables(db)
        for start, price, at_ms in rows:
            db.execute("INSERT INTO market_reference_prices (interval_start_s, "
                       "price_micro_per_kwh, volume_wh, trade_count, carried, agent_count, "
                       "agent_order_count, recorded_at_ms) VALUES (?, ?, 0, 0, 0, 0, 0, ?)",
                       (start, price, at_ms))


def test_offers_may_carry_a_price_superseded_within_the_grace(kit):
    """The market's published price and the one before it always count; an older one only
    while it was superseded less than PRICE_GRACE_MS ago (intervals closing at once)."""
    from host_tools.settlement import ev as ev_service

    now_ms = kit.now * 1000
    grace = ev_service.PRICE_GRACE_MS
    # (interval, price, recorded at): 101 long ago, then 102 and 103 together just now.
    _record_prices(kit, (T0_S - 2700, 101, now_ms - 10 * grace),
                   (T0_S - 1800, 102, now_ms - 1000), (T0_S - 900, 103, now_ms - 1000))
    assert kit.ev.accepted_prices(T0_S) == {101, 102, 103}, "101 was published a second ago"
    assert kit.ev.current_price() == 103
    s = kit.nonce()
    reply = kit.send({"t": "authorize", "offer": kit.offer(s, price=101), "auth": kit.auth(s)})
    assert reply["t"] == "grant", reply
    kit.now += grace // 1000 + 1
    assert kit.ev.accepted_prices(T0_S + 60) == {102, 103}, "101 is stale now"
    assert kit.ev.accepted_prices(T0_S - 900) == {101, 102}, "only intervals before at_s"
    s = kit.nonce()
    reply = kit.send({"t": "authorize", "offer": kit.offer(s, price=101), "auth": kit.auth(s)})
    assert reply["reason"] == "stale-price", reply


def test_an_offer_at_the_configured_price_counts_when_the_first_market_price_arrives(kit):
    """Until the market closes its first interval the service publishes its configured price;
    a charger that offered it just before that close must not see its vehicle refused. Once
    a second price is published and the grace has passed, the configured one is stale."""
    from host_tools.settlement import ev as ev_service

    configured = kit.ev.ledger.config.ev_reference_price_micro_per_kwh
    _record_prices(kit, (T0_S - 900, configured - 1000, kit.now * 1000))
    assert kit.ev.current_price() == configured - 1000
    assert kit.ev.accepted_prices(T0_S) == {configured - 1000, configured}
    s = kit.nonce()
    reply = kit.send({"t": "authorize", "offer": kit.offer(s, price=configured),
                      "auth": kit.auth(s)})
    assert reply["t"] == "grant", reply
    kit.now += ev_service.PRICE_GRACE_MS // 1000 + 1
    _record_prices(kit, (T0_S, configured - 2000, kit.now * 1000))
    assert kit.ev.accepted_prices(T0_S + 900) == {configured - 1000, configured - 2000}


def test_a_session_never_closed_gives_its_hold_back_and_a_late_close_still_pays(kit):
    """After ev_hold_expiry_s the hold goes back to the driver and the session shows as
    expired; when its charger closes it days later, the same cost is paid from the driver's
    account directly, once, and the receipt verifies like any other."""
    expiry_s = kit.ledger.config.ev_hold_expiry_s
    money = kit.money()
    session, offer, auth, reply = kit.authorize()
    assert reply["t"] == "grant", reply
    hold = evproto.open_message(reply["grant"], "grant", kit.ev.community_key_hex())["hold"]
    assert kit.money()[1] == hold > 0
    kit.now += expiry_s - 10
    assert kit.ev.expire_holds() == [], "not yet"
    assert kit.ev.session(session)["state"] == "authorized"
    kit.now += 20
    assert kit.ev.expire_holds() == [session]
    assert kit.ev.expire_holds() == [], "once"
    assert kit.money() == money, "every micro back with the driver"
    assert kit.ev.session(session)["state"] == "expired"
    assert kit.ev.counts["expired"] == 1
    records = kit.records(session, 10_000)
    close = kit.close_request(session, offer, auth, records,
                              kit.meter(session, records[-1], 10_000))
    reply = kit.send(close)
    assert reply["t"] == "receipt", reply
    row = kit.ev.session(session)
    assert row["state"] == "settled" and 0 < row["total_micro"] <= hold
    balances, held = kit.money()
    assert held == 0
    assert balances["driver"] == money[0]["driver"] - row["total_micro"]
    assert balances["owner"] == money[0]["owner"] + row["total_micro"]
    assert kit.send(close) == reply, "a repeated close gets the same receipt, pays nothing"
    assert kit.money() == (balances, 0)
    assert kit.ledger.check().ok


def test_an_expired_session_is_refused_without_funds_and_paid_when_they_come(tmp_path):
    """A late close beyond the driver's credit is refused as insufficient-funds (nothing moves)
    and settles once money has come in."""
    from host_tools.settlement.ledger import MONEY, Leg, member_account

    kit = EvKit(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem")
    try:
        session, offer, auth, reply = kit.authorize()
        assert reply["t"] == "grant", reply
        kit.now += kit.ledger.config.ev_hold_expiry_s + 1
        assert kit.ev.expire_holds() == [session]
        # The driver spends everything their credit allows meanwhile.
        credit = kit.ledger.config.member_credit_limit_micro
        spent = credit + kit.ledger.balance(member_account("driver"), MONEY)
        kit.ledger.transfer("spend", [Leg(member_account("driver"), member_account("other"),
                                          MONEY, spent)])
        money = kit.money()
        records = kit.records(session, 10_000)
        close = kit.close_request(session, offer, auth, records,
                                  kit.meter(session, records[-1], 10_000))
        assert kit.send(close)["reason"] == "insufficient-funds"
        assert kit.money() == money and kit.ev.session(session)["state"] == "expired"
        kit.ledger.transfer("top-up", [Leg(member_account("other"), member_account("driver"),
                                           MONEY, spent)])
        reply = kit.send(close)
        assert reply["t"] == "receipt", reply
        assert kit.ev.session(session)["state"] == "settled"
        assert kit.ledger.check().ok
    finally:
        kit.close()
