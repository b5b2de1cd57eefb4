"""`energo member` and `energo ledger`: exit 0 when fine, 1 when a check fails, 2 on user errors."""
import json

import pytest

from host_tools import cli
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger

ledger_url, key_path = support.ledger_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures


def run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_member_add_and_list(capsys, ledger_url):
    status, out, _ = run(capsys, "member", "add", "alice", "--db", ledger_url)
    assert status == 0 and "granted 5000 TSL" in out
    status, out, _ = run(capsys, "member", "add", "bob", "--db", ledger_url, "--storage-owner", "8000")
    assert status == 0 and "owns 8000 Wh of storage" in out
    status, _, err = run(capsys, "member", "add", "alice", "--db", ledger_url)
    assert status == 2 and err.strip() == "energo member: member alice already exists"
    status, out, _ = run(capsys, "member", "list", "--db", ledger_url, "--json")
    members = json.loads(out.strip().splitlines()[-1])
    assert [(m["name"], m["tsl"], m["storage_capacity_wh"], m["cap_wh"]) for m in members] == [
        ("alice", 5000, 0, 2000), ("bob", 5000, 8000, 2000)]
    status, out, _ = run(capsys, "member", "list", "--db", ledger_url)
    assert status == 0 and out.splitlines()[1].split()[0] == "alice"
    status, out, _ = run(capsys, "ledger", "check", "--db", ledger_url)
    assert status == 0 and out.startswith("ok: 3 entries")


@pytest.mark.parametrize("argv, message", [
    (["member", "add", "bad name", "--db", "sqlite:///{tmp}/l.db"], "invalid member name"),
    (["member", "add", "a", "--db", "mysql://h/db"], "unsupported database URL"),
    (["member", "add", "a", "--db", "sqlite:///{tmp}/l.db", "--config", "{tmp}/none.json"],
     "cannot read config"),
    (["member", "list", "--db", "sqlite:///{tmp}/missing.db"], "no ledger at"),
    (["ledger", "check", "--db", "sqlite:///{tmp}/missing.db"], "no ledger at"),
    (["ledger", "verify-checkpoints", "--db", "sqlite:///{tmp}/l.db", "--key", "{tmp}/nokey"],
     "cannot read key file"),
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.delenv("ENERGO_LEDGER_URL", raising=False)
    status, _, err = run(capsys, *[part.replace("{tmp}", str(tmp_path)) for part in argv])
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.db").exists()


def test_missing_db_argument(capsys, monkeypatch):
    monkeypatch.delenv("ENERGO_LEDGER_URL", raising=False)
    status, _, err = run(capsys, "ledger", "check")
    assert status == 2 and "--db URL" in err


def test_config_file_is_used_at_creation(capsys, tmp_path):
    (tmp_path / "rules.json").write_text(json.dumps({"tsl_new_member_grant": 7}))
    url = f"sqlite:///{tmp_path / 'l.db'}"
    status, out, _ = run(capsys, "member", "add", "a", "--db", url, "--config", str(tmp_path / "rules.json"))
    assert status == 0 and "granted 7 TSL" in out


def test_check_and_verify_fail_with_exit_1(capsys, tmp_path, key_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(url, key_path) as ledger:
        ledger.add_member("alice", at_s=T0_S)
        ledger.settle_interval(T0_S, {"alice": (0, 1000)})
    status, out, _ = run(capsys, "ledger", "verify-checkpoints", "--db", url, "--key", key_path)
    assert status == 0 and "1 checkpoints verified with the given key" in out
    with open_ledger(url, key_path) as ledger:
        ledger.db.execute("UPDATE balances SET amount = amount + 5 WHERE account = 'member:alice' "
                          "AND asset = 'WATT'")
    status, out, _ = run(capsys, "ledger", "check", "--db", url)
    assert status == 1 and "FAIL: balance of member:alice in WATT: stored 1005" in out
    with open_ledger(url, key_path) as ledger:
        ledger.db.execute("UPDATE entries SET amount = 999 WHERE transfer_id LIKE '#iv:%:mint:alice'")
    status, out, _ = run(capsys, "ledger", "verify-checkpoints", "--db", url)
    assert status == 1 and out.startswith("FAIL: entry ")


def test_a_file_that_is_not_a_database(capsys, tmp_path):
    (tmp_path / "notes.db").write_text("plain text, not SQLite " * 20)
    status, _, err = run(capsys, "member", "list", "--db", f"sqlite:///{tmp_path / 'notes.db'}")
    assert status == 2 and "not a usable SQLite database" in err
