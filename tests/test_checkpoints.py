"""Signed checkpoints: every tampering with entries or checkpoints is found and named."""
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.settlement import checkpoints as chain
from host_tools.settlement import merkle
from host_tools.settlement.errors import LedgerError
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger

ledger_url, sqlite_url, key_path = support.ledger_url, support.sqlite_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures


def _closed(url, key_path):
    ledger = open_ledger(url, key_path)
    ledger.add_member("alice", at_s=T0_S)
    ledger.add_member("bob", storage_capacity_wh=1000, at_s=T0_S)
    for k in range(3):
        ledger.settle_interval(T0_S + 900 * k, {"alice": (100 * k, 1500), "bob": (300, 0)})
    ledger.transfer("after-last-close", [("member:alice", "member:bob", "WATT", 10)])
    return ledger


@pytest.fixture
def closed(ledger_url, key_path):
    ledger = _closed(ledger_url, key_path)
    yield ledger
    ledger.close()


@pytest.fixture
def closed_sqlite(sqlite_url, key_path):
    """Tamper tests edit rows directly; the verifier reads both backends through one path."""
    ledger = _closed(sqlite_url, key_path)
    yield ledger
    ledger.close()


def test_checkpoints_partition_the_chain_and_are_signed(closed, key_path):
    rows = closed.db.all("SELECT number, first_seq, last_seq, entry_count, merkle_root, body, "
                         "signature, prev_checkpoint_hash, hash FROM checkpoints ORDER BY number")
    assert [row[0] for row in rows] == [1, 2, 3]
    assert rows[0][1] == 1
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert later[1] == earlier[2] + 1 and later[7] == earlier[8]
    public_key = chain.load_public_key(key_path)
    for number, first, last, count, root, body, signature, _, body_hash in rows:
        assert count == last - first + 1
        leaves = [chain.entry_leaf(*row) for row in closed.db.all(
            "SELECT seq, transfer_id, leg, debit, credit, asset, amount, interval_start_s "
            "FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last))]
        assert merkle.root(leaves).hex() == root
        # Independent check with cryptography directly, not through our helper.
        public_key.verify(bytes.fromhex(signature), body.encode(), ec.ECDSA(hashes.SHA256()))
        assert hashlib.sha256(body.encode()).hexdigest() == body_hash
        assert json.loads(body)["number"] == number
    report = closed.verify_checkpoints(public_key)
    assert report.ok and report.checkpoints == 3 and report.entries == rows[-1][2] + 1


@pytest.mark.parametrize("sql, params, message", [
    ("UPDATE entries SET amount = amount + 1 WHERE seq = 5", (), "entry 5: stored hash"),
    ("UPDATE entries SET hash = ? WHERE seq = 3", ("ab" * 32,), "entry 3: stored hash"),
    ("DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)", (), "chain head"),
    ("UPDATE checkpoints SET merkle_root = ? WHERE number = 2", ("cd" * 32,), "checkpoint 2"),
    ("UPDATE checkpoints SET closed_at_ms = closed_at_ms + 1 WHERE number = 1", (),
     "checkpoint 1 (interval"),
    ("UPDATE checkpoints SET signature = ? WHERE number = 3", ("3006020101020101",),
     "checkpoint 3 (interval"),
    ("UPDATE checkpoints SET prev_checkpoint_hash = ? WHERE number = 2", ("00" * 32,),
     "checkpoint 2"),
])
def test_tampering_is_reported_precisely(closed_sqlite, sql, params, message):
    closed = closed_sqlite
    assert closed.verify_checkpoints().ok
    closed.db.execute(sql, params)
    report = closed.verify_checkpoints()
    assert not report.ok
    assert message in report.problem


def test_a_deleted_entry_in_the_middle_is_named(closed_sqlite):
    closed = closed_sqlite
    closed.db.execute("DELETE FROM entries WHERE seq = 4")
    assert closed.verify_checkpoints().problem == "entry 4 is missing (next stored entry is 5)"


def test_a_rewritten_and_resigned_history_fails_against_the_trusted_key(closed_sqlite, tmp_path):
    closed = closed_sqlite
    """Someone with database access but not the service key cannot forge checkpoints."""
    forged_key = chain.load_or_create_signing_key(str(tmp_path / "forged.pem"))
    for number, body in closed.db.all("SELECT number, body FROM checkpoints"):
        closed.db.execute("UPDATE checkpoints SET signature = ? WHERE number = ?",
                          (chain.sign(forged_key, body.encode()), number))
    closed.db.execute("UPDATE meta SET value = ? WHERE key = 'service_public_key'",
                      (chain.public_key_pem(forged_key.public_key()),))
    assert closed.verify_checkpoints().ok  # consistent with the key it records...
    trusted = chain.load_public_key(closed.key_path)
    report = closed.verify_checkpoints(trusted)  # ...but not signed by the service
    assert "signature does not verify with the given key" in report.problem


def test_a_different_service_key_is_refused(closed_sqlite, tmp_path):
    closed = closed_sqlite
    closed._signing_key = None
    closed.key_path = str(tmp_path / "other.pem")
    with pytest.raises(chain.KeyFileError):
        closed.settle_interval(T0_S + 2700, {})


def test_key_files(tmp_path):
    path = str(tmp_path / "k.pem")
    key = chain.load_or_create_signing_key(path)
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    again = chain.load_or_create_signing_key(path)
    assert chain.public_key_pem(again.public_key()) == chain.public_key_pem(key.public_key())
    (tmp_path / "pub.pem").write_text(chain.public_key_pem(key.public_key()))
    assert chain.public_key_pem(chain.load_public_key(str(tmp_path / "pub.pem"))) == \
        chain.public_key_pem(key.public_key())
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(LedgerError):
        chain.load_public_key(str(tmp_path / "junk.pem"))
    with pytest.raises(LedgerError):
        chain.load_or_create_signing_key(str(tmp_path / "pub.pem"))
    with pytest.raises(LedgerError):
        chain.load_public_key(str(tmp_path / "missing.pem"))


def test_in_memory_ledger_without_key_refuses_to_close():
    from host_tools.settlement import Ledger

    with Ledger.open("sqlite:///:memory:") as ledger:
        ledger.add_member("alice")
        with pytest.raises(LedgerError, match="no service key"):
            ledger.settle_interval(T0_S, {})
        assert ledger.next_open_interval() is None
