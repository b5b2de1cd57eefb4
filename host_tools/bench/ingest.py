"""Settlement ingest: signed records through Mosquitto into the ledger, against verification alone."""
import argparse
import hashlib
import os
import shutil
import signal
import statistics
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
        device_id = message.topic.split("/")[3]
        counter = int(message.payload.split(b":")[1].rstrip(b"}"))
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


def _run(args, workdir):
    import paho.mqtt.client as mqtt

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
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-devices")
    try:
        publisher.max_inflight_messages_set(0)
        publisher.max_queued_messages_set(0)
        publisher.on_message = acks.on_message
        publisher.connect("127.0.0.1", port)
        publisher.subscribe("energo/v1/demo/+/ack", 0)
        publisher.loop_start()
        # Warm-up: every device's first record (its baseline), resent until the service is up.
        first = records[:len(devices)]
        for _ in range(60):
            for _, topic, payload in first:
                publisher.publish(topic, payload, qos=1)
            if acks.wait({d.device_id: 1 for d in devices}, 1.0):
                break
        else:
            raise UsageError("the settlement service did not start: "
                             + open(log_path, "rb").read().decode()[-300:])
        timed = records[len(devices):]
        want = {d.device_id: d.counter for d in devices}
        t0 = time.perf_counter()
        for device, topic, payload in timed:
            acks.sent_at[(device.device_id, _counter_of(payload))] = time.perf_counter()
            publisher.publish(topic, payload, qos=1)
        finished = acks.wait(want, max(60.0, len(timed) / 300))
        elapsed = time.perf_counter() - t0
        if not finished:
            raise UsageError("not every record was acked in time")
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()
        mosquitto.__exit__(None, None, None)
    with open(log_path, "rb") as fh:
        stopped = [line.split("stopping; ", 1)[1] for line in fh.read().decode().splitlines()
                   if "stopping; " in line]
    readings_per_s = len(timed) / elapsed
    latencies = sorted(acks.latencies_ms)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else None
    return {"backend": url.split(":", 1)[0], "devices": len(devices), "records": len(timed),
            "workers": args.workers, "readings_per_s": round(readings_per_s),
            "verify_only_per_s": round(verify_only_per_s),
            "ratio": round(readings_per_s / verify_only_per_s, 3),
            "ack_latency_ms_p99": None if p99 is None else round(p99, 1),
            "ack_latency_ms_median": round(statistics.median(latencies), 1)
            if latencies else None, "worker_status": stopped}


def _counter_of(payload):
    start = payload.index(b'"PG":"F') + 7
    return int(payload[start:payload.index(b'"', start)])


if __name__ == "__main__":  # pragma: no cover - manual runs
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    print(run(parser.parse_args()))
