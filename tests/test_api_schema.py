"""Every route answered successfully at least once, and every answer matches the response schema
the OpenAPI document publishes for it (JSON Schema 2020-12, as OpenAPI 3.1 uses): the document
describes what the server really sends, and public answers carry no fields beyond the schema."""
import pytest

from host_tools.api import openapi, routes
from tests.conftest import need
from tests.test_api_support import (
    T1_S,
    close_market,
    device_key,
    market_harness,
)
from tests.test_ev_support import seed_session

AGENT = {"enabled": True, "target_buy_micro_per_kwh": 120_000,
         "target_sell_micro_per_kwh": 180_000, "floor_micro_per_kwh": 50_000,
         "ceiling_micro_per_kwh": 400_000}


@pytest.fixture
def market(tmp_path):
    harness = market_harness(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield harness
    close_market(harness)


def test_every_answer_matches_its_documented_schema(market):
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    need(jsonschema is not None, "jsonschema (with openapi-spec-validator) is not installed")
    document = openapi.document()
    device_id, spki = device_key("charger", 7)
    session = seed_session(market.ledger, "alice", "bob")
    calls = [
        ("GET", "/openapi.json", None, None, "/openapi.json"),
        ("GET", "/metrics", None, None, "/metrics"),
        ("GET", "/healthz", None, None, "/healthz"),
        ("GET", "/api/v1/digest", None, None, "/api/v1/digest"),
        ("GET", "/api/v1/checkpoints", None, None, "/api/v1/checkpoints"),
        ("GET", "/api/v1/intervals", None, None, "/api/v1/intervals"),
        ("POST", "/api/v1/members", {"name": "carol", "storage_capacity_wh": 100}, "admin",
         "/api/v1/members"),
        ("GET", "/api/v1/members", None, "admin", "/api/v1/members"),
        ("GET", "/api/v1/members/alice", None, "alice", "/api/v1/members/{name}"),
        ("POST", "/api/v1/members/carol/token", None, "admin", "/api/v1/members/{name}/token"),
        ("GET", "/api/v1/members/alice/entries", None, "alice",
         "/api/v1/members/{name}/entries"),
        ("PUT", "/api/v1/members/alice/agent", AGENT, "alice", "/api/v1/members/{name}/agent"),
        ("GET", "/api/v1/members/alice/agent", None, "alice", "/api/v1/members/{name}/agent"),
        ("POST", "/api/v1/devices", {"device_id": device_id, "public_key": spki.hex(),
                                     "role": "charger", "member": "bob"}, "admin",
         "/api/v1/devices"),
        ("GET", "/api/v1/devices", None, "admin", "/api/v1/devices"),
        ("POST", "/api/v1/orders", {"side": "sell", "qty_wh": 500, "price_micro_per_kwh": 140_000,
                                    "interval_start_s": T1_S, "client_id": "a-1"}, "alice",
         "/api/v1/orders"),
        ("POST", "/api/v1/orders", {"side": "buy", "qty_wh": 200, "price_micro_per_kwh": 150_000,
                                    "interval_start_s": T1_S}, "bob", "/api/v1/orders"),
        ("GET", "/api/v1/orders", None, "alice", "/api/v1/orders"),
        ("GET", "/api/v1/orders/2", None, "bob", "/api/v1/orders/{order_id}"),
        ("GET", "/api/v1/depth", None, None, "/api/v1/depth"),
        ("GET", f"/api/v1/trades?interval_start_s={T1_S}", None, None, "/api/v1/trades"),
        ("GET", "/api/v1/prices", None, None, "/api/v1/prices"),
        ("DELETE", "/api/v1/orders/1", None, "alice", "/api/v1/orders/{order_id}"),
        ("GET", "/api/v1/sessions", None, "alice", "/api/v1/sessions"),
        ("GET", f"/api/v1/sessions/{session}", None, "admin", "/api/v1/sessions/{session}"),
    ]
    covered = set()
    for method, path, body, who, template in calls:
        if who == "admin":
            reply = market.admin(method, path, body)
        elif who is None:
            reply = market.call(method, path, body)
        else:
            reply = market.as_member(who, method, path, body)
        operation = document["paths"][template][method.lower()]
        assert str(reply.status) in operation["responses"], (path, reply.status, reply.data)
        assert 200 <= reply.status < 300, (path, reply.data)
        if (method, path) == ("POST", "/api/v1/members"):
            market.tokens["carol"] = reply.json["token"]
        content = operation["responses"][str(reply.status)]["content"]
        if "text/plain" in content:
            value = reply.text
            schema = content["text/plain"]["schema"]
        else:
            value = reply.json
            schema = content["application/json"]["schema"]
        jsonschema.Draft202012Validator(schema).validate(value)
        covered.add((method, template))
    assert covered == {(route.method, route.path) for route in routes.ROUTES}


def test_the_public_trade_schema_refuses_a_leaked_name():
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    need(jsonschema is not None, "jsonschema is not installed")
    schema = routes.ROUTES[[r.path for r in routes.ROUTES].index("/api/v1/trades")].response
    leaked = {"interval_start_s": 0, "volume_wh": 1, "trades": [
        {"trade_id": 1, "qty_wh": 1, "price_micro_per_kwh": 1, "value_micro": 0, "buyer": "bob"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(leaked, schema)
