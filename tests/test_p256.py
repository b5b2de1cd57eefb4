"""ECDSA P-256 on CPython: conformance vectors, OpenSSL cross-checks, parser robustness."""
import json
import os
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from energo import p256


def _load(conformance_dir, name):
    return json.loads((conformance_dir / name).read_text())


def test_rfc6979_a25_signatures(conformance_dir):
    vectors = _load(conformance_dir, "rfc6979_A25_p256_sha256.json")
    priv = bytes.fromhex(vectors["private_key_x"])
    pub = p256.public_key(priv)
    assert pub == bytes.fromhex("04" + vectors["Ux"] + vectors["Uy"])
    for message in ("sample", "test"):
        sig = p256.sign(priv, message.encode())
        assert sig == bytes.fromhex(vectors[message]["der"])
        assert p256.decode_signature(sig) == (int(vectors[message]["r"], 16),
                                              int(vectors[message]["s"], 16))


@pytest.mark.parametrize("name,verify", [
    ("wycheproof_ecdsa_secp256r1_sha256_test.json", p256.verify),
    ("wycheproof_ecdsa_secp256r1_sha256_p1363_test.json", p256.verify_raw),
])
def test_wycheproof(conformance_dir, name, verify):
    suite = _load(conformance_dir, name)
    checked = 0
    for group in suite["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["uncompressed"])
        assert p256.spki_decode(bytes.fromhex(group["publicKeyDer"])) == key
        for case in group["tests"]:
            got = verify(key, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
            if case["result"] != "acceptable":
                assert got == (case["result"] == "valid"), (case["tcId"], case["comment"])
            checked += 1
    assert checked == suite["numberOfTests"]


def _openssl_pub(key):
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


def test_1000_cross_checks_with_openssl_both_ways():
    rng = random.Random(6979)
    for i in range(1000):
        key = ec.generate_private_key(ec.SECP256R1())
        priv = key.private_numbers().private_value.to_bytes(32, "big")
        pub = _openssl_pub(key)
        msg = rng.randbytes(rng.randrange(0, 300))
        assert p256.public_key(priv) == pub
        ours = p256.sign(priv, msg)
        key.public_key().verify(ours, msg, ec.ECDSA(hashes.SHA256()))  # raises if invalid
        theirs = key.sign(msg, ec.ECDSA(hashes.SHA256()))
        assert p256.verify(pub, msg, theirs)
        if i % 50 == 0:
            assert not p256.verify(pub, msg + b"!", theirs)
            with pytest.raises(InvalidSignature):
                key.public_key().verify(ours, msg + b"!", ec.ECDSA(hashes.SHA256()))


def test_generated_keys_are_in_range_and_rejection_sampled():
    draws = iter([b"\xff" * 32, b"\x00" * 32, bytes(31) + b"\x05"])
    priv = p256.generate_private_key(lambda n: next(draws))
    assert priv == bytes(31) + b"\x05"
    assert len(p256.generate_private_key()) == 32
    with pytest.raises(ValueError):
        p256.generate_private_key(lambda n: b"short")


def test_spki_matches_openssl_and_compressed_keys_decode():
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = _openssl_pub(key)
    assert p256.spki_encode(pub) == spki
    assert p256.spki_decode(spki) == pub
    compressed = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.CompressedPoint)
    assert p256.parse_public_key(compressed) == p256.parse_public_key(pub)


def test_bad_public_keys_are_errors_not_false():
    with pytest.raises(ValueError, match="not on the P-256 curve"):
        p256.verify(b"\x04" + bytes(64), b"m", b"\x30\x06\x02\x01\x01\x02\x01\x01")
    with pytest.raises(ValueError, match="65 bytes"):
        p256.verify(b"\x04", b"m", b"")
    with pytest.raises(ValueError, match="private key"):
        p256.sign(b"\x01" * 31, b"m")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_der_parser_only_raises_value_error(data):
    try:
        r, s = p256.decode_signature(data)
    except ValueError:
        return
    assert p256.encode_signature(r, s) == data  # accepted input is canonical DER


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_spki_parser_only_raises_value_error(data):
    try:
        pub = p256.spki_decode(data)
    except ValueError:
        return
    assert len(pub) == 65


_PRIV = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
_PUB = p256.public_key(_PRIV)
_SIG = p256.sign(_PRIV, b"sample")


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(_SIG) - 1), st.integers(1, 255))
def test_any_single_byte_change_breaks_the_signature(pos, delta):
    mutated = bytearray(_SIG)
    mutated[pos] = (mutated[pos] + delta) % 256
    assert p256.verify(_PUB, b"sample", bytes(mutated)) is False


def test_signing_is_deterministic_and_randomness_free():
    msg = os.urandom(16)
    assert p256.sign(_PRIV, msg) == p256.sign(_PRIV, msg)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=200))
def test_hmac_matches_the_standard_library(key, msg):
    import hashlib
    import hmac

    assert p256.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
