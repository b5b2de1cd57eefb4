"""Garbage at the API: random bytes, random JSON and near-miss bodies to every POST/PUT route,
sent with valid credentials so they reach validation. Every answer is a 4xx JSON error (never a
500 or a dropped connection) and a refused request leaves ledger, registry and book unchanged."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.api.routes import ROUTES
from host_tools.settlement.registry import Registry
from tests.test_api_support import (
    ADMIN_TOKEN,
    close_market,
    market_harness,
    state,
)

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def served(tmp_path):
    harness = market_harness(f"sqlite:///{tmp_path / 'ledger.db'}")
    harness.registry = Registry(harness.ledger)
    yield harness
    close_market(harness)


def everything(harness):
    book = harness.worker.call(lambda exchange: (
        exchange.open_order_count,
        [(o.order_id, o.remaining_wh) for start in exchange.open_intervals()
         for side in exchange.resting_orders(start) for o in side]))
    return state(harness.ledger), harness.registry.list(), book


# (method, path, who) for every route with a body, plus one without (a body is refused there).
TARGETS = [(route.method, route.path.replace("{name}", "alice"),
            ADMIN_TOKEN if route.auth == "admin" else "alice")
           for route in ROUTES if route.method in ("POST", "PUT")]
BODY_FIELDS = sorted({field for route in ROUTES if route.body
                      for field in route.body["properties"]})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
near_miss = st.dictionaries(st.sampled_from(BODY_FIELDS) | st.text(max_size=8), json_values,
                            max_size=6)


def send(harness, target, raw):
    method, path, who = target
    token = who if who == ADMIN_TOKEN else harness.tokens[who]
    return harness.call(method, path, raw=raw, token=token,
                        headers={"Content-Type": "application/json"})


def test_every_body_route_is_fuzzed():
    assert {path for _, path, _ in TARGETS} >= {
        "/api/v1/members", "/api/v1/devices", "/api/v1/orders", "/api/v1/members/alice/agent"}


def test_random_bytes_are_refused_and_change_nothing(served):
    before = everything(served)

    @SETTINGS
    @given(target=st.sampled_from(TARGETS), raw=st.binary(min_size=1, max_size=300))
    def check(target, raw):
        reply = send(served, target, raw)
        assert 400 <= reply.status < 500, (target, raw, reply.data)
        assert set(reply.json) == {"error", "message"}
        assert everything(served) == before

    check()


def test_random_json_is_refused_and_changes_nothing(served):
    before = everything(served)

    @SETTINGS
    @given(target=st.sampled_from(TARGETS), value=json_values)
    def check(target, value):
        reply = send(served, target, json.dumps(value).encode())
        assert 400 <= reply.status < 500, (target, value, reply.data)
        assert everything(served) == before

    check()


def test_near_miss_bodies_never_fail_the_server(served):
    @SETTINGS
    @given(target=st.sampled_from(TARGETS), value=near_miss)
    def check(target, value):
        before = everything(served)
        reply = send(served, target, json.dumps(value).encode())
        assert reply.status < 500, (target, value, reply.data)
        if reply.status >= 400:
            assert set(reply.json) == {"error", "message"}
            assert everything(served) == before

    check()
    assert served.ledger.check().ok


def test_random_paths_and_queries_are_4xx(served):
    @SETTINGS
    @given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                        max_size=40),
           method=st.sampled_from(["GET", "DELETE", "POST", "PUT"]))
    def check(path, method):
        before = everything(served)
        reply = served.call(method, "/api/v1/" + path, token=served.tokens["alice"])
        assert reply.status < 500, (method, path, reply.data)
        if reply.status >= 400:
            assert everything(served) == before

    check()
