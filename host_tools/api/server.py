"""The HTTP server: a fixed pool of worker threads, each with its own ledger connection.

`make_server` returns a `ThreadingHTTPServer` subclass whose requests are served by `workers`
threads instead of one new thread per connection: SQLite connections belong to the thread that
opened them, and a fixed pool also bounds the load (connections beyond the queue are dropped and
counted). Each worker opens its own `Ledger` on the same database URL as the service's ledger,
so `sqlite:///:memory:` cannot be served (each connection would see a different database).

Per request: route → path parameters → authentication → query → body (≤ 64 KiB, strict JSON,
schema) → handler; one JSON log line goes to `log_stream` (stderr by default) with method, path
(never the query string), status, duration and the member, never a token.
"""
import datetime
import json
import queue
import sys
import threading
import time
import traceback
import urllib.parse
import weakref
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from host_tools.api import dashboard, routes, store
from host_tools.api.auth import ANONYMOUS, Authenticator
from host_tools.api.errors import ApiError, bad_request, unavailable
from host_tools.api.gate import as_gate
from host_tools.api.metrics import Exposition, HttpStats, add_stats
from host_tools.api.validate import BODY_BYTES_MAX, parse_json, parse_query, validate
from host_tools.exchange.errors import ExchangeError
from host_tools.exchange.port import SettlementError
from host_tools.settlement.errors import LedgerError
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.store import Database, parse_url

_SOCKET_TIMEOUT_S = 10
_WORKERS_DEFAULT = 8
_QUEUE_MAX = 64
_LOG_PATH_CHARS_MAX = 200
_DRAIN_BYTES_MAX = 1024 * 1024

_EXCHANGE_STATUS = {
    "invalid_quantity": 422, "invalid_price": 422, "invalid_order": 422, "unknown_member": 404,
    "unknown_order": 404, "interval_closed": 409, "interval_not_open": 422,
    "duplicate_client_id": 409, "not_your_order": 403, "too_many_orders": 409, "above_cap": 422,
}
_LEDGER_STATUS = {
    "unknown_account": 404, "duplicate_member": 409, "invalid_transfer": 422, "duplicate_id": 409,
    "insufficient_balance": 409, "above_cap": 409, "interval_refused": 409, "hold_refused": 409,
}
# The device registry's RegistryError codes (a ValueError with `.code`).
_REGISTRY_STATUS = {
    "bad_key": 422, "id_mismatch": 422, "unknown_member": 422, "device_taken": 409,
    "bad_role": 422,
}


def error_for(exc):
    """Map a refusal raised by the ledger, exchange or registry to an `ApiError`."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ExchangeError):
        return ApiError(_EXCHANGE_STATUS.get(exc.code, 422), exc.code, str(exc))
    if isinstance(exc, LedgerError):
        return ApiError(_LEDGER_STATUS.get(exc.code, 422), exc.code, str(exc))
    if isinstance(exc, SettlementError):
        return ApiError(409, exc.code, str(exc))
    code = getattr(exc, "code", None)
    if isinstance(exc, ValueError) and isinstance(code, str) and code in _REGISTRY_STATUS:
        return ApiError(_REGISTRY_STATUS[code], code, str(exc))
    return None


class Context:
    __slots__ = ("app", "ledger", "principal", "path", "query", "body")

    def __init__(self, app, ledger, principal, path, query, body):
        self.app = app
        self.ledger = ledger
        self.principal = principal
        self.path = path
        self.query = query
        self.body = body


class App:
    """What every request shares: configuration, backends, counters, the log."""

    def __init__(self, ledger, registry_factory, gate, stats, authenticator, mqtt_secret,
                 log_stream, health=None, extra_metrics=None):
        self.ledger_url = ledger.db.url
        self.ledger_config = ledger.config
        self.key_path = ledger.key_path
        self.clock_ms = ledger.clock_ms
        self.registry_factory = registry_factory
        self.gate = gate
        self.stats = stats
        self.auth = authenticator
        self.mqtt_secret = mqtt_secret
        self.http_stats = HttpStats()
        self.health = health
        self.extra_metrics = extra_metrics
        # One registry per worker connection, built on first use (its constructor checks the
        # schema in a transaction: once per connection, not once per request).
        self._registries = weakref.WeakKeyDictionary()
        self._log_stream = log_stream
        self._log_lock = threading.Lock()
        self._price_max = None

    def open_ledger(self):
        return Ledger(Database(self.ledger_url), self.ledger_config, key_path=self.key_path,
                      clock_ms=self.clock_ms)

    def registry_for(self, ledger):
        registry = self._registries.get(ledger)
        if registry is None:
            registry = self._registries[ledger] = self.registry_factory(ledger)
        return registry

    def price_max_micro_per_kwh(self):
        if self.gate is None:
            return None
        if self._price_max is None:
            self._price_max = self.gate.call(lambda ex: ex.config.price_micro_per_kwh_max)
        return self._price_max

    def render_metrics(self, ctx):
        exposition = Exposition()
        if self.stats is not None:
            snapshot = self.stats.snapshot()
            if isinstance(snapshot, dict):
                add_stats(exposition, snapshot)
        db = ctx.ledger.db
        head_seq = db.one("SELECT seq FROM chain_head WHERE id = 1")[0]
        checkpoint = db.one("SELECT MAX(number) FROM checkpoints")[0]
        members = db.one("SELECT COUNT(*) FROM accounts WHERE kind = 'member'")[0]
        exposition.add("energo_ledger_entries", "gauge", "Entries in the ledger's hash chain.",
                       int(head_seq))
        exposition.add("energo_ledger_checkpoint_number", "gauge",
                       "Number of the latest signed checkpoint.", int(checkpoint or 0))
        exposition.add("energo_ledger_members", "gauge", "Members of the community.", int(members))
        self.http_stats.add_to(exposition)
        text = exposition.render()
        if self.extra_metrics is not None:
            text += self.extra_metrics()
        return text

    def log(self, record):
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=str)
        with self._log_lock:
            try:
                self._log_stream.write(line + "\n")
                self._log_stream.flush()
            except (OSError, ValueError):
                pass  # a closed log stream must not take the API down


class Handler(BaseHTTPRequestHandler):
    server_version = "energo-api"
    sys_version = ""
    timeout = _SOCKET_TIMEOUT_S

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def send_error(self, code, message=None, explain=None):
        """Malformed requests the base class refuses (bad request line, headers) answer JSON too."""
        self.close_connection = True
        phrase = message or (HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_
                             else "error")
        code_name = {505: "unsupported_http_version"}.get(
            code, "bad_request" if 400 <= code < 500 else "server_error")
        self.server.app.log({"event": "http_request", "status": code, "error": code_name,
                             "message": str(phrase)[:200]})
        self._send(code, {"error": code_name, "message": str(phrase)[:200]}, {})

    def log_message(self, format, *args):
        """Silenced: every request is logged once, as JSON, by `_handle`."""

    def _handle(self, method):
        started = time.monotonic()
        app = self.server.app
        split = urllib.parse.urlsplit(self.path)
        self._route_path, self._principal = "unmatched", ANONYMOUS
        headers, error_code = {}, None
        try:
            status, payload = self._dispatch(app, method, split)
        except Exception as exc:  # every failure becomes a JSON answer, never a dropped socket
            error = error_for(exc)
            if error is None:
                app.log({"event": "internal_error", "route": self._route_path,
                         "error": "".join(traceback.format_exception_only(exc)).strip()[:500]})
                error = ApiError(500, "internal_error", "the service failed; see its log")
            status, payload, headers, error_code = (error.status, error.as_dict(), error.headers,
                                                    error.code)
        # Counted and logged before the answer is written: a client that reads its answer and
        # then scrapes /metrics or reads the log sees its own request.
        duration_s = time.monotonic() - started
        app.http_stats.observe(method, self._route_path, status, duration_s)
        principal = self._principal
        record = {"ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                  "event": "http_request", "method": method,
                  "path": split.path[:_LOG_PATH_CHARS_MAX], "route": self._route_path,
                  "status": status, "duration_ms": round(duration_s * 1000, 3),
                  "member": principal.member, "principal": principal.kind,
                  "remote": self.client_address[0] if self.client_address else None}
        if error_code is not None:
            record["error"] = error_code
        app.log(record)
        self._send(status, payload, headers)

    def _dispatch(self, app, method, split):
        """Route, authenticate, validate, run the handler: (status, payload) or an exception."""
        try:
            route, path_params = routes.match(method, split.path)
        except LookupError as exc:
            allowed = exc.args[0]
            if allowed:
                raise ApiError(405, "method_not_allowed", f"{method} is not allowed here",
                               {"Allow": ", ".join(allowed)}) from None
            raise ApiError(404, "not_found", "no such endpoint") from None
        self._route_path = route.path
        try:
            ledger = self.server.worker_ledger()
        except LedgerError as exc:  # the database cannot be reached: not the client's fault
            app.log({"event": "database_error", "error": str(exc)[:200]})
            raise unavailable("database_unavailable", "the database is unavailable; retry") \
                from None
        try:
            self._principal = app.auth.identify(self.headers.get("Authorization"), ledger.db)
            app.auth.require(self._principal, route.auth, path_params.get("name"))
            query = self._query(split.query, route)
            body = self._body(route)
            return route.handler(Context(app, ledger, self._principal, path_params, query, body))
        except ledger.db.errors as exc:
            self.server.drop_worker_ledger()
            app.log({"event": "database_error", "error": str(exc).splitlines()[0][:200]})
            raise unavailable("database_unavailable", "the database is unavailable; retry") \
                from None

    def _query(self, text, route):
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                           max_num_fields=32, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise bad_request("invalid_parameter", "the query string is malformed") from None
        return parse_query(pairs, route.query)

    def _body(self, route):
        """Read and validate the body; an unread body closes the connection."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise bad_request("length_required", "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if route.body is None:
                return None
            raise bad_request("length_required", "a JSON body with a Content-Length is required")
        if not length_text.isdigit() or len(length_text) > 12:
            self.close_connection = True
            raise bad_request("invalid_length", "Content-Length must be a number")
        length = int(length_text)
        if length > BODY_BYTES_MAX:
            self.close_connection = True
            self._drain(length)
            raise ApiError(413, "body_too_large", f"the body exceeds {BODY_BYTES_MAX} bytes")
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            raise bad_request("incomplete_body", "the body ended before Content-Length bytes")
        if route.body is None:
            if length:
                raise bad_request("unexpected_body", "this endpoint takes no body")
            return None
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0]
        if content_type.strip().lower() != "application/json":
            raise ApiError(415, "unsupported_media_type", "the body must be application/json")
        return validate(route.body, parse_json(data))

    def _drain(self, length):
        """Read (and drop) a moderately oversized body, so the client sees our 413 rather than
        a connection reset; anything larger is cut off."""
        if length > _DRAIN_BYTES_MAX:
            return
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            return

    def _send(self, status, payload, headers):
        if isinstance(payload, routes.Text | dashboard.Page):
            data, content_type = payload.text.encode(), payload.content_type
            headers = {**getattr(payload, "headers", {}), **headers}
        else:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            content_type = "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client went away; nothing left to tell it


class ApiServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with a fixed worker pool and one ledger connection per worker."""

    daemon_threads = True

    def __init__(self, address, app, workers=_WORKERS_DEFAULT, queue_max=_QUEUE_MAX):
        super().__init__(address, Handler)
        self.app = app
        self._queue = queue.Queue(maxsize=queue_max)
        self._local = threading.local()
        self._workers = [threading.Thread(target=self._work, name=f"energo-api-{index}",
                                          daemon=True) for index in range(workers)]
        for worker in self._workers:
            worker.start()

    @property
    def exchange_gate(self):
        """The gate every exchange operation must go through, the service's own included
        (agent runs, interval closes): `server.exchange_gate.call(lambda exchange: ...)`."""
        return self.app.gate

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request, client_address):
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.app.http_stats.count_dropped()
            self.shutdown_request(request)

    def _work(self):
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                request, client_address = item
                try:
                    self.finish_request(request, client_address)
                except Exception:  # a broken connection must not end the worker
                    self.handle_error(request, client_address)
                finally:
                    self.shutdown_request(request)
        finally:
            self.drop_worker_ledger()

    def worker_ledger(self):
        ledger = getattr(self._local, "ledger", None)
        if ledger is None:
            ledger = self._local.ledger = self.app.open_ledger()
        return ledger

    def drop_worker_ledger(self):
        ledger = getattr(self._local, "ledger", None)
        self._local.ledger = None
        if ledger is not None:
            try:
                ledger.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        self.app.log({"event": "connection_error",
                      "error": "".join(traceback.format_exception_only(exc)).strip()[:300]})

    def server_close(self):
        super().server_close()
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                break
        for worker in self._workers:
            worker.join(timeout=5.0)


def _registry_factory(registry):
    """Per-connection registries: the API's workers must not share the service's connection."""
    if registry is None:
        return None
    if isinstance(registry, type):
        return registry
    if hasattr(registry, "enroll"):
        return type(registry)
    if callable(registry):
        return registry
    raise ValueError("registry must be a Registry, its class, or a factory ledger -> registry")


def make_server(host, port, ledger, registry=None, exchange=None, stats=None, admin_token=None,
                mqtt_secret=None, member_tokens=None, *, workers=_WORKERS_DEFAULT,
                log_stream=None, health=None, extra_metrics=None):
    """Bind the API on (host, port); start it with `serve_forever()` in a thread.

    `ledger`: the service's `Ledger` (its URL, config and key are reused; each worker opens its
    own connection). `registry`: a `Registry` (or a factory `ledger -> registry`), enabling
    the device endpoints. `exchange`: an `Exchange`, or a gate with `call(fn)` such as
    `gate.ExchangeWorker`, enabling the exchange endpoints. `stats`: anything with
    `snapshot() -> dict` (see `metrics.Stats`). `admin_token`: enables admin endpoints.
    `mqtt_secret` (bytes): derives devices' MQTT passwords. `member_tokens`: {member: token}
    accepted in addition to the tokens stored in the database. `health`: a callable returning
    a dict with a boolean "ok" (e.g. broker connected), shown at `/healthz` (503 when not ok).
    `extra_metrics`: a callable returning more Prometheus text (its own metric families) to
    append to `/metrics`. Stop with `shutdown()` then `server_close()`.
    """
    backend, target = parse_url(ledger.db.url)
    if backend == "sqlite" and target == ":memory:":
        raise ValueError("the HTTP API needs a database file or PostgreSQL: an in-memory SQLite "
                         "ledger cannot be shared with the API's worker connections")
    if mqtt_secret is not None and (not isinstance(mqtt_secret, bytes) or len(mqtt_secret) < 16):
        raise ValueError("mqtt_secret must be at least 16 bytes")
    if type(workers) is not int or not 1 <= workers <= 64:
        raise ValueError("workers must be an integer in 1..64")
    if stats is not None and not callable(getattr(stats, "snapshot", None)):
        raise ValueError("stats needs a snapshot() method")
    for name, value in (("health", health), ("extra_metrics", extra_metrics)):
        if value is not None and not callable(value):
            raise ValueError(f"{name} must be callable")
    store.ensure_tables(ledger.db)
    app = App(ledger, _registry_factory(registry), as_gate(exchange), stats,
              Authenticator(admin_token, member_tokens), mqtt_secret, log_stream or sys.stderr,
              health=health, extra_metrics=extra_metrics)
    return ApiServer((host, port), app, workers=workers)
