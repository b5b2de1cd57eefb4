"""A small verifying subscriber for firmware tests, until the settlement service takes over.

It subscribes to every device's `rec` topic, verifies each OCMF record against the device's
public key with OpenSSL (host_tools.verify), keeps the records per device by counter, and
publishes the cumulative ack (highest counter received with no gap) to the device's `ack`
topic, as the settlement service will.
"""
import json
import threading

import paho.mqtt.client as mqtt

from energo import ocmf
from host_tools import verify


class Subscriber:
    def __init__(self, host, port, community="demo", ack=True):
        self.community = community
        self.ack_enabled = ack
        self.keys = {}  # device id -> SPKI DER bytes
        self.records = {}  # device id -> {counter: Record}
        self.hellos = {}  # device id -> [dict]
        self.invalid = []  # (device, reason)
        self.duplicates = 0
        self.acked = {}
        self.arrivals = {}  # device id -> [counter] in arrival order
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        prefix = f"energo/v1/{community}/+/"
        self.client.subscribe([(prefix + "rec", 1), (prefix + "hello", 1)])
        self.client.loop_start()

    def add_key(self, device_id, spki_hex):
        with self.lock:
            self.keys[device_id] = bytes.fromhex(spki_hex)

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        device, kind = parts[3], parts[4]
        if kind == "hello":
            with self.lock:
                self.hellos.setdefault(device, []).append(json.loads(msg.payload))
            return
        with self.lock:
            key = self.keys.get(device)
        if key is None:
            with self.lock:
                self.invalid.append((device, "unknown device"))
            return
        result = verify.verify_text(msg.payload.decode(), key)
        with self.lock:
            if not result.valid or result.record.get("GS") != device:
                self.invalid.append((device, result.reason))
                return
            counter = result.record.pagination[1]
            self.arrivals.setdefault(device, []).append(counter)
            store = self.records.setdefault(device, {})
            if counter in store:
                self.duplicates += 1
                if store[counter].payload_text != result.record.payload_text:
                    self.invalid.append((device, f"counter {counter} reused"))
            store[counter] = result.record
            ack = self.acked.get(device, 0)
            while ack + 1 in store or ack + 1 <= self.acked.get(device, 0):
                ack += 1
            self.acked[device] = ack
        if self.ack_enabled:
            client.publish(f"energo/v1/{self.community}/{device}/ack",
                           json.dumps({"ack": ack}), qos=1)

    def resume(self, device, acked):
        """Continue a device whose records up to `acked` another subscriber already acked."""
        with self.lock:
            self.acked[device] = acked

    def counters(self, device):
        with self.lock:
            return sorted(self.records.get(device, {}))

    def registers(self, device):
        """[(counter, import_wh, export_wh)] in counter order."""
        with self.lock:
            store = dict(self.records.get(device, {}))
        out = []
        for counter in sorted(store):
            rec = store[counter]
            imp = next(r for r in rec.readings if r.obis == ocmf.OBIS_IMPORT).energy_wh()
            exp = next(r for r in rec.readings if r.obis == ocmf.OBIS_EXPORT).energy_wh()
            out.append((counter, imp, exp))
        return out

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
