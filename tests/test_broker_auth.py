"""Broker credentials and ACL rules (`host_tools.broker_auth`), without a broker."""
import base64
import hashlib
import hmac
import os
import shutil
import stat
import subprocess

import pytest

from host_tools import broker_auth as auth
from host_tools.broker_auth import READ, WRITE, BrokerAuthError

METER = "m-0123456789ab"
OTHER = "m-ba9876543210"
CHARGER = "c-00112233aabb"
BASE = "energo/v1/demo"


@pytest.fixture
def grants():
    return auth.rules("demo")


def test_secret_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "broker.secret"
    first = auth.load_or_create_secret(path)
    assert len(first) == auth.SECRET_SIZE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.load_or_create_secret(path) == first
    assert auth.load_or_create_secret(tmp_path / "other.secret") != first
    # no temporary files left behind
    assert {p.name for p in tmp_path.iterdir()} == {"broker.secret", "other.secret"}


def test_secret_refused_when_readable_by_others_or_wrong_size(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(os.urandom(32))
    os.chmod(path, 0o644)
    with pytest.raises(BrokerAuthError, match="chmod 600"):
        auth.load_or_create_secret(path)
    os.chmod(path, 0o600)
    assert len(auth.load_or_create_secret(path)) == 32
    path.write_bytes(b"short")
    with pytest.raises(BrokerAuthError, match="exactly 32 bytes") as info:
        auth.load_or_create_secret(path)
    assert info.value.code == "bad_secret"
    assert path.read_bytes() == b"short"  # a refused secret is never replaced


def test_derive_password_is_truncated_hmac_in_base64url():
    secret = bytes(range(32))
    password = auth.derive_password(secret, METER)
    mac = hmac.new(secret, METER.encode(), hashlib.sha256).digest()
    assert password == base64.urlsafe_b64encode(mac).decode().rstrip("=")[:32]
    assert len(password) == 32 and "=" not in password
    assert auth.derive_password(secret, OTHER) != password
    assert auth.derive_password(bytes(32), METER) != password
    assert auth.check_password(secret, METER, password)
    assert not auth.check_password(secret, OTHER, password)
    assert not auth.check_password(secret, METER, password[:-1])
    assert not auth.check_password(secret, METER, None)
    for bad_secret in (b"", bytes(31), "x" * 32):
        with pytest.raises(BrokerAuthError):
            auth.derive_password(bad_secret, METER)
    with pytest.raises(BrokerAuthError):
        auth.derive_password(secret, "")


def test_device_publishes_only_under_its_own_id(grants):
    for suffix in ("rec", "hello", "state", "ev"):
        assert auth.permits(grants, METER, f"{BASE}/{METER}/{suffix}", WRITE)
        assert not auth.permits(grants, METER, f"{BASE}/{OTHER}/{suffix}", WRITE)
    assert not auth.permits(grants, METER, f"{BASE}/{METER}/ack", WRITE)
    assert not auth.permits(grants, METER, f"{BASE}/price", WRITE)
    assert not auth.permits(grants, METER, f"energo/v1/elsewhere/{METER}/rec", WRITE)
    assert not auth.permits(grants, METER, f"{BASE}/{METER}/rec/extra", WRITE)
    assert not auth.permits(grants, METER, f"{BASE}/+/rec", WRITE)


def test_device_reads_only_its_downlink_and_the_price(grants):
    assert auth.permits(grants, CHARGER, f"{BASE}/{CHARGER}/ack", READ)
    assert auth.permits(grants, CHARGER, f"{BASE}/{CHARGER}/ev/reply", READ)
    assert auth.permits(grants, CHARGER, f"{BASE}/price", READ)
    assert not auth.permits(grants, CHARGER, f"{BASE}/{METER}/ack", READ)
    assert not auth.permits(grants, CHARGER, f"{BASE}/+/ack", READ)
    assert not auth.permits(grants, CHARGER, f"{BASE}/#", READ)
    assert not auth.permits(grants, CHARGER, "#", READ)
    assert not auth.permits(grants, CHARGER, f"{BASE}/{CHARGER}/rec", READ)


def test_settlement_reads_uplink_writes_downlink(grants):
    user = auth.SETTLEMENT_USER
    for suffix in ("rec", "hello", "state", "ev"):
        assert auth.permits(grants, user, f"{BASE}/+/{suffix}", READ)
        assert auth.permits(grants, user, f"$share/ingest/{BASE}/+/{suffix}", READ)
        assert auth.permits(grants, user, f"{BASE}/{METER}/{suffix}", READ)
        assert not auth.permits(grants, user, f"{BASE}/{METER}/{suffix}", WRITE)
    assert auth.permits(grants, user, f"{BASE}/{METER}/ack", WRITE)
    assert auth.permits(grants, user, f"{BASE}/{CHARGER}/ev/reply", WRITE)
    assert auth.permits(grants, user, f"{BASE}/price", WRITE)
    assert not auth.permits(grants, user, f"{BASE}/#", READ)
    assert not auth.permits(grants, user, f"{BASE}/+/#", READ)
    assert not auth.permits(grants, user, "$share//energo/v1/demo/+/rec", READ)
    assert not auth.permits(grants, user, "$share/g", READ)
    # the device patterns (%u) never apply to the service account
    assert not auth.permits(grants, user, f"{BASE}/settlement/rec", WRITE)


def test_strangers_get_nothing(grants):
    for username in (None, "", "admin", "m-XYZ", "m-0123456789a+", "v-0123456789ab", "#"):
        assert not auth.permits(grants, username, f"{BASE}/price", READ)
        assert not auth.permits(grants, username, f"{BASE}/{METER}/rec", WRITE)
    assert not auth.permits(grants, METER, "x" * 300, WRITE)
    with pytest.raises(BrokerAuthError):
        auth.permits(grants, METER, f"{BASE}/{METER}/rec", "readwrite")


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "a b", "-lead", "x" * 64, None])
def test_bad_community_names_refused(name):
    with pytest.raises(BrokerAuthError) as info:
        auth.rules(name)
    assert info.value.code == "bad_community"


def test_validate_device_checks_role_and_prefix():
    assert auth.validate_device(METER, "meter") == METER
    assert auth.validate_device(CHARGER, "charger") == CHARGER
    for device_id, role in ((METER, "charger"), (CHARGER, "meter"), ("v-0123456789ab", "vehicle"),
                            ("m-0123456789AB", "meter"), ("m-0123456789ab\n", "meter")):
        with pytest.raises(BrokerAuthError):
            auth.validate_device(device_id, role)


def test_mosquitto_hash_round_trip_and_known_vector():
    # An entry produced by `mosquitto_passwd -b FILE alice s3cret` (mosquitto 2.0.11).
    entry = ("$7$101$g+QSLBbzxVhJRNjs$UPXM4vqVHQybudFEkrKY0OfRIwyHgIFkOtfxNVEHmsILdA2/zBFx19P"
             "BimUL6u/jy9D+MJLQtDPePLydhB33dA==")
    assert auth.mosquitto_hash_matches(entry, "s3cret")
    assert not auth.mosquitto_hash_matches(entry, "s3cret!")
    salt = base64.b64decode("g+QSLBbzxVhJRNjs")
    assert auth.mosquitto_hash("s3cret", salt=salt) == entry
    fresh = auth.mosquitto_hash("pw")
    assert fresh.startswith("$7$101$") and auth.mosquitto_hash_matches(fresh, "pw")
    assert auth.mosquitto_hash("pw") != fresh  # random salt
    with pytest.raises(BrokerAuthError):
        auth.mosquitto_hash_matches("$6$abc$def", "pw")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
def test_hash_accepted_by_mosquitto_passwd_tool(tmp_path):
    """mosquitto_passwd -U leaves already-hashed lines alone only if it parses them as $7$."""
    path = tmp_path / "passwd"
    path.write_text(f"alice:{auth.mosquitto_hash('pw')}\n")
    before = path.read_text()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "bob", "pw2"], check=True,
                   capture_output=True, timeout=10)
    lines = path.read_text().splitlines()
    assert lines[0] == before.strip()
    name, entry = lines[1].split(":", 1)
    assert name == "bob" and auth.mosquitto_hash_matches(entry, "pw2")


def test_write_mosquitto_config(tmp_path):
    secret = os.urandom(32)
    paths = auth.write_mosquitto_config(tmp_path, "demo", secret, [OTHER, METER, METER],
                                        port=18830, bind="127.0.0.1")
    conf = (tmp_path / "mosquitto.conf").read_text()
    assert "listener 18830 127.0.0.1\n" in conf
    assert "allow_anonymous false\n" in conf
    assert f"password_file {tmp_path / 'passwd'}\n" in conf
    assert f"acl_file {tmp_path / 'acl'}\n" in conf
    assert "persistence true\n" in conf and (tmp_path / "data").is_dir()
    entries = dict(line.split(":", 1) for line in (tmp_path / "passwd").read_text().splitlines())
    assert sorted(entries) == sorted([METER, OTHER, auth.SETTLEMENT_USER])
    for user, entry in entries.items():
        assert auth.mosquitto_hash_matches(entry, auth.derive_password(secret, user))
    acl = (tmp_path / "acl").read_text()
    assert f"pattern write {BASE}/%u/rec\n" in acl
    assert f"pattern read {BASE}/%u/ack\n" in acl
    assert f"user settlement\ntopic read {BASE}/+/rec\n" in acl
    assert "\ntopic" not in acl.split("user settlement")[0]  # nothing for anonymous
    assert set(paths) == {"mosquitto.conf", "passwd", "acl"}


def test_write_mosquitto_config_refuses_bad_input_and_changes_nothing(tmp_path):
    secret = os.urandom(32)
    auth.write_mosquitto_config(tmp_path, "demo", secret, [METER], port=18830)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for kwargs in ({"device_ids": [METER, "m-1\nuser x"]}, {"device_ids": ["../etc"]},
                   {"port": 0}, {"port": 70000}, {"bind": "1.2.3.4 extra"},
                   {"community": "a/b"}):
        args = {"community": "demo", "secret": secret, "device_ids": [METER], "port": 18830}
        args.update(kwargs)
        with pytest.raises(BrokerAuthError):
            auth.write_mosquitto_config(tmp_path, **args)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
