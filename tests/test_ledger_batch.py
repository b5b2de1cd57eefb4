"""Batches of transfers (one commit, a savepoint per transfer), the ledger's read caches and the
store's `executemany`, on SQLite and PostgreSQL: faster, but every transfer still stands alone."""
import pytest

from host_tools.settlement import MONEY, WATT, Ledger
from host_tools.settlement.errors import (
    CapExceeded,
    IdempotencyConflict,
    InsufficientBalance,
    UnknownAccount,
)
from tests import test_settlement_support as support
from tests.test_settlement_support import CLOCK_MS, T0_S, open_ledger, snapshot

ledger_url, key_path = support.ledger_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures

A, B, C = "member:alice", "member:bob", "member:carol"
NEXT_S = T0_S + 900


@pytest.fixture
def ledger(ledger_url, key_path):
    ledger = open_ledger(ledger_url, key_path)
    for name in ("alice", "bob", "carol"):
        ledger.add_member(name, at_s=T0_S)
    ledger.settle_interval(T0_S, {"alice": (0, 1500), "bob": (0, 2000)})
    yield ledger
    ledger.close()


def _trade(ledger, transfer_id, seller, buyer, wh, micro, **kwargs):
    return ledger.transfer(transfer_id, [(seller, buyer, WATT, wh), (buyer, seller, MONEY, micro)],
                           at_s=NEXT_S, kind="trade", allow_receivable=True, **kwargs)


def test_a_refused_transfer_in_a_batch_rolls_back_alone(ledger):
    with ledger.batch():
        first = _trade(ledger, "t-1", A, C, 300, 30_000)
        with pytest.raises(InsufficientBalance):  # bob holds 2000 Wh: this one goes back alone
            _trade(ledger, "t-2", B, C, 2100, 90_000)
        with pytest.raises(CapExceeded):  # carol's cap is 2000 Wh
            _trade(ledger, "t-3", B, C, 1701, 1)
        third = _trade(ledger, "t-4", B, C, 200, 20_000)
        # Inside the batch, reads already see the batch's own transfers.
        assert ledger.balance(C, WATT) == 500 and ledger.balance(C, MONEY) == -50_000
    assert ledger.transfer_info("t-2") is None and ledger.transfer_info("t-3") is None
    assert third.first_seq == first.first_seq + 2  # the refused ones left no gap in the chain
    assert (ledger.balance(A, WATT), ledger.balance(B, WATT), ledger.balance(C, WATT)) == (
        1200, 1800, 500)
    assert ledger.balance(C, MONEY) == -50_000 and ledger.check().ok


def test_an_exception_leaving_the_batch_rolls_back_all_of_it(ledger):
    before = snapshot(ledger)
    with pytest.raises(RuntimeError):
        with ledger.batch():
            _trade(ledger, "t-1", A, C, 300, 30_000)
            raise RuntimeError("the caller gave up")
    assert snapshot(ledger) == before and ledger.transfer_info("t-1") is None
    # Caches did not keep what was rolled back.
    assert ledger.balance(C, WATT) == 0
    with ledger.batch():
        assert ledger.balance(C, WATT) == 0 and ledger.balance(A, WATT) == 1500


def test_replays_inside_a_batch_are_idempotent_and_conflicts_refused(ledger):
    with ledger.batch():
        first = _trade(ledger, "t-1", A, C, 300, 30_000)
        again = _trade(ledger, "t-1", A, C, 300, 30_000)
        with pytest.raises(IdempotencyConflict):
            _trade(ledger, "t-1", A, C, 301, 30_000)
    assert again.replayed and again.first_seq == first.first_seq
    assert ledger.balance(C, WATT) == 300 and ledger.check().ok


def test_balances_read_after_another_connection_booked_are_fresh(ledger, ledger_url, key_path):
    with ledger.batch():
        assert ledger.balance(A, WATT) == 1500  # cached from here on
    other = Ledger.open(ledger_url, key_path=key_path, clock_ms=lambda: CLOCK_MS)
    try:
        _trade(other, "t-other", A, C, 400, 40_000)
    finally:
        other.close()
    with ledger.batch():
        assert ledger.balance(A, WATT) == 1100  # the chain head moved: the cache was dropped
        with pytest.raises(InsufficientBalance):
            _trade(ledger, "t-mine", A, B, 1101, 1)
    assert ledger.balance(A, WATT) == 1100 and ledger.check().ok


def test_an_account_created_in_a_rolled_back_transaction_is_forgotten(ledger):
    with pytest.raises(RuntimeError):
        with ledger.db.transaction():
            ledger.add_member("dave", at_s=NEXT_S)
            assert ledger.is_member("dave")  # cached inside the transaction
            raise RuntimeError("rolled back")
    assert not ledger.is_member("dave")
    with pytest.raises(UnknownAccount):
        ledger.account_kind("member:dave")


def test_a_transfer_refused_inside_a_callers_transaction_leaves_no_entries(ledger):
    """Before savepoints, a caller that caught the refusal would have committed its half."""
    before = snapshot(ledger)
    with ledger.db.transaction():
        with pytest.raises(InsufficientBalance):
            _trade(ledger, "t-1", B, C, 2100, 1)
    assert snapshot(ledger) == before


def test_store_executemany_runs_one_statement_per_row(ledger):
    db = ledger.db
    with db.transaction():
        db.execute("CREATE TABLE IF NOT EXISTS scratch_rows (k TEXT PRIMARY KEY, v BIGINT)")
        db.executemany("INSERT INTO scratch_rows (k, v) VALUES (?, ?)",
                       [("a", 1), ("b", 2), ["c", 3]])
    assert db.all("SELECT k, v FROM scratch_rows ORDER BY k") == [("a", 1), ("b", 2), ("c", 3)]
    with pytest.raises(db.errors):  # a duplicate key fails the statement like execute would
        with db.transaction():
            db.executemany("INSERT INTO scratch_rows (k, v) VALUES (?, ?)", [("d", 4), ("a", 5)])
    assert db.one("SELECT COUNT(*) FROM scratch_rows")[0] == 3
    with db.transaction():
        db.execute("DROP TABLE scratch_rows")


def test_a_failed_statement_in_a_savepoint_leaves_the_transaction_usable(ledger):
    """PostgreSQL aborts a transaction on any error; the savepoint brings it back."""
    db = ledger.db
    rollbacks = db.rollbacks
    with db.transaction():
        db.execute("CREATE TABLE IF NOT EXISTS scratch_rows (k TEXT PRIMARY KEY, v BIGINT)")
        db.execute("INSERT INTO scratch_rows (k, v) VALUES ('a', 1)")
        with pytest.raises(db.errors):
            with db.atomic():
                db.execute("INSERT INTO scratch_rows (k, v) VALUES ('b', 2)")
                db.execute("INSERT INTO scratch_rows (k, v) VALUES ('a', 3)")
        db.execute("INSERT INTO scratch_rows (k, v) VALUES ('c', 4)")
    assert db.all("SELECT k, v FROM scratch_rows ORDER BY k") == [("a", 1), ("c", 4)]
    assert db.rollbacks == rollbacks + 1  # what tells the ledger to drop its caches
    with db.transaction():
        db.execute("DROP TABLE scratch_rows")
