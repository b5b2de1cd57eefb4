"""`energo bench match` on the real ledger: the with-ledger figure comes from ledger transfers
(checked by count and by `ledger check` inside the benchmark), next to the engine-only figure."""
import json

from host_tools import cli


def test_bench_match_settles_on_the_ledger_and_reports_where_the_time_goes(capsys):
    assert cli.main(["bench", "match", "--json", "--orders", "2000", "--members", "200",
                     "--ledger-orders", "1500"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["orders"] == 2000 and result["ledger_orders"] == 1500
    assert 0 < result["ledger_trades"] <= result["trades"]
    for key in ("orders_per_s", "orders_per_s_with_ledger", "orders_per_cpu_s_with_ledger",
                "orders_per_s_engine_same_orders", "orders_per_s_with_trade_journal",
                "ledger_us_per_trade", "ledger_us_per_trade_commit_per_trade",
                "orders_per_s_with_ledger_commit_per_trade", "ledger_read_us_per_order"):
        assert result[key] > 0, key
    # In a batch a transfer is four statements: transfer row, entries, balances, chain head (no
    # savepoint: it is checked before it writes), and once per batch the first open interval (a
    # close may have moved it). Committed alone it adds BEGIN, the lock's read of the chain head,
    # the first open interval and COMMIT.
    assert 4 <= result["ledger_sql_statements_per_trade"] < 4.5
    assert result["ledger_sql_statements_per_trade_commit_per_trade"] == 8
    assert "orders_per_s_with_ledger_postgresql" not in result  # only with --postgres-url
    assert 0 < result["ledger_share_of_run"] < 1
    assert result["target_orders_per_s_with_ledger"] == 20_000
    assert "ledger" in result["persistence"]


def test_ledger_orders_is_validated(capsys):
    assert cli.main(["bench", "match", "--ledger-orders", "0"]) == 2
    assert "--ledger-orders" in capsys.readouterr().err


def test_postgres_url_is_validated(capsys):
    assert cli.main(["bench", "match", "--postgres-url", "sqlite:///x.db"]) == 2
    assert "--postgres-url" in capsys.readouterr().err


def test_bench_match_runs_the_ledger_on_postgresql_too(capsys, postgres_url):
    assert cli.main(["bench", "match", "--json", "--orders", "1000", "--members", "100",
                     "--ledger-orders", "600", "--postgres-url", postgres_url]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["orders_per_s_with_ledger_postgresql"] > 0
    assert result["ledger_us_per_trade_postgresql"] > 0
