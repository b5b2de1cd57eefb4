"""The exchange's matching engine: priority, pricing, the community's cover and cap rules,
intervals, client ids and refusals that leave book and ledger untouched."""
import pytest

from host_tools.exchange import errors
from host_tools.exchange.book import (
    BUY,
    CANCELLED,
    EXPIRED,
    FILLED,
    OPEN,
    SELL,
    Exchange,
    ExchangeConfig,
)
from host_tools.exchange.port import MemoryPort, SettlementError, Trade, trade_value_micro

T0 = 0
T1 = 900
CAP_WH = 10_000


def make(members=("a", "b", "c", "d"), balance_wh=5_000, **config):
    port = MemoryPort()
    for name in members:
        port.add_member(name, cap_wh=CAP_WH, balance_wh=balance_wh)
    published = []
    exchange = Exchange(port, ExchangeConfig(**config), publish=published.append)
    return exchange, port, published


def snapshot(exchange, port):
    """Everything a refusal must leave unchanged."""
    books = {}
    for start in exchange.open_intervals():
        bids, asks = exchange.resting_orders(start)
        books[start] = [(o.order_id, o.remaining_wh, o.status) for o in bids + asks]
    ledger = {m: (port.balance_wh(m), port.money_micro(m)) for m in port.members()}
    return books, ledger, port.trade_count


# ------------------------------------------------------------------ price-time priority, pricing


def test_trade_executes_at_resting_price_and_moves_both_assets():
    exchange, port, _ = make()
    exchange.submit("a", SELL, 1_000, 120_000, T0)
    ack = exchange.submit("b", BUY, 1_000, 150_000, T0)
    assert [(t.seller, t.buyer, t.qty_wh, t.price_micro_per_kwh) for t in ack.trades] == [
        ("a", "b", 1_000, 120_000)]
    assert ack.status == FILLED
    assert port.balance_wh("a") == 4_000 and port.balance_wh("b") == 6_000
    assert port.money_micro("a") == 120_000 and port.money_micro("b") == -120_000


def test_price_then_time_priority():
    exchange, _, _ = make()
    first = exchange.submit("a", SELL, 500, 110_000, T0).order_id
    second = exchange.submit("c", SELL, 500, 100_000, T0).order_id
    third = exchange.submit("d", SELL, 500, 100_000, T0).order_id
    ack = exchange.submit("b", BUY, 1_200, 120_000, T0)
    assert [t.sell_order_id for t in ack.trades] == [second, third, first]
    assert [t.qty_wh for t in ack.trades] == [500, 500, 200]
    assert exchange.order(first).remaining_wh == 300


def test_sell_into_bids_best_bid_first_at_bid_prices():
    exchange, _, _ = make()
    exchange.submit("a", BUY, 400, 90_000, T0)
    exchange.submit("c", BUY, 400, 95_000, T0)
    ack = exchange.submit("b", SELL, 600, 80_000, T0)
    assert [(t.buyer, t.price_micro_per_kwh, t.qty_wh) for t in ack.trades] == [
        ("c", 95_000, 400), ("a", 90_000, 200)]
    assert exchange.quote(T0) == (90_000, None)


def test_no_trade_when_not_crossing():
    exchange, port, _ = make()
    exchange.submit("a", SELL, 500, 130_000, T0)
    ack = exchange.submit("b", BUY, 500, 129_999, T0)
    assert ack.trades == () and ack.status == OPEN
    assert exchange.quote(T0) == (129_999, 130_000)
    assert port.trade_count == 0


def test_trade_value_rounds_down_and_both_sides_move_the_same_integer():
    assert trade_value_micro(1, 999) == 0
    assert trade_value_micro(3, 123_457) == 370
    exchange, port, _ = make()
    exchange.submit("a", SELL, 3, 123_457, T0)
    (trade,) = exchange.submit("b", BUY, 3, 123_457, T0).trades
    assert trade.value_micro == 370
    assert port.money_micro("a") == 370 and port.money_micro("b") == -370


# ------------------------------------------------------------------ self-trade prevention, cancel


def test_self_trade_prevention_cancels_the_newer_order():
    exchange, port, _ = make()
    own = exchange.submit("a", SELL, 500, 100_000, T0)
    ack = exchange.submit("a", BUY, 500, 120_000, T0)
    assert ack.trades == () and ack.stp_cancelled and ack.status == CANCELLED
    assert exchange.order(own.order_id).status == OPEN
    assert port.trade_count == 0


def test_self_trade_prevention_after_fills_keeps_the_fills():
    exchange, _, _ = make()
    exchange.submit("c", SELL, 300, 100_000, T0)
    exchange.submit("a", SELL, 500, 101_000, T0)
    ack = exchange.submit("a", BUY, 800, 120_000, T0)
    assert [t.seller for t in ack.trades] == ["c"]
    assert ack.status == CANCELLED and ack.order.filled_wh == 300


def test_cancel_own_order_and_refuse_someone_elses():
    exchange, port, _ = make()
    order_id = exchange.submit("a", SELL, 500, 100_000, T0).order_id
    before = snapshot(exchange, port)
    with pytest.raises(errors.NotYourOrder) as info:
        exchange.cancel("b", order_id)
    assert info.value.code == "not_your_order"
    assert snapshot(exchange, port) == before
    assert exchange.cancel("a", order_id).status == CANCELLED
    assert exchange.quote(T0) == (None, None)
    with pytest.raises(errors.UnknownOrder):
        exchange.cancel("a", order_id)
    with pytest.raises(errors.UnknownOrder):
        exchange.cancel("a", 999_999)


# ------------------------------------------------------------------ cover: energy not yet produced


def test_uncovered_ask_sets_the_price_but_serve_now_buy_takes_the_first_covered_ask():
    exchange, port, _ = make(balance_wh=0)
    port.mint_wh("c", 2_000)
    future = exchange.submit("a", SELL, 1_000, 90_000, T0)  # a holds nothing yet
    covered = exchange.submit("c", SELL, 1_000, 110_000, T0)
    assert exchange.quote(T0) == (None, 90_000)
    ack = exchange.submit("b", BUY, 1_500, 120_000, T0, immediate=True)
    assert [(t.seller, t.price_micro_per_kwh, t.qty_wh) for t in ack.trades] == [
        ("c", 110_000, 1_000)]
    # Serve-now buys never rest: the unserved 500 Wh went to the grid.
    assert ack.status == CANCELLED and ack.order.remaining_wh == 500
    assert exchange.order(future.order_id).status == OPEN
    assert exchange.order(covered.order_id).status == FILLED
    assert exchange.quote(T0) == (None, 90_000)


def test_normal_buy_rests_and_executes_when_the_energy_arrives_at_the_older_price():
    exchange, port, _ = make(balance_wh=0)
    ask = exchange.submit("a", SELL, 1_000, 90_000, T0)
    bid = exchange.submit("b", BUY, 1_000, 100_000, T0)
    assert bid.trades == () and bid.status == OPEN
    port.mint_wh("a", 600)  # production metered: partial cover
    trades = exchange.on_balance_change("a")
    assert [(t.qty_wh, t.price_micro_per_kwh, t.maker_order_id) for t in trades] == [
        (600, 90_000, ask.order_id)]
    assert exchange.order(ask.order_id).remaining_wh == 400
    assert exchange.order(bid.order_id).remaining_wh == 400
    port.mint_wh("a", 1_000)
    trades = exchange.on_balance_change("a")
    assert [t.qty_wh for t in trades] == [400]
    assert port.balance_wh("a") == 600 and port.balance_wh("b") == 1_000


def test_partly_covered_ask_fills_up_to_the_balance():
    exchange, port, _ = make(balance_wh=0)
    port.mint_wh("a", 300)
    exchange.submit("a", SELL, 1_000, 90_000, T0)
    ack = exchange.submit("b", BUY, 1_000, 100_000, T0, immediate=True)
    assert [t.qty_wh for t in ack.trades] == [300]
    assert port.balance_wh("a") == 0


# ------------------------------------------------------------------ cap: buys wait for room


def test_buy_fills_up_to_the_cap_and_the_rest_waits_until_there_is_room():
    exchange, port, _ = make(balance_wh=5_000)
    port.mint_wh("b", 4_000)  # b: 9 000 of 10 000 Wh, 1 000 Wh of room
    exchange.submit("a", SELL, 3_000, 100_000, T0)
    ack = exchange.submit("b", BUY, 2_500, 110_000, T0)
    assert [t.qty_wh for t in ack.trades] == [1_000]
    assert ack.status == OPEN and ack.order.remaining_wh == 1_500
    assert port.balance_wh("b") == CAP_WH
    # A sell arriving now skips the parked bid: it would push b above the cap.
    assert exchange.submit("c", SELL, 500, 100_000, T0).trades == ()
    port.mint_wh("b", -800)  # b consumed 800 Wh
    trades = exchange.on_balance_change("b")
    assert sum(t.qty_wh for t in trades) == 800
    assert port.balance_wh("b") == CAP_WH
    assert all(t.buyer == "b" for t in trades)


def test_parked_buy_executes_against_the_older_ask_at_the_asks_price():
    exchange, port, _ = make(balance_wh=CAP_WH)  # everyone is full
    ask = exchange.submit("c", SELL, 1_000, 95_000, T0)
    parked = exchange.submit("a", BUY, 1_000, 100_000, T0)
    assert parked.trades == () and parked.status == OPEN
    assert exchange.quote(T0) == (100_000, 95_000)  # crossed, but not executable
    port.mint_wh("a", -1_000)
    (trade,) = exchange.on_balance_change("a")
    assert (trade.price_micro_per_kwh, trade.maker_order_id) == (95_000, ask.order_id)
    assert exchange.order(parked.order_id).status == FILLED


def test_buy_larger_than_the_whole_cap_is_refused():
    exchange, port, _ = make()
    before = snapshot(exchange, port)
    with pytest.raises(errors.AboveCap):
        exchange.submit("a", BUY, CAP_WH + 1, 100_000, T0)
    assert snapshot(exchange, port) == before


# ------------------------------------------------------------------ intervals and reference price


def test_interval_close_expires_orders_and_records_vwap_rounded_half_up():
    exchange, port, published = make()
    exchange.submit("a", SELL, 1_000, 100_000, T0)
    exchange.submit("c", SELL, 2_000, 100_001, T0)
    exchange.submit("b", BUY, 3_000, 200_000, T0)
    leftover = exchange.submit("d", BUY, 100, 50_000, T0).order_id
    (ref,), _ = exchange.close_interval(T0)
    # (1000·100000 + 2000·100001) / 3000 = 100000.667 → 100001
    assert (ref.price_micro_per_kwh, ref.volume_wh, ref.trade_count, ref.carried) == (
        100_001, 3_000, 2, False)
    assert published == [ref]
    assert exchange.reference_price(T0) is ref
    with pytest.raises(errors.UnknownOrder):
        exchange.order(leftover)  # finished and its interval closed: forgotten
    assert exchange.open_orders("d") == []


def test_reference_price_carries_over_and_starts_at_the_configured_price():
    exchange, _, _ = make(initial_price_micro_per_kwh=123_000)
    closed, _ = exchange.close_interval(T1)
    assert [(r.interval_start_s, r.price_micro_per_kwh, r.carried) for r in closed] == [
        (T0, 123_000, True), (T1, 123_000, True)]
    exchange.submit("a", SELL, 1_000, 99_000, 1800)
    exchange.submit("b", BUY, 1_000, 99_000, 1800)
    exchange.close_interval(2700)
    assert exchange.reference_price(1800).price_micro_per_kwh == 99_000
    assert exchange.reference_price(2700).price_micro_per_kwh == 99_000
    assert exchange.reference_price(2700).carried


def test_expired_order_status_and_gtc_carried_with_priority():
    exchange, _, _ = make()
    day = exchange.submit("a", SELL, 500, 100_000, T0)
    gtc_old = exchange.submit("c", SELL, 500, 100_000, T0, gtc=True)
    newer = exchange.submit("d", SELL, 500, 100_000, T1)
    day_order = exchange.order(day.order_id)
    exchange.close_interval(T0)
    assert day_order.status == EXPIRED
    assert gtc_old.order.interval_start_s == T1 and gtc_old.order.status == OPEN
    ack = exchange.submit("b", BUY, 500, 100_000, T1)
    assert [t.sell_order_id for t in ack.trades] == [gtc_old.order_id]
    assert exchange.order(newer.order_id).status == OPEN


def test_carried_gtc_order_keeps_submission_order_against_orders_already_there():
    exchange, _, _ = make()
    early = exchange.submit("d", SELL, 500, 100_000, T1)  # placed for T1 first
    late_gtc = exchange.submit("c", SELL, 500, 100_000, T0, gtc=True)
    exchange.close_interval(T0)
    bids, asks = exchange.resting_orders(T1)
    assert [o.order_id for o in asks] == [early.order_id, late_gtc.order_id]


def test_closed_and_far_intervals_are_refused():
    exchange, port, _ = make(intervals_ahead_max=4)
    exchange.close_interval(T0)
    before = snapshot(exchange, port)
    with pytest.raises(errors.IntervalClosed) as info:
        exchange.submit("a", SELL, 500, 100_000, T0)
    assert info.value.code == "interval_closed"
    with pytest.raises(errors.IntervalNotOpen):
        exchange.submit("a", SELL, 500, 100_000, T1 + 5 * 900)
    with pytest.raises(errors.InvalidOrder):
        exchange.submit("a", SELL, 500, 100_000, T1 + 1)
    with pytest.raises(errors.IntervalClosed):
        exchange.close_interval(T0)
    with pytest.raises(errors.InvalidOrder):
        exchange.close_interval(10**15)
    assert snapshot(exchange, port) == before


# ------------------------------------------------------------------ client order ids


def test_resubmission_with_the_same_client_id_is_idempotent():
    exchange, port, _ = make()
    exchange.submit("a", SELL, 500, 100_000, T0)
    first = exchange.submit("b", BUY, 800, 100_000, T0, client_id="app-17")
    assert [t.qty_wh for t in first.trades] == [500]
    again = exchange.submit("b", BUY, 800, 100_000, T0, client_id="app-17")
    assert again.duplicate and again.order_id == first.order_id and again.trades == ()
    assert again.filled_wh == 500
    assert port.trade_count == 1
    assert len(exchange.open_orders("b")) == 1


def test_client_id_reused_for_a_different_order_is_refused():
    exchange, port, _ = make()
    exchange.submit("b", BUY, 800, 100_000, T0, client_id="app-17")
    before = snapshot(exchange, port)
    with pytest.raises(errors.DuplicateClientId) as info:
        exchange.submit("b", BUY, 801, 100_000, T0, client_id="app-17")
    assert info.value.code == "duplicate_client_id"
    assert snapshot(exchange, port) == before
    # Client ids are per member: another member may use the same one.
    assert not exchange.submit("c", BUY, 801, 100_000, T0, client_id="app-17").duplicate


# ------------------------------------------------------------------ bad input changes nothing


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"qty_wh": 0}, errors.InvalidQuantity, "invalid_quantity"),
        ({"qty_wh": -5}, errors.InvalidQuantity, "invalid_quantity"),
        ({"qty_wh": 10**12}, errors.InvalidQuantity, "invalid_quantity"),
        ({"qty_wh": 1.5}, errors.InvalidQuantity, "invalid_quantity"),
        ({"qty_wh": True}, errors.InvalidQuantity, "invalid_quantity"),
        ({"price_micro_per_kwh": 0}, errors.InvalidPrice, "invalid_price"),
        ({"price_micro_per_kwh": -100}, errors.InvalidPrice, "invalid_price"),
        ({"price_micro_per_kwh": 10**13}, errors.InvalidPrice, "invalid_price"),
        ({"price_micro_per_kwh": "100"}, errors.InvalidPrice, "invalid_price"),
        ({"member": "nobody"}, errors.UnknownMember, "unknown_member"),
        ({"member": None}, errors.UnknownMember, "unknown_member"),
        ({"side": "hold"}, errors.InvalidOrder, "invalid_order"),
        ({"interval_start_s": "0"}, errors.InvalidOrder, "invalid_order"),
        ({"client_id": ""}, errors.InvalidOrder, "invalid_order"),
        ({"client_id": "x" * 65}, errors.InvalidOrder, "invalid_order"),
        ({"client_id": "a\nb"}, errors.InvalidOrder, "invalid_order"),
        ({"immediate": True, "side": SELL}, errors.InvalidOrder, "invalid_order"),
        ({"immediate": True, "gtc": True}, errors.InvalidOrder, "invalid_order"),
        ({"gtc": 1}, errors.InvalidOrder, "invalid_order"),
    ],
)
def test_bad_input_is_refused_with_a_code_and_changes_nothing(kwargs, error, code):
    exchange, port, _ = make()
    exchange.submit("a", SELL, 500, 100_000, T0)
    exchange.submit("c", BUY, 500, 90_000, T0)
    before = snapshot(exchange, port)
    order = {"member": "b", "side": BUY, "qty_wh": 500, "price_micro_per_kwh": 100_000,
             "interval_start_s": T0}
    order.update(kwargs)
    extra = {k: order.pop(k) for k in ("client_id", "gtc", "immediate") if k in order}
    with pytest.raises(error) as info:
        exchange.submit(order["member"], order["side"], order["qty_wh"],
                        order["price_micro_per_kwh"], order["interval_start_s"], **extra)
    assert info.value.code == code
    assert isinstance(info.value, ValueError) and info.value.as_dict()["message"]
    assert snapshot(exchange, port) == before


def test_open_order_limit_per_member_and_for_the_exchange():
    exchange, port, _ = make(open_orders_per_member_max=2, open_orders_max=3)
    exchange.submit("a", SELL, 100, 200_000, T0)
    exchange.submit("a", SELL, 100, 200_001, T0)
    before = snapshot(exchange, port)
    with pytest.raises(errors.TooManyOrders):
        exchange.submit("a", SELL, 100, 200_002, T0)
    exchange.submit("b", SELL, 100, 200_003, T0)
    with pytest.raises(errors.TooManyOrders):
        exchange.submit("c", SELL, 100, 200_004, T0)
    assert snapshot(exchange, port)[1] == before[1]
    exchange.cancel("a", exchange.open_orders("a")[0].order_id)
    exchange.submit("a", SELL, 100, 200_002, T0)


def test_config_refuses_nonsense():
    with pytest.raises(ValueError):
        ExchangeConfig(interval_s=0)
    with pytest.raises(ValueError):
        ExchangeConfig(initial_price_micro_per_kwh=0)
    with pytest.raises(ValueError):
        Exchange(MemoryPort(), first_interval_start_s=17)


def test_on_balance_change_of_unknown_member_is_refused():
    exchange, _, _ = make()
    with pytest.raises(errors.UnknownMember):
        exchange.on_balance_change("ghost")


# ------------------------------------------------------------------ the in-memory ledger port


def test_memory_port_is_idempotent_by_trade_id_and_refuses_what_the_ledger_would():
    port = MemoryPort()
    port.add_member("s", cap_wh=1_000, balance_wh=500)
    port.add_member("b", cap_wh=1_000, balance_wh=900)
    trade = Trade(1, T0, "b", "s", 100, 100_000, 10, 11, 11)
    port.settle_trade(trade)
    port.settle_trade(trade)
    assert (port.balance_wh("s"), port.balance_wh("b"), port.trade_count) == (400, 1_000, 1)
    for bad, code in [
        (Trade(1, T0, "b", "s", 50, 100_000, 10, 11, 11), "duplicate_trade_id"),
        (Trade(2, T0, "b", "s", 1, 100_000, 10, 11, 11), "above_cap"),
        (Trade(3, T0, "s", "b", 10_000, 100_000, 10, 11, 11), "insufficient_energy"),
        (Trade(4, T0, "s", "s", 1, 100_000, 10, 11, 11), "self_trade"),
        (Trade(5, T0, "x", "s", 1, 100_000, 10, 11, 11), "unknown_member"),
    ]:
        before = (port.balance_wh("s"), port.balance_wh("b"), port.total_money_micro())
        with pytest.raises(SettlementError) as info:
            port.settle_trade(bad)
        assert info.value.code == code
        assert (port.balance_wh("s"), port.balance_wh("b"), port.total_money_micro()) == before


def test_ledger_refusal_during_matching_keeps_book_and_ledger_in_step():
    class FailingPort(MemoryPort):
        __slots__ = ("fail_on",)

        def settle_trade(self, trade):
            if trade.trade_id == self.fail_on:
                raise SettlementError("ledger unavailable", "unavailable")
            super().settle_trade(trade)

    port = FailingPort()
    port.fail_on = 2
    for name in ("a", "b", "c"):
        port.add_member(name, cap_wh=CAP_WH, balance_wh=5_000)
    exchange = Exchange(port)
    first = exchange.submit("a", SELL, 100, 100_000, T0)
    second = exchange.submit("c", SELL, 100, 100_000, T0)
    with pytest.raises(SettlementError):
        exchange.submit("b", BUY, 300, 100_000, T0)
    assert port.trade_count == 1
    assert exchange.order(first.order_id).status == FILLED
    assert exchange.order(second.order_id).remaining_wh == 100
    assert exchange.quote(T0) == (None, 100_000)
    assert exchange.open_orders("b") == []


def test_a_pristine_exchange_can_be_rebased_once_used_not():
    from host_tools.exchange.book import Exchange, ExchangeConfig
    from host_tools.exchange.port import MemoryPort

    port = MemoryPort()
    port.add_member("a", balance_wh=1000, cap_wh=5000)
    ex = Exchange(port, ExchangeConfig(interval_s=900), first_interval_start_s=900 * 1000)
    assert ex.pristine
    ex.rebase(900 * 10)
    assert ex.open_from_s == 900 * 10
    with pytest.raises(ValueError):
        ex.rebase(901)
    ex.submit("a", "sell", 100, 50_000, 900 * 10)
    assert not ex.pristine
    with pytest.raises(ValueError, match="never been used"):
        ex.rebase(900 * 20)


def test_closing_an_interval_forgets_exactly_its_own_orders_and_client_ids():
    """Each book keeps its interval's orders, so a close touches only those: the open ones
    expire (or, good-till-cancelled, move on), every other of them is forgotten."""
    exchange, _, _ = make()
    exchange.submit("a", SELL, 500, 100_000, T0)
    filled = exchange.submit("b", BUY, 500, 100_000, T0, client_id="fill").order
    cancelled = exchange.submit("c", BUY, 500, 90_000, T0, client_id="cxl").order
    exchange.cancel("c", cancelled.order_id)
    unserved = exchange.submit("d", BUY, 500, 80_000, T0, immediate=True).order
    expiring = exchange.submit("d", SELL, 500, 300_000, T0, client_id="day").order
    carried = exchange.submit("a", SELL, 500, 310_000, T0, gtc=True, client_id="gtc").order
    later = exchange.submit("c", BUY, 500, 70_000, T1, client_id="later").order
    assert unserved.status == CANCELLED and filled.status == FILLED
    exchange.close_interval(T0)
    for order in (filled, cancelled, unserved, expiring):
        with pytest.raises(errors.UnknownOrder):
            exchange.order(order.order_id)
    assert expiring.status == EXPIRED and exchange.open_orders("d") == []
    assert exchange.order(carried.order_id) is carried and carried.interval_start_s == T1
    assert exchange.order(later.order_id) is later
    assert exchange.open_order_count == 2
    # The forgotten orders' client ids are free again; the open orders' are still taken.
    assert not exchange.submit("b", BUY, 100, 60_000, T1, client_id="fill").duplicate
    assert exchange.submit("c", BUY, 500, 70_000, T1, client_id="later").duplicate
    assert exchange.submit("a", SELL, 500, 310_000, T1, gtc=True, client_id="gtc").duplicate
    exchange.close_interval(T1)
    with pytest.raises(errors.UnknownOrder):
        exchange.order(later.order_id)
    assert exchange.order(carried.order_id).interval_start_s == 2 * T1
    assert [o.order_id for o in exchange.open_orders("a")] == [carried.order_id]
