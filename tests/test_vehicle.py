"""The simulated vehicle against a charger scripted from evproto alone (no firmware, no board).

The scripted charger writes frames into the board end of the vehicle's link and reads the
vehicle's answers from it; time is a plain number the test moves, and the vehicle's battery is
the world's EV model. Each test drives one protocol step or one misbehaviour and checks what
the vehicle did on the link, on the pilot and in its session log.
"""
import json

import pytest

from energo import evproto, identity, ocmf, p256
from host_tools import cli
from sim_board import vehicle_checks
from sim_board.vehicle import Vehicle
from sim_board.vehicle_link import LinkPeer
from sim_board.world import World

START_S = 1782000000
T0 = START_S + 600
PRICE, FEE = 250_000, 30_000


def _key(seed):
    priv = p256.generate_private_key(lambda n: bytes([seed]) * n)
    return priv, p256.public_key(priv)


COMMUNITY_PRIV, COMMUNITY_PUB = _key(7)
OTHER_PRIV, _ = _key(9)


class Clock:
    def __init__(self):
        self.t = float(T0)

    def __call__(self):
        return self.t


class ScriptedCharger:
    """The charger's half of the protocol, straight from docs/charging-protocol.md."""

    def __init__(self, site, link, clock, seed=3):
        self.site, self.clock = site, clock
        self.priv, pub = _key(seed)
        self.id = identity.device_id(pub, "charger")
        self.spki = evproto.spki_hex(pub)
        self.end = link.open(115200)
        self.cert = evproto.sign_message(COMMUNITY_PRIV, {
            "t": "cert", "community": "demo", "station": self.id, "pub": self.spki,
            "owner": "olga", "fee": FEE, "exp": T0 + 86400})
        self.counter = 0
        self.nonce = None

    def send(self, kind, **fields):
        self.end.write(evproto.frame(kind, **fields))

    def frames(self):
        self.end.in_waiting  # noqa: B018
        data = self.end.read(1 << 20)
        return [evproto.read_frame(line) for line in data.split(b"\n") if line]

    def offer(self, price=PRICE, station=None, cert=None, at=None):
        self.nonce = evproto.new_nonce(lambda n: bytes(range(self.counter, self.counter + n)))
        self.offer_text = evproto.sign_message(self.priv, {
            "t": "offer", "station": station or self.id, "nonce": self.nonce, "price": price,
            "fee": FEE, "imax": 16, "at": int(self.clock() if at is None else at)})
        self.send("offer", offer=self.offer_text, cert=cert or self.cert)

    def grant(self, auth_text, key=COMMUNITY_PRIV, **changes):
        auth = evproto.open_message(auth_text, "auth", None)
        body = {"t": "grant", "session": self.nonce, "station": self.id,
                "vehicle": auth["vehicle"], "price": PRICE, "fee": FEE,
                "hold": evproto.hold_for(auth["emax"], auth["cmax"], PRICE, FEE),
                "emax": auth["emax"]}
        body.update(changes)
        self.hold = body["hold"]
        self.send("grant", grant=evproto.sign_message(key, body))

    def record(self, tx, wh, session=None):
        self.counter += 1
        payload = ocmf.build_payload(
            ("energo", "c1", "1"), f"T{self.counter}", ("Eastron", "SDM630", "1"),
            [ocmf.reading(int(self.clock() * 1000), tx, wh)],
            (("XS", session or self.nonce),))
        return ocmf.sign_payload(self.priv, payload)

    def receipt(self, vehicle, begin, end, wh, countersigned=True):
        energy, fee, total = evproto.cost(wh, PRICE, FEE, self.hold)
        return evproto.sign_message(COMMUNITY_PRIV, {
            "t": "receipt", "session": self.nonce, "station": self.id, "station_pub": self.spki,
            "owner": "olga", "vehicle": vehicle.id, "vehicle_pub": vehicle.pub_hex, "wh": wh,
            "price": PRICE, "fee": FEE, "energy_micro": energy, "fee_micro": fee,
            "total_micro": total, "hold_micro": self.hold, "released_micro": self.hold - total,
            "begin": evproto.record_hash(begin), "end": evproto.record_hash(end),
            "countersigned": countersigned, "offline": False, "at": int(self.clock())})


@pytest.fixture
def rig(tmp_path):
    ev = {"battery_kwh": 40.0, "acceptance_a": 40.0, "phases": 1, "sessions": []}
    world = World({"start_s": START_S, "sites": {"c1": {"load": None, "phases": 1, "ev": ev}}},
                  1)
    site = world.site("c1")
    clock = Clock()
    link = LinkPeer()

    def make(**options):
        options.setdefault("target_wh", 400)
        vehicle = Vehicle(evproto.spki_hex(COMMUNITY_PUB), "alice", seed=5,
                          receipts_dir=str(tmp_path / "receipts"), **options)
        return vehicle.connect(site, link, clock)

    charger = ScriptedCharger(site, link, clock)
    return make, charger, site, clock


def _through_auth(vehicle, charger, clock):
    vehicle.plug()
    vehicle.step()
    charger.offer()
    vehicle.step()
    (auth,) = charger.frames()
    return auth


def _charge(vehicle, charger, site, clock, seconds=400):
    """Grant, switch PWM (16 A) and contactor on, let the battery fill for `seconds`."""
    auth = _through_auth(vehicle, charger, clock)
    charger.grant(auth["auth"])
    vehicle.step()
    site.ev_set_pilot_duty(clock.t, 26.7)
    vehicle.step()
    site.ev_set_contactor(clock.t, True)
    clock.t += seconds
    vehicle.step()
    return auth


def _finish(vehicle, charger, site, clock, inflate_wh=0):
    site.ev_set_contactor(clock.t, False)
    wh = round(site.ev.session_energy_wh)
    begin, end = charger.record("B", 1000), charger.record("E", 1000 + wh + inflate_wh)
    charger.send("final", record=end)
    vehicle.step()
    return begin, end, wh


def test_honest_session_step_by_step(rig, tmp_path):
    make, charger, site, clock = rig
    vehicle = make()
    vehicle.plug()
    vehicle.step()
    assert site.ev_pilot_state(clock.t) == "B"
    charger.offer()
    vehicle.step()
    (frame,) = charger.frames()
    auth = evproto.open_message(frame["auth"], "auth", vehicle.pub_hex)
    assert (auth["station"], auth["nonce"], auth["vehicle"]) == (charger.id, charger.nonce,
                                                                 vehicle.id)
    assert auth["exp"] > clock.t and auth["emax"] == vehicle.emax_wh
    charger.grant(frame["auth"])
    vehicle.step()
    assert vehicle.session["state"] == "granted"
    assert site.ev_pilot_state(clock.t) == "B"  # granted, but no PWM yet: it does not ask
    site.ev_set_pilot_duty(clock.t, 26.7)
    vehicle.step()
    assert site.ev_pilot_state(clock.t) == "C"
    site.ev_set_contactor(clock.t, True)
    clock.t += 60
    vehicle.step()
    assert vehicle.session["state"] == "charging" and charger.frames() == []
    charger.send("status", wh=int(site.ev.session_energy_wh), cost=1000, i=16)
    clock.t += 400
    vehicle.step()
    assert [f["k"] for f in charger.frames()] == ["stop"]  # 400 Wh target reached
    assert site.ev_pilot_state(clock.t) == "B"
    begin, end, wh = _finish(vehicle, charger, site, clock)
    (meter,) = charger.frames()
    body = evproto.open_message(meter["meter"], "meter", vehicle.pub_hex)
    assert body["record"] == evproto.record_hash(end) and body["wh"] == wh
    charger.send("receipt", receipt=charger.receipt(vehicle, begin, end, wh), begin=begin,
                 end=end)
    vehicle.step()
    s = vehicle.session
    assert s["state"] == "done" and s["refused"] is None
    assert s["receipt"]["total_micro"] == wh * (PRICE + FEE) // 1000
    doc = json.loads(open(s["receipt_path"]).read())
    assert set(doc) == {"receipt", "cert", "records", "meter", "vehicle_pub", "community_key"}
    assert doc["records"] == [begin, end] and doc["meter"] == s["meter_text"]
    assert s["sign_s"] > 0 and s["verify_s"] > 0
    assert cli.main(["verify", s["receipt_path"]]) == 0  # the file the vehicle keeps verifies


def test_vehicle_unplugged_hears_nothing_and_unplug_gives_state_a(rig):
    make, charger, site, clock = rig
    vehicle = make()
    charger.offer()
    vehicle.step()
    assert vehicle.session is None and charger.frames() == []
    vehicle.plug()
    vehicle.step()
    vehicle.unplug()
    clock.t += 1
    vehicle.step()
    assert site.ev_pilot_state(clock.t) == "A" and vehicle.session["unplug_s"] == clock.t


@pytest.mark.parametrize(("mutate", "reason"), [
    ("tamper-offer", "bad-signature"),
    ("foreign-cert", "bad-signature"),
    ("cert-of-another-station", "bad-signature"),
    ("offer-names-another-station", "wrong-station"),
    ("stale-offer", "expired"),
])
def test_vehicle_refuses_a_bad_offer_and_never_asks(rig, mutate, reason):
    make, charger, site, clock = rig
    vehicle = make(misbehave="tamper-offer" if mutate == "tamper-offer" else None)
    vehicle.plug()
    vehicle.step()
    if mutate == "foreign-cert":
        cert = evproto.sign_message(OTHER_PRIV, evproto.open_message(charger.cert, "cert"))
        charger.offer(cert=cert)
    elif mutate == "cert-of-another-station":
        other = ScriptedCharger(site, LinkPeer(), clock, seed=11)
        charger.offer(cert=other.cert)
    elif mutate == "offer-names-another-station":
        charger.offer(station="c-" + "a" * 12)
    elif mutate == "stale-offer":
        charger.offer(at=clock.t - 3600)
    else:
        charger.offer()
    vehicle.step()
    (frame,) = charger.frames()
    assert frame["k"] == "error" and frame["reason"] == reason
    assert vehicle.session["refused"] == reason and vehicle.session["auth_text"] is None
    site.ev_set_pilot_duty(clock.t, 26.7)  # even with the PWM on, it never asks
    vehicle.step()
    assert site.ev_pilot_state(clock.t) == "B"


@pytest.mark.parametrize(("misbehave", "check"), [
    ("other-station", lambda auth, charger: auth["station"] != charger.id),
    ("expired-auth", lambda auth, charger: auth["exp"] < evproto.open_message(
        charger.offer_text, "offer")["at"]),
    ("replay-auth", lambda auth, charger: auth["nonce"] != charger.nonce),
])
def test_scripted_bad_authorizations_are_validly_signed_but_wrong(rig, misbehave, check):
    make, charger, site, clock = rig
    vehicle = make(misbehave=misbehave)
    frame = _through_auth(vehicle, charger, clock)
    auth = evproto.open_message(frame["auth"], "auth", vehicle.pub_hex)  # signature is fine
    assert check(auth, charger)


def test_forged_authorization_names_our_key_but_does_not_verify_with_it(rig):
    make, charger, site, clock = rig
    vehicle = make(misbehave="forged-auth")
    frame = _through_auth(vehicle, charger, clock)
    auth = evproto.open_message(frame["auth"], "auth")  # well formed, station and nonce right
    assert auth["pub"] == vehicle.pub_hex and auth["nonce"] == charger.nonce
    with pytest.raises(evproto.ProtocolError) as err:
        evproto.open_message(frame["auth"], "auth", vehicle.pub_hex)
    assert err.value.reason == "bad-signature"


def test_replay_sends_the_previous_sessions_authorization(rig):
    make, charger, site, clock = rig
    honest = make()
    first = _through_auth(honest, charger, clock)
    charger.send("reject", reason="insufficient-funds", detail="no money")
    honest.step()
    assert honest.session["state"] == "rejected"
    honest.unplug()
    clock.t += 5
    honest.step()
    honest.misbehave = "replay-auth"
    second = _through_auth(honest, charger, clock)
    assert second["auth"] == first["auth"]


@pytest.mark.parametrize(("misbehave", "size_check"), [
    ("garbage", lambda line: len(line) < 100),
    ("oversized", lambda line: len(line) > evproto.LINE_MAX),
])
def test_garbage_and_oversized_lines_instead_of_an_auth(rig, misbehave, size_check):
    make, charger, site, clock = rig
    vehicle = make(misbehave=misbehave)
    vehicle.plug()
    vehicle.step()
    charger.offer()
    vehicle.step()
    charger.end.in_waiting  # noqa: B018
    line = charger.end.read(1 << 20)
    assert size_check(line) and line.endswith(b"\n")
    with pytest.raises(evproto.ProtocolError) as err:
        evproto.read_frame(line)
    assert err.value.reason == ("oversized" if misbehave == "oversized" else "malformed")


def test_ignore_limit_draws_more_than_the_pilot_offers(rig):
    make, charger, site, clock = rig
    vehicle = make(misbehave="ignore-limit", excess_a=10.0)
    _charge(vehicle, charger, site, clock, seconds=5)
    assert site.current_rms_a(clock.t) == pytest.approx(16.0 + 10.0, rel=1e-3)
    site.ev.set_ignore_limit(None)  # the same EV obeys once the script is off
    site.ev_set_pilot_duty(clock.t, 26.7)
    assert site.current_rms_a(clock.t + 0.5) == pytest.approx(16.0, rel=1e-3)


@pytest.mark.parametrize(("change", "reason"), [
    ({"vehicle": "v-000000000000"}, "unknown-vehicle"),
    ({"price": PRICE + 1}, "stale-price"),
    ({"session": "0" * 32}, "nonce-mismatch"),
    ({"key": OTHER_PRIV}, "bad-signature"),
])
def test_vehicle_checks_the_grant(rig, change, reason):
    make, charger, site, clock = rig
    vehicle = make()
    frame = _through_auth(vehicle, charger, clock)
    charger.grant(frame["auth"], **change)
    vehicle.step()
    site.ev_set_pilot_duty(clock.t, 26.7)
    vehicle.step()
    assert vehicle.session["refused"] == reason
    assert site.ev_pilot_state(clock.t) == "B"


def test_a_charger_that_starts_over_gets_a_new_session_on_the_same_cable(rig):
    make, charger, site, clock = rig
    vehicle = make(target_wh=5000)
    first = _charge(vehicle, charger, site, clock, seconds=30)
    assert site.ev_pilot_state(clock.t) == "C"
    site.ev_set_contactor(clock.t, False)  # a power cut: the charger reboots, PWM off
    site.ev_set_pilot_duty(clock.t, 100.0)
    charger.offer()
    vehicle.step()
    (frame,) = charger.frames()
    assert frame["k"] == "auth" and frame["auth"] != first["auth"]
    assert evproto.open_message(frame["auth"], "auth")["nonce"] == charger.nonce
    assert len(vehicle.sessions) == 2 and vehicle.sessions[0]["state"] == "charging"
    assert site.ev_pilot_state(clock.t) == "B"  # not asking before the new grant


def test_an_offline_grant_signed_by_the_certified_station_is_taken(rig):
    make, charger, site, clock = rig
    vehicle = make()
    frame = _through_auth(vehicle, charger, clock)
    charger.grant(frame["auth"], key=charger.priv)  # the charger decided offline
    vehicle.step()
    assert vehicle.session["state"] == "granted" and vehicle.session["offline"] is True
    assert vehicle.session["refused"] is None


def test_final_claiming_more_than_the_battery_got_is_not_countersigned(rig):
    make, charger, site, clock = rig
    vehicle = make()
    _charge(vehicle, charger, site, clock)
    charger.frames()
    charger.send("status", wh=int(site.ev.session_energy_wh) * 2 + 50, cost=1, i=16)
    vehicle.step()
    _finish(vehicle, charger, site, clock)
    (frame,) = charger.frames()
    assert frame["k"] == "error" and frame["reason"] == "bad-records"
    assert vehicle.session["meter_text"] is None


def test_final_of_another_session_is_refused(rig):
    make, charger, site, clock = rig
    vehicle = make()
    _charge(vehicle, charger, site, clock)
    charger.frames()
    charger.send("final", record=charger.record("E", 2000, session="f" * 32))
    vehicle.step()
    assert vehicle.session["refused"] == "bad-records"


def test_tampered_receipt_is_refused_and_kept_as_refused(rig):
    make, charger, site, clock = rig
    vehicle = make(misbehave="tamper-receipt")
    _charge(vehicle, charger, site, clock)
    begin, end, wh = _finish(vehicle, charger, site, clock)
    charger.frames()
    charger.send("receipt", receipt=charger.receipt(vehicle, begin, end, wh), begin=begin,
                 end=end)
    vehicle.step()
    s = vehicle.session
    assert s["refused"] == "bad-signature" and s["receipt_path"].endswith(".refused.json")
    doc = json.loads(open(s["receipt_path"]).read())
    kept = evproto.open_message(doc["receipt"], "receipt")  # well formed, just not signed
    assert kept["wh"] == wh // 2
    assert cli.main(["verify", s["receipt_path"]]) == 1  # and energo verify refuses it too


def test_receipt_whose_energy_the_records_do_not_give_is_refused(rig):
    make, charger, site, clock = rig
    vehicle = make()
    _charge(vehicle, charger, site, clock)
    begin, end, wh = _finish(vehicle, charger, site, clock)
    charger.send("receipt", receipt=charger.receipt(vehicle, begin, end, wh + 7), begin=begin,
                 end=end)
    vehicle.step()
    assert vehicle.session["refused"] == "bad-records"


def test_link_errors_both_ways(rig):
    make, charger, site, clock = rig
    vehicle = make()
    vehicle.plug()
    vehicle.step()
    charger.end.write(b"\x07not json\n")
    charger.send("auth", auth="x|00")
    vehicle.step()
    reasons = [(f["k"], f["reason"]) for f in charger.frames()]
    assert reasons == [("error", "malformed"), ("error", "malformed")]
    charger.send("error", reason="oversized", detail="line too long")
    vehicle.step()
    assert vehicle.session["errors_in"] == ["oversized"]
    charger.end.write(b"x" * (evproto.LINE_MAX + 10))  # no newline yet: already too long
    vehicle.step()
    charger.end.write(b"yyy\n")
    charger.end.write(b'{"k":"' + b"z" * evproto.LINE_MAX + b'"}\n')
    charger.send("status", wh=1, cost=1, i=16)
    vehicle.step()
    assert [(f["k"], f["reason"]) for f in charger.frames()] == [("error", "oversized")] * 2
    assert vehicle.session["statuses"][-1][1:] == (1, 1, 16)  # the next frame still gets in


def test_tamper_helpers_keep_the_bodies_well_formed():
    charger_priv, _ = _key(3)
    offer = evproto.sign_message(charger_priv, {
        "t": "offer", "station": "c-" + "1" * 12, "nonce": "2" * 32, "price": 1000, "fee": 1,
        "imax": 16, "at": T0})
    changed = vehicle_checks.tamper_offer(offer)
    assert evproto.open_message(changed, "offer")["price"] == 900
    with pytest.raises(evproto.ProtocolError) as err:
        evproto.verify_signature(changed, p256.public_key(charger_priv))
    assert err.value.reason == "bad-signature"


@pytest.mark.parametrize(("options", "match"), [
    ({"wallet": ""}, "wallet"),
    ({"misbehave": "fly"}, "misbehave"),
    ({"emax_wh": 0}, "emax_wh"),
    ({"target_soc": 1.5}, "target_soc"),
])
def test_configuration_is_validated(options, match):
    args = {"wallet": "alice"}
    args.update(options)
    wallet = args.pop("wallet")
    with pytest.raises(ValueError, match=match):
        Vehicle(evproto.spki_hex(COMMUNITY_PUB), wallet, **args)
    with pytest.raises(ValueError, match="community_key"):
        Vehicle("00", "alice")
