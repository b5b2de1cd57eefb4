"""The charge-and-pay messages on CPython: signatures interoperate with an independent ECDSA
implementation both ways, and no input makes the readers raise anything but ProtocolError."""
import json
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from energo import evframe, evproto, p256
from energo.evproto import ProtocolError

CHARGER = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
C_PUB = evproto.spki_hex(p256.public_key(CHARGER))
STATION = evproto.key_id(C_PUB, "charger")
NONCE = "00112233445566778899aabbccddeeff"


def _offer(**over):
    body = {"t": "offer", "station": STATION, "nonce": NONCE, "price": 250000, "fee": 30000,
            "imax": 32, "at": 1790000000}
    body.update(over)
    return body


def test_signed_line_verifies_with_cryptography():
    line = evproto.sign_message(CHARGER, _offer())
    body, sig = line.rsplit("|", 1)
    key = serialization.load_der_public_key(bytes.fromhex(C_PUB))
    key.verify(bytes.fromhex(sig), body.encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(bytes.fromhex(sig), body.replace("32", "31").encode(),
                   ec.ECDSA(hashes.SHA256()))
    assert json.loads(body) == dict(_offer(), v=1)


def test_line_signed_by_cryptography_opens():
    priv = ec.generate_private_key(ec.SECP256R1())
    spki = priv.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    station = evproto.key_id(spki, "charger")
    body = ('{"t":"offer","v":1,"station":"' + station + '","nonce":"' + NONCE
            + '","price":1,"fee":0,"imax":6,"at":5}')
    sig = priv.sign(body.encode(), ec.ECDSA(hashes.SHA256()))
    opened = evproto.open_message(body + "|" + sig.hex(), "offer", spki.hex())
    assert (opened["station"], opened["imax"]) == (station, 6)
    with pytest.raises(ProtocolError) as err:
        evproto.open_message(body + "|" + sig.hex(), "offer", C_PUB)
    assert err.value.reason == "bad-signature"


def test_reason_codes_are_the_documented_ones():
    doc = open("docs/charging-protocol.md").read()
    section = doc.split("## Rejection reasons")[1].split("##")[0]
    quoted = set(re.findall(r"`([^`]+)`", section)) - {"reject.reason", "exp", "at"}
    assert quoted == set(evproto.REASONS)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)),
       st.sampled_from(sorted(evproto.MESSAGES)))
def test_open_message_only_raises_protocol_error(text, kind):
    try:
        evproto.open_message(text, kind, C_PUB)
    except ProtocolError as exc:
        assert exc.reason in evproto.REASONS


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(evproto.MESSAGES)), st.dictionaries(
    st.sampled_from(["station", "nonce", "price", "fee", "vehicles", "pub", "wh", "hold",
                     "session", "reason", "detail", "record", "exp", "x"]), _JSONISH))
def test_mutated_bodies_are_refused_cleanly(kind, fields):
    body = json.dumps(dict(fields, t=kind, v=1), separators=(",", ":"))
    try:
        evproto.open_message(body + "|3006020101020101", kind, C_PUB)
    except ProtocolError as exc:
        assert exc.reason in evproto.REASONS
    else:
        pytest.fail("a forged signature was accepted")


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.builds(
    lambda k, f: json.dumps(dict(f, k=k)).encode() + b"\n",
    st.sampled_from(sorted(evframe.FRAMES) + ["zz"]),
    st.dictionaries(st.sampled_from(["offer", "auth", "wh", "cost", "i", "reason", "detail",
                                     "record", "reject", "begin"]), _JSONISH))))
def test_read_frame_only_raises_protocol_error(line):
    try:
        got = evproto.read_frame(line)
    except ProtocolError as exc:
        assert exc.reason in ("malformed", "oversized")
    else:
        assert got["k"] in evframe.FRAMES


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7),
       st.integers(0, 10**12))
def test_cost_never_exceeds_the_hold(wh, price, fee, hold):
    energy, fee_micro, total = evproto.cost(wh, price, fee, hold)
    assert total == energy + fee_micro <= hold
    assert 0 <= energy <= wh * price // 1000 and 0 <= fee_micro <= wh * fee // 1000
    if total < hold:
        assert (energy, fee_micro) == (wh * price // 1000, wh * fee // 1000)
    elif fee_micro < wh * fee // 1000:
        assert energy == wh * price // 1000 or fee_micro == 0


@given(st.integers(0, 10**7), st.integers(0, 10**12), st.integers(0, 10**7),
       st.integers(0, 10**7))
def test_hold_covers_emax_unless_capped(emax, cmax, price, fee):
    hold = evproto.hold_for(emax, cmax, price, fee)
    assert hold <= cmax
    if hold < cmax:
        assert evproto.cost(emax, price, fee, hold)[2] == emax * price // 1000 + emax * fee // 1000


def test_sliced_lets_other_tasks_run_between_the_slices(monkeypatch):
    """p256.sliced: the verification's result, with another task running in between."""
    import asyncio

    monkeypatch.setattr(asyncio, "sleep_ms", lambda ms: asyncio.sleep(ms / 1000), raising=False)
    priv = bytes([0x22] * 32)
    line = evproto.sign_message(priv, {"t": "meter", "session": "0" * 32,
                                       "vehicle": evproto.key_id(p256.public_key(priv), "vehicle"),
                                       "station": "c-" + "0" * 12, "record": "a" * 64, "wh": 5})
    ticks = []

    async def other():
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def main(key):
        side = asyncio.create_task(other())
        try:
            return await p256.sliced(evproto.verify_steps(line, key))
        finally:
            side.cancel()

    assert asyncio.run(main(p256.public_key(priv))) is None
    assert len(ticks) > 10
    with pytest.raises(ProtocolError, match="bad-signature"):
        asyncio.run(main(p256.public_key(bytes([0x33] * 32))))


def test_the_longest_frames_a_vehicle_sends_fit_the_chargers_line_buffer():
    """energo.evlink.LINE_MAX (the charger's receive buffer) holds any auth, meter or error
    frame a vehicle may send, with every field at its largest allowed value."""
    from energo import evlink

    priv = bytes([0x7F] * 32)
    pub = evproto.spki_hex(p256.public_key(priv))
    vehicle = evproto.key_id(pub, "vehicle")
    auth = evproto.sign_message(priv, {"t": "auth", "vehicle": vehicle, "pub": pub,
                                       "station": "c-" + "f" * 12, "nonce": "f" * 32,
                                       "emax": 10 ** 10, "cmax": 10 ** 15, "exp": (1 << 40) - 1})
    meter = evproto.sign_message(priv, {"t": "meter", "session": "f" * 32, "vehicle": vehicle,
                                        "station": "c-" + "f" * 12, "record": "f" * 64,
                                        "wh": 10 ** 10})
    frames = [evproto.frame("auth", auth=auth), evproto.frame("meter", meter=meter),
              evproto.frame("error", reason="malformed",
                            detail="\u00e9\"" * (evproto.DETAIL_MAX // 2))]
    longest = max(len(f) for f in frames)
    assert 600 < longest <= evlink.LINE_MAX // 2, longest  # room for fields added later
    assert evlink.VehicleLink(None).line_max == evlink.LINE_MAX


def test_an_id_that_is_not_its_keys_is_refused_in_every_message_that_pairs_them():
    """_consistent derives ids from keys _check has accepted, without a second curve check;
    the id it derives is key_id's, and another key's id is refused in each pairing."""
    vehicle_priv = bytes([0x22] * 32)
    v_pub = evproto.spki_hex(p256.public_key(vehicle_priv))
    other = evproto.spki_hex(p256.public_key(bytes([0x23] * 32)))
    assert evproto._id_of_checked(v_pub, "vehicle") == evproto.key_id(v_pub, "vehicle")
    assert evproto._id_of_checked(C_PUB, "charger") == STATION
    auth = {"t": "auth", "vehicle": evproto.key_id(v_pub, "vehicle"), "pub": v_pub,
            "station": STATION, "nonce": NONCE, "emax": 1000, "cmax": 10, "exp": 1790000000}
    cert = {"t": "cert", "community": "c", "station": STATION, "pub": C_PUB, "owner": "o",
            "fee": 0, "exp": 1790000000}
    allow = {"t": "allow", "community": "c", "seq": 1, "exp": 1790000000,
             "vehicles": [{"id": auth["vehicle"], "pub": v_pub, "limit": 5}]}
    for body in (auth, cert, allow):
        assert evproto.open_message(evproto.sign_message(CHARGER, body), body["t"])
    bad = [dict(auth, pub=other), dict(cert, pub=other),
           dict(allow, vehicles=[{"id": auth["vehicle"], "pub": other, "limit": 5}])]
    for body in bad:
        with pytest.raises(ProtocolError) as err:
            evproto.write_body(body)
        assert err.value.reason == "malformed"
        assert "is not the id of" in err.value.detail
