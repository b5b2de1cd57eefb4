# The charger role's decisions without a board: when a session stops, whom it serves offline,
# the session journal on flash (atomic states, record logs cut at every offset), the vehicle
# link's line framing, the trust store and the close request; same results on MicroPython.
import json
import os
import sys

import check

from energo import evproto, p256
from energo.charger import overdrawn, stop_reason
from energo.evjournal import Journal, JournalError, decode_state, encode_state
from energo.evlink import VehicleLink
from energo.evservice import close_head
from energo.evtrust import Trust, offline_decision

if sys.implementation.name == "micropython":
    root = "/tmp_charger_checks"
    os.mkdir(root)
else:
    import tempfile

    root = tempfile.mkdtemp()

CHARGER = bytes([0x11] * 32)
VEHICLE = bytes([0x22] * 32)
OTHER = bytes([0x44] * 32)
SERVICE = bytes([0x33] * 32)
c_pub = evproto.spki_hex(p256.public_key(CHARGER))
v_pub = evproto.spki_hex(p256.public_key(VEHICLE))
o_pub = evproto.spki_hex(p256.public_key(OTHER))
s_pub = evproto.spki_hex(p256.public_key(SERVICE))
station = evproto.key_id(c_pub, "charger")
vehicle = evproto.key_id(v_pub, "vehicle")
other = evproto.key_id(o_pub, "vehicle")
NONCE = "00112233445566778899aabbccddeeff"

# --- stop decisions ----------------------------------------------------------------------------
PRICE, FEE = 250000, 50000  # 0.30 per kWh together
go = (None, False, 1000, 20000, PRICE, FEE, 1000000, 0, 120000)
check.eq(stop_reason("C", *go), None, "charging on")
check.eq(stop_reason("B", *go), None, "B for a moment")
check.eq(stop_reason("A", *go), "E", "unplugged")
check.eq(stop_reason("F", *go), "A", "pilot F is a fault")
check.eq(stop_reason("C", "rcd", *go[1:]), "A", "RCD fault aborts")
check.eq(stop_reason("C", None, True, *go[2:]), "E", "vehicle asked to stop")
check.eq(stop_reason("B", None, False, 1000, 20000, PRICE, FEE, 100000, 120000, 120000), "E",
         "back in B for good")
check.eq(stop_reason("C", None, False, 20000, 20000, PRICE, FEE, 10 ** 9, 0, 120000), "E",
         "energy limit")
# 333 Wh cost 83250 + 16650 = 99900 < 100000; 334 Wh cost 83500 + 16700 = 100200
check.eq(stop_reason("C", None, False, 333, 20000, PRICE, FEE, 100000, 0, 120000), None,
         "under the cost limit")
check.eq(stop_reason("C", None, False, 334, 20000, PRICE, FEE, 100000, 0, 120000), "E",
         "cost limit")

check.eq([overdrawn(ma, 16) for ma in (0, 16000, 18600, 18601, 40000)],
         [False, False, False, True, True], "overdrawn at 16 A")
check.eq(overdrawn(40000, 0), False, "nothing offered: the Evse's own rules apply")

# --- offline decisions -------------------------------------------------------------------------
auth = {"vehicle": vehicle, "pub": v_pub, "emax": 20000, "cmax": 9000000}
allow = {"exp": 2000, "vehicles": [{"id": vehicle, "pub": v_pub, "limit": 1500000},
                                   {"id": other, "pub": o_pub, "limit": 0}]}
check.eq(offline_decision(allow, auth, 1000, PRICE, FEE, 0), (1500000, None, ""),
         "capped at the offline limit")
small = dict(auth)
small["emax"] = 1000
check.eq(offline_decision(allow, small, 1000, PRICE, FEE, 0)[0], 300000, "hold for 1 kWh")
check.eq(offline_decision(None, auth, 1000, PRICE, FEE, 0)[1], "unknown-vehicle", "no list")
check.eq(offline_decision(allow, auth, 2001, PRICE, FEE, 0)[1], "expired", "list expired")
check.eq(offline_decision(allow, auth, 1000, PRICE, FEE, 8)[1], "limit-exceeded",
         "journal full")
stranger = {"vehicle": other, "pub": o_pub, "emax": 1, "cmax": 1}
check.eq(offline_decision(allow, stranger, 1000, PRICE, FEE, 0)[1], "limit-exceeded",
         "no offline credit")
swapped = {"vehicle": vehicle, "pub": o_pub, "emax": 1, "cmax": 1}
check.eq(offline_decision(allow, swapped, 1000, PRICE, FEE, 0)[1], "unknown-vehicle",
         "another key")

# --- the session journal -----------------------------------------------------------------------
state = {"session": NONCE, "state": "charging", "offer": "o|1", "auth": "a|2", "grant": None,
         "offline": True, "hold": 5, "emax": 6, "price": PRICE, "fee": FEE, "wh0": 7}
data = encode_state(state)
check.eq(decode_state(data)["hold"], 5, "state round trip")
for cut in (0, 5, 12, len(data) - 1):
    check.raises(JournalError, lambda: decode_state(data[:cut]), "torn state at %d" % cut)
flipped = bytearray(data)
flipped[-3] ^= 1
check.raises(JournalError, lambda: decode_state(bytes(flipped)), "flipped bit")
bad = dict(state)
bad["state"] = "paid"
check.raises(JournalError, lambda: encode_state(bad), "unknown state")

jroot = root + "/ev"
journal = Journal(jroot)
check.eq(journal.open(), [], "empty journal")
journal.save(state)
journal.append_record(NONCE, 41, b"OCMF|B")
journal.append_record(NONCE, 42, b"OCMF|C")
journal.append_record(NONCE, 43, b"OCMF|E1")
journal.append_record(NONCE, 43, b"OCMF|E2")  # signed again after a failed outbox append
index = journal.records(NONCE)
check.eq([e[0] for e in index], [41, 42, 43], "records in order")
check.eq(journal.read_record(NONCE, index[-1]), b"OCMF|E2", "a re-signed record replaces")
check.raises(JournalError, lambda: journal.append_record(NONCE, 45, b"x"), "gap refused")
path = journal.records_path(NONCE)
with open(path, "rb") as f:
    whole = f.read()
tail = len(whole) - 17  # the last frame: header 10 + 7 bytes
for cut in range(tail, len(whole)):
    with open(path, "wb") as f:
        f.write(whole[:cut])
    got = [e[0] for e in Journal(jroot).records(NONCE)]
    check.eq(got, [41, 42], "torn tail cut at %d" % cut)
again = Journal(jroot)
again.open()
again.append_record(NONCE, 43, b"OCMF|E3")  # the torn tail is cut before the append
check.eq([e[0] for e in again.records(NONCE)], [41, 42, 43], "append after a torn tail")
check.eq([e[0] for e in again.trim_records(NONCE, 41)], [41], "trim to the outbox")
with open(jroot + "/" + NONCE[:12] + ".j.tmp", "wb") as f:
    f.write(b"half a save")
states = Journal(jroot).open()
check.eq([s["state"] for s in states], ["charging"], "temp file ignored, state kept")
check.eq(NONCE[:12] + ".j.tmp" in os.listdir(jroot), False, "temp file removed")
journal.forget(NONCE)
check.eq(sorted(os.listdir(jroot)), [], "forgotten")

# --- the close request head --------------------------------------------------------------------
head = close_head(state)
closed = json.loads(head + b'"OCMF|B","OCMF|E"]}')
check.eq((closed["t"], closed["session"], closed["offline"], closed["meter"]),
         ("close", NONCE, True, None), "close fields")
check.eq(closed["records"], ["OCMF|B", "OCMF|E"], "close records")


# --- the vehicle link --------------------------------------------------------------------------
class Uart:
    def __init__(self):
        self.rx = bytearray()
        self.tx = []

    def any(self):
        return len(self.rx)

    def read(self, n):
        data = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return data

    def write(self, data):
        self.tx.append(data)


uart = Uart()
link = VehicleLink(uart)
uart.rx += b'{"k":"stop"}\n\n garbage\n' + b"x" * 7000 + b'\n{"k":"stop"}\r\n{"k":"st'
frames = []
for _ in range(40):
    frames += link.poll()
check.eq(frames, [{"k": "stop"}, {"k": "stop"}], "frames around garbage and a long line")
answers = [evproto.read_frame(line)["reason"] for line in uart.tx]
check.eq(answers, ["malformed", "oversized"], "each bad line answered once")
uart.rx += b'op"}\n'
check.eq(link.poll(), [{"k": "stop"}], "a frame in two pieces")
check.eq(link.send("status", wh=-1, cost=0, i=16), False, "a bad frame is not sent")
check.eq(link.send("status", wh=12, cost=3, i=16), True, "status sent")
check.eq(evproto.read_frame(uart.tx[-1])["wh"], 12, "status readable")

# --- the trust store ---------------------------------------------------------------------------
cert = evproto.sign_message(SERVICE, {"t": "cert", "community": "demo", "station": station,
                                      "pub": c_pub, "owner": "alice", "fee": FEE,
                                      "exp": 3000})
allow_msg = evproto.sign_message(SERVICE, {"t": "allow", "community": "demo", "seq": 5,
                                           "exp": 3000,
                                           "vehicles": [{"id": vehicle, "pub": v_pub,
                                                         "limit": 700}]})
trust = Trust(root + "/trust.json", station, c_pub)
check.eq(trust.load(), False, "no trust file yet")
steps = trust.apply_sync_steps({"t": "sync", "cert": cert, "allow": allow_msg,
                                "community_key": s_pub})
sliced = 0
try:
    while True:
        next(steps)
        sliced += 1
except StopIteration as done:
    check.eq((done.value, sliced > 20), (True, True), "sync taken, verified in slices")
check.eq((trust.fee, trust.cert_valid(2999), trust.cert_valid(3001)), (FEE, True, False),
         "certificate")
check.eq(trust.apply_sync({"t": "sync", "cert": cert, "allow": allow_msg,
                           "community_key": o_pub}), False, "another community key refused")
older = evproto.sign_message(SERVICE, {"t": "allow", "community": "demo", "seq": 4, "exp": 3000,
                                       "vehicles": []})
trust.apply_sync({"t": "sync", "cert": cert, "allow": older, "community_key": s_pub})
check.eq(trust.allow_body["seq"], 5, "an older allow-list is refused")
foreign = evproto.sign_message(OTHER, {"t": "allow", "community": "demo", "seq": 9, "exp": 3000,
                                       "vehicles": []})
trust.apply_sync({"t": "sync", "cert": cert, "allow": foreign, "community_key": s_pub})
check.eq(trust.allow_body["seq"], 5, "an allow-list the community did not sign is refused")
trust.set_price(PRICE)
kept = Trust(root + "/trust.json", station, c_pub)
check.eq(kept.load(), True, "trust reloaded")
check.eq((kept.price, kept.allow_body["seq"], kept.offline_decision(auth, 1000, PRICE, FEE, 0)),
         (PRICE, 5, (700, None, "")), "trust survives a reboot")
print("problems", len(trust.problems))
check.done()
