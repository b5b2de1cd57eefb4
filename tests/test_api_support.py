"""Helpers for the HTTP API tests: a running server on a real ledger (with the real device
registry and broker credentials), a client, and a snapshot of everything a refusal must leave
unchanged."""
import hashlib
import http.client
import io
import json
import threading

from energo import identity, p256
from host_tools.api import server as api_server
from host_tools.settlement import Ledger
from host_tools.settlement.registry import Registry

T0_S = 1_800_000_000  # aligned to 900 s
CLOCK_MS = (T0_S + 10) * 1000
ADMIN_TOKEN = "admin-" + "x" * 40
MQTT_SECRET = bytes(range(32))


def device_key(role="meter", seed=1):
    """A deterministic P-256 device key: (device id, SPKI DER)."""
    priv = hashlib.sha256(b"device-%d" % seed).digest()
    pub = p256.public_key(priv)
    return identity.device_id(pub, role), p256.spki_encode(pub)


class LogSink(io.TextIOBase):
    """A thread-safe stand-in for stderr that keeps the JSON lines."""

    def __init__(self):
        self._lock = threading.Lock()
        self.lines = []

    def write(self, text):
        with self._lock:
            self.lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def records(self):
        with self._lock:
            return [json.loads(line) for line in self.lines]


class Response:
    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    @property
    def json(self):
        return json.loads(self.data)

    @property
    def text(self):
        return self.data.decode()


class Harness:
    """A served API over a real ledger; `call()` speaks HTTP to it."""

    def __init__(self, url, exchange=None, registry=True, stats=None, key_path=None, **kwargs):
        self.ledger = Ledger.open(url, clock_ms=lambda: CLOCK_MS, key_path=key_path)
        self.log = LogSink()
        self.server = api_server.make_server(
            "127.0.0.1", 0, self.ledger, registry=Registry if registry else None,
            exchange=exchange, stats=stats, admin_token=ADMIN_TOKEN, mqtt_secret=MQTT_SECRET,
            log_stream=self.log, workers=kwargs.pop("workers", 4), **kwargs)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.tokens = {}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.ledger.close()

    def call(self, method, path, body=None, token=None, raw=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=sent)
            reply = conn.getresponse()
            return Response(reply.status, dict(reply.getheaders()), reply.read())
        finally:
            conn.close()

    def admin(self, method, path, body=None):
        return self.call(method, path, body, token=ADMIN_TOKEN)

    def add_member(self, name, storage_capacity_wh=0):
        reply = self.admin("POST", "/api/v1/members",
                           {"name": name, "storage_capacity_wh": storage_capacity_wh})
        assert reply.status == 201, reply.data
        self.tokens[name] = reply.json["token"]
        return reply.json

    def as_member(self, name, method, path, body=None, **kwargs):
        return self.call(method, path, body, token=self.tokens[name], **kwargs)


def state(ledger):
    """Everything a refused request must leave unchanged: chain, balances, accounts, API rows."""
    db = ledger.db
    tables = ["accounts", "balances", "transfers", "checkpoints", "intervals",
              "api_member_tokens", "api_agent_settings"]
    snapshot = {table: sorted(map(tuple, db.all(f"SELECT * FROM {table}"))) for table in tables}
    snapshot["chain_head"] = db.one("SELECT seq, hash FROM chain_head WHERE id = 1")
    return snapshot


T1_S = T0_S + 900


def market_harness(url, **kwargs):
    """A harness whose exchange (first open interval T1) runs in its own thread on a
    `LedgerPort` over the same database; members alice and bob, alice holding 1000 Wh.
    Close with `close_market(harness)`."""
    from host_tools.api.gate import ExchangeWorker
    from host_tools.exchange.book import Exchange, ExchangeConfig
    from host_tools.settlement.port import LedgerPort

    opened = []

    def build():
        # Runs in the exchange's own thread: its SQLite connection must be opened there.
        ledger = Ledger.open(url, clock_ms=lambda: CLOCK_MS, key_path=kwargs.get("key_path"))
        opened.append(ledger)
        return Exchange(LedgerPort(ledger), ExchangeConfig(), first_interval_start_s=T1_S)

    worker = ExchangeWorker(build)
    harness = Harness(url, exchange=worker, **kwargs)
    harness.add_member("alice")
    harness.add_member("bob")
    harness.ledger.settle_interval(T0_S, {"alice": (300, 1300), "bob": (200, 0)})
    harness.worker = worker
    harness.exchange_ledger = opened[0]
    return harness


def close_market(harness):
    harness.close()
    harness.worker.call(lambda exchange: harness.exchange_ledger.close())
    harness.worker.close()
