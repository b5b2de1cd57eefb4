# Energy register, record counter and outbox on flash: the same results on MicroPython and
# CPython, including recovery from a slot truncated at every offset and a torn outbox tail.
import os
import sys

import check

from energo import crc, register
from energo.counter import RecordCounter
from energo.outbox import Outbox

if sys.implementation.name == "micropython":
    root = "/tmp_storage_reg"
    os.mkdir(root)
else:
    import tempfile

    root = tempfile.mkdtemp()


def clear():
    for name in os.listdir(root):
        os.remove(root + "/" + name)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def values(reg):
    return (reg.import_wh, reg.export_wh, reg.last_counter, reg.reserved_until)


# CRC-32: the native and the table version agree with the published check value.
check.eq(crc.crc32(b"123456789"), 0xCBF43926, "crc32 check value")
check.eq(crc.crc32_table(b"123456789"), 0xCBF43926, "table crc32 check value")
check.eq(crc.crc32_table(b"energo", 12345), crc.crc32(b"energo", 12345), "crc32 continued")

reg = register.EnergyRegister(root)
print("first load:", reg.load(), values(reg))
reg.save(1000, 10, 0, 64)
reg.save(2000, 20, 1, 64)
print("files:", sorted(os.listdir(root)))
good = read(root + "/energy.b")
check.eq(len(good), register.SLOT_BYTES, "slot size")
for cut in range(len(good)):
    write(root + "/energy.b", good[:cut])
    again = register.EnergyRegister(root)
    check.eq(again.load(), "recovered", "truncated at %d" % cut)
    check.eq(values(again), (1000, 10, 0, 64), "older slot used at %d" % cut)
flipped = bytearray(good)
flipped[20] ^= 4
write(root + "/energy.b", flipped)
again = register.EnergyRegister(root)
print("bit flip:", again.load(), again.slot_errors, again.problems)
print("backwards:", check.raises(ValueError, lambda: again.save(999, 10), "backwards"))
print("float:", check.raises(ValueError, lambda: again.save(1000.5, 10), "float"))
again.save(1500, 15)
print("after repair:", register.EnergyRegister(root).load())

# Save policy on a virtual clock.
policy = register.EnergyRegister(root)
policy.load()
saved = [policy.maybe_save(imp, 15, now) for imp, now in
         ((1500, 0), (1600, 30000), (1600, 60000), (1601, 100000), (1601, 960000))]
print("policy:", saved, policy.save_count)

# Counter + outbox: a cut before the append reuses nothing anyone saw; a cut after it no gap.
clear()


def boot(block=4):
    reg = register.EnergyRegister(root)
    reg.load()
    box = Outbox(root, segment_bytes=4096, record_bytes_max=256, capacity_bytes=16384)
    box.open()
    counters = RecordCounter(reg, box, block)
    counters.open()
    return reg, box, counters


reg, box, counters = boot()
for _ in range(5):
    c = counters.next_counter()
    box.append(c, "record %d" % c)
    counters.commit(c)
print("made:", counters.last(), "reserved:", reg.reserved_until, "saves:", reg.save_count)
c = counters.next_counter()  # cut: signed but never stored
reg, box, counters = boot()
print("after cut before append:", counters.peek(), counters.skipped)
c = counters.next_counter()
box.append(c, "record %d" % c)  # cut: stored, not committed
reg, box, counters = boot()
print("after cut after append:", counters.peek(), counters.skipped)
box.ack(6)
write(root + "/ob.ack", b"damaged")
reg, box, counters = boot()
print("damaged outbox:", box.healthy, counters.peek(), counters.skipped, box.problems)
reg, box, counters = boot()
print("next boot:", box.healthy, counters.peek(), reg.last_counter)

for name in os.listdir(root):
    os.remove(root + "/" + name)
os.rmdir(root)
check.done()
