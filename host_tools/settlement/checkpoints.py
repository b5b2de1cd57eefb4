"""Hash chain, checkpoint bodies and the service key's signatures.

Every entry's hash covers the previous entry's hash, so removing or editing
an entry breaks every later hash. Checkpoints partition the chain into
consecutive segments, one per closed interval: the checkpoint of an interval
covers every entry appended since the previous checkpoint, so each entry is
covered exactly once and an auditor needs only the chain to recompute it.
Each checkpoint carries the RFC 6962 Merkle root of its segment, the chain
hash at its end and the previous checkpoint's hash, and is signed (ECDSA
P-256, SHA-256) by the service key.
"""
import hashlib
import json
import os

from host_tools.settlement import merkle
from host_tools.settlement.errors import LedgerError

ZERO_HASH = "00" * 32
CHECKPOINT_VERSION = 1


class KeyFileError(LedgerError):
    """The service key file is missing, unreadable or not a P-256 key."""


def entry_leaf(seq, transfer_id, leg, debit, credit, asset, amount, interval_start_s):
    """The canonical bytes of one entry: the Merkle leaf and the chain's payload."""
    return json.dumps([seq, transfer_id, leg, debit, credit, asset, amount, interval_start_s],
                      separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(prev_hash_hex, leaf):
    return hashlib.sha256(bytes.fromhex(prev_hash_hex) + leaf).hexdigest()


def checkpoint_body(number, interval_start_s, first_seq, last_seq, merkle_root, chain_hash_hex,
                    prev_checkpoint_hash, closed_at_ms):
    """The exact bytes that are hashed and signed (canonical JSON, sorted keys)."""
    body = {
        "v": CHECKPOINT_VERSION,
        "number": number,
        "interval_start_s": interval_start_s,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "entry_count": last_seq - first_seq + 1,
        "merkle_root": merkle_root,
        "chain_hash": chain_hash_hex,
        "prev_checkpoint_hash": prev_checkpoint_hash,
        "closed_at_ms": closed_at_ms,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def segment_root(leaves):
    return merkle.root(leaves).hex()


# --- the service key --------------------------------------------------------------------------

def load_or_create_signing_key(path):
    """Load the PEM private key at `path`, or create one (mode 0600) if none exists."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if os.path.exists(path):
        key = _load_pem(path, private=True)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyFileError(f"service key {path} is not an ECDSA P-256 private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic: a crash never leaves half a key behind
    except OSError as exc:
        raise KeyFileError(f"cannot write service key {path}: {exc.strerror or exc}") from None
    return key


def load_public_key(path):
    """A P-256 public key from a PEM file holding either the public or the private key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _load_pem(path, private=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path} does not hold an ECDSA P-256 key")
    return key


def _load_pem(path, private):
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    loaders = [serialization.load_pem_private_key] if private else []
    if private is None:
        loaders = [serialization.load_pem_private_key, serialization.load_pem_public_key]
    for loader in loaders:
        try:
            if loader is serialization.load_pem_private_key:
                return loader(data, password=None)
            return loader(data)
        except (ValueError, TypeError):
            continue
    raise KeyFileError(f"{path} is not an unencrypted PEM key")


def public_key_pem(key):
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_from_pem(text):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise KeyFileError("the public key recorded in the ledger is not a valid PEM key") from None


def sign(private_key, body):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return private_key.sign(body, ec.ECDSA(hashes.SHA256())).hex()


def signature_valid(public_key, body, signature_hex):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(bytes.fromhex(signature_hex), body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
