"""The exchange over HTTP: orders settle in the real ledger through a single exchange thread;
bad orders (zero, negative or absurd quantities and prices, closed intervals, reused client ids,
someone else's order) get a clear 4xx and leave the book and the ledger unchanged."""
import pytest

from host_tools.api.gate import ExchangeWorker
from host_tools.exchange.book import Exchange, ExchangeConfig
from host_tools.exchange.port import MemoryPort
from tests.test_api_support import (
    ADMIN_TOKEN,
    T0_S,
    T1_S,
    Harness,
    close_market,
    market_harness,
    state,
)


@pytest.fixture
def market(tmp_path):
    harness = market_harness(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield harness
    close_market(harness)


def book_state(harness):
    def view(exchange):
        result = {}
        for start in exchange.open_intervals():
            bids, asks = exchange.resting_orders(start)
            result[start] = [(o.order_id, o.remaining_wh, o.status) for o in bids + asks]
        return result, exchange.open_order_count

    return harness.worker.call(view), state(harness.ledger)


def order(side, qty_wh, price, interval_start_s=T1_S, **extra):
    return dict(side=side, qty_wh=qty_wh, price_micro_per_kwh=price,
                interval_start_s=interval_start_s, **extra)


def test_a_trade_settles_in_the_ledger_and_public_views_stay_anonymous(market):
    ask = market.as_member("alice", "POST", "/api/v1/orders",
                           order("sell", 400, 150_000, client_id="s1"))
    assert ask.status == 201, ask.data
    assert ask.json["order"]["status"] == "open" and ask.json["trades"] == []
    depth = market.call("GET", f"/api/v1/depth?interval_start_s={T1_S}").json
    assert depth["asks"] == [{"price_micro_per_kwh": 150_000, "qty_wh": 400}]
    assert depth["best_ask_micro_per_kwh"] == 150_000 and depth["bids"] == []
    bob_money_before = market.ledger.balance("member:bob", "money")
    bid = market.as_member("bob", "POST", "/api/v1/orders", order("buy", 300, 160_000))
    assert bid.status == 201
    assert bid.json["order"]["status"] == "filled"
    assert bid.json["trades"] == [{"trade_id": 1, "side": "buy", "qty_wh": 300,
                                   "price_micro_per_kwh": 150_000, "value_micro": 45_000,
                                   "interval_start_s": T1_S}]
    assert "alice" not in bid.text
    assert market.ledger.balance("member:alice", "WATT") == 700
    assert market.ledger.balance("member:bob", "WATT") == 300
    assert market.ledger.balance("member:bob", "money") == bob_money_before - 45_000
    trades = market.call("GET", f"/api/v1/trades?interval_start_s={T1_S}")
    assert trades.json["trades"] == [{"trade_id": 1, "qty_wh": 300,
                                      "price_micro_per_kwh": 150_000, "value_micro": 45_000}]
    assert trades.json["volume_wh"] == 300
    assert "alice" not in trades.text and "bob" not in trades.text
    filled = market.as_member("bob", "GET", f"/api/v1/orders/{bid.json['order']['order_id']}")
    assert filled.status == 200 and filled.json["order"]["status"] == "filled"
    assert market.as_member("alice", "GET", "/api/v1/orders/2").status == 403
    assert market.as_member("alice", "GET", "/api/v1/orders/77").status == 404
    mine = market.as_member("alice", "GET", "/api/v1/orders").json["orders"]
    assert [(o["order_id"], o["remaining_wh"]) for o in mine] == [(1, 100)]
    assert market.as_member("bob", "GET", "/api/v1/orders").json["orders"] == []
    prices = market.call("GET", "/api/v1/prices").json
    assert prices["quotes"][0] == {"interval_start_s": T1_S, "best_bid_micro_per_kwh": None,
                                   "best_ask_micro_per_kwh": 150_000}
    assert "alice" not in str(depth) and "alice" not in str(prices)
    entries = market.as_member("alice", "GET", "/api/v1/members/alice/entries").json["entries"]
    sold = [e for e in entries if e["kind"] == "trade"]
    assert [(e["asset"], e["amount"], e["counterparty"]) for e in sold] == [
        ("money", 45_000, "member"), ("WATT", -300, "member")]
    assert market.ledger.check().ok


def test_cancel_own_order_but_not_someone_elses(market):
    placed = market.as_member("alice", "POST", "/api/v1/orders", order("sell", 400, 150_000))
    order_id = placed.json["order"]["order_id"]
    before = book_state(market)
    reply = market.as_member("bob", "DELETE", f"/api/v1/orders/{order_id}")
    assert (reply.status, reply.json["error"]) == (403, "not_your_order")
    assert market.admin("DELETE", f"/api/v1/orders/{order_id}").status == 403
    assert market.as_member("alice", "DELETE", "/api/v1/orders/999").status == 404
    assert book_state(market) == before
    cancelled = market.as_member("alice", "DELETE", f"/api/v1/orders/{order_id}")
    assert cancelled.status == 200 and cancelled.json["order"]["status"] == "cancelled"
    assert market.as_member("alice", "GET", "/api/v1/orders").json["orders"] == []
    again = market.as_member("alice", "DELETE", f"/api/v1/orders/{order_id}")
    assert again.status == 404


def test_client_ids_make_resubmission_idempotent(market):
    first = market.as_member("alice", "POST", "/api/v1/orders",
                             order("sell", 100, 150_000, client_id="c-1"))
    assert first.status == 201
    before = book_state(market)
    again = market.as_member("alice", "POST", "/api/v1/orders",
                             order("sell", 100, 150_000, client_id="c-1"))
    assert again.status == 200 and again.json["duplicate"] is True
    assert again.json["order"]["order_id"] == first.json["order"]["order_id"]
    other = market.as_member("alice", "POST", "/api/v1/orders",
                             order("sell", 101, 150_000, client_id="c-1"))
    assert (other.status, other.json["error"]) == (409, "duplicate_client_id")
    assert book_state(market) == before


@pytest.mark.parametrize("body, status, code", [
    (order("buy", 0, 150_000), 422, "invalid_field"),
    (order("buy", -5, 150_000), 422, "invalid_field"),
    (order("buy", 10**15, 150_000), 422, "invalid_field"),
    (order("buy", 2_000_000, 150_000), 422, "invalid_quantity"),
    (order("buy", 100, 0), 422, "invalid_field"),
    (order("buy", 100, -1), 422, "invalid_field"),
    (order("buy", 100, 10**12), 422, "invalid_field"),
    (order("buy", 100, 50_000_000), 422, "invalid_price"),
    (order("buy", 100, 1.5), 422, "invalid_field"),
    (order("buy", 100, "150000"), 422, "invalid_field"),
    (order("hold", 100, 150_000), 422, "invalid_field"),
    (order("buy", 100, 150_000, interval_start_s=T0_S), 409, "interval_closed"),
    (order("buy", 100, 150_000, interval_start_s=T1_S + 1), 422, "invalid_order"),
    (order("buy", 100, 150_000, interval_start_s=T1_S + 900 * 1000), 422, "interval_not_open"),
    (order("sell", 100, 150_000, immediate=True), 422, "invalid_order"),
    (order("buy", 3_000, 150_000), 422, "above_cap"),
    (order("buy", 100, 150_000, client_id=""), 422, "invalid_field"),
    (order("buy", 100, 150_000, member="alice"), 422, "unknown_field"),
])
def test_bad_orders_are_refused_unchanged(market, body, status, code):
    market.as_member("alice", "POST", "/api/v1/orders", order("sell", 100, 200_000))
    before = book_state(market)
    reply = market.as_member("bob", "POST", "/api/v1/orders", body)
    assert (reply.status, reply.json["error"]) == (status, code), reply.data
    assert book_state(market) == before


def test_orders_need_a_member_token(market):
    body = order("buy", 100, 150_000)
    assert market.call("POST", "/api/v1/orders", body).status == 401
    assert market.call("POST", "/api/v1/orders", body, token=ADMIN_TOKEN).status == 403
    assert market.call("GET", "/api/v1/orders").status == 401


def test_closing_an_interval_publishes_its_reference_price(market):
    market.as_member("alice", "POST", "/api/v1/orders", order("sell", 400, 150_000))
    market.as_member("bob", "POST", "/api/v1/orders", order("buy", 200, 170_000))
    market.worker.call(lambda exchange: exchange.close_interval(T1_S))
    prices = market.call("GET", "/api/v1/prices?limit=4").json
    assert prices["open_from_s"] == T1_S + 900
    assert prices["reference_prices"] == [{"interval_start_s": T1_S,
                                           "price_micro_per_kwh": 150_000, "volume_wh": 200,
                                           "trade_count": 1, "carried": False}]
    assert prices["last_reference_price_micro_per_kwh"] == 150_000
    late = market.as_member("bob", "POST", "/api/v1/orders", order("buy", 100, 150_000))
    assert (late.status, late.json["error"]) == (409, "interval_closed")
    assert market.as_member("alice", "GET", "/api/v1/orders").json["orders"] == []


def test_depth_and_trades_validate_their_interval(market):
    assert market.call("GET", f"/api/v1/depth?interval_start_s={T1_S + 7}").status == 422
    assert market.call("GET", "/api/v1/trades").status == 400
    assert market.call("GET", f"/api/v1/trades?interval_start_s={T1_S + 7}").status == 422
    depth = market.call("GET", "/api/v1/depth").json
    assert depth["interval_start_s"] == T1_S


def test_agent_ceiling_is_bounded_by_the_exchange(market):
    body = {"enabled": True, "target_buy_micro_per_kwh": 100_000,
            "target_sell_micro_per_kwh": 200_000, "floor_micro_per_kwh": 50_000,
            "ceiling_micro_per_kwh": 20_000_000}
    reply = market.as_member("alice", "PUT", "/api/v1/members/alice/agent", body)
    assert reply.status == 422 and "ceiling" in reply.json["message"]


def test_a_plain_exchange_is_served_behind_a_lock(tmp_path):
    port = MemoryPort()
    port.add_member("alice", cap_wh=10_000, balance_wh=0)
    exchange = Exchange(port, ExchangeConfig(), first_interval_start_s=T1_S)
    harness = Harness(f"sqlite:///{tmp_path / 'l.db'}", exchange=exchange)
    try:
        harness.add_member("alice")
        reply = harness.as_member("alice", "POST", "/api/v1/orders", order("buy", 100, 150_000))
        assert reply.status == 201
        assert exchange.open_order_count == 1
    finally:
        harness.close()


def test_exchange_worker_reports_a_failed_start_and_a_stopped_thread():
    def broken():
        raise ValueError("no ledger")

    with pytest.raises(ValueError, match="no ledger"):
        ExchangeWorker(broken)
    worker = ExchangeWorker(lambda: "exchange")
    assert worker.call(lambda exchange: exchange.upper()) == "EXCHANGE"
    worker.close()
    with pytest.raises(ValueError) as refused:
        worker.call(lambda exchange: exchange)
    assert refused.value.status == 503
