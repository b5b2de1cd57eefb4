"""The device keystore: first-boot generation, AES-wrapped key file checked by HMAC, NVS
secret, detection of every kind of damage without ever minting a new identity over an old one,
and signatures that OpenSSL verifies."""
import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from energo import identity, keystore, p256
from energo.keystore import Keystore, KeystoreError


class FakeNVS:
    """esp32.NVS semantics: blobs, get_blob into a buffer, writes land only at commit()."""

    def __init__(self):
        self.stored = {}
        self.pending = {}

    def get_blob(self, key, buf):
        if key not in self.stored:
            raise OSError(-0x1102, "ESP_ERR_NVS_NOT_FOUND")
        data = self.stored[key]
        if len(buf) < len(data):
            raise OSError(-0x110C, "ESP_ERR_NVS_INVALID_LENGTH")
        buf[:len(data)] = data
        return len(data)

    def set_blob(self, key, value):
        self.pending[key] = bytes(value)

    def erase_key(self, key):
        if key not in self.stored and key not in self.pending:
            raise OSError(-0x1102, "ESP_ERR_NVS_NOT_FOUND")
        self.pending[key] = None

    def commit(self):
        for key, value in self.pending.items():
            if value is None:
                self.stored.pop(key, None)
            else:
                self.stored[key] = value
        self.pending = {}


class Aes:
    """cryptolib.aes(key, 2, iv) on OpenSSL, CBC only, 16-byte multiples only (as cryptolib)."""

    def __init__(self, key, mode, iv):
        assert mode == 2 and len(key) == 32 and len(iv) == 16
        self.cipher = Cipher(algorithms.AES(bytes(key)), modes.CBC(bytes(iv)))

    def encrypt(self, data):
        assert len(data) % 16 == 0
        ctx = self.cipher.encryptor()
        return ctx.update(bytes(data)) + ctx.finalize()

    def decrypt(self, data):
        assert len(data) % 16 == 0
        ctx = self.cipher.decryptor()
        return ctx.update(bytes(data)) + ctx.finalize()


def make(root, nvs, role="meter"):
    return Keystore(str(root), role, nvs=nvs, aes_factory=Aes, urandom=os.urandom)


def key_files(root):
    return [root / "devkey.a", root / "devkey.b"]


def unwrap_for_test(root, nvs):
    """The private key, recovered the way only the device can (test oracle)."""
    data = key_files(root)[0].read_bytes()
    enc = hashlib.sha256(b"energo key enc\x00" + nvs.stored["secret"]).digest()
    return Aes(enc, 2, data[5:21]).decrypt(data[21:69])[:32]


def test_first_boot_creates_and_signs_verifiably(tmp_path):
    nvs = FakeNVS()
    ks = make(tmp_path, nvs)
    assert ks.open() == "created" and ks.ready()
    assert len(nvs.stored["secret"]) == 32
    assert nvs.stored["keyfp"] == hashlib.sha256(ks.public_key).digest()
    assert ks.device_id == identity.device_id(ks.public_key, "meter")
    assert ks.device_id.startswith("m-") and len(ks.device_id) == 14
    assert all(len(p.read_bytes()) == keystore.FILE_BYTES for p in key_files(tmp_path))
    payload = b'{"FV":"1.0","PG":"F1"}'
    der = ks.sign(payload)
    assert p256.verify(ks.public_key, payload, der)
    openssl_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ks.public_key)
    openssl_key.verify(der, payload, ec.ECDSA(hashes.SHA256()))  # raises if invalid
    assert p256.verify(ks.public_key, "text €".encode(), ks.sign("text €"))
    with pytest.raises(KeystoreError):
        ks.sign(123)


def test_reboot_loads_the_same_identity_and_never_exposes_the_key(tmp_path):
    nvs = FakeNVS()
    first = make(tmp_path, nvs)
    first.open()
    again = make(tmp_path, nvs)
    assert again.open() == "ok" and again.problems == []
    assert (again.public_key, again.device_id) == (first.public_key, first.device_id)
    priv = unwrap_for_test(tmp_path, nvs)
    assert p256.public_key(priv) == again.public_key
    for path in key_files(tmp_path):
        assert priv not in path.read_bytes()  # only ever stored wrapped
    public = [getattr(again, n) for n in dir(again) if not n.startswith("_")]
    assert all(value != priv for value in public if isinstance(value, bytes))


def test_one_damaged_copy_is_repaired(tmp_path):
    nvs = FakeNVS()
    make(tmp_path, nvs).open()
    a, b = key_files(tmp_path)
    good = a.read_bytes()
    for cut in range(0, len(good), 7):
        a.write_bytes(good[:cut])
        ks = make(tmp_path, nvs)
        assert ks.open() == "ok" and ks.problems, cut
        assert a.read_bytes() == good
    b.unlink()
    ks = make(tmp_path, nvs)
    assert ks.open() == "ok" and b.read_bytes() == good


def test_every_bit_flip_refuses_instead_of_a_new_identity(tmp_path):
    nvs = FakeNVS()
    first = make(tmp_path, nvs)
    first.open()
    a, b = key_files(tmp_path)
    good = a.read_bytes()
    fp = nvs.stored["keyfp"]
    for bit in range(0, len(good) * 8, 3):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        a.write_bytes(bad)
        b.write_bytes(bad)
        ks = make(tmp_path, nvs)
        assert ks.open() == "corrupt", bit
        assert not ks.ready() and ks.public_key is None
        assert ks.id_on_record == first.device_id
        with pytest.raises(KeystoreError, match="refusing"):
            ks.sign(b"x")
        assert a.read_bytes() == bytes(bad) and nvs.stored["keyfp"] == fp


def test_missing_files_secret_or_mismatch_refuse(tmp_path):
    nvs = FakeNVS()
    make(tmp_path, nvs).open()
    a, b = key_files(tmp_path)
    saved = a.read_bytes()
    a.unlink()
    b.unlink()
    assert make(tmp_path, nvs).open() == "missing"
    assert not a.exists()  # nothing was generated
    a.write_bytes(saved)
    secret = nvs.stored.pop("secret")
    assert make(tmp_path, nvs).open() == "no-secret"
    assert "secret" not in nvs.stored
    nvs.stored["secret"] = b"\x00" * 33
    assert make(tmp_path, nvs).open() == "no-secret"
    nvs.stored["secret"] = os.urandom(32)  # another device's secret: the MAC fails
    assert make(tmp_path, nvs).open() == "corrupt"
    nvs.stored["secret"] = secret
    nvs.stored["keyfp"] = hashlib.sha256(b"some other key").digest()
    assert make(tmp_path, nvs).open() == "mismatch"


def test_first_boot_cut_short_is_finished(tmp_path):
    nvs = FakeNVS()
    nvs.stored["secret"] = os.urandom(32)  # the cut came after the secret, before the key
    ks = make(tmp_path, nvs)
    assert ks.open() == "created"
    del nvs.stored["keyfp"]  # the cut came after the key files, before the fingerprint
    key_files(tmp_path)[1].unlink()
    again = make(tmp_path, nvs)
    assert again.open() == "ok" and again.public_key == ks.public_key
    assert nvs.stored["keyfp"] == hashlib.sha256(ks.public_key).digest()
    assert key_files(tmp_path)[1].exists()


def test_uncommitted_nvs_secret_is_not_trusted(tmp_path):
    nvs = FakeNVS()

    class LosingNVS(FakeNVS):
        def commit(self):
            raise OSError(5, "power cut")

    lossy = LosingNVS()
    with pytest.raises(OSError):
        make(tmp_path, lossy).open()
    assert lossy.stored == {} and not key_files(tmp_path)[0].exists()
    assert make(tmp_path, nvs).open() == "created"


def test_reset_identity_is_deliberate(tmp_path):
    nvs = FakeNVS()
    old = make(tmp_path, nvs)
    old.open()
    with pytest.raises(KeystoreError, match="healthy"):
        old.reset_identity(old.device_id)
    key_files(tmp_path)[0].write_bytes(b"x")
    key_files(tmp_path)[1].write_bytes(b"x")
    broken = make(tmp_path, nvs)
    assert broken.open() == "corrupt"
    with pytest.raises(KeystoreError, match="confirm"):
        broken.reset_identity("m-000000000000")
    broken.reset_identity(old.device_id)
    new = make(tmp_path, nvs)
    assert new.open() == "created" and new.device_id != old.device_id


def test_bad_role_and_short_random_are_refused(tmp_path):
    with pytest.raises(KeystoreError):
        Keystore(str(tmp_path), "toaster", nvs=FakeNVS(), aes_factory=Aes)
    ks = Keystore(str(tmp_path), "charger", nvs=FakeNVS(), aes_factory=Aes,
                  urandom=lambda n: b"\x01" * (n - 1))
    with pytest.raises(KeystoreError):
        ks.open()
