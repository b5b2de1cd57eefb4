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
    for key in ("orders_per_s", "orders_per_s_with_ledger", "orders_per_s_engine_same_orders",
                "orders_per_s_with_trade_journal", "ledger_us_per_trade",
                "ledger_us_per_trade_one_commit_per_interval",
                "orders_per_s_with_ledger_one_commit_per_interval", "ledger_read_us_per_order"):
        assert result[key] > 0, key
    # A transfer is at least: lock, chain head, transfer row, per leg an entry and two balances.
    assert result["ledger_sql_statements_per_trade"] >= 10
    assert 0 < result["ledger_share_of_run"] < 1
    assert result["target_orders_per_s_with_ledger"] == 20_000
    assert "ledger" in result["persistence"]


def test_ledger_orders_is_validated(capsys):
    assert cli.main(["bench", "match", "--ledger-orders", "0"]) == 2
    assert "--ledger-orders" in capsys.readouterr().err
