"""The exchange's append-only SQLite trade journal and the persisting port the benchmark uses."""
import sqlite3

import pytest

from host_tools.exchange.book import BUY, SELL, Exchange
from host_tools.exchange.port import MemoryPort, SettlementError, Trade
from host_tools.exchange.store import PersistingPort, SqliteTradeStore


def trade(trade_id, qty_wh=100):
    return Trade(trade_id, 0, "b", "s", qty_wh, 123_457, 10, 11, 10)


def test_batch_is_stored_and_read_back_identically(tmp_path):
    store = SqliteTradeStore(tmp_path / "t.sqlite")
    batch = [trade(1), trade(2, 7)]
    assert store.append(batch) == 2
    assert store.trades() == batch
    store.close()
    reopened = SqliteTradeStore(tmp_path / "t.sqlite")
    assert reopened.trades() == batch


def test_resent_trades_are_idempotent_and_a_conflicting_id_refuses_the_batch(tmp_path):
    store = SqliteTradeStore(tmp_path / "t.sqlite")
    store.append([trade(1)])
    store.append([trade(1), trade(2)])
    assert [t.trade_id for t in store.trades()] == [1, 2]
    with pytest.raises(SettlementError) as info:
        store.append([trade(3), trade(1, qty_wh=999)])
    assert info.value.code == "duplicate_trade_id"
    assert store.count() == 2  # trade 3 was rolled back with the batch


def test_the_journal_is_append_only(tmp_path):
    store = SqliteTradeStore(tmp_path / "t.sqlite")
    store.append([trade(1)])
    db = sqlite3.connect(tmp_path / "t.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE trades SET qty_wh = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM trades")
    db.close()
    assert store.trades() == [trade(1)]


def test_tampered_value_is_detected_on_read(tmp_path):
    path = tmp_path / "t.sqlite"
    store = SqliteTradeStore(path)
    store.append([trade(1)])
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER trades_no_update")
    db.execute("UPDATE trades SET value_micro = value_micro + 1")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="inconsistent"):
        store.trades()


def test_persisting_port_journals_every_trade_of_the_exchange(tmp_path):
    inner = MemoryPort()
    for name in ("a", "b"):
        inner.add_member(name, cap_wh=10_000, balance_wh=5_000)
    store = SqliteTradeStore(tmp_path / "t.sqlite")
    port = PersistingPort(inner, store, batch_trades_max=2)
    exchange = Exchange(port)
    made = []
    for step in range(5):
        exchange.submit("a", SELL, 100, 100_000 + step, 0)
        made.extend(exchange.submit("b", BUY, 100, 200_000, 0).trades)
    assert store.count() == 4  # two full batches written on their own
    port.flush()
    assert store.trades() == made
    assert inner.balance_wh("b") == 5_500
    with pytest.raises(ValueError):
        PersistingPort(inner, store, batch_trades_max=0)
