"""The end-of-run summary of a community simulation, read back from the ledger database.

Everything here is read from what the settlement service committed (settled records, closed
intervals, checkpoints, the ledger's own invariant check), never from the simulation's idea of
what should have happened; the world's ground truth is put beside it only for comparison. So
the summary is a check of the system, not a restatement of the input.
"""
import json

from host_tools.settlement.ledger import BURN, EDUCATION_POOL, MINT, NETWORK_OPERATOR, WATT

INTERVAL_TOTALS = ("minted_wh", "burned_wh", "shortfall_wh", "grid_bill_micro", "sold_wh",
                   "feed_in_micro", "storage_fee_wh", "fee_owners_wh", "fee_education_wh",
                   "fee_operator_wh")


def device_energy(ledger):
    """{device_id: {...}} from settled records: the baseline (first settled) and last record.

    A device's first record is its baseline and carries no energy, so what the ledger settled
    for a device is its last settled register minus its baseline register, and the span of
    event time it covers is baseline event time .. last event time.
    """
    rows = ledger.db.all(
        "SELECT r.device_id, d.member, COUNT(*), MIN(r.counter), MAX(r.counter), "
        "SUM(COALESCE(r.import_delta_wh, 0)), SUM(COALESCE(r.export_delta_wh, 0)) "
        "FROM ingest_records r JOIN devices d ON d.device_id = r.device_id "
        "WHERE r.state = 'settled' GROUP BY r.device_id, d.member ORDER BY r.device_id")
    result = {}
    for device_id, member, count, first, last, import_wh, export_wh in rows:
        ends = {}
        for name, counter in (("baseline", first), ("last", last)):
            row = ledger.db.one("SELECT event_s, import_wh, export_wh FROM ingest_records "
                                "WHERE device_id = ? AND counter = ?", (device_id, counter))
            ends[name] = {"event_s": int(row[0]), "import_wh": int(row[1]),
                          "export_wh": int(row[2])}
        result[device_id] = {
            "member": member, "records_settled": int(count), "first_counter": int(first),
            "last_counter": int(last), "import_wh": int(import_wh), "export_wh": int(export_wh),
            "baseline": ends["baseline"], "last": ends["last"],
        }
    return result


def record_states(ledger):
    """{state: count} over stored records, and {reason: count} over rejections."""
    states = {state: int(count) for state, count in ledger.db.all(
        "SELECT state, COUNT(*) FROM ingest_records GROUP BY state")}
    rejected = {reason: int(count) for reason, count in ledger.db.all(
        "SELECT reason, COUNT(*) FROM ingest_rejections GROUP BY reason")}
    states["corrections"] = int(ledger.db.one(
        "SELECT COUNT(*) FROM transfers WHERE kind = 'correction'")[0])
    return states, rejected


def interval_totals(ledger):
    """Sums of the closed intervals' results, and the per-interval rows for the report."""
    totals = dict.fromkeys(INTERVAL_TOTALS, 0)
    rows = []
    for start_s, result in ledger.db.all(
            "SELECT interval_start_s, result FROM intervals ORDER BY interval_start_s"):
        data = json.loads(result)
        row = {"interval_start_s": int(start_s)}
        for key in INTERVAL_TOTALS:
            value = data.get(key, 0)
            if not isinstance(value, int):
                raise ValueError(f"interval {start_s}: {key} is not an integer in the ledger")
            totals[key] += value
            row[key] = value
        rows.append(row)
    return totals, rows


def last_checkpoint(ledger):
    row = ledger.db.one("SELECT number, interval_start_s, merkle_root, hash FROM checkpoints "
                        "ORDER BY number DESC LIMIT 1")
    if row is None:
        return None
    return {"number": int(row[0]), "interval_start_s": int(row[1]), "merkle_root": row[2],
            "hash": row[3]}


def member_balances(ledger):
    """{member: {"watt_wh", "money_micro", "cap_wh"}} at the end of the run."""
    result = {}
    for name in ledger.member_names():
        balances = ledger.balances(f"member:{name}")
        result[name] = {"watt_wh": int(balances.get(WATT, 0)),
                        "money_micro": int(balances.get("money", 0)),
                        "cap_wh": int(ledger.cap_wh(name))}
    return result


def member_series(ledger):
    """{member: [[interval_start_s, import_wh, export_wh], ...]} from settled records.

    What the meters reported per interval (event time), whether or not the interval closed
    yet; the report plots it as average power.
    """
    series = {}
    for member, start_s, import_wh, export_wh in ledger.db.all(
            "SELECT d.member, r.interval_start_s, SUM(r.import_delta_wh), "
            "SUM(r.export_delta_wh) FROM ingest_records r "
            "JOIN devices d ON d.device_id = r.device_id "
            "WHERE r.state = 'settled' AND r.interval_start_s IS NOT NULL "
            "GROUP BY d.member, r.interval_start_s ORDER BY d.member, r.interval_start_s"):
        series.setdefault(member, []).append([int(start_s), int(import_wh), int(export_wh)])
    return series


def market_prices(ledger):
    """The market's reference price per interval, or None when the service has no market.

    Rows: [interval_start_s, price_micro_per_kwh, volume_wh, trade_count, carried].
    """
    if ledger.db.get_meta("market_schema_version") is None:
        return None
    return [[int(v) for v in row] for row in ledger.db.all(
        "SELECT interval_start_s, price_micro_per_kwh, volume_wh, trade_count, carried "
        "FROM market_reference_prices ORDER BY interval_start_s")]


def build(ledger, truth_fn, households, run):
    """The summary dict: settled vs ground truth per household, ledger totals, invariants.

    `truth_fn(device_id, t_s)` gives the world's {"import_wh", "export_wh"} for that device's
    site; `households` maps device_id -> {"member", "meter", "pv_kwp"}; `run` is copied in.
    """
    devices = device_energy(ledger)
    rows = []
    sums = dict.fromkeys(("import_wh", "export_wh", "true_import_wh", "true_export_wh"), 0.0)
    for device_id, plan in sorted(households.items(), key=lambda item: item[1]["member"]):
        settled = devices.get(device_id)
        row = {"device_id": device_id, "member": plan["member"], "meter": plan["meter"],
               "pv_kwp": plan["pv_kwp"], "records_settled": 0, "import_wh": 0, "export_wh": 0,
               "true_import_wh": 0.0, "true_export_wh": 0.0}
        if settled is not None:
            t0_s, t1_s = settled["baseline"]["event_s"], settled["last"]["event_s"]
            start, end = truth_fn(device_id, t0_s), truth_fn(device_id, t1_s)
            row.update(records_settled=settled["records_settled"],
                       import_wh=settled["import_wh"], export_wh=settled["export_wh"],
                       true_import_wh=round(end["import_wh"] - start["import_wh"], 1),
                       true_export_wh=round(end["export_wh"] - start["export_wh"], 1),
                       from_s=t0_s, to_s=t1_s)
        for key in sums:
            sums[key] += row[key]
        rows.append(row)
    states, rejected = record_states(ledger)
    totals, intervals = interval_totals(ledger)
    prices = market_prices(ledger)
    traded = [row for row in prices or [] if row[3]]
    market = None if prices is None else {
        "intervals": len(prices),
        "price_min_micro_per_kwh": min((row[1] for row in traded), default=None),
        "price_max_micro_per_kwh": max((row[1] for row in traded), default=None)}
    trades = None if prices is None else {"count": sum(row[3] for row in prices),
                                          "volume_wh": sum(row[2] for row in prices)}
    check = ledger.check()
    checkpoints = ledger.verify_checkpoints()
    config = ledger.config
    return {
        "run": run,
        "households": rows,
        "energy": {
            "consumed_wh": int(sums["import_wh"]), "consumed_true_wh": round(sums["true_import_wh"], 1),
            "consumed_diff_pct": _pct(sums["import_wh"], sums["true_import_wh"]),
            "produced_wh": int(sums["export_wh"]), "produced_true_wh": round(sums["true_export_wh"], 1),
            "produced_diff_pct": _pct(sums["export_wh"], sums["true_export_wh"]),
        },
        "records": {"settled": states.get("settled", 0), "pending": states.get("pending", 0),
                    "late_corrections": states["corrections"], "rejected": rejected},
        "ledger": dict(totals, intervals_closed=len(intervals),
                       minted_total_wh=-int(ledger.balance(MINT, WATT)),
                       burned_total_wh=int(ledger.balance(BURN, WATT)),
                       education_pool_wh=int(ledger.balance(EDUCATION_POOL, WATT)),
                       network_operator_wh=int(ledger.balance(NETWORK_OPERATOR, WATT))),
        "prices": {"retail_micro_per_kwh": config.retail_tariff_micro_per_kwh,
                   "feed_in_micro_per_kwh": config.feed_in_tariff_micro_per_kwh,
                   "market": market},
        "market_prices": prices,
        "trades": trades,
        "ev_sessions": None,
        "members": member_balances(ledger),
        "interval_s": config.interval_s,
        "series": member_series(ledger),
        "intervals": intervals,
        "invariants": {"ok": check.ok, "entries": check.entries, "problems": check.problems[:20],
                       "checkpoints_ok": checkpoints.ok},
        "last_checkpoint": last_checkpoint(ledger),
    }


def _market_range(market):
    if market is None:
        return "; no market"
    if market["price_min_micro_per_kwh"] is None:
        return "; market: no trades"
    return (f"; market {market['price_min_micro_per_kwh']}.."
            f"{market['price_max_micro_per_kwh']}")


def _pct(measured, true):
    if not true:
        return None
    return round(100.0 * (measured - true) / true, 3)


def format_table(summary):
    """The summary as fixed-width text for the terminal."""
    from host_tools.sim import ev_summary

    energy, ledger, records = summary["energy"], summary["ledger"], summary["records"]
    lines = ["", f"{'member':<12} {'meter':<8} {'PV kWp':>6} {'records':>7} {'import Wh':>10} "
                 f"{'true':>10} {'export Wh':>10} {'true':>10}"]
    for row in summary["households"]:
        lines.append(f"{row['member']:<12} {row['meter']:<8} {row['pv_kwp']:>6.1f} "
                     f"{row['records_settled']:>7} {row['import_wh']:>10} "
                     f"{row['true_import_wh']:>10.1f} {row['export_wh']:>10} "
                     f"{row['true_export_wh']:>10.1f}")

    def diff(value):
        return "n/a" if value is None else f"{value:+.3f} %"

    checkpoint = summary["last_checkpoint"]
    invariants = summary["invariants"]
    prices = summary["prices"]
    items = [
        ("energy consumed (settled / world)",
         f"{energy['consumed_wh']} Wh / {energy['consumed_true_wh']} Wh ({diff(energy['consumed_diff_pct'])})"),
        ("energy produced (settled / world)",
         f"{energy['produced_wh']} Wh / {energy['produced_true_wh']} Wh ({diff(energy['produced_diff_pct'])})"),
        ("WATT minted / burned (closed intervals)", f"{ledger['minted_wh']} Wh / {ledger['burned_wh']} Wh"),
        ("consumed from community WATT (local)", f"{ledger['burned_wh']} Wh"),
        ("bought from the grid", f"{ledger['shortfall_wh']} Wh for {ledger['grid_bill_micro']} µ"),
        ("sold to the grid (above caps)", f"{ledger['sold_wh']} Wh for {ledger['feed_in_micro']} µ"),
        ("prices (retail / feed-in, µ/kWh)",
         f"{prices['retail_micro_per_kwh']} / {prices['feed_in_micro_per_kwh']}"
         + _market_range(prices["market"])),
        ("market trades", "not enabled" if summary["trades"] is None
         else f"{summary['trades']['count']} trades, {summary['trades']['volume_wh']} Wh"),
        ("storage fees (owners / education / operator)",
         f"{ledger['storage_fee_wh']} Wh ({ledger['fee_owners_wh']} / {ledger['fee_education_wh']}"
         f" / {ledger['fee_operator_wh']})"),
        *ev_summary.format_lines(summary["ev_sessions"]),
        ("records settled / pending / late (corrections)",
         f"{records['settled']} / {records['pending']} / {records['late_corrections']}"),
        ("records rejected", json.dumps(records["rejected"], sort_keys=True)),
        ("intervals closed", str(ledger["intervals_closed"])),
        ("ledger invariants", ("hold" if invariants["ok"] else "VIOLATED: "
                               + "; ".join(map(str, invariants["problems"][:3])))
         + f"; checkpoints {'verify' if invariants['checkpoints_ok'] else 'DO NOT VERIFY'}"),
        ("last checkpoint", "none" if checkpoint is None
         else f"#{checkpoint['number']} root {checkpoint['merkle_root']}"),
    ]
    width = max(len(name) for name, _ in items)
    lines.append("")
    lines += [f"{name:<{width}}  {value}" for name, value in items]
    return "\n".join(lines)
