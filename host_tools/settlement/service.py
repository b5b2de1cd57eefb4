"""The settlement service process: MQTT in, `Ingest` in batches, acks out.

Wiring only; the rules live in `ingest`. Messages arrive on paho's network
thread (`mqttlean.LeanClient`: paho without its per-message objects, which cost
as much as a signature check) and wait in a bounded queue (a full queue blocks
the network thread, which is TCP back-pressure on the broker, never unbounded
memory). The main
loop takes up to `batch_max` messages or whatever came within `batch_wait_ms`,
processes them in ONE database transaction, and only then publishes the acks
and confirms the QoS1 deliveries to the broker (manual PUBACK): a service killed
mid-batch has confirmed nothing it did not commit, and devices resend whatever
the service did not ack, so a crash loses nothing and settles nothing twice.

Several workers (processes, possibly on several machines) share the load with
an MQTT shared subscription `$share/settle/...`; the database serialises their
transactions on the ledger's chain lock.
"""
import http.server
import json
import os
import queue
import threading
import time
import urllib.parse

from host_tools.settlement import market as market_glue
from host_tools.settlement.ev import EvService
from host_tools.settlement.ingest import Ingest
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry

QUEUE_MESSAGES_MAX = 20_000
SHARE_GROUP = "settle"
EXPIRE_EVERY_S = 60.0  # how often sessions never closed are looked for (EvService.expire_holds)


class ServiceError(ValueError):
    """A configuration the service cannot start with; the message says what to change."""


def parse_mqtt_url(url):
    """(host, port) of mqtt://HOST[:PORT]; ServiceError otherwise."""
    parsed = urllib.parse.urlsplit(url or "")
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ServiceError(f"broker URL must look like mqtt://HOST:PORT, got {url!r}")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise ServiceError(f"broker URL has a bad port: {url!r}") from None
    return parsed.hostname, port


def parse_http_address(text):
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServiceError(f"--http must be HOST:PORT, got {text!r}")
    return host, int(port)


class Service:
    """One ingest worker: a broker connection, a ledger connection, a batch loop."""

    def __init__(self, db_url, mqtt_url, community, key_path=None, mqtt_secret_path=None,
                 shared=False, batch_max=500, batch_wait_ms=50, grace_s=None,
                 status_every_s=10.0, out=None, http_address=None, admin_token_path=None,
                 market=True, market_config=None):
        self.host, self.port = parse_mqtt_url(mqtt_url)
        if not 1 <= batch_max <= 10_000:
            raise ServiceError("batch_max must be between 1 and 10000")
        if not 1 <= batch_wait_ms <= 10_000:
            raise ServiceError("batch_wait_ms must be between 1 and 10000")
        self.http_address = parse_http_address(http_address) if http_address else None
        self.community = community
        self.shared = shared
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_ms / 1000
        self.status_every_s = status_every_s
        self.out = out
        self.credentials = self.mqtt_secret = None
        if mqtt_secret_path:
            self.mqtt_secret = _load_secret(mqtt_secret_path)
            from host_tools import broker_auth

            self.credentials = ("settlement",
                                broker_auth.derive_password(self.mqtt_secret, "settlement"))
        self.admin_token = None
        if admin_token_path:
            from host_tools.api import auth

            self.admin_token = auth.load_or_create_admin_token(admin_token_path)
        self.db_url, self.key_path, self.grace_s = db_url, key_path, grace_s
        # --- market wiring (host_tools.settlement.market): started in `run`, None when off.
        self.market_enabled, self.market_config, self.market = market, market_config, None
        # Open once here so a bad URL or a foreign database fails at start-up, in the caller's
        # thread; `run` opens its own connection (database connections are per thread).
        self._open()
        self.ledger.close()
        self.ledger = None
        self.inbox = queue.Queue(QUEUE_MESSAGES_MAX)
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.connects = 0
        self.batch_failures = 0
        self.client = None
        self._http = None

    def _open(self):
        self.ledger = Ledger.open(self.db_url, key_path=self.key_path)
        try:
            if self.ledger.key_path is None:
                raise ServiceError("closing intervals needs the service key: pass --key FILE")
            self.ledger.signing_key()  # created on first use; a foreign key is refused now
            self.registry = Registry(self.ledger)
            previous = getattr(self, "ingest", None)
            if self.market is None:
                self.ingest = Ingest(self.ledger, self.registry, self.community,
                                     grace_s=self.grace_s)
            else:  # the market acts before each interval settles
                self.ingest = market_glue.MarketIngest(self.ledger, self.registry, self.community,
                                                       grace_s=self.grace_s, market=self.market)
            if previous is not None:  # counters are per process, not per connection
                self.ingest.counts, self.ingest.rejected = previous.counts, previous.rejected
            previous_ev = getattr(self, "ev", None)
            self.ev = EvService(self.ledger, self.registry, self.community)
            if previous_ev is not None:
                self.ev.counts, self.ev.rejected = previous_ev.counts, previous_ev.rejected
        except BaseException:
            self.ledger.close()
            raise

    def _reopen(self):
        """A fresh database connection after a failed batch (a PostgreSQL restart drops it)."""
        try:
            self.ledger.close()
        except Exception:  # noqa: BLE001 - the old connection may be broken in any way
            pass
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - retried after the next failed batch
            self._say(f"database not reachable: {str(exc)[:200]}")

    # --- MQTT ---------------------------------------------------------------------------------

    def _topics(self):
        base = f"energo/v1/{self.community}/+/"
        share = f"$share/{SHARE_GROUP}/" if self.shared else ""
        return [(share + base + "rec", 1), (share + base + "hello", 1), (share + base + "ev", 1)]

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._say(f"broker refused the connection: {reason_code}")
            return
        self.connects += 1
        client.subscribe(self._topics())

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        # Connected means subscribed: only then can a record published now reach us.
        if all(not code.is_failure for code in reason_codes):
            self.connected.set()
            # One line per (re)subscription: operators, and the benchmark waiting for every
            # worker before it measures, see when this worker takes its share of the load.
            self._say(f"subscribed ({'shared' if self.shared else 'alone'}), "
                      f"connection {self.connects}")
        else:
            self._say(f"broker refused the subscription: {reason_codes}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()

    def _deliver(self, topic, payload, mid, qos):
        # Blocking put: back-pressure to the broker rather than unbounded memory.
        self.inbox.put((topic, payload, int(time.time()), mid, qos))

    def _connect(self):
        import paho.mqtt.client as mqtt

        from host_tools.settlement.mqttlean import LeanClient

        client = LeanClient(mqtt.CallbackAPIVersion.VERSION2,
                            client_id=f"energo-settle-{os.getpid()}-{os.urandom(3).hex()}",
                            protocol=mqtt.MQTTv311, clean_session=True, manual_ack=True,
                            deliver=self._deliver)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(QUEUE_MESSAGES_MAX)
        client.reconnect_delay_set(0.2, 5)
        if self.credentials:
            client.username_pw_set(*self.credentials)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self.client = client

    # --- main loop ----------------------------------------------------------------------------

    def _next_batch(self):
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=remaining) if remaining > 0
                             else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def process(self, batch):
        """Settle one batch, then ack to devices, then confirm the deliveries to the broker.

        If the database is unreachable the batch is dropped unsettled (and unacked to the
        devices, which resend it); the deliveries are still confirmed, because a broker
        stops sending to a client whose in-flight window stays full.
        """
        ev_requests = [item for item in batch if item[0].endswith("/ev")]
        try:
            acks = self.ingest.handle_batch([(topic, payload, at_s)
                                             for topic, payload, at_s, _, _ in batch
                                             if not topic.endswith("/ev")])
            for topic, payload, _, _, _ in ev_requests:  # charge-and-pay: never raises
                acks += self.ev.handle(topic, payload)
        except Exception as exc:  # noqa: BLE001 - the loop must survive any one batch
            self.batch_failures += 1
            self._say(f"batch of {len(batch)} not settled: {type(exc).__name__}: "
                      f"{str(exc)[:200]}")
            acks = []
            time.sleep(0.5)
            self._reopen()
        for topic, payload in acks:
            self.client.publish(topic, payload, qos=1)
        for _, _, _, mid, qos in batch:
            if qos:
                self.client.ack(mid, qos)
        return len(acks)

    def run(self):
        """Run until `stop_event` is set (SIGINT/SIGTERM in the CLI); then close cleanly."""
        self._start_market()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        if self.http_address:
            self._start_http()
        self._connect()
        if self.market is not None:
            try:  # the retained price again, in case the broker lost it
                self.market.publish_latest()
            except Exception as exc:  # noqa: BLE001 - the next interval close publishes anyway
                self._say(f"price not republished: {str(exc)[:200]}")
        next_status = time.monotonic() + self.status_every_s
        next_expiry = time.monotonic()
        try:
            while not self.stop_event.is_set():
                batch = self._next_batch()
                if batch:
                    self.process(batch)
                if time.monotonic() >= next_expiry:
                    self._expire_holds()
                    next_expiry = time.monotonic() + EXPIRE_EVERY_S
                if self.out is not None and time.monotonic() >= next_status:
                    self._say(self.status_line())
                    next_status = time.monotonic() + self.status_every_s
        finally:
            try:
                self._say("stopping; " + self.status_line())
            finally:
                self.close()

    def _expire_holds(self):
        """Give drivers back the holds of sessions never closed (EvService.expire_holds)."""
        try:
            expired = self.ev.expire_holds()
        except Exception as exc:  # noqa: BLE001 - retried at the next minute; never stops ingest
            self._say(f"hold expiry failed: {str(exc)[:200]}")
            return
        if expired:
            self._say(f"expired {len(expired)} session(s) never closed; holds released: "
                      + ", ".join(expired[:10]))

    def close(self):
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        while not self.inbox.empty():  # unconfirmed deliveries: the devices resend them
            self.inbox.get_nowait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.market is not None:
            self.market.close()
            self.market = None
        if self.ledger is not None:
            self.ledger.close()

    # --- reporting ----------------------------------------------------------------------------

    def status_line(self):
        counts = self.ingest.counts
        rejected = {k: v for k, v in self.ingest.rejected.items() if v}
        watermark = self.ingest.watermark_s()
        next_open = self.ledger.next_open_interval()
        lag = "-" if watermark is None or next_open is None else f"{watermark - next_open}s"
        return (f"settled {counts['settled']} duplicates {counts['duplicates']} "
                f"pending {counts['pending']} corrections {counts['corrections']} "
                f"intervals {counts['intervals_closed']} queue {self.inbox.qsize()} "
                f"rejected {json.dumps(rejected, sort_keys=True)} open-interval lag {lag}")

    def _say(self, text):
        if self.out is not None:
            print(f"energo settle: {text}", file=self.out, flush=True)

    def metrics_text(self):
        """Prometheus exposition of this worker's counters."""
        lines = ["# TYPE energo_ingest_total counter"]
        for name, value in sorted(self.ingest.counts.items()):
            lines.append(f'energo_ingest_total{{event="{name}"}} {value}')
        lines.append("# TYPE energo_ingest_rejected_total counter")
        for reason, value in sorted(self.ingest.rejected.items()):
            lines.append(f'energo_ingest_rejected_total{{reason="{reason}"}} {value}')
        lines.append("# TYPE energo_ev_total counter")
        for name, value in sorted(self.ev.counts.items()):
            lines.append(f'energo_ev_total{{event="{name}"}} {value}')
        lines.append("# TYPE energo_ev_rejected_total counter")
        for reason, value in sorted(self.ev.rejected.items()):
            lines.append(f'energo_ev_rejected_total{{reason="{reason}"}} {value}')
        lines.append("# TYPE energo_ingest_batch_failures_total counter")
        lines.append(f"energo_ingest_batch_failures_total {self.batch_failures}")
        lines.append("# TYPE energo_ingest_queue_messages gauge")
        lines.append(f"energo_ingest_queue_messages {self.inbox.qsize()}")
        lines.append("# TYPE energo_ingest_broker_connected gauge")
        lines.append(f"energo_ingest_broker_connected {int(self.connected.is_set())}")
        return "\n".join(lines) + "\n"

    def health(self):
        return {"ok": self.connected.is_set(), "broker_connected": self.connected.is_set(),
                "queue_messages": self.inbox.qsize()}

    def _start_http(self):
        """The HTTP API (wallets, devices, digest) with this worker's /metrics and /healthz.

        Falls back to /metrics and /healthz alone where the API package is not installed.
        """
        try:
            from host_tools.api import server as api_server
        except ImportError:
            self._http = _MetricsServer(self.http_address, self)
        else:
            self._http = api_server.make_server(
                *self.http_address, self.ledger, registry=Registry, admin_token=self.admin_token,
                mqtt_secret=self.mqtt_secret, health=self.health,
                extra_metrics=self.metrics_text,
                exchange=None if self.market is None else self.market.gate)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    # --- market wiring ------------------------------------------------------------------------

    def _start_market(self):
        """The exchange, agents and price publishing on their own thread (see `market`)."""
        if not self.market_enabled or self.market is not None:
            return
        self.market = market_glue.MarketWorker(self.db_url, self.community,
                                               publish=self._publish_price,
                                               config=self.market_config, key_path=self.key_path)

    def _publish_price(self, topic, payload):
        """Retained at QoS1; paho queues it while the broker connection is down."""
        client = self.client
        if client is None:
            raise ServiceError("not connected to the broker yet")
        import paho.mqtt.client as mqtt

        info = client.publish(topic, payload, qos=market_glue.PRICE_QOS, retain=True)
        # NO_CONN still queues a QoS1 message until the connection is back; a full queue drops.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ServiceError(f"price not queued for the broker (paho rc {info.rc})")


class _MetricsServer(http.server.ThreadingHTTPServer):
    def __init__(self, address, service):
        self.service = service
        super().__init__(address, _MetricsHandler)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        service = self.server.service
        if self.path == "/metrics":
            body, kind, code = service.metrics_text().encode(), "text/plain; version=0.0.4", 200
        elif self.path == "/healthz":
            health = service.health()
            body, kind = json.dumps(health).encode(), "application/json"
            code = 200 if health["ok"] else 503
        else:
            body = json.dumps({"error": "not_found", "message": "no such path"}).encode()
            kind, code = "application/json", 404
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _load_secret(secret_path):
    """The broker secret (see host_tools.broker_auth): 32 bytes, created if missing."""
    try:
        from host_tools import broker_auth
    except ImportError:
        raise ServiceError("broker credentials need host_tools.broker_auth, which is not "
                           "installed") from None
    return broker_auth.load_or_create_secret(secret_path)
