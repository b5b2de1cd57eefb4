# The device key: generated on the board at first boot, kept on flash only wrapped, never
# exported. The public API is the public key, the device id and sign(); nothing returns the
# private key.
#
# Storage. A 32-byte device secret lives in ESP32 NVS (namespace "energo", blob "secret"),
# made from os.urandom at first boot; it never touches the filesystem, so a copy of the flash
# filesystem (mpremote fs cp) alone does not reveal the key. The key file <name>.a (and an
# identical copy <name>.b, so one bad block does not cost the identity) holds:
#   magic "EKEY", version, IV (16), AES-256-CBC(private key + 16 bytes PKCS#7 padding) (48),
#   public key (65), HMAC-SHA256 over everything before it (32)           = 166 bytes
# with the AES key and the HMAC key both derived from the secret by SHA-256 with distinct
# labels. After unwrapping, the public key is recomputed from the private key and must match.
# NVS also keeps the SHA-256 of the public key ("keyfp") once the key files are written, so a
# lost or damaged key file is told apart from a first boot.
#
# Never a silent new identity: a new key is generated only when there is no key file and no
# fingerprint in NVS (first boot, or a first boot cut short). Otherwise a key that cannot be
# unwrapped and checked leaves the keystore in a refusing status ("corrupt", "missing",
# "no-secret", "mismatch"): sign() raises KeystoreError and the firmware reports the status in
# its hello message. Operator procedure for such a device: (1) revoke its device id in the
# settlement registry (the old id is still known: `id_on_record`, derived from the NVS
# fingerprint); (2) on the REPL run Keystore(...).reset_identity(<that id>), which removes the
# key files and the fingerprint; (3) reset the board: it generates a new key and a new device id;
# (4) enroll the new public key. Records signed by the old key stay verifiable with it.
import hashlib
import os

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo import identity, p256

_MAGIC = b"EKEY"
_VERSION = const(1)
_MODE_CBC = const(2)
FILE_BYTES = const(166)
_MAC_AT = const(134)
_SECRET_KEY = "secret"
_FP_KEY = "keyfp"
READY = ("ok", "created")


class KeystoreError(ValueError):
    """The key cannot be used (see Keystore.status), or a bad argument."""


def _same(a, b):
    """Compare in time independent of where the first difference is."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def _default_aes(key, mode, iv):
    import cryptolib

    return cryptolib.aes(key, mode, iv)


class Keystore:
    """The device's signing identity; open() once at boot, then sign()."""

    def __init__(self, root, role, nvs=None, aes_factory=None, urandom=None, name="devkey"):
        if role not in identity.ROLE_PREFIX:
            raise KeystoreError("unknown role %r" % (role,))
        if nvs is None:
            import esp32

            nvs = esp32.NVS("energo")
        if urandom is None:
            urandom = os.urandom
        self._nvs = nvs
        self._aes = aes_factory or _default_aes
        self._urandom = urandom
        self._paths = (root + "/" + name + ".a", root + "/" + name + ".b")
        self.role = role
        self.status = "closed"
        self.problems = []
        self.public_key = None
        self.device_id = None
        self.fingerprint = None
        self.id_on_record = None
        self._priv = None

    # --- NVS ----------------------------------------------------------------------------

    def _nvs_get(self, key):
        buf = bytearray(64)  # larger than wanted, so a wrong length is seen, not an error
        try:
            n = self._nvs.get_blob(key, buf)
        except OSError:
            return None
        if n != 32:
            self.problems.append("NVS %s has %d bytes, want 32" % (key, n))
            return b""
        return bytes(buf[:n])

    def _nvs_set(self, key, value):
        self._nvs.set_blob(key, value)
        self._nvs.commit()

    # --- wrapping -----------------------------------------------------------------------

    def _keys(self, secret):
        return (hashlib.sha256(b"energo key enc\x00" + secret).digest(),
                hashlib.sha256(b"energo key mac\x00" + secret).digest())

    def _wrap(self, secret, priv, pub):
        enc_key, mac_key = self._keys(secret)
        iv = self._urandom(16)
        if len(iv) != 16:
            raise KeystoreError("random source returned a short IV")
        body = self._aes(enc_key, _MODE_CBC, iv).encrypt(priv + bytes(16 * [16]))
        data = _MAGIC + bytes([_VERSION]) + iv + body + pub
        return data + p256.hmac_sha256(mac_key, data)

    def _unwrap(self, secret, data):
        """(private, public) from a key file; ValueError saying why it is unusable."""
        if len(data) != FILE_BYTES:
            raise ValueError("key file is %d bytes, want %d" % (len(data), FILE_BYTES))
        if data[:4] != _MAGIC or data[4] != _VERSION:
            raise ValueError("key file magic or version wrong")
        enc_key, mac_key = self._keys(secret)
        if not _same(p256.hmac_sha256(mac_key, data[:_MAC_AT]), data[_MAC_AT:]):
            raise ValueError("key file MAC mismatch (corrupted, or another device's secret)")
        plain = self._aes(enc_key, _MODE_CBC, data[5:21]).decrypt(data[21:69])
        if plain[32:] != bytes(16 * [16]):
            raise ValueError("key file padding wrong")
        priv = bytes(plain[:32])
        pub = bytes(data[69:_MAC_AT])
        if p256.public_key(priv) != pub:  # raises ValueError for an out-of-range key
            raise ValueError("key file public key does not match its private key")
        return priv, pub

    def _write(self, path, data):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
            f.flush()
        os.rename(path + ".tmp", path)

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read(FILE_BYTES + 1)
        except OSError:
            return None

    # --- life cycle ---------------------------------------------------------------------

    def open(self):
        """Load (or on first boot create) the key; returns the status. Never raises for bad
        files: a refusing status tells what is wrong, `problems` the details."""
        self.problems = []
        self.status = "closed"
        secret = self._nvs_get(_SECRET_KEY)
        fp = self._nvs_get(_FP_KEY)
        self.id_on_record = None
        if fp:
            self.id_on_record = identity.ROLE_PREFIX[self.role] + \
                "".join("%02x" % b for b in fp[:6])
        files = [self._read(p) for p in self._paths]
        present = [d for d in files if d is not None]
        if secret is None:
            if present or fp is not None:
                return self._refuse("no-secret", "NVS secret missing: the key cannot be unwrapped")
            secret = self._urandom(32)
            if len(secret) != 32:
                raise KeystoreError("random source returned a short secret")
            self._nvs_set(_SECRET_KEY, secret)
            return self._create(secret)
        if len(secret) != 32:
            return self._refuse("no-secret", "NVS secret unreadable")
        if not present:
            if fp is None:
                return self._create(secret)  # a first boot cut short before the key was kept
            return self._refuse("missing", "key files missing; NVS remembers a key")
        return self._load(secret, fp, files)

    def _load(self, secret, fp, files):
        good = None
        for index in (0, 1):
            if files[index] is None:
                self.problems.append("key copy %s missing" % "ab"[index])
                continue
            try:
                priv, pub = self._unwrap(secret, files[index])
            except ValueError as exc:
                self.problems.append("key copy %s: %s" % ("ab"[index], exc.args[0]))
                continue
            if good is None:
                good = (priv, pub, files[index])
        if good is None:
            return self._refuse("corrupt", "no key copy can be unwrapped")
        priv, pub, data = good
        digest = hashlib.sha256(pub).digest()
        if fp is not None and not _same(fp, digest):
            return self._refuse("mismatch", "key file is not the key NVS remembers")
        for index in (0, 1):
            if files[index] != data:
                self._write(self._paths[index], data)  # repair the bad copy from the good one
        if fp is None:
            self._nvs_set(_FP_KEY, digest)
        self._ready(priv, pub, "ok")
        return self.status

    def _create(self, secret):
        priv = p256.generate_private_key(self._urandom)
        pub = p256.public_key(priv)
        data = self._wrap(secret, priv, pub)
        # Invariant before keeping it: the file unwraps to the same key.
        if self._unwrap(secret, data) != (priv, pub):
            raise KeystoreError("key wrapping does not round-trip")
        for path in self._paths:
            self._write(path, data)
        self._nvs_set(_FP_KEY, hashlib.sha256(pub).digest())
        self._ready(priv, pub, "created")
        return self.status

    def _ready(self, priv, pub, status):
        self._priv = priv
        self.public_key = pub
        self.device_id = identity.device_id(pub, self.role)
        self.fingerprint = identity.fingerprint(pub)
        self.id_on_record = self.device_id
        self.status = status

    def _refuse(self, status, why):
        self._priv = None
        self.public_key = None
        self.device_id = None
        self.fingerprint = None
        self.status = status
        self.problems.append(why)
        return status

    def ready(self):
        """True when sign() can be used."""
        return self.status in READY

    def sign(self, payload):
        """DER ECDSA-P256-SHA256 signature over payload (bytes, or str as UTF-8)."""
        return p256.finish(self.sign_steps(payload))

    def sign_steps(self, payload):
        """sign() in slices: a generator that yields between them and returns the signature
        (p256.sign_steps). Checks the key and the payload at once, before the first slice."""
        if self.status not in READY:
            raise KeystoreError("keystore %s: refusing to sign" % self.status)
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, (bytes, bytearray)):
            raise KeystoreError("payload must be bytes or str")
        return p256.sign_steps(self._priv, hashlib.sha256(payload).digest())

    def reset_identity(self, confirm):
        """Operator only: drop the key so the next open() makes a new identity.

        confirm must be the id on record (id_on_record, or "" when NVS has none); refused
        while the key is healthy, so a working identity cannot be thrown away by mistake.
        """
        if self.status in READY:
            raise KeystoreError("the key is healthy; refusing to reset it")
        if confirm != (self.id_on_record or ""):
            raise KeystoreError("confirm must be %r" % (self.id_on_record or ""))
        for path in self._paths:
            try:
                os.remove(path)
            except OSError:
                pass
        try:
            self._nvs.erase_key(_FP_KEY)
            self._nvs.commit()
        except OSError:
            pass
        self.status = "closed"
