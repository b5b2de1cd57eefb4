"""`energo sim community`: the plan from the seed, option checks, and short community runs end
to end (emulated meters with the real firmware, the embedded broker, `energo settle`) whose
settled energy must match the world's ground truth and whose ledger must hold its invariants;
one of them with the charge point and two vehicles that must each pay for a session and keep
a receipt that `energo verify` accepts."""
import json
import sqlite3

import pytest

from host_tools.cli import main
from host_tools.sim import community, ev, summary


def test_plan_follows_the_seed():
    plan = community.plan_households(12, 1)
    assert plan == community.plan_households(12, 1)
    assert plan != community.plan_households(12, 2)
    meters = [house["meter"] for house in plan]
    assert meters.count("CT") == 4 and meters.count("SDM630") == 8
    assert sum(1 for house in plan if house["pv_kwp"] > 0) == 6
    owners = [house for house in plan if house["storage_capacity_wh"]]
    assert len(owners) == 1 and "battery" in owners[0]["site"]
    assert len({house["world_seed"] for house in plan}) == 12
    assert len({house["member"] for house in plan}) == 12


@pytest.mark.parametrize("change, message", [
    ({"households": 0}, "households"),
    ({"households": community.HOUSEHOLDS_MAX + 1}, "households"),
    ({"hours": 0.1}, "hours"),
    ({"hours": float("nan")}, "hours"),
    ({"start_hour": 24}, "start_hour"),
    ({"speed": 0}, "speed"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"record_interval_s": 300}, "record_interval_s"),
    ({"sample_interval_ms": 61_000}, "sample_interval_ms"),
    ({"record_interval_s": 20, "sample_interval_ms": 30_000}, "must not exceed"),
    ({"ct_sample_interval_ms": 500}, "ct_sample_interval_ms"),
    ({"broker_url": "tcp://x:1"}, "mqtt://"),
    ({"broker_url": "mqtt://h:1", "mosquitto": True}, "not both"),
    ({"db_url": "mysql://x/y"}, "sqlite:///"),
    ({"ev_target_wh": 50}, "ev_target_wh"),
    ({"ev_target_wh": 5000.5}, "ev_target_wh"),
])
def test_bad_options_are_refused(change, message):
    with pytest.raises(community.SimError, match=message):
        community.Options(**change).check()


@pytest.mark.parametrize("argv, message", [
    (["--households", "0"], "--households must be from 1"),
    (["--hours", "abc"], "--hours must be a number"),
    (["--speed", "0"], "--speed must be from 1"),
    (["--broker", "mqtt://h:1", "--mosquitto"], "not allowed with"),
    (["--record-interval-s", "600"], "--record-interval-s must be from 15"),
    (["--ev-target-wh", "99"], "--ev-target-wh must be from 100"),
])
def test_cli_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "community", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--broker", "http://h:1"], "broker URL must look like mqtt://"),
    (["--db", "mysql://x/y"], "database URL must be"),
])
def test_cli_refuses_bad_urls_in_one_line(argv, message, tmp_path, capsys):
    assert main(["sim", "community", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()), "nothing was started or written"


def test_cli_without_a_kind_is_a_usage_error(capsys):
    assert main(["sim"]) == 2
    assert "choose a simulation" in capsys.readouterr().err


def test_a_non_empty_ledger_is_refused(tmp_path):
    from host_tools.settlement.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'other.db'}"
    ledger = Ledger.open(url, key_path=str(tmp_path / "k.pem"))
    ledger.add_member("someone")
    ledger.close()
    options = community.Options(households=1, hours=0.25, db_url=url,
                                out_dir=str(tmp_path / "out"), report=False)
    run = community.CommunityRun(options)
    run.key_path = str(tmp_path / "k.pem")
    run.db_url = url
    with pytest.raises(community.SimError, match="already has members"):
        run._check_ledger_empty()
    with pytest.raises(community.SimError, match="already has members"):
        run._prepare_ledger()


def test_a_short_community_run_settles_the_world_exactly_once(tmp_path, capsys):
    out = tmp_path / "community"
    status = main(["sim", "community", "--households", "3", "--hours", "1", "--start-hour", "0",
                   "--speed", "720", "--no-ev",
                   "--seed", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    result = json.loads((out / "summary.json").read_text())
    energy = result["energy"]
    # The meters measured a real night (a household with a battery may import nothing).
    assert energy["consumed_true_wh"] > 300
    assert abs(energy["consumed_wh"] - energy["consumed_true_wh"]) \
        <= 0.01 * energy["consumed_true_wh"], energy
    for row in result["households"]:
        assert row["records_settled"] >= 55, row
        assert abs(row["import_wh"] - row["true_import_wh"]) <= 0.01 * row["true_import_wh"] + 3
        assert abs(row["export_wh"] - row["true_export_wh"]) <= 0.01 * row["true_export_wh"] + 3
    assert result["invariants"]["ok"] and result["invariants"]["checkpoints_ok"]
    assert result["records"]["rejected"] == {} and result["records"]["pending"] == 0
    assert result["ledger"]["intervals_closed"] >= 3
    assert result["last_checkpoint"]["merkle_root"]
    # Every record settled once: per device, counters 1..n with no gap and no repeat, and the
    # ledger's mint/burn/grid amounts add up to what the closed intervals report.
    db = sqlite3.connect(out / "ledger.db")
    try:
        for (device_id,) in db.execute("SELECT device_id FROM devices"):
            counters = [row[0] for row in db.execute(
                "SELECT counter FROM ingest_records WHERE device_id = ? AND state = 'settled' "
                "ORDER BY counter", (device_id,))]
            assert counters == list(range(1, len(counters) + 1)), device_id
        settled = db.execute("SELECT COUNT(*) FROM ingest_records WHERE state = 'settled'")
        assert settled.fetchone()[0] == result["records"]["settled"]
    finally:
        db.close()
    assert result["ledger"]["burned_wh"] + result["ledger"]["shortfall_wh"] <= \
        energy["consumed_wh"]
    assert "ledger invariants" in printed and "hold; checkpoints verify" in printed
    assert "HTTP API: http://127.0.0.1:" in printed
    assert summary.format_table(result) in printed
    # The report: HTML naming its plots, each a real PNG.
    page = (out / "report.html").read_text()
    for name in ("power.png", "grid.png", "balances.png", "flows.png"):
        assert f'src="{name}"' in page
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["series"]) == {row["member"] for row in result["households"]}
    assert result["ev_sessions"] is None and "not simulated (--no-ev)" in printed


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.mosquitto
def test_a_community_run_on_postgresql_and_mosquitto(tmp_path, postgres_url, capsys):
    """The production pairing: ledger on PostgreSQL, Mosquitto with the generated passwords
    and ACL; the same summary checks as on SQLite with the embedded broker."""
    from tests.conftest import need
    from tests.support import services

    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    out = tmp_path / "community"
    status = main(["sim", "community", "--households", "4", "--hours", "0.5", "--start-hour",
                   "11", "--db", postgres_url, "--mosquitto", "--out", str(out), "--no-report"])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    result = json.loads((out / "summary.json").read_text())
    energy = result["energy"]
    for key in ("consumed", "produced"):
        assert abs(energy[f"{key}_wh"] - energy[f"{key}_true_wh"]) \
            <= 0.01 * energy[f"{key}_true_wh"] + 5, energy
    assert energy["produced_wh"] > 0, "midday: the PV household exports"
    assert result["invariants"]["ok"] and result["invariants"]["checkpoints_ok"]
    assert result["records"]["rejected"] == {} and result["records"]["settled"] >= 50


def test_vehicle_arrivals_follow_the_seed():
    day = community.day_start_s()
    whole_day = ev.plan_vehicles(1, day, day, day + 86_400)
    assert whole_day == ev.plan_vehicles(1, day, day, day + 86_400)
    assert whole_day != ev.plan_vehicles(2, day, day, day + 86_400)
    morning, evening = (a["plug_s"] - day for a in whole_day)
    assert 6.5 * 3600 <= morning <= 8.5 * 3600 and 17 * 3600 <= evening <= 19.5 * 3600
    assert [a["member"] for a in whole_day] == list(ev.DRIVERS)
    assert all(3000 <= a["target_wh"] <= 5000 < a["emax_wh"] for a in whole_day)
    # A period without morning and evening still gets both, inside it and in order.
    start = day + 10 * 3600
    short = ev.plan_vehicles(1, day, start, start + 3600, target_wh=500)
    assert start < short[0]["plug_s"] < short[1]["plug_s"] < start + 3600
    assert [a["target_wh"] for a in short] == [500, 500]


def test_a_community_run_with_a_charger_and_two_paying_vehicles(tmp_path, capsys):
    """The charger and both vehicles in a short run: each session paid, its receipt verified
    from the file the vehicle kept (by `energo verify`, against the service's key), the money
    moved as the receipts say, and the station's meter settled like any other."""
    out = tmp_path / "community"
    status = main(["sim", "community", "--households", "2", "--hours", "1", "--start-hour", "0",
                   "--seed", "5", "--ev-target-wh", "500", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    result = _check_paid_sessions(out, printed, tmp_path, capsys)
    for s in result["ev_sessions"]["sessions"]:
        assert 500 <= s["wh"] <= 560, s  # the vehicle stopped at its target


@pytest.mark.slow
@pytest.mark.mosquitto
def test_two_vehicles_pay_in_a_whole_simulated_day_through_mosquitto(tmp_path, capsys):
    """The charger firmware's acceptance run: a whole day (00:00-24:00) through a private
    Mosquitto with the generated ACL, the vehicles arriving a third and two thirds into it and
    charging what they want (3 to 5 kWh); both pay unattended, their receipts verify, the
    station's energy is settled from its records and the ledger's invariants hold."""
    out = tmp_path / "community"
    status = main(["sim", "community", "--households", "3", "--hours", "24", "--start-hour",
                   "0", "--seed", "2", "--mosquitto", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    result = _check_paid_sessions(out, printed, tmp_path, capsys)
    planned = {a["member"]: a for a in result["ev_sessions"]["planned"]}
    for s in result["ev_sessions"]["sessions"]:
        assert s["wh"] >= planned[s["member"]]["target_wh"], s  # charged what it wanted
    assert result["run"]["hours"] == 24 and not result["run"]["interrupted"]
    assert result["ledger"]["burned_total_wh"] > 0, "imports burned community energy"
    assert result["ledger"]["intervals_closed"] >= 95


def _check_paid_sessions(out, printed, tmp_path, capsys):
    """Both planned sessions paid and verified, as the summary, the ledger, the receipt files
    (`energo verify`), the report and the station's console each tell it; the summary."""
    from host_tools.settlement.ev_accounts import EvAccounts
    from host_tools.settlement.ledger import MONEY, Ledger, member_account
    from host_tools.settlement.registry import Registry

    result = json.loads((out / "summary.json").read_text())
    block = result["ev_sessions"]
    assert block["paid_verified"] == 2 and len(block["sessions"]) == 2, block
    assert [s["member"] for s in block["sessions"]] == list(ev.DRIVERS)
    for s in block["sessions"]:
        assert s["state"] == "settled" and s["stop"] == "E" and not s["offline"], s
        assert s["fee_micro_per_kwh"] == ev.STATION_FEE_MICRO_PER_KWH
        assert s["total_micro"] == s["energy_micro"] + s["fee_micro"] > 0
        assert s["paid_to_owner_micro"] == s["total_micro"]
        assert s["released_to_driver_micro"] == s["hold_micro"] - s["total_micro"]
        assert s["hold_left_micro"] == 0 and s["receipt_verified"]
    assert block["holds_open_micro"] == 0
    assert block["paid_to_owner_micro"] == sum(s["total_micro"] for s in block["sessions"])
    assert block["fees_to_owner_micro"] == sum(s["fee_micro"] for s in block["sessions"])
    assert "2 of 2 planned" in printed and "receipt verified" in printed
    assert "sessions 2" in printed, "the progress line counts the sessions"
    # The station is metered like a household: settled = the world's truth, and at least
    # what the vehicles were billed.
    station = [row for row in result["households"] if row["member"] == ev.OWNER]
    assert len(station) == 1, result["households"]
    row = station[0]
    assert abs(row["import_wh"] - row["true_import_wh"]) <= 0.01 * row["true_import_wh"] + 3
    assert row["import_wh"] >= sum(s["wh"] for s in block["sessions"])
    assert result["invariants"]["ok"] and result["invariants"]["checkpoints_ok"]
    assert result["records"]["rejected"] == {} and result["records"]["pending"] == 0
    ledger = Ledger.open(f"sqlite:///{out / 'ledger.db'}", key_path=str(out / "service-key.pem"))
    try:
        key = EvAccounts(ledger, Registry(ledger)).community_key_hex()
        for s in block["sessions"]:
            assert ledger.balance(member_account(s["member"]), MONEY) == -s["total_micro"]
    finally:
        ledger.close()
    files = sorted((out / "receipts").glob("*.json"))
    assert [f.stem for f in files] == sorted(s["session"] for s in block["sessions"])
    for path in files:
        assert main(["verify", str(path), "--community-key", key]) == 0
    # The receipts can fail: one with its energy changed does not verify.
    doc = json.loads(files[0].read_text())
    body, signature = doc["receipt"].rsplit("|", 1)
    wh = json.loads(body)["wh"]
    doc["receipt"] = body.replace(f'"wh":{wh}', f'"wh":{wh + 1}') + "|" + signature
    assert doc["receipt"] != json.loads(files[0].read_text())["receipt"]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["verify", str(tampered), "--community-key", key]) == 1
    assert "2 of 2 planned sessions paid with a verified receipt" in \
        (out / "report.html").read_text()
    console = (out / "boards" / "station.console.txt").read_text()
    assert "Traceback" not in console and console.count("settled:") == 2
    return result
