"""The device registry on SQLite and PostgreSQL: a key enrolls only under its own id, for an
existing member, once; refusals carry a code and write nothing."""
import pytest

from energo import p256
from host_tools.bench.ingest import SimDevice
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry, RegistryError
from tests import test_ingest_support as support

db_url, ingest_postgres_url = support.db_url, support.ingest_postgres_url  # fixtures


@pytest.fixture
def registry(db_url, tmp_path):
    ledger = Ledger.open(db_url, key_path=str(tmp_path / "key.pem"))
    ledger.add_member("alice")
    ledger.add_member("bob")
    yield Registry(ledger)
    ledger.close()


def test_enroll_get_list_and_idempotence(registry):
    meter, charger = SimDevice(seed=1), SimDevice(seed=2, role="charger")
    got = registry.enroll(meter.device_id, meter.spki_der, "meter", "alice")
    assert got["device_id"] == meter.device_id and got["device_id"].startswith("m-")
    assert got["public_key_hex"] == meter.spki_der.hex().upper()
    assert got["role"] == "meter" and got["member"] == "alice"
    assert isinstance(got["enrolled_at_s"], int)
    assert registry.enroll(meter.device_id, meter.spki_der, "meter", "alice") == got
    registry.enroll(charger.device_id, charger.spki_der, "charger", "bob")
    assert registry.get(meter.device_id) == got
    assert [d["device_id"] for d in registry.list()] == sorted([meter.device_id,
                                                                 charger.device_id])
    assert registry.get("m-000000000000") is None
    assert registry.get(None) is None


def test_a_compressed_spki_is_stored_uncompressed(registry):
    meter = SimDevice(seed=3)
    point = p256.spki_decode(meter.spki_der)
    compressed = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + bytes(
        [2 + (point[-1] & 1)]) + point[1:33]
    got = registry.enroll(meter.device_id, compressed, "meter", "alice")
    assert got["public_key_hex"] == meter.spki_der.hex().upper()


@pytest.mark.parametrize("case, code", [
    ("role", "bad_role"), ("key", "bad_key"), ("key_type", "bad_key"), ("id", "id_mismatch"),
    ("role_prefix", "id_mismatch"), ("member", "unknown_member"), ("taken", "device_taken"),
])
def test_refusals_have_codes_and_write_nothing(registry, case, code):
    meter = SimDevice(seed=4)
    other = SimDevice(seed=5)
    registry.enroll(other.device_id, other.spki_der, "meter", "bob")
    before = registry.list()
    args = {"device_id": meter.device_id, "spki_der": meter.spki_der, "role": "meter",
            "member": "alice"}
    if case == "role":
        args["role"] = "vehicle"
    elif case == "key":
        args["spki_der"] = meter.spki_der[:-1] + bytes([meter.spki_der[-1] ^ 1])  # off the curve
    elif case == "key_type":
        args["spki_der"] = meter.spki_der.hex()
    elif case == "id":
        args["device_id"] = other.device_id
    elif case == "role_prefix":
        args["role"] = "charger"
    elif case == "member":
        args["member"] = "mallory"
    elif case == "taken":
        args = {"device_id": other.device_id, "spki_der": other.spki_der, "role": "meter",
                "member": "alice"}
    with pytest.raises(RegistryError) as info:
        registry.enroll(**args)
    assert info.value.code == code
    assert isinstance(info.value, ValueError)
    assert registry.list() == before
