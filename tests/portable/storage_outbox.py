# The outbox on flash: append/peek/ack, segment rotation, a full outbox, a torn tail cut at
# every offset and a flipped bit; the same results on MicroPython and CPython.
import os
import sys

import check

from energo import outbox
from energo.outbox import Outbox, OutboxError, OutboxFull

if sys.implementation.name == "micropython":
    root = "/tmp_storage_ob"
    os.mkdir(root)
else:
    import tempfile

    root = tempfile.mkdtemp()

KW = {"segment_bytes": 500, "record_bytes_max": 200, "capacity_bytes": 1500}


def clear():
    for name in os.listdir(root):
        os.remove(root + "/" + name)


def boot():
    box = Outbox(root, **KW)
    box.open()
    return box


def segments():
    return sorted([n for n in os.listdir(root) if n.endswith(".seg")])


def rec(c, size=100):
    return ("R%d:" % c).encode() + bytes([65 + c % 26]) * (size - 4)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


box = boot()
print("fresh:", box.fresh, box.healthy, box.count(), box.last_counter())
for c in range(1, 11):
    box.append(c, rec(c))
print("segments:", segments(), box.bytes_used(), box.count())
print("peek:", [c for c, _ in box.peek(3)], box.peek(1)[0][1] == rec(1))
print("ack 3:", box.ack(3), box.count(), segments())
print("ack 5:", box.ack(5), box.count(), segments())
print("stale ack:", box.ack(2))
print("ack above:", check.raises(OutboxError, lambda: box.ack(11), "ack above last"))
print("reuse:", check.raises(OutboxError, lambda: box.append(10, rec(10)), "reuse"))
for c in range(11, 20):
    try:
        box.append(c, rec(c))
    except OutboxFull as exc:
        print("full at", c, str(exc))
        break
box = boot()
print("reopened:", box.healthy, box.count(), box.last_counter(), box.acked(),
      [c for c, _ in box.peek(20)])
print("drain:", box.ack(box.last_counter()), segments(), boot().last_counter())
newest = boot().peek_last()
print("newest kept:", newest[0], newest[1] == rec(17), boot().count())

# A torn tail: the newest frame cut at every offset keeps everything before it.
clear()
box = boot()
for c in (1, 2, 3):
    box.append(c, rec(c, 40 + c))
name = root + "/" + segments()[0]
good = read(name)
ends = []
for c in (1, 2, 3):
    ends.append((ends[-1] if ends else 0) + outbox.frame_bytes(len(rec(c, 40 + c))))
print("frame ends:", ends)
check.eq(len(good), ends[-1], "segment size")
for cut in range(len(good)):
    write(name, good[:cut])
    box = boot()
    complete = len([e for e in ends if e <= cut])
    check.true(box.healthy, "torn tail is healthy at %d" % cut)
    check.eq([c for c, _ in box.peek(5)], list(range(1, complete + 1)), "kept at %d" % cut)
    check.eq(box.last_counter(), complete, "last counter at %d" % cut)
    if complete:
        check.eq(read(name), good[:ends[complete - 1]], "repaired at %d" % cut)
    for n in segments():
        os.remove(root + "/" + n)

# A flipped bit in the middle frame: skipped, reported, the neighbours kept.
write(name, good[:60] + bytes([good[60] ^ 1]) + good[61:])
box = boot()
print("bit flip:", box.healthy, box.corrupt_frames, [c for c, _ in box.peek(5)], box.problems)
print("next boot:", boot().healthy)
print("frame bytes:", outbox.frame_bytes(650), outbox.capacity_for_filesystem(2 << 20))

clear()
os.rmdir(root)
check.done()
