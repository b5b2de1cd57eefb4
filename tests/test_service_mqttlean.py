"""The ingest worker's MQTT client (host_tools.settlement.mqttlean): what paho would deliver,
from its own packet decoding and chunked socket reads."""
import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet

from host_tools.settlement.mqttlean import RECV_BYTES_MAX, LeanClient


def _client(delivered, manual_ack=True, client_id="lean-test"):
    return LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                      protocol=mqtt.MQTTv311, manual_ack=manual_ack,
                      deliver=lambda *message: delivered.append(message))


def _remaining_length(size):
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (128 if size else 0))
        if not size:
            return bytes(out)


def _publish_packet(topic, payload, qos, mid):
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    body += payload
    return bytes([0x30 | qos << 1]) + _remaining_length(len(body)) + body


def test_the_lean_path_is_on_for_the_pinned_paho():
    assert _client([]).lean  # else the speed-up silently fell back to paho's own path


@settings(max_examples=200, deadline=None)
@given(topic=st.binary(min_size=1, max_size=300), payload=st.binary(max_size=600),
       qos=st.integers(0, 1), mid=st.integers(1, 65535))
@example(topic=b"t/" * 150, payload=b"p", qos=1, mid=513)  # both length bytes matter
def test_publish_packets_decode_as_paho_decodes_them(topic, payload, qos, mid):
    delivered = []
    client = _client(delivered)
    body = _publish_packet(topic, payload, qos, mid)
    client._in_packet["command"] = body[0]
    client._in_packet["packet"] = body[len(_remaining_length(len(body) - 1)) + 1:]
    assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    paho = _packet.decode_publish(body[0], client._in_packet["packet"], mqtt.MQTTv311)
    assert delivered == [(paho.topic.decode("utf-8", "replace"), paho.payload,
                          paho.mid if qos else 0, paho.qos)]


@pytest.mark.parametrize("packet", [b"", b"\x00", b"\x00\x00payload", b"\x00\x05ab",
                                    b"\x00\x02ab\x00"])
def test_malformed_publish_packets_are_protocol_errors(packet):
    delivered = []
    client = _client(delivered)
    client._in_packet["command"] = 0x32  # PUBLISH, QoS 1
    client._in_packet["packet"] = packet
    assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert delivered == []


@pytest.fixture
def wired():
    """A LeanClient reading from one end of a socket pair; the test writes the other end."""
    delivered = []
    client = _client(delivered, manual_ack=False)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    yield client, theirs, delivered
    client._sock = None
    ours.close()
    theirs.close()


def test_one_read_step_handles_every_whole_packet_and_keeps_a_cut_one(wired):
    client, broker, delivered = wired
    packets = [_publish_packet(b"energo/v1/demo/m-%012d/rec" % n, b"record %d" % n, 0, 0)
               for n in range(50)]
    stream = b"".join(packets)
    cut = len(stream) - 7
    broker.sendall(stream[:cut])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [payload for _, payload, _, _ in delivered] == [b"record %d" % n for n in range(49)]
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing new: no block
    assert len(delivered) == 49
    broker.sendall(stream[cut:])
    client.loop_read()
    assert delivered[-1] == ("energo/v1/demo/m-000000000049/rec", b"record 49", 0, 0)
    assert len(delivered) == 50


def test_packets_larger_than_one_read_arrive_whole(wired):
    client, broker, delivered = wired
    big = bytes(range(256)) * (RECV_BYTES_MAX // 256 * 2 + 3)
    stream = _publish_packet(b"t/big", big, 0, 0) + _publish_packet(b"t/small", b"x", 0, 0)
    sender = threading.Thread(target=broker.sendall, args=(stream,))
    sender.start()
    deadline = time.monotonic() + 10
    while len(delivered) < 2 and time.monotonic() < deadline:
        client.loop_read()
    sender.join()
    assert delivered == [("t/big", big, 0, 0), ("t/small", b"x", 0, 0)]


def test_a_new_connection_drops_what_the_old_one_left(wired):
    client, broker, delivered = wired
    broker.sendall(_publish_packet(b"t/a", b"a", 0, 0) * 3)
    assert len(client._sock_recv(1)) == 1  # the connection breaks after one byte was used
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        client._sock = ours  # what paho does on reconnect, with its packet state reset
        client._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [],
                             "remaining_mult": 1, "remaining_length": 0, "packet": bytearray(b""),
                             "to_process": 0, "pos": 0}
        theirs.sendall(_publish_packet(b"t/b", b"b", 0, 0))
        client.loop_read()
        assert delivered == [("t/b", b"b", 0, 0)]
    finally:
        client._sock = None
        ours.close()
        theirs.close()


@pytest.mark.mosquitto
def test_through_mosquitto_the_lean_client_gets_what_paho_gets(mosquitto):
    """A burst of QoS 0/1 messages of many sizes: same messages, same order per QoS."""
    got = {True: [], False: []}
    clients = []
    for lean in (True, False):
        client = _client(got[lean], manual_ack=False, client_id=f"lean-test-{lean}")
        client.lean = lean
        subscribed = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", 1)
        client.on_subscribe = lambda c, u, m, rc, p, ev=subscribed: ev.set()
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        assert subscribed.wait(10)
        clients.append(client)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lean-pub")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    sent = []
    for n in range(600):
        payload = bytes([n % 251]) * (n * 37 % 3000) + b"#%d" % n
        qos = n % 2
        sent.append((f"t/{n % 7}", payload, qos))
        publisher.publish(f"t/{n % 7}", payload, qos=qos)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and min(len(v) for v in got.values()) < len(sent):
        time.sleep(0.02)
    publisher.loop_stop()
    publisher.disconnect()
    for client in clients:
        client.loop_stop()
        client.disconnect()
    for lean in (True, False):
        assert sorted((t, p, q) for t, p, _, q in got[lean]) == sorted(sent)


@pytest.mark.parametrize("packet", [b"\x00", b"\x00\x01\x00"])
def test_malformed_pubacks_are_protocol_errors(packet):
    client = _client([])
    client._in_packet["command"] = 0x40
    client._in_packet["packet"] = packet
    assert client._handle_pubackcomp("PUBACK") == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL


@pytest.mark.mosquitto
def test_qos1_publishes_complete_and_free_the_inflight_window(mosquitto):
    """The acks to devices: every QoS 1 publish is confirmed, with a window of 20 in flight."""
    client = _client([], client_id="lean-pub-test")
    confirmed = []
    client.on_publish = lambda c, u, mid, reason, properties: confirmed.append(
        (mid, reason.is_failure))
    client.max_inflight_messages_set(20)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        infos = [client.publish(f"t/{n}", b"ack %d" % n, qos=1) for n in range(300)]
        deadline = time.monotonic() + 10
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        assert all(info.is_published() for info in infos)
        assert sorted(mid for mid, _ in confirmed) == sorted(info.mid for info in infos)
        assert not any(failed for _, failed in confirmed)
        assert client._out_messages == {}
    finally:
        client.loop_stop()
        client.disconnect()
