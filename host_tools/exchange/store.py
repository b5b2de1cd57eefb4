"""An append-only SQLite trade journal, and a port that persists every settled trade through it.

This is the exchange's own persistence until the double-entry ledger's port is wired in: the
benchmark's `orders_per_s_with_ledger` measures matching plus writing every trade to SQLite in one
transaction per batch. When the ledger lands, `PersistingPort` is replaced by the ledger-backed
`SettlementPort` and the journal remains useful as the exchange's own audit trail.
"""
import sqlite3

from host_tools.exchange.port import SettlementError, Trade

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    trade_id INTEGER PRIMARY KEY,
    interval_start_s INTEGER NOT NULL,
    buyer TEXT NOT NULL,
    seller TEXT NOT NULL,
    qty_wh INTEGER NOT NULL CHECK (qty_wh > 0),
    price_micro_per_kwh INTEGER NOT NULL CHECK (price_micro_per_kwh > 0),
    value_micro INTEGER NOT NULL CHECK (value_micro >= 0),
    buy_order_id INTEGER NOT NULL,
    sell_order_id INTEGER NOT NULL,
    maker_order_id INTEGER NOT NULL,
    CHECK (buyer <> seller)
);
CREATE TRIGGER IF NOT EXISTS trades_no_update BEFORE UPDATE ON trades
BEGIN SELECT RAISE(ABORT, 'trades are append-only'); END;
CREATE TRIGGER IF NOT EXISTS trades_no_delete BEFORE DELETE ON trades
BEGIN SELECT RAISE(ABORT, 'trades are append-only'); END;
"""

_INSERT = "INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COLUMNS = ("trade_id, interval_start_s, buyer, seller, qty_wh, price_micro_per_kwh, value_micro,"
            " buy_order_id, sell_order_id, maker_order_id")


class SqliteTradeStore:
    """Trades in one SQLite file; a batch is one transaction, a re-sent trade is recognised."""

    def __init__(self, path, synchronous="NORMAL"):
        if synchronous not in ("OFF", "NORMAL", "FULL"):
            raise ValueError("synchronous must be OFF, NORMAL or FULL")
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def close(self):
        self._db.close()

    def append(self, trades):
        """Write a batch atomically. A trade already stored identically is skipped (idempotent);
        a different trade under a stored id refuses the whole batch."""
        rows = [t.as_tuple() for t in trades]
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                db.executemany(_INSERT, rows)
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                self._append_checked(rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return len(rows)

    def _append_checked(self, rows):
        db = self._db
        for row in rows:
            stored = db.execute(f"SELECT {_COLUMNS} FROM trades WHERE trade_id = ?",
                                (row[0],)).fetchone()
            if stored is None:
                db.execute(_INSERT, row)
            elif tuple(stored) != tuple(row):
                raise SettlementError(f"trade id {row[0]} already stored differently",
                                      "duplicate_trade_id")

    def trades(self):
        """Read back every trade, checking each row's money rule as it is read."""
        out = []
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM trades ORDER BY trade_id"):
            trade = Trade(row[0], row[1], row[2], row[3], row[4], row[5], row[7], row[8], row[9])
            if trade.value_micro != row[6]:
                raise ValueError(f"trade {row[0]} read back with an inconsistent value")
            out.append(trade)
        return out

    def count(self):
        return self._db.execute("SELECT count(*) FROM trades").fetchone()[0]


class PersistingPort:
    """A `SettlementPort` that settles in an inner port and journals every trade in batches.

    `flush()` writes the buffered trades in one transaction; the buffer is bounded: reaching
    `batch_trades_max` flushes.
    """

    def __init__(self, inner, store, batch_trades_max=10_000):
        if type(batch_trades_max) is not int or batch_trades_max <= 0:
            raise ValueError("batch_trades_max must be a positive integer")
        self._inner = inner
        self._store = store
        self._batch = []
        self._batch_trades_max = batch_trades_max
        self.has_member = inner.has_member
        self.balance_wh = inner.balance_wh
        self.cap_wh = inner.cap_wh
        self.money_micro = inner.money_micro

    def settle_trade(self, trade):
        self._inner.settle_trade(trade)
        self._batch.append(trade)
        if len(self._batch) >= self._batch_trades_max:
            self.flush()

    def flush(self):
        batch = self._batch
        if batch:
            self._store.append(batch)
            self._batch = []
