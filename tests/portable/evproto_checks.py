# energo.evproto: signed messages round trip, every refusal carries its reason code, link
# frames, and the session arithmetic (including the cases where the hold caps the cost).
import check

from energo import evproto, p256
from energo.evproto import ProtocolError

CHARGER = bytes([0x11] * 32)
VEHICLE = bytes([0x22] * 32)
SERVICE = bytes([0x33] * 32)
c_pub = evproto.spki_hex(p256.public_key(CHARGER))
v_pub = evproto.spki_hex(p256.public_key(VEHICLE))
s_pub = evproto.spki_hex(p256.public_key(SERVICE))
station = evproto.key_id(c_pub, "charger")
vehicle = evproto.key_id(v_pub, "vehicle")
nonce = evproto.new_nonce(lambda n: bytes(range(n)))
check.eq(nonce, "000102030405060708090a0b0c0d0e0f", "nonce from urandom")
print("ids", station, vehicle)


def reason(fn, what):
    try:
        fn()
    except ProtocolError as exc:
        check.eq(exc.reason in evproto.REASONS, True, what + " reason is a code")
        return exc.reason
    raise AssertionError(what + ": accepted")


offer_body = {"t": "offer", "station": station, "nonce": nonce, "price": 250000, "fee": 30000,
              "imax": 16, "at": 1790000000}
offer = evproto.sign_message(CHARGER, offer_body)
print("offer", offer)
got = evproto.open_message(offer, "offer", c_pub)
check.eq(got["price"], 250000, "offer price is an int")
check.eq(got["station"], station, "offer station")
check.eq(got["v"], 1, "v added")
check.eq(evproto.open_message(offer.encode(), "offer")["nonce"], nonce, "bytes, parse only")

auth = evproto.sign_message(VEHICLE, {"t": "auth", "vehicle": vehicle, "pub": v_pub,
                                      "station": station, "nonce": nonce, "emax": 20000,
                                      "cmax": 8000000, "exp": 1790000600})
check.eq(evproto.open_message(auth, "auth", p256.public_key(VEHICLE))["emax"], 20000, "auth")
check.eq(reason(lambda: evproto.open_message(auth, "auth", c_pub), "auth wrong key"),
         "bad-signature", "auth under the charger key")
check.eq(reason(lambda: evproto.open_message(auth, "offer"), "auth as offer"), "malformed",
         "wrong type")


def slices(steps):
    """How many times a steps-generator yields before it ends (its result is dropped)."""
    count = 0
    for _ in steps:
        count += 1
    return count


check.eq(slices(evproto.verify_steps(auth, v_pub)) > 10, True, "verification in slices")
check.eq(reason(lambda: slices(evproto.verify_steps(auth, c_pub)), "sliced, wrong key"),
         "bad-signature", "sliced verification under the charger key")
check.eq(reason(lambda: slices(evproto.verify_steps(auth[:-2] + "zz", v_pub)), "sliced, hex"),
         "bad-signature", "sliced verification of a signature that is not hex")
check.eq(reason(lambda: slices(evproto.verify_steps(auth, "00")), "sliced, no key"),
         "malformed", "sliced verification under no key")

allow = evproto.sign_message(SERVICE, {"t": "allow", "community": "demo", "seq": 3,
                                       "exp": 1790086400,
                                       "vehicles": [{"id": vehicle, "pub": v_pub,
                                                     "limit": 5000000}]})
check.eq(evproto.open_message(allow, "allow", s_pub)["vehicles"][0]["limit"], 5000000, "allow")
print("allow", evproto.record_hash(allow))

# every way a signed line can be wrong
body, sig = offer[:offer.rfind("|")], offer[offer.rfind("|") + 1:]
bad_sig = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
cases = [
    ("tampered body", body.replace("250000", "250001") + "|" + sig, "bad-signature"),
    ("tampered signature", body + "|" + bad_sig, "bad-signature"),
    ("no separator", body, "malformed"),
    ("upper-case hex", body + "|" + sig.upper(), "malformed"),
    ("odd hex", body + "|" + sig[:-1], "malformed"),
    ("not JSON", "{nope|" + sig, "malformed"),
    ("v 2", body.replace('"v":1', '"v":2') + "|" + sig, "malformed"),
    ("float price", body.replace("250000", "250000.0") + "|" + sig, "malformed"),
    ("negative fee", body.replace("30000", "-30000") + "|" + sig, "malformed"),
    ("leading zero", body.replace("250000", "0250000") + "|" + sig, "malformed"),
    ("string price", body.replace("250000", '"250000"') + "|" + sig, "malformed"),
    ("zero imax", body.replace('"imax":16', '"imax":0') + "|" + sig, "malformed"),
    ("short nonce", body.replace(nonce, nonce[:-2]) + "|" + sig, "malformed"),
    ("upper nonce", body.replace(nonce, nonce.upper()) + "|" + sig, "malformed"),
    ("bad station", body.replace(station, "m-" + station[2:]) + "|" + sig, "malformed"),
    ("extra field", body[:-1] + ',"x":1}|' + sig, "malformed"),
    ("missing field", body.replace(',"imax":16', "") + "|" + sig, "malformed"),
    ("duplicate key", body[:-1] + ',"at":1}|' + sig, "malformed"),
    ("non-ASCII", body.replace("offer", "off\u00e9r") + "|" + sig, "malformed"),
    ("oversized", body + " " * 4096 + "|" + sig, "oversized"),
]
for what, text, want in cases:
    check.eq(reason(lambda: evproto.open_message(text, "offer", c_pub), what), want, what)

# an id that is not its key's id, and receipt amounts that do not add up, are refused unsigned
stolen = auth.replace(vehicle, "v-" + "0" * 12)
check.eq(reason(lambda: evproto.open_message(stolen, "auth"), "claimed id"), "malformed",
         "vehicle id must derive from pub")
check.eq(reason(lambda: evproto.sign_message(SERVICE, dict(offer_body, fee="1")), "sign"),
         "malformed", "signing checks the body too")
check.eq(reason(lambda: evproto.sign_message(SERVICE, {"t": "bogus"}), "type"), "malformed",
         "unknown type")
check.eq(reason(lambda: evproto.sign_message(SERVICE, {"t": "reject", "session": nonce,
                                                       "station": station,
                                                       "reason": "expired",
                                                       "detail": "a|b"}), "pipe"),
         "malformed", "'|' cannot be signed")
check.eq(reason(lambda: evproto.sign_message(SERVICE, {"t": "reject", "session": nonce,
                                                       "station": station,
                                                       "reason": "no-such-reason",
                                                       "detail": ""}), "code"),
         "malformed", "reason must be a code")

# link frames
line = evproto.frame("offer", offer=offer, cert=allow)
check.eq(line[-1:], b"\n", "frame ends in a newline")
back = evproto.read_frame(line)
check.eq(back["offer"], offer, "frame carries the signed line unchanged")
check.eq(evproto.read_frame(evproto.frame("stop")), {"k": "stop"}, "empty frame")
st = evproto.read_frame(evproto.frame("status", wh=1234, cost=56789, i=0))
check.eq((st["wh"], st["cost"], st["i"]), (1234, 56789, 0), "status ints")
rj = evproto.read_frame(evproto.frame("reject", reason="expired", detail="late", reject=None))
check.eq(sorted(rj.keys()), ["detail", "k", "reason"], "optional field left out")
# Text is written byte for byte the same on both implementations: printable ASCII escapes only
# '"' and '\\'; control characters, DEL and anything beyond ASCII become \\u escapes.
check.eq(evproto.frame("error", reason="malformed", detail='a "q" \\ |x'),
         b'{"k":"error","reason":"malformed","detail":"a \\"q\\" \\\\ |x"}\n',
         "printable text: quote and backslash escaped")
odd = "tab\tnl\ndel\x7f\u00e9\u20ac"
line = evproto.frame("error", reason="malformed", detail=odd)
check.eq(line, b'{"k":"error","reason":"malformed","detail":'
         b'"tab\\u0009nl\\u000adel\\u007f\\u00e9\\u20ac"}\n', "other text: \\u escapes")
check.eq(evproto.read_frame(line)["detail"], odd, "escaped text reads back")
frame_cases = [
    ("garbage", b"\x00\xff garbage\n", "malformed"),
    ("unknown kind", b'{"k":"dance"}\n', "malformed"),
    ("no kind", b'{"wh":1}\n', "malformed"),
    ("extra field", b'{"k":"stop","x":1}\n', "malformed"),
    ("missing field", b'{"k":"auth"}\n', "malformed"),
    ("bad record", b'{"k":"final","record":"nope"}\n', "malformed"),
    ("bad reason", b'{"k":"error","reason":"why","detail":""}\n', "malformed"),
    ("too long", b'{"k":"stop"}' + b" " * 6144 + b"\n", "oversized"),
]
for what, raw, want in frame_cases:
    check.eq(reason(lambda: evproto.read_frame(raw), what), want, "frame " + what)
check.eq(reason(lambda: evproto.frame("stop", x=1), "frame extra"), "malformed", "frame extra")
check.eq(reason(lambda: evproto.frame("final", record="OCMF|" + "x" * 6144), "big"), "oversized",
         "frame too long")

# arithmetic: floor per part, the hold caps the total, the fee is cut first
check.eq(evproto.cost(1999, 250000, 30000, 10 ** 9), (499750, 59970, 559720), "plain cost")
check.eq(evproto.cost(1, 999, 999, 100), (0, 0, 0), "sub-micro rounds down")
check.eq(evproto.cost(10000, 250000, 30000, 2700000), (2500000, 200000, 2700000), "fee cut")
check.eq(evproto.cost(10000, 250000, 30000, 2400000), (2400000, 0, 2400000), "energy cut")
check.eq(evproto.cost(10000, 250000, 30000, 0), (0, 0, 0), "zero hold")
check.eq(evproto.cost(0, 250000, 30000, 100), (0, 0, 0), "no energy")
check.eq(evproto.hold_for(20000, 10 ** 9, 250000, 30000), 5600000, "hold from emax")
check.eq(evproto.hold_for(1, 10 ** 9, 1, 0), 1, "hold rounds up")
check.eq(evproto.hold_for(20000, 4000000, 250000, 30000), 4000000, "hold capped by cmax")
check.eq(reason(lambda: evproto.cost(-1, 1, 1, 1), "negative"), "malformed", "negative wh")
check.eq(reason(lambda: evproto.hold_for(1, 1, True, 1), "bool"), "malformed", "bool price")
check.eq(evproto.record_hash("abc"), evproto.record_hash(b"abc"), "hash of str = of bytes")
check.eq(evproto.record_hash(b"abc")[:16], "ba7816bf8f01cfea", "SHA-256")
check.raises(ValueError, lambda: evproto.new_nonce(lambda n: b"short"), "short random")
check.done()
