"""The market inside the settlement service, on a real SQLite ledger: agents trade through the
ledger, the reference price is recorded and published, and it follows supply and demand."""
import json

import pytest

from host_tools.api import store as api_store
from host_tools.exchange.book import ExchangeConfig
from host_tools.settlement import MONEY, WATT, member_account
from host_tools.settlement.errors import SchemaError
from host_tools.settlement.market import (
    Market,
    MarketConfig,
    MarketError,
    MarketIngest,
    MarketWorker,
    latest_reference_price,
    price_topic,
    reference_price,
    reference_prices,
)
from tests.test_ingest_support import Rig
from tests.test_settlement_support import T0_S, open_ledger

STEP_S = 900
SELLER = {"enabled": True, "target_buy_micro_per_kwh": 60_000, "target_sell_micro_per_kwh": 100_000,
          "floor_micro_per_kwh": 50_000, "ceiling_micro_per_kwh": 150_000,
          "upper_threshold_ppm": 800_000, "lower_threshold_ppm": 200_000}
BUYER = {"enabled": True, "target_buy_micro_per_kwh": 200_000, "target_sell_micro_per_kwh": 240_000,
         "floor_micro_per_kwh": 160_000, "ceiling_micro_per_kwh": 250_000,
         "upper_threshold_ppm": 800_000, "lower_threshold_ppm": 200_000}
# Overlapping ranges for the supply-and-demand test: the price is free to move.
WIDE_SELLER = dict(SELLER, target_sell_micro_per_kwh=100_000, ceiling_micro_per_kwh=300_000,
                   floor_micro_per_kwh=50_000)
WIDE_BUYER = dict(BUYER, target_buy_micro_per_kwh=250_000, floor_micro_per_kwh=50_000,
                  ceiling_micro_per_kwh=300_000, target_sell_micro_per_kwh=280_000)


class Published:
    def __init__(self):
        self.messages = []

    def __call__(self, topic, payload):
        self.messages.append((topic, json.loads(payload)))


def community(tmp_path, members, exports, name="c", url=None):
    """A ledger whose members got their balances from a settled interval (T0)."""
    url = url or f"sqlite:///{tmp_path / (name + '.db')}"
    ledger = open_ledger(url, str(tmp_path / f"{name}.pem"))
    for member in members:
        ledger.add_member(member, at_s=T0_S)
    ledger.settle_interval(T0_S, {m: (0, wh) for m, wh in exports.items()})
    api_store.ensure_tables(ledger.db)
    return ledger


def opt_in(ledger, member, settings):
    api_store.put_agent_settings(ledger.db, member, settings, 0)


def trades_in_ledger(ledger, interval_start_s=None):
    """(seller, buyer, qty_wh, price, value) of every trade transfer, from its entries."""
    result = []
    for transfer_id, meta in ledger.db.all(
            "SELECT transfer_id, meta FROM transfers WHERE kind = 'trade' ORDER BY first_seq"):
        meta = json.loads(meta)
        if interval_start_s is not None and meta["delivery_interval_s"] != interval_start_s:
            continue
        legs = ledger.transfer_info(transfer_id)["legs"]
        watt = [leg for leg in legs if leg.asset == WATT]
        money = [leg for leg in legs if leg.asset == MONEY]
        assert len(watt) == 1 and len(money) <= 1
        seller, buyer = watt[0].debit, watt[0].credit
        if money:
            assert (money[0].debit, money[0].credit) == (buyer, seller)
        result.append((seller, buyer, watt[0].amount, meta["price_micro_per_kwh"],
                       money[0].amount if money else 0))
    return result


def test_agents_trade_through_the_ledger_and_the_price_is_recorded_and_published(tmp_path):
    ledger = community(tmp_path, ["alice", "bob", "carol"], {"alice": 2000})
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)  # carol has no settings: her agent never exists
    published = Published()
    market = Market(ledger, "demo", publish=published, config=MarketConfig(seed=7))
    interval = T0_S + STEP_S
    result = market.close_interval(interval)

    trades = trades_in_ledger(ledger, interval)
    # alice holds 2000 Wh, 400 above 80 % of her 2000 Wh cap; bob holds nothing, 400 below 20 %.
    assert [(s, b, q) for s, b, q, _, _ in trades] == [
        (member_account("alice"), member_account("bob"), 400)]
    _, _, qty_wh, price, value = trades[0]
    assert SELLER["target_sell_micro_per_kwh"] <= price <= SELLER["ceiling_micro_per_kwh"] or (
        BUYER["floor_micro_per_kwh"] <= price <= BUYER["target_buy_micro_per_kwh"])
    assert value == qty_wh * price // 1000
    assert ledger.balance(member_account("alice"), WATT) == 1600
    assert ledger.balance(member_account("bob"), WATT) == 400
    assert ledger.balance(member_account("alice"), MONEY) == value
    assert ledger.balance(member_account("bob"), MONEY) == -value
    assert ledger.balance(member_account("carol"), WATT) == 0
    assert result["agent_count"] == 2 and result["agent_order_count"] == 2
    assert (result["price_micro_per_kwh"], result["volume_wh"], result["trade_count"],
            result["carried"]) == (price, 400, 1, False)
    assert reference_price(ledger.db, interval) == {k: result[k] for k in (
        "interval_start_s", "price_micro_per_kwh", "volume_wh", "trade_count", "carried",
        "agent_count", "agent_order_count")}
    assert published.messages == [(price_topic("demo"), {
        "interval_start_s": interval, "price_micro_per_kwh": price, "volume_wh": 400,
        "trade_count": 1, "carried": False})]
    assert ledger.check().ok

    # The interval then settles on the ledger as usual, trades included.
    ledger.settle_interval(interval, {})
    assert ledger.check().ok and ledger.verify_checkpoints().ok
    ledger.close()


@pytest.mark.postgres
def test_the_market_runs_on_postgresql_too(tmp_path, postgres_url):
    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000}, url=postgres_url)
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    published = Published()
    result = Market(ledger, "demo", publish=published, config=MarketConfig(seed=7)).close_interval(
        T0_S + STEP_S)
    assert (result["volume_wh"], result["trade_count"]) == (400, 1)
    assert [(s, b, q) for s, b, q, _, _ in trades_in_ledger(ledger)] == [
        (member_account("alice"), member_account("bob"), 400)]
    assert published.messages[0][1]["price_micro_per_kwh"] == result["price_micro_per_kwh"]
    assert latest_reference_price(ledger.db) == reference_price(ledger.db, T0_S + STEP_S)
    ledger.settle_interval(T0_S + STEP_S, {})
    assert ledger.check().ok
    ledger.close()


def test_closing_again_is_a_replay_and_bad_intervals_are_refused(tmp_path):
    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000})
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    published = Published()
    market = Market(ledger, "demo", publish=published)
    first = market.close_interval(T0_S + STEP_S)
    count = ledger.db.one("SELECT COUNT(*) FROM transfers")[0]
    again = market.close_interval(T0_S + STEP_S)
    assert again["replayed"] and again["price_micro_per_kwh"] == first["price_micro_per_kwh"]
    assert ledger.db.one("SELECT COUNT(*) FROM transfers")[0] == count
    assert len(published.messages) == 1
    for bad in (T0_S + 1, -STEP_S, "1", None, 2.0 * STEP_S, True):
        with pytest.raises(MarketError):
            market.close_interval(bad)
    assert len(reference_prices(ledger.db)) == 1
    with pytest.raises(MarketError):
        reference_prices(ledger.db, limit=0)
    with pytest.raises(MarketError):
        reference_prices(ledger.db, before_s="1")
    assert reference_prices(ledger.db, before_s=T0_S + STEP_S) == []
    with pytest.raises(MarketError):
        Market(ledger, "no such/community")
    with pytest.raises(MarketError):
        Market(ledger, "demo", publish="not callable")
    with pytest.raises(MarketError):
        Market(ledger, "demo", config=MarketConfig(exchange=ExchangeConfig(interval_s=60)))
    with pytest.raises(MarketError):
        MarketConfig(seed="1")
    ledger.close()


def test_nothing_traded_carries_the_price_and_disabled_agents_do_not_trade(tmp_path):
    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000})
    opt_in(ledger, "alice", dict(SELLER, enabled=False))
    opt_in(ledger, "bob", BUYER)
    market = Market(ledger, "demo", config=MarketConfig(
        exchange=ExchangeConfig(initial_price_micro_per_kwh=123_000)))
    result = market.close_interval(T0_S + STEP_S)
    assert (result["price_micro_per_kwh"], result["volume_wh"], result["carried"]) == (
        123_000, 0, True)
    assert trades_in_ledger(ledger) == []
    assert result["agent_count"] == 1 and result["agent_order_count"] == 1  # bob's bid expired
    ledger.close()


def test_a_stored_setting_that_no_longer_validates_is_skipped_not_fatal(tmp_path):
    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000})
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    ledger.db.execute("UPDATE api_agent_settings SET settings = ? WHERE member = 'alice'",
                      (json.dumps(dict(SELLER, floor_micro_per_kwh=900_000)),))
    market = Market(ledger, "demo")
    result = market.close_interval(T0_S + STEP_S)
    assert result["agent_count"] == 1 and market.counts["settings_refused"] == 1
    assert trades_in_ledger(ledger) == []
    ledger.close()


def run_day(tmp_path, name, sellers, buyers, intervals, seed=3):
    """Sellers refill to their cap and buyers empty out every interval; returns the prices."""
    members = [f"s{i}" for i in range(sellers)] + [f"b{i}" for i in range(buyers)]
    ledger = community(tmp_path, members, {f"s{i}": 2000 for i in range(sellers)}, name=name)
    for member in members:
        opt_in(ledger, member, WIDE_SELLER if member.startswith("s") else WIDE_BUYER)
    market = Market(ledger, "demo", config=MarketConfig(seed=seed))
    prices = []
    for n in range(1, intervals + 1):
        interval = T0_S + n * STEP_S
        result = market.close_interval(interval)
        # Every trade of the book is a ledger transfer: the recorded price is the ledger's VWAP.
        booked = trades_in_ledger(ledger, interval)
        volume_wh = sum(qty for _, _, qty, _, _ in booked)
        assert (len(booked), volume_wh) == (result["trade_count"], result["volume_wh"])
        if not result["carried"]:
            weighted = sum(qty * price for _, _, qty, price, _ in booked)
            assert result["price_micro_per_kwh"] == (2 * weighted + volume_wh) // (2 * volume_wh)
            prices.append(result["price_micro_per_kwh"])
        metered = {}
        for member in members:
            balance = ledger.balance(member_account(member), WATT)
            metered[member] = (balance, 0) if member.startswith("b") else (0, 2000 - balance)
        ledger.settle_interval(interval, metered)
    assert ledger.check().ok
    ledger.close()
    return prices


def test_more_sellers_lower_the_reference_price(tmp_path):
    scarce = run_day(tmp_path, "scarce", sellers=2, buyers=8, intervals=6)
    plenty = run_day(tmp_path, "plenty", sellers=8, buyers=2, intervals=6)
    assert len(scarce) >= 4 and len(plenty) >= 4
    assert sum(plenty) / len(plenty) < sum(scarce) / len(scarce)


def test_runs_reproduce_from_the_seed(tmp_path):
    first = run_day(tmp_path, "a", sellers=3, buyers=3, intervals=3, seed=11)
    second = run_day(tmp_path, "b", sellers=3, buyers=3, intervals=3, seed=11)
    other = run_day(tmp_path, "c", sellers=3, buyers=3, intervals=3, seed=12)
    assert first == second and first != other


def test_a_restarted_market_continues_ids_and_carries_the_last_price(tmp_path):
    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000})
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    first = Market(ledger, "demo", config=MarketConfig(seed=1)).close_interval(T0_S + STEP_S)
    ledger.settle_interval(T0_S + STEP_S, {"alice": (0, 400), "bob": (400, 0)})
    # A new process: the book is empty, but ids continue and the price carries over.
    market = Market(ledger, "demo", config=MarketConfig(seed=1))
    assert market.exchange.open_from_s == T0_S + 2 * STEP_S
    assert market.exchange.last_reference_price_micro_per_kwh == first["price_micro_per_kwh"]
    second = market.close_interval(T0_S + 2 * STEP_S)
    assert second["trade_count"] == 1
    assert [t[0] for t in ledger.db.all(
        "SELECT transfer_id FROM transfers WHERE kind = 'trade' ORDER BY first_seq")] == [
        "trade:1", "trade:2"]
    assert ledger.check().ok
    ledger.close()


def test_an_interval_before_the_book_opened_gets_the_carried_price(tmp_path):
    ledger = community(tmp_path, ["alice"], {})
    market = Market(ledger, "demo", config=MarketConfig(
        exchange=ExchangeConfig(initial_price_micro_per_kwh=111_000)))
    assert market.exchange.open_from_s == T0_S + STEP_S
    # Nobody has used the book: event time moves its start back to the first closed interval.
    row = market.close_interval(T0_S - STEP_S)
    assert (row["price_micro_per_kwh"], row["carried"]) == (111_000, True)
    assert market.exchange.open_from_s == T0_S
    # A gap of several intervals is closed in one go, each recorded.
    market.close_interval(T0_S + 4 * STEP_S)
    assert [r["interval_start_s"] for r in reference_prices(ledger.db)] == [
        T0_S + n * STEP_S for n in (4, 3, 2, 1, 0, -1)]
    assert latest_reference_price(ledger.db)["interval_start_s"] == T0_S + 4 * STEP_S
    # Once used, the book keeps its place: an earlier interval only gets the carried price.
    row = market.close_interval(T0_S - 3 * STEP_S)
    assert row["carried"] is True and market.exchange.open_from_s == T0_S + 5 * STEP_S
    ledger.close()


def test_a_tampered_price_row_is_refused_on_read(tmp_path):
    ledger = community(tmp_path, ["alice"], {})
    Market(ledger, "demo").close_interval(T0_S + STEP_S)
    ledger.db.execute("UPDATE market_reference_prices SET volume_wh = 5")
    with pytest.raises(SchemaError):
        latest_reference_price(ledger.db)
    ledger.close()


def test_the_ingest_runs_the_market_before_each_interval_settles(tmp_path):
    """Signed records through `MarketIngest`: the market closes N, then the ledger settles N."""
    rig = Rig(f"sqlite:///{tmp_path / 'ingest.db'}", tmp_path / "key.pem")
    ledger = rig.ledger
    ledger.settle_interval(T0_S, {"alice": (0, 2000)})
    api_store.ensure_tables(ledger.db)
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    seen = []

    class Spy(Market):
        def close_interval(self, interval_start_s):
            # The ledger has not settled N yet when the market closes it.
            seen.append((interval_start_s, self.ledger.next_open_interval()))
            return super().close_interval(interval_start_s)

    market = Spy(ledger, "demo", config=MarketConfig(seed=5))

    class Driver:
        def before_settle(self, interval_start_s):
            return market.close_interval(interval_start_s)

        def after_settle(self, interval_start_s):
            return market.after_settle(interval_start_s)

    ingest = MarketIngest(ledger, rig.registry, "demo", grace_s=0, market=Driver())
    alice, bob = rig.device("alice"), rig.device("bob")
    for minute in range(0, 35, 5):
        at_s = T0_S + STEP_S + 60 * minute
        for device, import_wh in ((alice, 0), (bob, 50)):
            ingest.handle(device.topic, device.record(at_s, import_wh, 0).encode(), at_s)
    assert seen == [(T0_S + STEP_S, T0_S + STEP_S), (T0_S + 2 * STEP_S, T0_S + 2 * STEP_S)]
    assert ingest.counts["intervals_closed"] == 2 and ingest.counts["market_failures"] == 0
    first = reference_price(ledger.db, T0_S + STEP_S)
    assert first["trade_count"] == 1 and first["volume_wh"] == 400
    assert len(trades_in_ledger(ledger)) >= 1
    assert ledger.check().ok and ledger.verify_checkpoints().ok
    rig.close()


def test_a_failing_market_delays_settlement_a_bounded_number_of_times(tmp_path):
    rig = Rig(f"sqlite:///{tmp_path / 'ingest.db'}", tmp_path / "key.pem")
    calls = []

    class Broken:
        def before_settle(self, interval_start_s):
            calls.append(interval_start_s)
            raise RuntimeError("market down")

        def after_settle(self, interval_start_s):
            return 0

    ingest = MarketIngest(rig.ledger, rig.registry, "demo", grace_s=0, market=Broken())
    device = rig.device("alice")
    closed = []
    for minute in range(0, 60, 5):
        at_s = T0_S + 60 * minute
        ingest.handle(device.topic, device.record(at_s, 10, 0).encode(), at_s)
        closed.append(ingest.counts["intervals_closed"])
    # The first interval is ready at minute 15; it settles on the third failed attempt.
    assert closed[3:6] == [0, 0, 1]
    assert ingest.counts["market_failures"] >= 3
    assert "market down" in ingest.last_market_error
    with pytest.raises(MarketError):
        MarketIngest(rig.ledger, rig.registry, "demo", market=object())
    rig.close()


def test_the_worker_runs_the_market_on_its_own_thread(tmp_path):
    """SQLite connections are per thread: the worker opens its own and the caller's stays free."""
    import threading

    ledger = community(tmp_path, ["alice", "bob"], {"alice": 2000})
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    url, key = ledger.db.url, ledger.key_path
    ledger.close()
    published = Published()
    threads = []

    def publish(topic, payload):
        threads.append(threading.current_thread().name)
        published(topic, payload)

    worker = MarketWorker(url, "demo", publish=publish, config=MarketConfig(seed=2), key_path=key)
    try:
        result = worker.before_settle(T0_S + STEP_S)
        assert result["trade_count"] == 1 and not result["replayed"]
        assert worker.after_settle(T0_S + STEP_S) == 0
        assert worker.publish_latest()["interval_start_s"] == T0_S + STEP_S
        assert worker.counts()["agent_trades"] == 1
        # The gate is what the HTTP API gets: the same exchange, one door.
        assert worker.gate.call(lambda exchange: exchange.open_from_s) == T0_S + 2 * STEP_S
    finally:
        worker.close()
    assert threads == ["energo-exchange", "energo-exchange"]
    assert [m[1]["interval_start_s"] for m in published.messages] == [T0_S + STEP_S] * 2
    reopened = open_ledger(url, key)
    assert reference_price(reopened.db, T0_S + STEP_S)["trade_count"] == 1
    assert reopened.check().ok
    reopened.close()
