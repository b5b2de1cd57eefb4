"""The settlement service against a real Mosquitto: acks over MQTT, exactly once under duplicate
deliveries, a SIGKILL mid-batch with restart, and a broker restart."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from host_tools.settlement.ledger import Ledger
from host_tools.settlement.service import Service
from tests import test_ingest_support as support
from tests.conftest import ROOT
from tests.support import services
from tests.test_ingest_support import T0_S, Rig, member_energy

db_url, ingest_postgres_url = support.db_url, support.ingest_postgres_url  # fixtures

pytestmark = pytest.mark.mosquitto


class Fleet:
    """Simulated meters on one MQTT connection: publish QoS1, track acks, resend unacked."""

    def __init__(self, rig, port, minutes, members=("alice", "bob")):
        self.devices = [rig.device(m) for m in members]
        self.records = {d.device_id: [d.record(T0_S + 60 * (i + 1), 3 + n, 2 * n)
                                      for i in range(minutes)]
                        for n, d in enumerate(self.devices)}
        self.acked = {d.device_id: 0 for d in self.devices}
        self.lock = threading.Lock()
        self.port = port
        self.client = None
        self.connect()

    def connect(self):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"fleet-{os.urandom(3).hex()}")
        client.on_message = self._on_ack
        client.on_connect = lambda c, *_: c.subscribe("energo/v1/demo/+/ack", 1)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        self.client = client
        time.sleep(0.2)

    def _on_ack(self, client, userdata, message):
        device_id = message.topic.split("/")[3]
        ack = json.loads(message.payload)["ack"]
        with self.lock:
            self.acked[device_id] = max(self.acked[device_id], ack)

    def publish(self, device, first, last):
        """Counters first..last (1-based) of one device."""
        for text in self.records[device.device_id][first - 1:last]:
            self.client.publish(device.topic, text.encode(), qos=1)

    def resend_unacked(self):
        with self.lock:
            acked = dict(self.acked)
        for device in self.devices:
            self.publish(device, acked[device.device_id] + 1, len(self.records[device.device_id]))

    def all_acked(self):
        with self.lock:
            return all(self.acked[d] == len(r) for d, r in self.records.items())

    def wait_all_acked(self, timeout_s, resend_every_s=3.0):
        deadline = time.monotonic() + timeout_s
        next_resend = time.monotonic() + resend_every_s
        while time.monotonic() < deadline:
            if self.all_acked():
                return True
            if time.monotonic() > next_resend:
                self.resend_unacked()
                next_resend = time.monotonic() + resend_every_s
            time.sleep(0.05)
        return False

    def expected(self):
        """Each member's register deltas from its first record (the baseline) to its last."""
        result = {}
        for device in self.devices:
            n = self.devices.index(device)
            minutes = len(self.records[device.device_id])
            result[self.member_of(device)] = [(3 + n) * (minutes - 1), 2 * n * (minutes - 1)]
        return result

    def member_of(self, device):
        return "alice" if device is self.devices[0] else "bob"

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _check_exactly_once(url, key_path, fleet):
    ledger = Ledger.open(url, key_path=str(key_path))
    try:
        rows = ledger.db.all("SELECT device_id, COUNT(*), MIN(counter), MAX(counter) "
                             "FROM ingest_records WHERE state = 'settled' GROUP BY device_id")
        assert sorted(rows) == sorted((d, len(r), 1, len(r)) for d, r in fleet.records.items())
        assert member_energy(ledger) == fleet.expected()
        assert ledger.check().ok
        assert ledger.verify_checkpoints().ok
    finally:
        ledger.close()


def _start_service(url, key_path, port, **kwargs):
    service = Service(url, f"mqtt://127.0.0.1:{port}", "demo", key_path=str(key_path), **kwargs)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert service.connected.wait(10), "service did not connect"
    return service, thread


def _enroll_over_http(port, token, device, member):
    body = json.dumps({"device_id": device.device_id, "public_key": device.spki_der.hex(),
                       "role": "meter", "member": member}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/devices", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.status, json.loads(reply.read())


def test_records_settle_once_and_acks_reach_devices(db_url, tmp_path, mosquitto):
    rig = Rig(db_url, tmp_path / "key.pem")
    rig.close()
    fleet = Fleet(rig, mosquitto.port, minutes=60)
    port = services.free_port()
    token_path = tmp_path / "admin-token"
    # bob's meter is enrolled over the service's HTTP API rather than directly.
    ledger = Ledger.open(db_url, key_path=str(tmp_path / "key.pem"))
    ledger.db.execute("DELETE FROM devices WHERE device_id = ?", (fleet.devices[1].device_id,))
    ledger.close()
    service, thread = _start_service(db_url, tmp_path / "key.pem", mosquitto.port,
                                     http_address=f"127.0.0.1:{port}",
                                     admin_token_path=str(token_path),
                                     mqtt_secret_path=str(tmp_path / "broker-secret"))
    try:
        if importlib.util.find_spec("host_tools.api") is not None:
            status, reply = _enroll_over_http(port, token_path.read_text().strip(),
                                              fleet.devices[1], "bob")
            assert status == 201 and reply["device_id"] == fleet.devices[1].device_id
            from host_tools import broker_auth

            secret = broker_auth.load_or_create_secret(str(tmp_path / "broker-secret"))
            assert reply["mqtt_password"] == broker_auth.derive_password(
                secret, fleet.devices[1].device_id)
        else:
            Rig.enroll_again(db_url, tmp_path / "key.pem", fleet.devices[1], "bob")
        for device in fleet.devices:
            fleet.publish(device, 1, 60)
            fleet.publish(device, 10, 30)  # duplicate deliveries
        assert fleet.wait_all_acked(30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert 'energo_ingest_total{event="settled"} 120' in metrics
        assert 'energo_ingest_rejected_total{reason="bad_signature"} 0' in metrics
    finally:
        service.stop_event.set()
        thread.join(10)
    _check_exactly_once(db_url, tmp_path / "key.pem", fleet)


def _settle_process(url, key_path, port, log):
    return subprocess.Popen(
        [sys.executable, "-m", "host_tools.cli", "settle", "--db", url, "--mqtt",
         f"mqtt://127.0.0.1:{port}", "--community", "demo", "--key", str(key_path),
         "--batch-max", "50", "--batch-wait-ms", "20", "--status-every-s", "1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def test_sigkill_mid_batch_then_restart_settles_everything_once(db_url, tmp_path, mosquitto):
    key_path = tmp_path / "key.pem"
    rig = Rig(db_url, key_path)
    rig.close()
    fleet = Fleet(rig, mosquitto.port, minutes=250)
    log = open(tmp_path / "settle.log", "wb")
    proc = _settle_process(db_url, key_path, mosquitto.port, log)
    try:
        time.sleep(2.0)  # connected and subscribed
        for device in fleet.devices:
            fleet.publish(device, 1, 250)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(fleet.acked.values()) < 50:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = dict(fleet.acked)
        assert sum(killed_at.values()) < 500, "the kill came mid-way"
        proc = _settle_process(db_url, key_path, mosquitto.port, log)
        time.sleep(2.0)
        for device in fleet.devices:  # devices resend everything they have not seen acked
            fleet.publish(device, 1, 250)
        assert fleet.wait_all_acked(60), (fleet.acked, (tmp_path / "settle.log").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        fleet.close()
    assert "settled" in (tmp_path / "settle.log").read_text()
    _check_exactly_once(db_url, key_path, fleet)


def test_broker_restart_acks_resume(tmp_path):
    from tests.conftest import need

    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rig = Rig(url, tmp_path / "key.pem")
    rig.close()
    broker = services.Mosquitto(tmp_path / "broker").__enter__()
    service = thread = fleet = None
    try:
        fleet = Fleet(rig, broker.port, minutes=80)
        service, thread = _start_service(url, tmp_path / "key.pem", broker.port)
        for device in fleet.devices:
            fleet.publish(device, 1, 40)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and min(fleet.acked.values()) < 40:
            time.sleep(0.05)
        assert min(fleet.acked.values()) == 40
        port = broker.port
        broker.__exit__(None, None, None)
        time.sleep(0.5)
        broker = services.Mosquitto(tmp_path / "broker2")
        broker.port = port
        broker.__enter__()
        fleet.close()
        fleet.connect()
        assert service.connected.wait(15), "the service reconnects after the broker restart"
        time.sleep(0.3)
        for device in fleet.devices:
            fleet.publish(device, 41, 80)
        assert fleet.wait_all_acked(30)
        assert service.connects >= 2
    finally:
        if service is not None:
            service.stop_event.set()
            thread.join(10)
        if fleet is not None:
            fleet.close()
        broker.__exit__(None, None, None)
    _check_exactly_once(url, tmp_path / "key.pem", fleet)


def test_two_workers_share_the_load_and_settle_once(tmp_path, mosquitto):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    key_path = tmp_path / "key.pem"
    rig = Rig(url, key_path)
    rig.close()
    fleet = Fleet(rig, mosquitto.port, minutes=150)
    log = open(tmp_path / "settle.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "host_tools.cli", "settle", "--db", url, "--mqtt",
         mosquitto.url, "--community", "demo", "--key", str(key_path), "--workers", "2",
         "--batch-wait-ms", "10"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2.5)  # both workers subscribed
        for device in fleet.devices:
            fleet.publish(device, 1, 150)
        assert fleet.wait_all_acked(40), (fleet.acked, (tmp_path / "settle.log").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        fleet.close()
    _check_exactly_once(url, key_path, fleet)


def test_with_broker_credentials_and_acls(tmp_path):
    """The broker engineer's Mosquitto config: per-device users and ACLs; the service connects
    as `settlement` with its derived password over a shared subscription."""
    from host_tools import broker_auth
    from tests.conftest import need

    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rig = Rig(url, tmp_path / "key.pem")
    rig.close()
    devices = [rig.device("alice"), rig.device("bob")]
    secret_path = str(tmp_path / "broker-secret")
    secret = broker_auth.load_or_create_secret(secret_path)
    broker = services.Mosquitto(tmp_path / "broker")
    paths = broker_auth.write_mosquitto_config(tmp_path / "broker-conf", "demo", secret,
                                               [d.device_id for d in devices], port=broker.port,
                                               bind="127.0.0.1")
    # pytest's temporary directories are private to root; keep Mosquitto from dropping to its
    # own user, which could not read them.
    conf = tmp_path / "broker-conf" / "test.conf"
    conf.write_text("user root\n" + open(paths["mosquitto.conf"]).read())
    broker.conf_path = conf
    clients = []
    with broker:
        service, thread = _start_service(url, tmp_path / "key.pem", broker.port,
                                         mqtt_secret_path=secret_path, shared=True)
        acked = {}
        try:
            for device in devices:
                client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device.device_id)
                client.username_pw_set(device.device_id,
                                       broker_auth.derive_password(secret, device.device_id))
                client.on_message = lambda c, u, m: acked.__setitem__(
                    m.topic.split("/")[3], json.loads(m.payload)["ack"])
                client.connect("127.0.0.1", broker.port)
                client.subscribe(f"energo/v1/demo/{device.device_id}/ack", 1)
                client.loop_start()
                clients.append(client)
            time.sleep(0.5)
            for client, device in zip(clients, devices, strict=True):
                for minute in range(1, 21):
                    client.publish(device.topic, device.record(T0_S + 60 * minute, 2, 1), qos=1)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and sorted(acked.values()) != [20, 20]:
                time.sleep(0.05)
            assert acked == {d.device_id: 20 for d in devices}
        finally:
            for client in clients:
                client.loop_stop()
                client.disconnect()
            service.stop_event.set()
            thread.join(10)


@pytest.mark.postgres
def test_a_lost_database_connection_is_reopened(ingest_postgres_url, tmp_path, mosquitto):
    services.wipe_database(ingest_postgres_url)
    url = ingest_postgres_url
    rig = Rig(url, tmp_path / "key.pem")
    rig.close()
    fleet = Fleet(rig, mosquitto.port, minutes=40)
    service, thread = _start_service(url, tmp_path / "key.pem", mosquitto.port,
                                     status_every_s=3600)
    try:
        for device in fleet.devices:
            fleet.publish(device, 1, 20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and min(fleet.acked.values()) < 20:
            time.sleep(0.05)
        assert min(fleet.acked.values()) == 20
        service.ledger.db._conn.close()  # as if PostgreSQL restarted under the service
        for device in fleet.devices:
            fleet.publish(device, 21, 40)
        assert fleet.wait_all_acked(30)
        assert service.batch_failures >= 1
    finally:
        service.stop_event.set()
        thread.join(10)
        fleet.close()
    _check_exactly_once(url, tmp_path / "key.pem", fleet)
