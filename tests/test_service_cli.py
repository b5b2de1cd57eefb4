"""`energo enroll` and `energo settle` at the command line: results as JSON, user errors as
one line with exit status 2, nothing written on refusal."""
import json

import pytest

from host_tools.bench.ingest import SimDevice
from host_tools.cli import main
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(url, key_path=str(tmp_path / "key.pem"))
    ledger.add_member("alice")
    ledger.close()
    return url


def _devices(url):
    ledger = Ledger.open(url)
    try:
        return Registry(ledger).list()
    finally:
        ledger.close()


def test_enroll_prints_the_device_and_is_repeatable(ledger_url, capsys):
    device = SimDevice(seed=11)
    argv = ["enroll", "--db", ledger_url, "--device-id", device.device_id, "--pubkey",
            device.spki_der.hex(), "--role", "meter", "--member", "alice"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["device_id"] == device.device_id and printed["member"] == "alice"
    assert printed["public_key_hex"] == device.spki_der.hex().upper()
    assert main(argv) == 0
    assert [d["device_id"] for d in _devices(ledger_url)] == [device.device_id]


@pytest.mark.parametrize("change, message", [
    ({"--pubkey": "zz"}, "--pubkey must be hex"),
    ({"--pubkey": "3059"}, "not a P-256 public key"),
    ({"--member": "mallory"}, "no member 'mallory'"),
    ({"--device-id": "m-000000000000"}, "does not belong to this key"),
    ({"--db": "mysql://x"}, "unsupported database URL"),
])
def test_enroll_refusals_are_one_line(ledger_url, capsys, change, message):
    device = SimDevice(seed=12)
    args = {"--db": ledger_url, "--device-id": device.device_id,
            "--pubkey": device.spki_der.hex(), "--role": "meter", "--member": "alice"}
    args.update(change)
    argv = ["enroll"] + [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("energo enroll:")
    assert _devices(ledger_url) == []


@pytest.mark.parametrize("argv, message", [
    (["--mqtt", "http://x"], "mqtt://HOST:PORT"),
    (["--mqtt", "mqtt://127.0.0.1:1883", "--http", "nonsense"], "--http must be HOST:PORT"),
    (["--mqtt", "mqtt://127.0.0.1:1883", "--db", "sqlite:///"], "sqlite URL has no path"),
])
def test_settle_start_up_errors_are_one_line(ledger_url, capsys, argv, message):
    full = ["settle", "--db", ledger_url, "--community", "demo"] + argv
    assert main(full) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("energo settle:")


def test_every_new_command_has_an_example(capsys):
    for name in ("settle", "enroll"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert f"Example: energo {name} " in capsys.readouterr().out


@pytest.mark.postgres
def test_settle_on_postgresql_needs_the_service_key(postgres_url, capsys):
    assert main(["settle", "--db", postgres_url, "--mqtt", "mqtt://127.0.0.1:1",
                 "--community", "demo"]) == 2
    assert "pass --key FILE" in capsys.readouterr().err
