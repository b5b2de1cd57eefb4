"""Settlement ingest: signed records through Mosquitto into the ledger, against verification alone."""
import argparse
import hashlib
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import identity, ocmf
from host_tools.errors import UsageError

NAME = "ingest"
_ECDSA = ec.ECDSA(hashes.SHA256())


class SimDevice:
    """A meter that signs records exactly like the firmware does, with OpenSSL for speed.

    Used by the benchmark and the tests: the records are the firmware's OCMF format
    (energo.ocmf.build_payload), so the ingest sees nothing it would not see from a board.
    """

    def __init__(self, seed=None, role="meter", community="demo"):
        if seed is None:
            self.key = ec.generate_private_key(ec.SECP256R1())
        else:
            scalar = int.from_bytes(hashlib.sha256(b"energo-sim-%d" % seed).digest(), "big")
            self.key = ec.derive_private_key(scalar % (2**255) + 1, ec.SECP256R1())
        public = self.key.public_key()
        point = public.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)
        self.spki_der = public.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.device_id = identity.device_id(point, role)
        self.topic = f"energo/v1/{community}/{self.device_id}/rec"
        self.counter = 0
        self.import_wh = 0
        self.export_wh = 0
        self.prev_sig_hash = None

    def record(self, time_s, import_add_wh=0, export_add_wh=0, sync="S", counter=None,
               chain=True):
        """The next signed OCMF record (text); registers grow by the given Wh."""
        self.counter = self.counter + 1 if counter is None else counter
        self.import_wh += import_add_wh
        self.export_wh += export_add_wh
        return self.sign_record(self.counter, time_s, self.import_wh, self.export_wh, sync,
                                self.prev_sig_hash if chain else None, remember=True)

    def sign_record(self, counter, time_s, import_wh, export_wh, sync="S", chain_hash=None,
                    remember=False, device_id=None):
        """Any record, signed with this device's key (for forged and replayed inputs too)."""
        time_ms = time_s * 1000
        readings = [ocmf.reading(time_ms, "C", import_wh, ocmf.OBIS_IMPORT, sync),
                    ocmf.reading(time_ms, "C", export_wh, ocmf.OBIS_EXPORT, sync)]
        extra = [("XP", 1200), ("XU", 230000), ("XI", 5200), ("XF", 990)]
        if chain_hash is not None:
            extra.insert(0, ("XC", chain_hash))
        gs = device_id or self.device_id
        payload = ocmf.build_payload(("energo-meter", gs, "0.1.0"), f"F{counter}",
                                     ("Energo", "SIM", gs), readings, extra)
        signature = self.key.sign(payload.encode(), _ECDSA)
        if remember:
            self.prev_sig_hash = hashlib.sha256(signature).hexdigest()
        return f'OCMF|{payload}|{{"SA":"{ocmf.SA_P256}","SD":"{signature.hex()}"}}'


def add_arguments(parser):
    parser.add_argument("--devices", type=int, default=200, help="simulated meters (default 200)")
    parser.add_argument("--records", type=int, default=20000,
                        help="records published in the end-to-end run (default 20000)")
    parser.add_argument("--db", default=None,
                        help="ledger URL, an empty database (default: a temporary SQLite file)")
    parser.add_argument("--workers", type=int, default=1,
                        help="settlement worker processes (default 1)")
    parser.add_argument("--publisher", choices=("lean", "paho"), default="lean",
                        help="the simulated devices' MQTT client: lean (default, a raw socket "
                             "that leaves the cores to the service) or paho (the former one)")
    parser.add_argument("--grace-s", type=int, default=3600,
                        help="the service's event-time grace (default 3600: the bench pushes "
                             "99 event-minutes through in seconds, so a small grace turns "
                             "ordinary worker skew into corrections)")


def _start_mosquitto():
    from host_tools.mosquitto import Mosquitto

    # A burst of ~20 000 QoS1 messages: no inflight limit, a deep queue.
    broker = Mosquitto(extra_config="max_inflight_messages 0\n", queued_max=1000000)
    try:
        return broker.__enter__()
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


def _make_records(devices, total, interval_s=900):
    """(topic, payload) in publishing order: every device advances one minute per round."""
    start_s = 1_790_000_000 - 1_790_000_000 % interval_s
    out = []
    rounds = max(1, total // len(devices))
    for minute in range(rounds):
        for device in devices:
            out.append((device, device.topic, device.record(start_s + 60 * (minute + 1),
                                                            11, 7).encode()))
    return out


def run(args):
    if not 1 <= args.devices <= 10_000:
        raise UsageError("--devices must be between 1 and 10000")
    if not 2 * args.devices <= args.records <= 2_000_000:
        raise UsageError("--records must be between 2 x --devices and 2000000")
    if not 1 <= args.workers <= 8:
        raise UsageError("--workers must be between 1 and 8")
    if not 0 <= args.grace_s <= 86_400:
        raise UsageError("--grace-s must be between 0 and 86400")
    workdir = tempfile.mkdtemp(prefix="energo-bench-ingest-")
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _enroll_all(url, key_path, devices):
    from host_tools.settlement.ledger import Ledger
    from host_tools.settlement.registry import Registry

    ledger = Ledger.open(url, key_path=key_path)
    try:
        registry = Registry(ledger)
        for index in range(0, len(devices), 50):
            member = f"member{index // 50}"
            if not ledger.is_member(member):
                ledger.add_member(member)
            for device in devices[index:index + 50]:
                registry.enroll(device.device_id, device.spki_der, "meter", member)
    finally:
        ledger.close()


def _verify_only_per_s(url, key_path, records):
    """Stage 1 of the ingest alone (parse + signature check), one process, same records."""
    from host_tools.settlement.ingest import Ingest
    from host_tools.settlement.ledger import Ledger
    from host_tools.settlement.registry import Registry

    ledger = Ledger.open(url, key_path=key_path)
    try:
        ingest = Ingest(ledger, Registry(ledger), "demo")
        sample = records[:5000]
        for _, topic, payload in sample[:200]:
            ingest.prepare(topic, payload, 0)  # warm the key cache
        t0 = time.perf_counter()
        for _, topic, payload in sample:
            ingest.prepare(topic, payload, 0)
        return len(sample) / (time.perf_counter() - t0)
    finally:
        ledger.close()


class _Acks:
    """The devices' side of the acks: per device the highest ack, latency per record."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}
        self.sent_at = {}
        self.latencies_ms = []

    def on_message(self, client, userdata, message):
        self.ack(message.topic, message.payload)

    def ack(self, topic, payload):
        device_id = topic.split("/")[3]
        counter = int(payload.split(b":")[1].rstrip(b"}"))
        now = time.perf_counter()
        with self.lock:
            previous = self.acked.get(device_id, 0)
            for c in range(previous + 1, counter + 1):
                sent = self.sent_at.pop((device_id, c), None)
                if sent is not None:
                    self.latencies_ms.append((now - sent) * 1000)
            self.acked[device_id] = max(previous, counter)

    def wait(self, want, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(self.acked.get(d, 0) >= c for d, c in want.items()):
                    return True
            time.sleep(0.005)
        return False


def _remaining_length(size):
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | 128 if size else byte)
        if not size:
            return bytes(out)


def _mqtt_string(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _split_packet(buf, start, size_max):
    """(type, body, next start) of the MQTT packet at buf[start:], or None while incomplete."""
    size, shift = 0, 0
    for at in range(start + 1, min(len(buf), start + 5)):
        byte = buf[at]
        size |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            if size > size_max:
                raise UsageError(f"the broker sent a packet of {size} bytes")
            end = at + 1 + size
            return None if len(buf) < end else (buf[start] >> 4, buf[at + 1:end], end)
    if len(buf) - start >= 5:
        raise UsageError("the broker sent a bad packet length")
    return None


class _Fleet:
    """The simulated devices' side of the broker: QoS 1 records out, acks in, on one socket.

    Why not paho here: the devices are many small machines in reality, but in the benchmark
    they share the two cores with the service and the broker, and paho spends about as
    much CPU per QoS 1 message as the service spends verifying it (an `MQTTMessageInfo`
    with its lock per publish, a property decoder per PUBACK). This client writes the same
    PUBLISH packets (QoS 1, a packet id each) in batches and reads PUBACKs and acks from a
    buffer; `--publisher paho` keeps the former load generator for comparison.
    """

    READ_BYTES_MAX = 65536
    PACKET_BYTES_MAX = 1 << 20  # acks are tiny; anything this large is a broken stream

    def __init__(self, port, acks, client_id="bench-devices", timeout_s=10.0):
        self.acks = acks
        self.poll_s = None  # the handshake blocks, with the connection's timeout
        self.next_mid = 0
        self.error = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # CONNECT: MQTT 3.1.1, clean session, keepalive off (a run is one burst).
        body = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
        body += _mqtt_string(client_id)
        self.sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        self.buffer, self.at = b"", 0
        kind, packet = self._read_packet()
        if kind != 2 or len(packet) != 2 or packet[1] != 0:
            raise UsageError(f"the broker refused the bench devices' connection: {packet!r}")
        body = struct.pack("!H", 1) + _mqtt_string("energo/v1/demo/+/ack") + b"\x00"
        self.sock.sendall(b"\x82" + _remaining_length(len(body)) + body)
        kind, packet = self._read_packet()
        if kind != 9 or packet[-1:] == b"\x80":
            raise UsageError(f"the broker refused the bench devices' subscription: {packet!r}")
        # Blocking from here: sendall waits as long as the broker pushes back, and the reader
        # polls so that close() can stop it.
        self.sock.settimeout(None)
        self.poll_s = 0.2
        self.stopping = False
        self.reader = threading.Thread(target=self._read_loop, name="bench-fleet", daemon=True)
        self.reader.start()

    def _read_packet(self):
        """(packet type, body) of the next packet; blocks (the socket has a timeout)."""
        while True:
            found = _split_packet(self.buffer, self.at, self.PACKET_BYTES_MAX)
            if found is not None:
                kind, body, self.at = found
                return kind, body
            if self.poll_s is not None and not select.select([self.sock], [], [],
                                                              self.poll_s)[0]:
                raise TimeoutError
            data = self.sock.recv(self.READ_BYTES_MAX)
            if not data:
                raise UsageError("the broker closed the bench devices' connection")
            self.buffer, self.at = self.buffer[self.at:] + data, 0

    def _read_loop(self):
        try:
            while not self.stopping:
                try:
                    kind, packet = self._read_packet()
                except TimeoutError:
                    continue
                if kind == 3:  # an ack, QoS 0 as subscribed (PUBACKs need nothing)
                    end = 2 + struct.unpack("!H", packet[:2])[0]
                    self.acks.ack(packet[2:end].decode(), packet[end:])
        except (OSError, UsageError, ValueError) as exc:
            if not self.stopping:
                self.error = exc

    def publish_many(self, items, on_send=None):
        """QoS 1 PUBLISH of each (topic, payload), written in batches of 100 packets.

        `on_send(index)` runs for each message just before its batch is written.
        """
        for start in range(0, len(items), 100):
            packets = []
            for index in range(start, min(start + 100, len(items))):
                topic, payload = items[index]
                self.next_mid = self.next_mid % 65535 + 1
                body = _mqtt_string(topic) + struct.pack("!H", self.next_mid) + payload
                packets.append(b"\x32" + _remaining_length(len(body)) + body)
                if on_send is not None:
                    on_send(index)
            self.sock.sendall(b"".join(packets))
        if self.error is not None:
            raise UsageError(f"the bench devices' connection failed: {self.error}")

    def close(self):
        self.stopping = True
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.reader.join(2)
        self.sock.close()


class _PahoFleet:
    """The former load generator: one paho client for all devices (`--publisher paho`)."""

    def __init__(self, port, acks):
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-devices")
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_message = acks.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("energo/v1/demo/+/ack", 0)
        self.client.loop_start()

    def publish_many(self, items, on_send=None):
        for index, (topic, payload) in enumerate(items):
            if on_send is not None:
                on_send(index)
            self.client.publish(topic, payload, qos=1)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _run(args, workdir):
    url = args.db or f"sqlite:///{os.path.join(workdir, 'bench.db')}"
    key_path = os.path.join(workdir, "service-key.pem")
    devices = [SimDevice(seed=i) for i in range(args.devices)]
    _enroll_all(url, key_path, devices)
    records = _make_records(devices, args.records)
    verify_only_per_s = _verify_only_per_s(url, key_path, records)
    mosquitto = _start_mosquitto()
    port = mosquitto.port
    log_path = os.path.join(workdir, "settle.log")
    log = open(log_path, "wb")
    service = subprocess.Popen(
        [sys.executable, "-m", "host_tools.cli", "settle", "--db", url, "--mqtt",
         f"mqtt://127.0.0.1:{port}", "--community", "demo", "--key", key_path,
         "--workers", str(args.workers), "--batch-max", "1000", "--batch-wait-ms", "20",
         "--status-every-s", "5", "--grace-s", str(args.grace_s)], stdout=log, stderr=subprocess.STDOUT)
    acks = _Acks()
    fleet = None
    try:
        _wait_subscribed(log_path, args.workers, service)
        fleet = (_Fleet if args.publisher == "lean" else _PahoFleet)(port, acks)
        # Warm-up: every device's first record (its baseline), resent until the service is up.
        first = [(topic, payload) for _, topic, payload in records[:len(devices)]]
        for _ in range(60):
            fleet.publish_many(first)
            if acks.wait({d.device_id: 1 for d in devices}, 1.0):
                break
        else:
            raise UsageError("the settlement service did not start: "
                             + open(log_path, "rb").read().decode()[-300:])
        timed = records[len(devices):]
        want = {d.device_id: d.counter for d in devices}
        keys = [(device.device_id, _counter_of(payload)) for device, _, payload in timed]
        sent_at = acks.sent_at

        def on_send(index):
            sent_at[keys[index]] = time.perf_counter()

        t0 = time.perf_counter()
        fleet.publish_many([(topic, payload) for _, topic, payload in timed], on_send)
        finished = acks.wait(want, max(60.0, len(timed) / 300))
        elapsed = time.perf_counter() - t0
        if not finished:
            raise UsageError("not every record was acked in time")
    finally:
        if fleet is not None:
            fleet.close()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.close()
        mosquitto.__exit__(None, None, None)
    with open(log_path, "rb") as fh:
        stopped = [line.split("stopping; ", 1)[1] for line in fh.read().decode().splitlines()
                   if "stopping; " in line]
    readings_per_s = len(timed) / elapsed
    # CPU of the service and its workers over their whole life (start-up and warm-up too):
    # unlike readings_per_s, it hardly moves with what else runs on the machine.
    service_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    latencies = sorted(acks.latencies_ms)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else None
    return {"backend": url.split(":", 1)[0], "devices": len(devices), "records": len(timed),
            "workers": args.workers, "publisher": args.publisher,
            "readings_per_s": round(readings_per_s),
            "verify_only_per_s": round(verify_only_per_s),
            "ratio": round(readings_per_s / verify_only_per_s, 3),
            "service_cpu_s": round(service_cpu_s, 2),
            "service_cpu_us_per_record": round(service_cpu_s * 1e6 / len(records)),
            "ack_latency_ms_p99": None if p99 is None else round(p99, 1),
            "ack_latency_ms_median": round(statistics.median(latencies), 1)
            if latencies else None, "worker_status": stopped}


def _wait_subscribed(log_path, workers, service, timeout_s=60.0):
    """Until every worker said it is subscribed: the timed run measures settling, not start-up.

    Without this, the first worker settles the warm-up alone and the others start (imports,
    database, broker) inside the timed run, on the same cores.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log_path, "rb") as fh:
            if fh.read().count(b"energo settle: subscribed") >= workers:
                return
        if service.poll() is not None:
            break
        time.sleep(0.05)
    raise UsageError("the settlement workers did not all subscribe: "
                     + open(log_path, "rb").read().decode(errors="replace")[-300:])


def _counter_of(payload):
    start = payload.index(b'"PG":"F') + 7
    return int(payload[start:payload.index(b'"', start)])


if __name__ == "__main__":  # pragma: no cover - manual runs
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    print(run(parser.parse_args()))
