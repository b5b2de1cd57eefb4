"""`energo broker`: devices from the registry, the embedded broker as a process, Mosquitto files."""
import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import identity, p256
from host_tools import broker_auth, cli
from host_tools.commands.broker import parse_listen
from host_tools.errors import UsageError
from tests.conftest import ROOT
from tests.support import services
from tests.test_broker_mqtt import Client

registry = pytest.importorskip("host_tools.settlement.registry")
from host_tools.settlement import Ledger  # noqa: E402 - after the registry check

COMMUNITY = "demo"


def enroll(ledger, role, member="alice"):
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    device_id = identity.device_id(pub, role)
    registry.Registry(ledger).enroll(device_id, p256.spki_encode(pub), role, member)
    return device_id


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'community.db'}"
    ledger = Ledger.open(url)
    ledger.add_member("alice")
    meter = enroll(ledger, "meter")
    charger = enroll(ledger, "charger")
    ledger.close()
    return url, meter, charger


class _Address:
    def __init__(self, port):
        self.host, self.port = "127.0.0.1", port


def start_broker(db_url, secret_path, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "host_tools.cli", "broker", "--db", db_url, "--community",
         COMMUNITY, "--secret", str(secret_path), "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"broker did not start: {line!r} {proc.stderr.read()}")
    return proc, line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_embedded_broker_process_serves_enrolled_devices_and_stops_cleanly(db, tmp_path, signum):
    db_url, meter, charger = db
    secret_path = tmp_path / "broker.secret"
    port = services.free_port()
    proc, line = start_broker(db_url, secret_path, port)
    try:
        assert "2 devices" in line and f"mqtt://127.0.0.1:{port}" in line
        secret = broker_auth.load_or_create_secret(secret_path)
        address = _Address(port)
        service = Client(address, "settlement", broker_auth.derive_password(secret, "settlement"),
                         "settlement-cli")
        assert service.subscribe(f"energo/v1/{COMMUNITY}/+/rec")
        device = Client(address, meter, broker_auth.derive_password(secret, meter), meter)
        assert device.connected
        device.publish(f"energo/v1/{COMMUNITY}/{meter}/rec", b"r1")
        assert service.next_message() == (f"energo/v1/{COMMUNITY}/{meter}/rec", b"r1")
        # enrolled while the broker runs: admitted without a restart
        ledger = Ledger.open(db_url)
        late = enroll(ledger, "meter")
        ledger.close()
        time.sleep(1.1)  # the registry is re-read at most once a second
        late_client = Client(address, late, broker_auth.derive_password(secret, late), late)
        assert late_client.connected
        assert not Client(address, meter, "z" * 32, meter + "-x").connected
        for client in (service, device, late_client):
            client.close()
    finally:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err


def test_mosquitto_config_from_registry(db, tmp_path, capsys):
    db_url, meter, charger = db
    out_dir = tmp_path / "mosq"
    code = cli.main(["broker", "--db", db_url, "--community", COMMUNITY, "--secret",
                     str(tmp_path / "s"), "--mosquitto-config", str(out_dir), "--port", "18830"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 devices" in printed and f"mosquitto -c {out_dir / 'mosquitto.conf'}" in printed
    secret = broker_auth.load_or_create_secret(tmp_path / "s")
    entries = dict(line.split(":", 1) for line in (out_dir / "passwd").read_text().splitlines())
    assert set(entries) == {meter, charger, "settlement"}
    assert broker_auth.mosquitto_hash_matches(entries[charger],
                                              broker_auth.derive_password(secret, charger))
    assert "listener 18830\n" in (out_dir / "mosquitto.conf").read_text()
    assert f"energo/v1/{COMMUNITY}/%u/rec" in (out_dir / "acl").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--listen", "nonsense"], "HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "HOST:PORT"),
    (["--port", "1884"], "--mosquitto-config"),
    (["--mosquitto-config", "DIR", "--listen", "127.0.0.1:1"], "--listen is for"),
    (["--mosquitto-config", "DIR", "--port", "0"], "port must be"),
    (["--community", "a/b"], "invalid community"),
])
def test_usage_errors_are_one_line_and_write_nothing(db, tmp_path, capsys, extra, message):
    db_url, _, _ = db
    extra = [str(tmp_path / "out") if part == "DIR" else part for part in extra]
    argv = ["broker", "--db", db_url, "--community", COMMUNITY, "--secret",
            str(tmp_path / "s"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_missing_database_and_bad_secret_are_usage_errors(tmp_path, capsys):
    argv = ["broker", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--community", COMMUNITY,
            "--secret", str(tmp_path / "s"), "--mosquitto-config", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    bad = tmp_path / "bad.secret"
    bad.write_bytes(os.urandom(32))
    os.chmod(bad, 0o644)
    argv[argv.index("--secret") + 1] = str(bad)
    assert cli.main(argv) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_parse_listen():
    assert parse_listen("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_listen("[::1]:1884") == ("::1", 1884)
    assert parse_listen("0.0.0.0:8883") == ("0.0.0.0", 8883)
    for bad in ("", ":1883", "host", "host:", "host:0", "host:x", "a b:1883"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_port_in_use_is_a_usage_error(db, tmp_path):
    db_url, _, _ = db
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "host_tools.cli", "broker", "--db", db_url, "--community",
             COMMUNITY, "--secret", str(tmp_path / "s"), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr

