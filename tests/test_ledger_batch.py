"""Batches of transfers (one commit; each transfer checked before it writes, so a refusal has
nothing to undo), the ledger's read caches and the store's `executemany` and savepoints, on SQLite
and PostgreSQL: faster, but every transfer still stands alone."""
import pytest

from host_tools.settlement import MONEY, WATT, Ledger
from host_tools.settlement.errors import (
    CapExceeded,
    IdempotencyConflict,
    InsufficientBalance,
    UnknownAccount,
)
from host_tools.settlement.store import TransactionAborted
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


def test_a_refused_transfer_writes_nothing_so_needs_no_savepoint_and_keeps_the_caches(ledger):
    """Limits are judged on the balances the transfer would leave, before it writes."""
    db = ledger.db
    with ledger.batch():
        _trade(ledger, "t-1", A, C, 300, 30_000)
        savepoints, rollbacks = db.savepoint_count, db.rollbacks
        cache = ledger._locked_cache()
        with pytest.raises(InsufficientBalance):
            _trade(ledger, "t-2", B, C, 2100, 90_000)
        with pytest.raises(CapExceeded):
            _trade(ledger, "t-3", B, C, 1701, 1)
        assert (db.savepoint_count, db.rollbacks) == (savepoints, rollbacks)
        assert ledger._locked_cache() is cache  # nothing was undone, so nothing was dropped
        _trade(ledger, "t-4", B, C, 1700, 1)  # exactly up to carol's cap of 2000 Wh
    assert ledger.balance(C, WATT) == 2000 and ledger.check().ok


def test_a_replay_is_recognised_even_when_its_legs_would_now_be_refused(ledger):
    with ledger.batch():
        first = _trade(ledger, "t-1", A, C, 1200, 1)
        _trade(ledger, "t-2", A, C, 300, 1)  # alice now holds nothing
        again = _trade(ledger, "t-1", A, C, 1200, 1)
        with pytest.raises(IdempotencyConflict):
            _trade(ledger, "t-1", A, C, 1300, 1)  # refused by its limits, but the id is taken
    assert again.replayed and again.first_seq == first.first_seq
    assert ledger.balance(A, WATT) == 0 and ledger.check().ok


def _failing_balance_writes(ledger, monkeypatch):
    """Make the next balances write fail like the database would, after the entries went in."""
    db = ledger.db
    executemany = db.executemany

    def failing(sql, rows):
        if sql.startswith("INSERT INTO balances"):
            monkeypatch.setattr(db, "executemany", executemany)
            raise db.errors[0]("injected failure")
        return executemany(sql, rows)

    monkeypatch.setattr(db, "executemany", failing)


def test_a_write_failing_part_way_dooms_the_batch_instead_of_committing_half(ledger, monkeypatch):
    before = snapshot(ledger)
    with pytest.raises(TransactionAborted):
        with ledger.batch():
            _trade(ledger, "t-1", A, C, 300, 30_000)
            _failing_balance_writes(ledger, monkeypatch)
            with pytest.raises(ledger.db.errors):
                _trade(ledger, "t-2", B, C, 300, 30_000)  # its transfer and entries went in
            with pytest.raises(TransactionAborted):
                _trade(ledger, "t-3", B, C, 100, 10_000)  # nothing more is written
    assert snapshot(ledger) == before and ledger.check().ok
    assert ledger.transfer_info("t-1") is None and ledger.transfer_info("t-2") is None
    _trade(ledger, "t-2", B, C, 300, 30_000)  # the connection is usable again
    assert ledger.balance(C, WATT) == 300 and ledger.check().ok


def test_an_enclosing_savepoint_undoes_the_failed_write_and_the_batch_goes_on(ledger, monkeypatch):
    db = ledger.db
    with ledger.batch():
        _trade(ledger, "t-1", A, C, 300, 30_000)
        _failing_balance_writes(ledger, monkeypatch)
        with pytest.raises(db.errors):
            with db.atomic():
                _trade(ledger, "t-2", B, C, 300, 30_000)
        _trade(ledger, "t-3", B, C, 100, 10_000)
    assert ledger.transfer_info("t-2") is None
    assert ledger.balance(C, WATT) == 400 and ledger.check().ok


def test_entry_leaves_and_digests_are_the_bytes_the_ledger_always_hashed():
    """The ledger keeps its own encoders (built once, not per call): the chain's leaves must stay
    `checkpoints.entry_leaf`'s bytes and a transfer's digest what older ledgers stored, or
    audits and replays of booked transfers would fail."""
    import hashlib
    import json

    from host_tools.settlement import checkpoints
    from host_tools.settlement import ledger as ledger_module

    odd = "member:ünï\"\\\n"
    for row in ((1, "trade:1", 0, "member:alice", "member:bob", WATT, 300, 900),
                (2**40, "#grant:x", 7, "education_pool", odd, "TSL", 2**62, 0)):
        assert ledger_module._entry_leaf(list(row)).encode() == checkpoints.entry_leaf(*row)
    for kind, rows in (("trade", [(A, B, WATT, 300), (B, A, MONEY, 7)]),
                       ("correction", [(odd, "grid", "TSL", 1)]), ("hold", [])):
        text = json.dumps([kind, rows], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert ledger_module._digest(kind, rows) == hashlib.sha256(text.encode()).hexdigest()
