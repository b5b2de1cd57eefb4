"""Per-device credentials and ACLs on real brokers: generated Mosquitto config and embedded amqtt.

Each behaviour runs against both brokers, with paho-mqtt as the client, so a
device meets the same rules whichever broker a community runs.
"""
import os
import pathlib
import queue
import shutil
import socket
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import identity
from host_tools import broker_auth
from host_tools.broker import DeviceAccess, EmbeddedBroker
from tests.conftest import need
from tests.support import services

COMMUNITY = "demo"
BASE = f"energo/v1/{COMMUNITY}"
WAIT_S = 5.0
QUIET_S = 0.4


def new_device(role="meter"):
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    return identity.device_id(pub, role)


class Client:
    """A paho client that records its CONNACK, SUBACKs and messages."""

    def __init__(self, broker, username, password, client_id, will_topic=None):
        self.messages = queue.Queue()
        self._connack = queue.Queue()
        self._subacks = queue.Queue()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                protocol=mqtt.MQTTv311)
        self.paho.reconnect_delay_set(30, 60)  # a refused client must not retry during a test
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will_topic is not None:
            self.paho.will_set(will_topic, b"offline", qos=1)
        self.paho.on_connect = lambda c, u, f, rc, p: self._connack.put(rc)
        self.paho.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.put(rcs)
        self.paho.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.disconnects = queue.Queue()
        self.paho.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.paho.connect(broker.host, broker.port, keepalive=30)
        self.paho.loop_start()
        self.reason = self._connack.get(timeout=WAIT_S)

    @property
    def connected(self):
        return not self.reason.is_failure

    def subscribe(self, topic_filter):
        """Subscribe at QoS 1; True when the broker granted it."""
        self.paho.subscribe(topic_filter, qos=1)
        codes = self._subacks.get(timeout=WAIT_S)
        return not codes[0].is_failure

    def publish(self, topic, payload):
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)

    def next_message(self, timeout_s=WAIT_S):
        return self.messages.get(timeout=timeout_s)

    def close(self):
        self.paho.disconnect()
        self.paho.loop_stop()


class Community:
    """A running broker of either kind with its secret and enrolled devices."""

    def __init__(self, broker, secret, devices):
        self.broker = broker
        self.secret = secret
        self.devices = devices
        self.clients = []

    def connect(self, username, password=None, client_id=None, will_topic=None):
        if password is None and username is not None:
            password = broker_auth.derive_password(self.secret, username)
        client = Client(self.broker, username, password,
                        client_id or username or "anonymous-client", will_topic)
        self.clients.append(client)
        return client

    def settlement(self, client_id="settlement-test", topic_filters=()):
        client = self.connect(broker_auth.SETTLEMENT_USER, client_id=client_id)
        assert client.connected
        for topic_filter in topic_filters:
            assert client.subscribe(topic_filter), topic_filter
        return client

    def close(self):
        for client in self.clients:
            client.close()


def daemon_readable_dir(request):
    """A config directory Mosquitto can still open after dropping root to its own user.

    pytest's tmp_path is private to the user running the tests (mode 0700), so
    a Mosquitto started as root could not reach the password file there.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix="energo-broker-test-"))
    path.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture(params=[pytest.param("mosquitto", marks=pytest.mark.mosquitto), "embedded"])
def community(request, tmp_path):
    secret = os.urandom(32)
    devices = [(new_device("meter"), "meter"), (new_device("meter"), "meter"),
               (new_device("charger"), "charger")]
    if request.param == "mosquitto":
        need(services.mosquitto_binary() is not None, "mosquitto is not installed")
        config_dir = daemon_readable_dir(request)
        broker = services.Mosquitto(tmp_path / "mosquitto", conf_path=config_dir / "mosquitto.conf")
        broker_auth.write_mosquitto_config(config_dir, COMMUNITY, secret,
                                           [device_id for device_id, _ in devices],
                                           port=broker.port, bind="127.0.0.1")
    else:
        access = DeviceAccess(COMMUNITY, secret, lambda: list(devices), reload_interval_ms=0)
        broker = EmbeddedBroker(access)
    with broker:
        community = Community(broker, secret, devices)
        community.kind = request.param
        try:
            yield community
        finally:
            community.close()


def test_device_publishes_to_its_own_topic(community):
    meter = community.devices[0][0]
    service = community.settlement(topic_filters=[f"{BASE}/+/rec"])
    device = community.connect(meter)
    assert device.connected
    device.publish(f"{BASE}/{meter}/rec", b"OCMF|{}|{}")
    assert service.next_message() == (f"{BASE}/{meter}/rec", b"OCMF|{}|{}")


def test_publish_under_another_id_is_not_delivered(community):
    meter, other = community.devices[0][0], community.devices[1][0]
    service = community.settlement(topic_filters=[f"{BASE}/+/rec", f"{BASE}/+/hello"])
    device = community.connect(meter)
    device.publish(f"{BASE}/{other}/rec", b"forged")
    device.publish(f"{BASE}/{other}/hello", b"forged")
    device.publish(f"{BASE}/{meter}/ack", b"forged")  # downlink: only the service writes it
    device.publish(f"{BASE}/price", b"forged")
    # QoS 1 from one client is delivered in order: the marker arrives after anything forged.
    device.publish(f"{BASE}/{meter}/hello", b"marker")
    assert service.next_message() == (f"{BASE}/{meter}/hello", b"marker")
    with pytest.raises(queue.Empty):
        service.next_message(timeout_s=QUIET_S)


def test_device_subscribes_only_to_its_downlink(community):
    meter, other = community.devices[0][0], community.devices[1][0]
    device = community.connect(meter)
    assert device.subscribe(f"{BASE}/{meter}/ack")
    assert device.subscribe(f"{BASE}/price")
    granted = [device.subscribe(f"{BASE}/{other}/ack"), device.subscribe(f"{BASE}/+/rec"),
               device.subscribe("#")]
    if community.kind == "embedded":
        assert granted == [False] * 3
    # Mosquitto 2 grants any SUBSCRIBE and applies the read rules to each delivery instead:
    # either way, nothing outside the device's downlink may arrive.
    community.connect(other).publish(f"{BASE}/{other}/rec", b"not for you")
    service = community.settlement()
    service.publish(f"{BASE}/{other}/ack", b'{"ack":9}')
    service.publish(f"{BASE}/{meter}/ack", b'{"ack":7}')
    assert device.next_message() == (f"{BASE}/{meter}/ack", b'{"ack":7}')
    with pytest.raises(queue.Empty):
        device.next_message(timeout_s=QUIET_S)


def test_wrong_password_anonymous_and_unknown_users_are_refused(community):
    meter = community.devices[0][0]
    assert not community.connect(meter, password="x" * 32).connected
    assert not community.connect(meter, password=broker_auth.derive_password(os.urandom(32),
                                                                             meter)).connected
    assert not community.connect(None).connected
    stranger = new_device()  # a valid id and its derived password, but not enrolled
    assert not community.connect(stranger).connected
    # the settlement user's name with a device's password
    assert not community.connect(broker_auth.SETTLEMENT_USER, client_id="svc",
                                 password=broker_auth.derive_password(community.secret,
                                                                      meter)).connected


def test_settlement_shared_subscription_splits_the_uplink(community):
    meter = community.devices[0][0]
    shared = f"$share/ingest/{BASE}/+/rec"
    workers = [community.settlement(client_id=f"ingest-{n}", topic_filters=[shared])
               for n in range(2)]
    device = community.connect(meter)
    sent = [f"record {n}".encode() for n in range(6)]
    for payload in sent:
        device.publish(f"{BASE}/{meter}/rec", payload)
    received = [[], []]
    deadline = time.monotonic() + WAIT_S
    while sum(map(len, received)) < len(sent) and time.monotonic() < deadline:
        for worker, got in zip(workers, received, strict=True):
            try:
                got.append(worker.next_message(timeout_s=0.05)[1])
            except queue.Empty:
                pass
    time.sleep(QUIET_S)
    for worker, got in zip(workers, received, strict=True):
        while not worker.messages.empty():
            got.append(worker.next_message()[1])
    assert sorted(received[0] + received[1]) == sorted(sent)  # each record to exactly one worker
    assert received[0] and received[1]  # and both workers share the load


def test_oversized_packet_drops_the_connection(community):
    meter = community.devices[0][0]
    service = community.settlement(topic_filters=[f"{BASE}/+/rec"])
    device = community.connect(meter)
    device.paho.publish(f"{BASE}/{meter}/rec", b"x" * 100_000, qos=1)
    device.disconnects.get(timeout=WAIT_S)  # the broker closed the connection
    device.paho.loop_stop()
    again = community.connect(meter)
    again.publish(f"{BASE}/{meter}/rec", b"small")
    assert service.next_message() == (f"{BASE}/{meter}/rec", b"small")
    with pytest.raises(queue.Empty):
        service.next_message(timeout_s=QUIET_S)


def test_will_cannot_publish_under_another_id(community):
    meter, other = community.devices[0][0], community.devices[1][0]
    service = community.settlement(topic_filters=[f"{BASE}/+/state"])
    device = community.connect(meter, will_topic=f"{BASE}/{other}/state")
    if device.connected:
        device.paho.loop_stop()
        device.paho.socket().shutdown(socket.SHUT_RDWR)  # die without DISCONNECT: will fires
    with pytest.raises(queue.Empty):
        service.next_message(timeout_s=QUIET_S * 2)
    honest = community.connect(community.devices[1][0], will_topic=f"{BASE}/{other}/state")
    assert honest.connected
    honest.paho.loop_stop()
    honest.paho.socket().shutdown(socket.SHUT_RDWR)
    assert service.next_message() == (f"{BASE}/{other}/state", b"offline")


def test_refused_client_cannot_disturb_a_connected_device(community):
    meter = community.devices[0][0]
    service = community.settlement(topic_filters=[f"{BASE}/+/rec"])
    device = community.connect(meter)
    assert not community.connect(meter, password="y" * 32, client_id=meter).connected
    if community.kind == "embedded":
        # Client ids belong to their user: another device may not take this session over.
        # (Mosquitto lets any authenticated client take over a client id.)
        other = community.devices[1][0]
        assert not community.connect(other, client_id=meter).connected
    device.publish(f"{BASE}/{meter}/rec", b"still here")
    assert service.next_message() == (f"{BASE}/{meter}/rec", b"still here")


def test_embedded_broker_sees_new_enrollments_without_restart():
    secret = os.urandom(32)
    devices = []
    access = DeviceAccess(COMMUNITY, secret, lambda: list(devices), reload_interval_ms=0)
    with EmbeddedBroker(access) as broker:
        community = Community(broker, secret, devices)
        try:
            late = new_device("charger")
            assert not community.connect(late).connected
            devices.append((late, "charger"))
            assert community.connect(late).connected
        finally:
            community.close()


def test_registry_reload_is_rate_limited():
    calls = []
    now_ms = [0]

    def devices():
        calls.append(now_ms[0])
        return []

    access = DeviceAccess(COMMUNITY, os.urandom(32), devices, reload_interval_ms=1000,
                          clock_ms=lambda: now_ms[0])
    access.load()
    import asyncio

    async def probe():
        return [await access.is_known(new_device()) for _ in range(5)]

    assert asyncio.run(probe()) == [False] * 5
    assert calls == [0]  # strangers inside the interval cost no registry reads
    now_ms[0] = 1500
    asyncio.run(probe())
    assert calls == [0, 1500]


def test_access_skips_entries_without_broker_rights():
    meter, charger = new_device("meter"), new_device("charger")
    rows = [(meter, "meter"), (charger, "charger"), ("v-0123456789ab", "vehicle"),
            (meter, "charger"), ("bogus",), None]
    access = DeviceAccess(COMMUNITY, os.urandom(32), lambda: rows)
    assert access.load() == 2
    assert access.device_ids == {meter, charger}
    assert access.skipped_count == 4


def test_embedded_broker_stops_and_frees_its_port():
    access = DeviceAccess(COMMUNITY, os.urandom(32), lambda: [])
    with EmbeddedBroker(access) as broker:
        port = broker.port
        assert services.wait_for_port("127.0.0.1", port, timeout_s=1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    assert not any(t.name == "energo-broker" and t.is_alive() for t in threading.enumerate())
