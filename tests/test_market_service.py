"""The settlement service with its market, against a real Mosquitto: signed meter records close an
interval, the agents trade, and the reference price appears retained on the `price` topic."""
import json
import os
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from host_tools.api import store as api_store
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.market import MarketConfig, price_topic, reference_price
from host_tools.settlement.service import Service
from tests.support import services
from tests.test_ingest_support import T0_S, Rig
from tests.test_market import BUYER, SELLER, trades_in_ledger

pytestmark = pytest.mark.mosquitto
STEP_S = 900


class Retained:
    """A fresh subscription to the price topic: what the broker holds (retained) and what
    arrives while subscribed."""

    def __init__(self, port, topic):
        self.messages = []
        self.lock = threading.Lock()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"price-{os.urandom(3).hex()}")
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert subscribed.wait(10), "price subscription failed"
        self.client = client

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.retain, json.loads(message.payload)))

    def wait_for(self, predicate, timeout_s=20):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.messages if predicate(m)]
            if found:
                return found[-1]
            time.sleep(0.05)
        return None

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_the_service_publishes_the_retained_price_after_an_interval_closes(tmp_path, mosquitto):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    key_path = tmp_path / "key.pem"
    rig = Rig(db_url, key_path)
    # alice starts with a full battery, bob with none; both let an agent trade for them.
    rig.ledger.settle_interval(T0_S, {"alice": (0, 2000)})
    api_store.ensure_tables(rig.ledger.db)
    api_store.put_agent_settings(rig.ledger.db, "alice", SELLER, 0)
    api_store.put_agent_settings(rig.ledger.db, "bob", BUYER, 0)
    devices = [rig.device("alice"), rig.device("bob")]
    rig.close()

    http_port = services.free_port()
    service = Service(db_url, mosquitto.url, "demo", key_path=str(key_path), grace_s=0,
                      batch_wait_ms=10, http_address=f"127.0.0.1:{http_port}",
                      market_config=MarketConfig(seed=4))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    prices = None
    try:
        assert service.connected.wait(10), "service did not connect"
        prices = Retained(mosquitto.port, price_topic("demo"))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"meters-{os.urandom(3).hex()}")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        interval = T0_S + STEP_S
        for minute in range(0, 20, 5):  # the records at minute 15 close the interval
            at_s = interval + 60 * minute
            for device in devices:
                client.publish(device.topic, device.record(at_s, 0, 0).encode(), qos=1)
        closed = prices.wait_for(lambda m: m[1]["interval_start_s"] == interval)
        client.loop_stop()
        client.disconnect()
        assert closed is not None, f"no price for the interval; counts {service.ingest.counts}"
        payload = closed[1]
        assert payload["volume_wh"] == 400 and payload["trade_count"] == 1
        assert not payload["carried"]
        assert SELLER["target_sell_micro_per_kwh"] <= payload["price_micro_per_kwh"] <= (
            BUYER["target_buy_micro_per_kwh"])
        # The HTTP API sees the same exchange: its reference price is the published one.
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/prices",
                                    timeout=5) as reply:
            api = json.loads(reply.read())
        assert api["last_reference_price_micro_per_kwh"] == payload["price_micro_per_kwh"]
    finally:
        if prices is not None:
            prices.close()
        service.stop_event.set()
        thread.join(15)
    assert not thread.is_alive()

    # Retained: a subscriber arriving after the service stopped still gets the price.
    late = Retained(mosquitto.port, price_topic("demo"))
    try:
        retained = late.wait_for(lambda m: m[0], timeout_s=10)
    finally:
        late.close()
    assert retained is not None and retained[1] == payload

    ledger = Ledger.open(db_url, key_path=str(key_path))
    try:
        stored = reference_price(ledger.db, interval)
        assert stored["price_micro_per_kwh"] == payload["price_micro_per_kwh"]
        trades = trades_in_ledger(ledger, interval)
        assert [(s, b, q) for s, b, q, _, _ in trades] == [("member:alice", "member:bob", 400)]
        assert ledger.next_open_interval() == interval + STEP_S  # settled after the market
        assert ledger.check().ok and ledger.verify_checkpoints().ok
    finally:
        ledger.close()

    # After a restart the book's memory is empty; the API reads the recorded prices instead.
    http_port = services.free_port()
    service = Service(db_url, mosquitto.url, "demo", key_path=str(key_path), grace_s=0,
                      batch_wait_ms=10, http_address=f"127.0.0.1:{http_port}",
                      market_config=MarketConfig(seed=4))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert service.connected.wait(10), "service did not connect"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/prices",
                                    timeout=5) as reply:
            api = json.loads(reply.read())
    finally:
        service.stop_event.set()
        thread.join(15)
    recorded = {p["interval_start_s"]: p for p in api["reference_prices"]}
    assert recorded[interval] == {"interval_start_s": interval,
                                  "price_micro_per_kwh": payload["price_micro_per_kwh"],
                                  "volume_wh": 400, "trade_count": 1, "carried": False}
