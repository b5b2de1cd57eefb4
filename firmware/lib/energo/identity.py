# Device identity: the id is derived from the public key, so it is stable across
# reflashing as long as the key survives, and cannot be claimed without the key.
import binascii
import hashlib

ROLE_PREFIX = {"meter": "m-", "charger": "c-", "vehicle": "v-"}


def device_id(public_key, role):
    """'m-' / 'c-' / 'v-' + 12 hex digits of SHA-256 over the 65-byte public key."""
    prefix = ROLE_PREFIX.get(role)
    if prefix is None:
        raise ValueError("unknown role %r" % (role,))
    if len(public_key) != 65 or public_key[0] != 4:
        raise ValueError("public key must be 65 bytes 04||X||Y")
    return prefix + binascii.hexlify(hashlib.sha256(public_key).digest()[:6]).decode()


def fingerprint(public_key):
    """Hex SHA-256 of the public key, as shown in hello messages and the registry."""
    return binascii.hexlify(hashlib.sha256(public_key).digest()).decode()
