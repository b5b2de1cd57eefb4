# P-256 ECDSA against RFC 6979 A.2.5 and Wycheproof (DER and P1363 files).
import hashlib
import json
import sys

import check

from energo import p256

data_dir = sys.argv[1]
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 0

with open(data_dir + "/rfc6979_A25_p256_sha256.json") as f:
    rfc = json.load(f)
priv = bytes.fromhex(rfc["private_key_x"])
pub = p256.public_key(priv)
check.eq(pub[1:33].hex(), rfc["Ux"].lower(), "RFC 6979 Ux")
check.eq(pub[33:].hex(), rfc["Uy"].lower(), "RFC 6979 Uy")
for message in ("sample", "test"):
    sig = p256.sign(priv, message.encode())
    check.eq(sig.hex(), rfc[message]["der"].lower(), "RFC 6979 signature of " + message)
    check.true(p256.verify(pub, message.encode(), sig), "RFC 6979 verify " + message)
    print("rfc6979", message, sig.hex())

spki = p256.spki_encode(pub)
check.eq(p256.spki_decode(spki), pub, "SPKI round trip")
compressed = bytes([2 + (pub[64] & 1)]) + pub[1:33]
check.eq(p256.spki_decode(spki[:1] + b"\x39" + spki[2:3] + b"\x13" + spki[4:23] + b"\x03\x22\x00"
                          + compressed), pub, "compressed SPKI")


def run_file(name, verify_fn):
    with open(data_dir + "/" + name) as f:
        suite = json.load(f)
    digest = hashlib.sha256()
    passed = failed = count = 0
    for group in suite["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["uncompressed"])
        check.eq(p256.spki_decode(bytes.fromhex(group["publicKeyDer"])), key, "SPKI of group")
        for case in group["tests"]:
            if limit and count >= limit:
                break
            count += 1
            ok = verify_fn(key, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
            want = case["result"]
            if want == "acceptable" or ok == (want == "valid"):
                passed += 1
            else:
                failed += 1
                print("MISMATCH", name, case["tcId"], case["comment"], want, ok)
            digest.update(("%d:%d;" % (case["tcId"], ok)).encode())
    print(name, "cases", count, "passed", passed, "failed", failed, digest.digest().hex()[:16])
    check.eq(failed, 0, name + " failures")


run_file("wycheproof_ecdsa_secp256r1_sha256_test.json", p256.verify)
run_file("wycheproof_ecdsa_secp256r1_sha256_p1363_test.json", p256.verify_raw)

check.raises(ValueError, lambda: p256.public_key(b"\x00" * 32), "zero private key")
check.raises(ValueError, lambda: p256.public_key(bytes.fromhex("ff" * 32)), "key >= n")
check.raises(ValueError, lambda: p256.parse_public_key(b"\x04" + b"\x01" * 64), "off-curve key")
check.eq(p256.verify(pub, b"sample", b"\x30\x00"), False, "empty DER")


# Stepwise signing and verification: the same results, in slices.
def count_steps(steps):
    n = 0
    try:
        while True:
            next(steps)
            n += 1
    except StopIteration as done:
        return n, done.value


digest = hashlib.sha256(b"sample").digest()
n, sig = count_steps(p256.sign_steps(priv, digest))
check.eq(sig.hex(), rfc["sample"]["der"].lower(), "stepwise signature")
check.true(n >= 10, "signing yields between slices")
n, ok = count_steps(p256.verify_steps(pub, b"sample", sig))
check.true(ok and n >= 10, "stepwise verification")
check.eq(p256.finish(p256.verify_steps(pub, b"sampl", sig)), False, "stepwise refusal")
print("steps", n)

# A precomputed comb table (as flashed into ROMFS) gives the same signatures; a damaged one
# is refused and the table in use stays.
namespace = {}
exec(p256.comb_module_source(4), namespace)
check.true(p256.use_comb(namespace["ROWS"], namespace["TABLE"], namespace["SHA256"]),
           "precomputed comb accepted")
check.eq(p256.sign(priv, b"test").hex(), rfc["test"]["der"].lower(), "signature, 4-row comb")
check.eq(p256.public_key(priv), pub, "public key, 4-row comb")
damaged = bytearray(namespace["TABLE"])
damaged[100] ^= 1
check.eq(p256.use_comb(4, bytes(damaged), namespace["SHA256"]), False, "damaged comb refused")
check.true(p256.comb_problem is not None, "damage reported")
check.eq(p256.use_comb(4, namespace["TABLE"][:-64], namespace["SHA256"]), False, "short comb")
check.eq(p256.sign(priv, b"sample").hex(), rfc["sample"]["der"].lower(), "comb kept")
check.raises(ValueError, lambda: p256.comb_module_source(1), "comb rows out of range")
check.done()
