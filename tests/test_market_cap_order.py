"""ECONOMICS §2 in the service: energy a member exports beyond their cap is first offered on the
market by their agent, and only what is still above the cap at the close is sold to the grid.
Signed meter records go through `MarketIngest` into a real SQLite ledger."""
import json

from host_tools.api import store as api_store
from host_tools.exchange.book import BUY, SELL
from host_tools.settlement import WATT, member_account
from host_tools.settlement.market import Market, MarketConfig, MarketIngest
from tests.test_ingest_support import Rig
from tests.test_market import BUYER, SELLER, STEP_S, community, opt_in, trades_in_ledger
from tests.test_settlement_support import T0_S

N_S = T0_S + STEP_S


def _drive(tmp_path, name):
    """Alice's meter exports 3000 Wh in N (her cap is 2000 Wh); bob's meter reports nothing.

    Returns (ledger, rig, what the market saw when it closed N, N's settlement result).
    """
    rig = Rig(f"sqlite:///{tmp_path / (name + '.db')}", tmp_path / f"{name}.pem")
    ledger = rig.ledger
    ledger.settle_interval(T0_S, {})
    api_store.ensure_tables(ledger.db)
    opt_in(ledger, "alice", SELLER)
    opt_in(ledger, "bob", BUYER)
    seen = {}

    class Spy(Market):
        def close_interval(self, interval_start_s):
            seen[interval_start_s] = (self.ledger.balance(member_account("alice"), WATT),
                                      self.ledger.next_open_interval())
            return super().close_interval(interval_start_s)

    market = Spy(ledger, "demo", config=MarketConfig(seed=3))
    ingest = MarketIngest(ledger, rig.registry, "demo", grace_s=0, market=market)
    alice, bob = rig.device("alice"), rig.device("bob")
    for minute, export_wh in ((0, 0), (3, 750), (6, 750), (9, 750), (12, 750), (16, 0), (31, 0)):
        at_s = N_S + 60 * minute
        ingest.handle(alice.topic, alice.record(at_s, 0, export_wh).encode(), at_s)
        ingest.handle(bob.topic, bob.record(at_s, 0, 0).encode(), at_s)
    row = ledger.db.one("SELECT result FROM intervals WHERE interval_start_s = ?", (N_S,))
    assert ingest.counts["market_failures"] == 0 and row is not None
    return ledger, rig, seen, json.loads(row[0])


def test_above_cap_energy_is_offered_on_the_market_before_the_rest_is_fed_in(tmp_path):
    ledger, rig, seen, result = _drive(tmp_path, "a")
    # The market closed N after N's energy was booked and before N was closed: alice's agent
    # saw all 3000 Wh, not a balance already cut to her cap.
    assert seen[N_S] == (3000, N_S)
    trades = trades_in_ledger(ledger, N_S)
    sold_on_market = sum(qty for seller, _, qty, _, _ in trades if seller == member_account("alice"))
    assert sold_on_market == 400  # bob's agent bids up to his lower threshold (20 % of 2000 Wh)
    # Only what the market did not take went to the grid: 3000 − 2000 (cap) − 400.
    assert result["minted_wh"] == 3000 and result["sold_wh"] == 600
    assert ledger.balance(member_account("alice"), WATT) == 2000
    assert ledger.balance(member_account("bob"), WATT) == 400
    # Trades of N are booked in N and covered by N's checkpoint.
    for transfer_id, interval_s in ledger.db.all(
            "SELECT transfer_id, interval_start_s FROM transfers WHERE kind = 'trade'"):
        assert interval_s == N_S, transfer_id
    assert ledger.check().ok and ledger.verify_checkpoints().ok
    rig.close()


def test_the_run_reproduces(tmp_path):
    first = _drive(tmp_path, "a")
    second = _drive(tmp_path, "b")
    assert trades_in_ledger(first[0]) == trades_in_ledger(second[0])
    assert first[3]["sold_wh"] == second[3]["sold_wh"]
    first[1].close()
    second[1].close()


def test_resting_orders_covered_by_the_booked_energy_trade_before_the_close(tmp_path):
    """An ask placed for energy not yet produced executes once N's production is booked."""
    ledger = community(tmp_path, ["alice", "bob"], {})
    market = Market(ledger, "demo", config=MarketConfig(seed=1))
    ask = market.exchange.submit("alice", SELL, 500, 100_000, N_S)
    bid = market.exchange.submit("bob", BUY, 500, 120_000, N_S)
    assert not ask.trades and not bid.trades  # alice holds nothing yet: the ask is uncovered
    ledger.settle_energy(N_S, {"alice": (0, 800)})
    row = market.close_interval(N_S)
    assert (row["trade_count"], row["volume_wh"], row["price_micro_per_kwh"]) == (1, 500, 100_000)
    assert trades_in_ledger(ledger, N_S) == [(member_account("alice"), member_account("bob"),
                                               500, 100_000, 50_000)]
    result = ledger.settle_interval(N_S, {"alice": (0, 800)})
    assert result["sold_wh"] == 0 and ledger.balance(member_account("alice"), WATT) == 300
    assert ledger.check().ok and ledger.verify_checkpoints().ok
    ledger.close()
