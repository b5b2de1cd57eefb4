# The keystore's file format, HMAC and refusal logic on MicroPython and CPython. The WebAssembly
# port has no cryptolib, so the AES here is a labelled test double (XOR with a SHA-256 stream);
# the real AES-CBC path is tested on CPython with OpenSSL (tests/test_keystore.py).
import binascii
import hashlib
import os
import sys

import check

from energo import keystore, p256

if sys.implementation.name == "micropython":
    root = "/tmp_storage_ks"
    os.mkdir(root)
else:
    import tempfile

    root = tempfile.mkdtemp()


class XorCipherDouble:
    """NOT AES: a reversible stand-in with cryptolib.aes's call shape, for this check only."""

    def __init__(self, key, mode, iv):
        check.eq(mode, 2, "CBC mode requested")
        self.stream = hashlib.sha256(key + iv).digest() + hashlib.sha256(iv + key).digest()

    def encrypt(self, data):
        check.eq(len(data) % 16, 0, "whole AES blocks")
        return bytes([data[i] ^ self.stream[i % 64] for i in range(len(data))])

    decrypt = encrypt


class Nvs:
    def __init__(self):
        self.stored = {}
        self.pending = {}

    def get_blob(self, key, buf):
        if key not in self.stored:
            raise OSError(-4354)
        data = self.stored[key]
        buf[:len(data)] = data
        return len(data)

    def set_blob(self, key, value):
        self.pending[key] = bytes(value)

    def erase_key(self, key):
        self.pending[key] = None

    def commit(self):
        for key in self.pending:
            if self.pending[key] is None:
                self.stored.pop(key)
            else:
                self.stored[key] = self.pending[key]
        self.pending = {}


counter = [0]


def fixed_random(n):
    """Deterministic 'random' bytes so both interpreters make the same key."""
    counter[0] += 1
    out = b""
    while len(out) < n:
        out += hashlib.sha256(b"seed %d %d" % (counter[0], len(out))).digest()
    return out[:n]


def make(nvs):
    return keystore.Keystore(root, "meter", nvs=nvs, aes_factory=XorCipherDouble,
                             urandom=fixed_random)


print("hmac:", binascii.hexlify(p256.hmac_sha256(b"k" * 32, b"message")).decode())
nvs = Nvs()
ks = make(nvs)
print("first boot:", ks.open(), ks.device_id, ks.fingerprint[:16])
der = ks.sign(b"payload")
check.true(p256.verify(ks.public_key, b"payload", der), "signature verifies")
print("signature:", binascii.hexlify(der).decode())
again = make(nvs)
print("reboot:", again.open(), again.device_id == ks.device_id, again.problems)
path = root + "/devkey.a"
with open(path, "rb") as f:
    good = f.read()
with open(path, "wb") as f:
    f.write(good[:100])
again = make(nvs)
print("one copy cut:", again.open(), again.problems)
for name in ("devkey.a", "devkey.b"):
    with open(root + "/" + name, "wb") as f:
        f.write(good[:50] + bytes([good[50] ^ 1]) + good[51:])
bad = make(nvs)
print("both flipped:", bad.open(), bad.problems, bad.id_on_record == ks.device_id)
print("sign:", check.raises(keystore.KeystoreError, lambda: bad.sign(b"x"), "refuse"))
print("fingerprint kept:", nvs.stored["keyfp"] == hashlib.sha256(ks.public_key).digest())
print("reset:", check.raises(keystore.KeystoreError, lambda: bad.reset_identity("m-x"), "confirm"))
bad.reset_identity(ks.device_id)
new = make(nvs)
print("new identity:", new.open(), new.device_id != ks.device_id)

for name in os.listdir(root):
    os.remove(root + "/" + name)
os.rmdir(root)
check.done()
