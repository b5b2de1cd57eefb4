"""Offline verification of OCMF records on the host, with OpenSSL (via `cryptography`).

The record is parsed by the firmware's own parser (`energo.ocmf`), so the
board and the host agree on what a record says; only the signature check is
done by OpenSSL, which also covers OCMF curves the board does not implement.
"""
import base64
import binascii
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from energo import ocmf, p256

# OCMF algorithm name -> cryptography curve class (None: OpenSSL has no such curve here).
CURVES = {
    "ECDSA-secp256r1-SHA256": ec.SECP256R1,
    "ECDSA-secp256k1-SHA256": ec.SECP256K1,
    "ECDSA-secp192r1-SHA256": ec.SECP192R1,
    "ECDSA-secp384r1-SHA256": ec.SECP384R1,
    "ECDSA-brainpool256r1-SHA256": ec.BrainpoolP256R1,
    "ECDSA-brainpool384r1-SHA256": ec.BrainpoolP384R1,
    "ECDSA-secp192k1-SHA256": None,
}


class KeyError_(ValueError):
    """A public key that cannot be read; the message says why."""


@dataclass
class Result:
    valid: bool
    reason: str
    record: ocmf.Record | None = None
    notes: list = field(default_factory=list)


def read_key_text(text):
    """Key bytes from hex (blocks of hex digits may be separated by spaces), base64, or PEM."""
    text = text.strip()
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyError_(f"PEM public key unreadable: {exc}") from None
        return key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    compact = re.sub(r"\s+", "", text)
    if compact and re.fullmatch(r"[0-9A-Fa-f]+", compact) and len(compact) % 2 == 0:
        return bytes.fromhex(compact)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_("public key is neither hex, base64 nor PEM") from None


def load_public_key(data, algorithm=ocmf.SA_P256):
    """A cryptography public key from DER SPKI, SEC1 point, or raw X||Y (taken as P-256)."""
    curve_cls = CURVES.get(algorithm)
    if len(data) > 65 and data[0] == 0x30:
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyError_(f"DER public key unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise KeyError_("public key is not an elliptic-curve key")
        return key
    if curve_cls is None:
        raise KeyError_(f"{algorithm} is not supported by this verifier")
    if len(data) == 64 and curve_cls is ec.SECP256R1:
        data = b"\x04" + data  # raw X||Y, as some meters print it
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), data)
    except ValueError as exc:
        raise KeyError_(f"public key is not a point on {curve_cls.name}: {exc}") from None


def meter_notes(record):
    """What a transparency verifier would flag beyond the signature (OCMF.md)."""
    notes = []
    for index, reading in enumerate(record.readings):
        if reading.status not in (None, "G"):
            notes.append(f"RD[{index}]: meter status {reading.status}, not G (good)")
        if reading.errors:
            notes.append(f"RD[{index}]: error flags {reading.errors!r}")
    level = record.get("IL")
    if level in ("MISMATCH", "INVALID", "OUTDATED", "UNKNOWN"):
        notes.append(f"identification level {level}")
    return notes


def verify_text(text, key_bytes):
    """Verify one OCMF string against a public key; a Result with the reason either way."""
    try:
        record = ocmf.parse(text)
    except ocmf.OcmfError as exc:
        return Result(False, f"malformed OCMF: {exc}")
    algorithm = record.algorithm
    if CURVES.get(algorithm) is None:
        return Result(False, f"unsupported signature algorithm {algorithm}", record)
    try:
        key = load_public_key(key_bytes, algorithm)
    except KeyError_ as exc:
        return Result(False, str(exc), record)
    want = CURVES[algorithm]
    if not isinstance(key.curve, want):
        return Result(False, f"key is on {key.curve.name} but the record says {algorithm}",
                      record)
    notes = list(record.problems) + meter_notes(record)
    signature = record.signature
    try:
        p256.decode_signature(signature)
    except ValueError:
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            return Result(False, "signature is neither strict DER nor raw r||s", record, notes)
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        signature = encode_dss_signature(r, s)
        notes.append("signature is raw r||s, not DER as OCMF requires (accepted for compatibility)")
    try:
        key.verify(signature, record.payload_text.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return Result(False, "signature does not match the payload and key", record, notes)
    return Result(True, "signature valid", record, notes)
