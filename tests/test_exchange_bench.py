"""`energo bench match`: a short run prints the figures the issue asks for (no timing asserts)."""
import json

from host_tools import cli
from host_tools.bench import match


def test_bench_match_prints_one_json_object_with_the_figures(capsys):
    assert cli.main(["bench", "match", "--json", "--orders", "3000", "--members", "300"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("orders_per_s", "orders_per_s_with_ledger", "match_us_p99",
                "baseline_call_loop_per_s"):
        assert result[key] > 0, key
    assert result["orders"] == 3000 and result["trades"] > 0


def test_stream_is_seeded_and_zi_c_shaped():
    names, first = match.make_stream(2000, 100, seed=3)
    assert first == match.make_stream(2000, 100, seed=3)[1]
    assert first != match.make_stream(2000, 100, seed=4)[1]
    assert {side for _, side, *_ in first} == {"buy", "sell"}
    assert len(names) == 100 and len(first) == 2000
    # Each member acts once per interval, as the agents do.
    per_interval = {}
    for member, _side, _qty, _price, interval in first:
        per_interval.setdefault(interval, []).append(member)
    assert all(len(ms) == len(set(ms)) for ms in per_interval.values())


def test_bad_arguments_are_a_usage_error(capsys):
    assert cli.main(["bench", "match", "--orders", "0"]) == 2
    assert "--orders" in capsys.readouterr().err
