"""The ledger as the exchange's settlement port: trades are atomic, idempotent ledger
transfers, and the exchange's matching engine runs unchanged on top of it."""
import pytest

from host_tools.exchange.book import Exchange
from host_tools.exchange.port import Trade
from host_tools.settlement import MONEY, WATT
from host_tools.settlement.errors import CapExceeded, IdempotencyConflict, InsufficientBalance
from host_tools.settlement.port import LedgerPort
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger, snapshot

ledger_url, key_path = support.ledger_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures


@pytest.fixture
def port(ledger_url, key_path):
    ledger = open_ledger(ledger_url, key_path)
    for name in ("alice", "bob", "carol"):
        ledger.add_member(name, at_s=T0_S)
    ledger.settle_interval(T0_S, {"alice": (0, 1500)})
    yield LedgerPort(ledger)
    ledger.close()


def trade(trade_id, buyer, seller, qty_wh, price=120_000):
    return Trade(trade_id, T0_S + 900, buyer, seller, qty_wh, price, 10 + trade_id, 20 + trade_id,
                 20 + trade_id)


def test_port_answers_from_the_ledger(port):
    assert port.has_member("alice") and not port.has_member("zed") and not port.has_member(3)
    assert (port.balance_wh("alice"), port.cap_wh("alice"), port.money_micro("alice")) == (1500, 2000, 0)


def test_a_trade_moves_energy_and_money_once(port):
    result = port.settle_trade(trade(1, "bob", "alice", 400))
    assert result.transfer_id == "trade:1" and result.interval_start_s == T0_S + 900
    assert (port.balance_wh("alice"), port.balance_wh("bob")) == (1100, 400)
    # 400 Wh at 120 000 µ/kWh = 48 000 µ; bob had none: a receivable, as MemoryPort allows.
    assert (port.money_micro("alice"), port.money_micro("bob")) == (48_000, -48_000)
    before = snapshot(port.ledger)
    assert port.settle_trade(trade(1, "bob", "alice", 400)).replayed
    assert snapshot(port.ledger) == before
    with pytest.raises(IdempotencyConflict):
        port.settle_trade(trade(1, "bob", "alice", 401))
    with pytest.raises(InsufficientBalance):
        port.settle_trade(trade(2, "carol", "bob", 401))
    port.ledger.settle_interval(T0_S + 900, {"carol": (0, 2000)})
    port.settle_trade(trade(3, "alice", "carol", 900))
    before = snapshot(port.ledger)
    with pytest.raises(CapExceeded):  # alice is at 1100 + 900 = 2000 Wh, her cap
        port.settle_trade(trade(4, "alice", "carol", 1))
    assert snapshot(port.ledger) == before
    assert port.ledger.check().ok


def test_strict_money_without_receivables(port):
    strict = LedgerPort(port.ledger, allow_receivable=False)
    with pytest.raises(InsufficientBalance):
        strict.settle_trade(trade(4, "bob", "alice", 10))


def test_the_exchange_runs_on_the_ledger(port):
    exchange = Exchange(port, first_interval_start_s=T0_S + 900)
    exchange.submit("alice", "sell", 600, 100_000, T0_S + 900)
    ack = exchange.submit("bob", "buy", 500, 150_000, T0_S + 900)
    assert [(t.seller, t.buyer, t.qty_wh, t.price_micro_per_kwh) for t in ack.trades] == [
        ("alice", "bob", 500, 100_000)]
    ledger = port.ledger
    assert ledger.balance("member:bob", WATT) == 500
    assert ledger.balance("member:alice", MONEY) == 50_000
    assert ledger.check().ok
