"""The settlement service's HTTP API against a real SQLite ledger (and one PostgreSQL smoke run):
every endpoint's happy path, authentication, refusals that leave the ledger unchanged, the
OpenAPI document, Prometheus metrics and the structured request log."""
import json
import os
import re
import socket
import stat

import pytest

from host_tools.api import auth, openapi, routes, store
from host_tools.api.metrics import Exposition, Stats, escape_label
from host_tools.api.server import make_server
from host_tools.broker_auth import derive_password
from host_tools.settlement import Ledger
from host_tools.settlement.registry import Registry
from tests.conftest import need
from tests.test_api_support import (
    ADMIN_TOKEN,
    MQTT_SECRET,
    T0_S,
    Harness,
    device_key,
    state,
)


@pytest.fixture
def api(tmp_path):
    harness = Harness(f"sqlite:///{tmp_path / 'ledger.db'}", stats=Stats())
    yield harness
    harness.close()


def settle_one_interval(harness):
    """alice exports 1300 Wh and imports 300; bob imports 200 (billed: no WATT); closes T0."""
    return harness.ledger.settle_interval(T0_S, {"alice": (300, 1300), "bob": (200, 0)})


# ------------------------------------------------------------------ OpenAPI


def test_openapi_document_lists_every_route_and_is_valid(api):
    reply = api.call("GET", "/openapi.json")
    assert reply.status == 200
    document = reply.json
    assert document["openapi"] == "3.1.0"
    for route in routes.ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert str(route.status) in operation["responses"]
        if route.body is not None:
            assert operation["requestBody"]["content"]["application/json"]["schema"] == route.body
        names = {p["name"] for p in operation.get("parameters", [])}
        assert names == {p.name for p in route.params} | {q.name for q in route.query}
    assert set(document["components"]["securitySchemes"]) == {"adminToken", "memberToken"}
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None
    need(validate is not None, "openapi-spec-validator is not installed")
    validate(document)


def test_openapi_security_follows_the_route_table():
    document = openapi.document()
    assert document["paths"]["/api/v1/digest"]["get"]["security"] == []
    assert document["paths"]["/api/v1/members"]["post"]["security"] == [{"adminToken": []}]
    assert document["paths"]["/api/v1/orders"]["get"]["security"] == [{"memberToken": []}]
    document["paths"].clear()  # a caller's copy: the next document is whole again
    assert "/api/v1/digest" in openapi.document()["paths"]


# ------------------------------------------------------------------ members, tokens, auth


def test_member_creation_returns_a_token_once_and_stores_only_its_hash(api):
    created = api.add_member("alice", storage_capacity_wh=5000)
    token = created["token"]
    assert created["name"] == "alice" and created["tsl_granted"] == 5000
    assert token.startswith("alice~") and len(token) > 40
    stored = api.ledger.db.all("SELECT member, token_sha256 FROM api_member_tokens")
    assert stored == [("alice", auth.hash_token(token))]
    assert token not in json.dumps(state(api.ledger))
    reply = api.call("GET", "/api/v1/members/alice", token=token)
    assert reply.status == 200
    assert reply.json["storage_capacity_wh"] == 5000
    assert reply.json["balances"] == {"WATT": 0, "TSL": 5000, "money": 0}
    assert reply.json["cap_wh"] == api.ledger.cap_wh("alice")
    assert api.admin("GET", "/api/v1/members/alice").status == 200
    listed = api.admin("GET", "/api/v1/members").json["members"]
    assert [(m["name"], m["tsl"]) for m in listed] == [("alice", 5000)]
    assert api.call("GET", "/api/v1/members", token=token).status == 403


def test_duplicate_member_is_409_and_changes_nothing(api):
    api.add_member("alice")
    before = state(api.ledger)
    reply = api.admin("POST", "/api/v1/members", {"name": "alice"})
    assert reply.status == 409 and reply.json["error"] == "duplicate_member"
    assert state(api.ledger) == before


def test_token_rotation_invalidates_the_old_token(api):
    old = api.add_member("alice")["token"]
    reply = api.admin("POST", "/api/v1/members/alice/token")
    assert reply.status == 201
    new = reply.json["token"]
    assert new != old
    assert api.call("GET", "/api/v1/members/alice", token=old).status == 401
    assert api.call("GET", "/api/v1/members/alice", token=new).status == 200
    assert api.admin("POST", "/api/v1/members/nobody/token").status == 404


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/members/alice"), ("GET", "/api/v1/members/alice/entries"),
    ("POST", "/api/v1/members"), ("GET", "/api/v1/devices"),
])
def test_missing_or_wrong_token_is_401(api, method, path):
    api.add_member("alice")
    body = {"name": "zed"} if method == "POST" else None
    missing = api.call(method, path, body)
    assert missing.status == 401 and missing.json["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = api.call(method, path, body, token="alice~" + "A" * 43)
    assert wrong.status == 401
    garbled = api.call(method, path, body, headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert garbled.status == 401
    assert not api.ledger.is_member("zed")


def test_another_members_token_is_403(api):
    api.add_member("alice")
    api.add_member("bob")
    for path in ("/api/v1/members/alice", "/api/v1/members/alice/entries"):
        reply = api.as_member("bob", "GET", path)
        assert reply.status == 403 and reply.json["error"] == "forbidden"
    # Even for a member that does not exist: a token never probes other names.
    assert api.as_member("bob", "GET", "/api/v1/members/carol").status == 403
    assert api.as_member("bob", "POST", "/api/v1/members", {"name": "carol"}).status == 403
    assert api.admin("GET", "/api/v1/members/alice/entries").status == 403
    assert not api.ledger.is_member("carol")


def test_member_tokens_given_to_the_server_are_accepted(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    harness = Harness(url, member_tokens={"alice": "provisioned-token-0123456789"})
    try:
        harness.add_member("alice")
        assert harness.call("GET", "/api/v1/members/alice",
                            token="provisioned-token-0123456789").status == 200
    finally:
        harness.close()


# ------------------------------------------------------------------ public views


def test_digest_shows_totals_and_roots_but_no_member(api):
    api.add_member("alice")
    api.add_member("bob")
    result = settle_one_interval(api)
    reply = api.call("GET", "/api/v1/digest")
    assert reply.status == 200
    digest = reply.json
    assert digest["members_count"] == 2
    watt = digest["assets"]["WATT"]
    assert watt["minted"] == 1300 and watt["burned"] == 300
    assert watt["in_circulation"] == 1000 == watt["held_by_members"]
    assert digest["assets"]["TSL"]["held_by_members"] == 10_000
    assert digest["checkpoints"][0]["merkle_root"] == result["checkpoint"]["merkle_root"]
    assert digest["checkpoints"][0]["hash"] == result["checkpoint"]["hash"]
    assert digest["entries_count"] == api.ledger.db.one("SELECT seq FROM chain_head")[0]
    assert "PUBLIC KEY" in digest["service_public_key_pem"]
    assert "alice" not in reply.text and "bob" not in reply.text


def test_checkpoints_and_intervals_are_public_and_paged(api):
    api.add_member("alice")
    api.add_member("bob")
    settle_one_interval(api)
    api.ledger.settle_interval(T0_S + 900, {"alice": (0, 10)})
    checkpoints = api.call("GET", "/api/v1/checkpoints").json["checkpoints"]
    assert [c["number"] for c in checkpoints] == [2, 1]
    assert json.loads(checkpoints[1]["body"])["merkle_root"] == checkpoints[1]["merkle_root"]
    page = api.call("GET", "/api/v1/checkpoints?limit=1").json
    assert [c["number"] for c in page["checkpoints"]] == [2] and page["next_before"] == 2
    rest = api.call("GET", "/api/v1/checkpoints?limit=1&before=2").json
    assert [c["number"] for c in rest["checkpoints"]] == [1]
    intervals = api.call("GET", "/api/v1/intervals?limit=5").json["intervals"]
    assert [i["interval_start_s"] for i in intervals] == [T0_S + 900, T0_S]
    assert intervals[1]["minted_wh"] == 1300 and intervals[1]["burned_wh"] == 300
    assert "alice" not in json.dumps(intervals)


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=100000", "nope=1",
                                   "limit=1&limit=2", "limit=1.5", "limit"])
def test_bad_query_parameters_are_400(api, query):
    reply = api.call("GET", f"/api/v1/checkpoints?{query}")
    assert reply.status == 400, query
    assert reply.json["error"] in ("invalid_parameter", "unknown_parameter")


def test_unknown_path_is_404_and_wrong_method_405(api):
    assert api.call("GET", "/api/v1/nothing").status == 404
    reply = api.call("DELETE", "/api/v1/digest")
    assert reply.status == 405 and reply.headers["Allow"] == "GET"
    assert api.call("GET", "/api/v1/members/bad%20name").status in (400, 404)
    assert api.call("DELETE", "/api/v1/orders/0", token=ADMIN_TOKEN).status == 400


# ------------------------------------------------------------------ entries


def test_entries_are_the_members_own_and_paged(api):
    api.add_member("alice")
    api.add_member("bob")
    settle_one_interval(api)
    reply = api.as_member("alice", "GET", "/api/v1/members/alice/entries?limit=50")
    assert reply.status == 200
    items = reply.json["entries"]
    kinds = [item["kind"] for item in items]
    assert kinds[-1] == "grant" and "mint" in kinds
    mint = next(item for item in items if item["kind"] == "mint")
    assert mint["asset"] == "WATT" and mint["amount"] == 1300 and mint["counterparty"] == "mint"
    seqs = [item["seq"] for item in items]
    assert seqs == sorted(seqs, reverse=True)
    first = api.as_member("alice", "GET", "/api/v1/members/alice/entries?limit=1").json
    second = api.as_member(
        "alice", "GET", f"/api/v1/members/alice/entries?limit=1&before={first['next_before']}")
    assert second.json["entries"][0]["seq"] == seqs[1]
    assert "bob" not in reply.text


# ------------------------------------------------------------------ devices


def test_device_enrollment_returns_mqtt_credentials(api):
    api.add_member("alice")
    device_id, spki = device_key("meter", 1)
    body = {"device_id": device_id, "public_key": spki.hex().upper(), "role": "meter",
            "member": "alice"}
    reply = api.admin("POST", "/api/v1/devices", body)
    assert reply.status == 201, reply.data
    assert reply.json == {"device_id": device_id, "role": "meter", "member": "alice",
                          "mqtt_username": device_id,
                          "mqtt_password": derive_password(MQTT_SECRET, device_id)}
    assert len(reply.json["mqtt_password"]) == 32
    assert api.admin("POST", "/api/v1/devices", body).status == 201  # idempotent
    listed = api.admin("GET", "/api/v1/devices").json["devices"]
    assert [(d["device_id"], d["member"]) for d in listed] == [(device_id, "alice")]
    assert listed[0]["public_key_hex"] == spki.hex().upper()


def test_device_refusals_change_nothing(api):
    api.add_member("alice")
    api.add_member("bob")
    device_id, spki = device_key("meter", 1)
    good = {"device_id": device_id, "public_key": spki.hex(), "role": "meter", "member": "alice"}
    assert api.admin("POST", "/api/v1/devices", good).status == 201
    other_id, other_spki = device_key("meter", 2)
    before = state(api.ledger)
    registry = Registry(api.ledger)
    devices_before = registry.list()
    cases = [
        (dict(good, device_id=other_id), 422, "id_mismatch"),
        (dict(good, device_id=other_id, public_key=other_spki.hex(), member="nobody"), 422,
         "unknown_member"),
        (dict(good, member="bob"), 409, "device_taken"),
        (dict(good, public_key="00" * 91), 422, "bad_key"),
        (dict(good, role="vehicle"), 422, "invalid_field"),
        (dict(good, device_id="x"), 422, "invalid_field"),
    ]
    for body, status, code in cases:
        reply = api.admin("POST", "/api/v1/devices", body)
        assert (reply.status, reply.json["error"]) == (status, code), body
    assert api.as_member("alice", "POST", "/api/v1/devices", good).status == 403
    assert state(api.ledger) == before
    assert registry.list() == devices_before


# ------------------------------------------------------------------ agent settings


AGENT = {"enabled": True, "target_buy_micro_per_kwh": 120_000,
         "target_sell_micro_per_kwh": 180_000, "floor_micro_per_kwh": 50_000,
         "ceiling_micro_per_kwh": 400_000}


def test_agent_settings_are_stored_for_the_runner(api):
    api.add_member("alice")
    reply = api.as_member("alice", "PUT", "/api/v1/members/alice/agent", AGENT)
    assert reply.status == 200
    assert reply.json["upper_threshold_ppm"] == 800_000
    got = api.as_member("alice", "GET", "/api/v1/members/alice/agent").json
    assert got["target_sell_micro_per_kwh"] == 180_000 and got["enabled"] is True
    configs = store.agent_configs(api.ledger.db)
    assert [(c.member, c.target_buy_micro_per_kwh) for c in configs] == [("alice", 120_000)]
    api.as_member("alice", "PUT", "/api/v1/members/alice/agent", dict(AGENT, enabled=False))
    assert store.agent_configs(api.ledger.db) == []


def test_bad_agent_settings_are_refused_unchanged(api):
    api.add_member("alice")
    api.add_member("bob")
    api.as_member("alice", "PUT", "/api/v1/members/alice/agent", AGENT)
    before = state(api.ledger)
    bad = [dict(AGENT, floor_micro_per_kwh=130_000), dict(AGENT, target_buy_micro_per_kwh=0),
           dict(AGENT, lower_threshold_ppm=900_000), dict(AGENT, enabled="yes"),
           dict(AGENT, extra=1), {"enabled": True}]
    for body in bad:
        reply = api.as_member("alice", "PUT", "/api/v1/members/alice/agent", body)
        assert reply.status == 422, body
    assert api.as_member("bob", "PUT", "/api/v1/members/alice/agent", AGENT).status == 403
    assert state(api.ledger) == before


# ------------------------------------------------------------------ bodies


@pytest.mark.parametrize("raw, status, code", [
    (b"{", 400, "invalid_json"),
    (b'{"name": NaN}', 400, "invalid_json"),
    (b'{"name": "a", "name": "b"}', 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b"[" * 100 + b"]" * 100, 400, "invalid_json"),
    (b'"alice"', 422, "invalid_field"),
    (b'{"name": "alice", "storage_capacity_wh": 1.5}', 422, "invalid_field"),
    (b'{"name": "alice", "storage_capacity_wh": true}', 422, "invalid_field"),
    (b'{"name": "alice", "storage_capacity_wh": -1}', 422, "invalid_field"),
    (b'{"name": "al ice"}', 422, "invalid_field"),
    (b'{"nam": "alice"}', 422, "unknown_field"),
    (b"{}", 422, "missing_field"),
])
def test_garbage_bodies_are_refused_unchanged(api, raw, status, code):
    before = state(api.ledger)
    reply = api.call("POST", "/api/v1/members", raw=raw, token=ADMIN_TOKEN,
                     headers={"Content-Type": "application/json"})
    assert (reply.status, reply.json["error"]) == (status, code)
    assert state(api.ledger) == before


def test_oversized_body_is_413(api):
    before = state(api.ledger)
    raw = b'{"name": "' + b"a" * (64 * 1024) + b'"}'
    reply = api.call("POST", "/api/v1/members", raw=raw, token=ADMIN_TOKEN)
    assert reply.status == 413 and reply.json["error"] == "body_too_large"
    assert state(api.ledger) == before


def test_body_framing_and_media_type(api):
    reply = api.call("POST", "/api/v1/members", raw=b'{"name": "a"}', token=ADMIN_TOKEN,
                     headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    with socket.create_connection((api.host, api.port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/members HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + ADMIN_TOKEN.encode() + b"\r\n\r\n")
        assert sock.recv(4096).split(b" ")[1] == b"400"
    with socket.create_connection((api.host, api.port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/members HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 50\r\n\r\n{}")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096).split(b" ")[1] == b"400"
    assert api.ledger.member_names() == []


# ------------------------------------------------------------------ metrics and logs


def parse_prometheus(text):
    """A tiny parser of the text format: {(name, labels): value}, checking HELP/TYPE order."""
    samples, typed = {}, {}
    label = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in typed, f"{name} typed twice"
            typed[name] = kind
            continue
        found = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        assert found, line
        name, _, label_text, value = found.groups()
        family = re.sub(r"_(sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no TYPE line before it"
        labels = tuple(sorted(
            (key, val.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for key, val in label.findall(label_text or "")))
        samples[(name, labels)] = float(value)
    return samples


def test_metrics_show_ingest_counters_and_requests(api):
    stats = api.server.app.stats
    stats.record_accepted(41)
    stats.record_accepted()
    stats.record_rejected("bad_signature", 3)
    stats.record_rejected("gap")
    stats.set_ingest_lag_s(2.5)
    for latency_ms in range(1, 101):
        stats.observe_ack_latency_ms(latency_ms)
    stats.observe_interval_close_s(0.25)
    api.call("GET", "/api/v1/digest")
    reply = api.call("GET", "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples = parse_prometheus(reply.text)
    assert samples[("energo_records_accepted_total", ())] == 42
    assert samples[("energo_records_rejected_total", (("reason", "bad_signature"),))] == 3
    assert samples[("energo_records_rejected_total", (("reason", "gap"),))] == 1
    assert samples[("energo_ingest_lag_seconds", ())] == 2.5
    assert samples[("energo_ack_latency_seconds", (("quantile", "0.99"),))] == 0.099
    assert samples[("energo_ack_latency_seconds_count", ())] == 100
    assert samples[("energo_interval_close_seconds", ())] == 0.25
    key = ("energo_http_requests_total",
           (("method", "GET"), ("route", "/api/v1/digest"), ("status", "200")))
    assert samples[key] == 1


def test_label_values_are_escaped():
    exposition = Exposition()
    nasty = 'a"b\\c\nd'
    exposition.add("x_total", "counter", "help", 1, {"reason": nasty})
    text = exposition.render()
    assert 'reason="a\\"b\\\\c\\nd"' in text
    assert parse_prometheus(text)[("x_total", (("reason", nasty),))] == 1
    assert escape_label("plain") == "plain"


def test_stats_refuse_bad_input_and_bound_reasons():
    stats = Stats(latency_samples_max=10)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            stats.record_accepted(bad)
    with pytest.raises(ValueError):
        stats.record_rejected('bad "reason"')
    with pytest.raises(ValueError):
        stats.observe_ack_latency_ms(float("nan"))
    for index in range(100):
        stats.record_rejected(f"reason_{index}")
    rejected = stats.snapshot()["rejected_by_reason"]
    assert len(rejected) == 65 and rejected["other"] == 36
    for latency_ms in [1000] * 5 + [1] * 10:
        stats.observe_ack_latency_ms(latency_ms)
    assert stats.snapshot()["ack_latency_ms_p99"] == 1.0  # only the last 10 samples count


def test_one_json_log_line_per_request_without_secrets(api):
    token = api.add_member("alice")["token"]
    api.call("GET", "/api/v1/members/alice/entries?limit=5&before=9", token=token)
    api.call("GET", "/api/v1/members/alice", token="alice~" + "B" * 43)
    records = [r for r in api.log.records() if r["event"] == "http_request"]
    assert [(r["method"], r["status"]) for r in records] == [
        ("POST", 201), ("GET", 200), ("GET", 401)]
    assert records[1]["path"] == "/api/v1/members/alice/entries"
    assert records[1]["member"] == "alice" and records[0]["principal"] == "admin"
    assert records[2]["error"] == "unauthorized"
    assert all(isinstance(r["duration_ms"], float) for r in records)
    text = "\n".join(api.log.lines)
    assert token not in text and ADMIN_TOKEN not in text and "before=9" not in text


# ------------------------------------------------------------------ service set-up


def test_admin_token_file_is_created_private_and_read_back(tmp_path):
    path = tmp_path / "admin-token"
    token = auth.load_or_create_admin_token(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.load_or_create_admin_token(str(path)) == token and len(token) >= 32
    path.write_text("short\n")
    with pytest.raises(ValueError, match="admin token file"):
        auth.load_or_create_admin_token(str(path))


def test_make_server_refuses_what_it_cannot_serve(tmp_path):
    memory = Ledger.open("sqlite:///:memory:")
    with pytest.raises(ValueError, match="in-memory"):
        make_server("127.0.0.1", 0, memory)
    memory.close()
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        with pytest.raises(ValueError, match="admin_token"):
            make_server("127.0.0.1", 0, ledger, admin_token="short")
        with pytest.raises(ValueError, match="mqtt_secret"):
            make_server("127.0.0.1", 0, ledger, mqtt_secret="text")
    finally:
        ledger.close()


def test_admin_endpoints_without_an_admin_token_are_unavailable(tmp_path):
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    server = make_server("127.0.0.1", 0, ledger, log_stream=open(os.devnull, "w"))
    harness = Harness.__new__(Harness)
    harness.host, harness.port = server.server_address[:2]
    import threading

    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        reply = harness.call("POST", "/api/v1/members", {"name": "alice"})
        assert reply.status == 503 and reply.json["error"] == "not_configured"
        assert harness.call("GET", "/api/v1/digest", token=ADMIN_TOKEN).status == 401
        assert not ledger.is_member("alice")
    finally:
        server.shutdown()
        server.server_close()
        ledger.close()


@pytest.mark.postgres
def test_postgres_smoke(postgres_url, tmp_path):
    harness = Harness(postgres_url, stats=Stats(), key_path=str(tmp_path / "service.pem"))
    try:
        harness.add_member("alice")
        harness.add_member("bob")
        settle_one_interval(harness)
        member = harness.as_member("alice", "GET", "/api/v1/members/alice").json
        assert member["watt_wh"] == harness.ledger.balance("member:alice", "WATT")
        digest = harness.call("GET", "/api/v1/digest").json
        assert digest["assets"]["TSL"]["held_by_members"] == 10_000
        assert harness.as_member("alice", "GET", "/api/v1/members/alice/entries").status == 200
        device_id, spki = device_key("meter", 3)
        enrolled = harness.admin("POST", "/api/v1/devices", {
            "device_id": device_id, "public_key": spki.hex(), "role": "meter", "member": "bob"})
        assert enrolled.status == 201
        assert enrolled.json["mqtt_password"] == derive_password(MQTT_SECRET, device_id)
        assert [d["device_id"] for d in harness.admin("GET", "/api/v1/devices").json[
            "devices"]] == [device_id]
        before = state(harness.ledger)
        assert harness.admin("POST", "/api/v1/members", {"name": "alice"}).status == 409
        assert state(harness.ledger) == before
        assert parse_prometheus(harness.call("GET", "/metrics").text)[
            ("energo_ledger_members", ())] == 2
    finally:
        harness.close()


def test_concurrent_requests_are_served_by_the_worker_pool(api):
    import concurrent.futures

    names = [f"m{index:02d}" for index in range(16)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(lambda name: api.admin("POST", "/api/v1/members", {"name": name}),
                                names))
        digests = list(pool.map(lambda _: api.call("GET", "/api/v1/digest"), range(16)))
    assert [reply.status for reply in created] == [201] * 16
    assert all(reply.status == 200 for reply in digests)
    assert api.ledger.member_names() == names
    assert len({reply.json["token"] for reply in created}) == 16
    assert api.ledger.check().ok


def test_health_and_extra_metrics_come_from_the_service(tmp_path):
    state_of_broker = {"ok": True, "broker_connected": True}
    harness = Harness(f"sqlite:///{tmp_path / 'l.db'}", health=lambda: dict(state_of_broker),
                      extra_metrics=lambda: "# TYPE energo_ingest_queue_messages gauge\n"
                                            "energo_ingest_queue_messages 7\n")
    try:
        reply = harness.call("GET", "/healthz")
        assert reply.status == 200
        assert reply.json == {"ok": True, "database": True, "broker_connected": True}
        state_of_broker.update(ok=False, broker_connected=False)
        assert harness.call("GET", "/healthz").status == 503
        samples = parse_prometheus(harness.call("GET", "/metrics").text)
        assert samples[("energo_ingest_queue_messages", ())] == 7
        assert samples[("energo_ledger_members", ())] == 0
    finally:
        harness.close()


def test_an_unreachable_database_is_503_not_a_client_error(tmp_path):
    path = tmp_path / "l.db"
    harness = Harness(f"sqlite:///{path}")
    try:
        harness.server.app.ledger_url = f"sqlite:///{tmp_path / 'missing' / 'l.db'}"
        reply = harness.call("GET", "/api/v1/digest")
        assert (reply.status, reply.json["error"]) == (503, "database_unavailable")
        assert any(r.get("event") == "database_error" for r in harness.log.records())
    finally:
        harness.close()


def test_a_garbage_request_line_does_not_hurt_the_workers(api):
    for junk in (b"GARBAGE\r\n\r\n", b"\x00\xff\x16\x03\x01\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection((api.host, api.port), timeout=5) as sock:
            sock.sendall(junk)
            answer = sock.recv(4096)
            if answer.startswith(b"HTTP/"):
                assert answer.split(b" ")[1][:1] == b"4", answer
            # An HTTP/0.9-style request line gets a bare body without a status line.
            assert answer == b"" or b'"error":"bad_request"' in answer or (
                b'"error":"unsupported_http_version"' in answer)
    assert api.call("GET", "/api/v1/digest").status == 200
