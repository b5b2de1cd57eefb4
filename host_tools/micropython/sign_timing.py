# Runs on MicroPython: times energo.p256 sign and verify; prints one JSON line.
import json
import sys
import time

from energo import p256

runs = int(sys.argv[1])
priv = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
pub = p256.public_key(priv)  # also builds the fixed-base table, outside the timed runs


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


# The port's clock ticks in whole milliseconds, so each run times a batch of operations.
BATCH = 5
sign_us = []
verify_us = []
for i in range(runs):
    msgs = [b"energo reading %d.%d" % (i, j) for j in range(BATCH)]
    t0 = time.ticks_us()
    sigs = [p256.sign(priv, m) for m in msgs]
    t1 = time.ticks_us()
    oks = [p256.verify(pub, m, s) for m, s in zip(msgs, sigs)]
    t2 = time.ticks_us()
    if not all(oks):
        raise SystemExit("signature did not verify")
    sign_us.append(time.ticks_diff(t1, t0) // BATCH)
    verify_us.append(time.ticks_diff(t2, t1) // BATCH)
print(json.dumps({"sign_us": median(sign_us), "verify_us": median(verify_us), "runs": runs}))
