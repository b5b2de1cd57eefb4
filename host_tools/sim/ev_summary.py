"""The EV part of a community run's summary, read back from the ledger database.

Sessions come from the service's session table; what the station owner was paid, what each
driver got back from the hold and what the station's consumption cost in WATT and grid money
come from the ledger's own entries (the capture transfers and the interval bookings), so a
session that the service reported but did not book would show as a difference, not be
smoothed over. Whether each receipt verifies is the one thing added from outside the ledger:
the result of `energo verify`'s checks on the file the vehicle kept.
"""
from host_tools.settlement.ledger import BURN, GRID, MONEY, WATT, hold_account, member_account

_SESSION_COLUMNS = ("session", "vehicle", "member", "owner", "state", "offline", "wh",
                    "price_micro_per_kwh", "fee_micro_per_kwh", "energy_micro", "fee_micro",
                    "total_micro", "hold_micro", "released_micro", "stop")


def _sum(db, sql, args):
    row = db.one(sql, args)
    return int(row[0] or 0)


def _moved(db, transfer_id, debit, credit, asset=MONEY):
    return _sum(db, "SELECT SUM(amount) FROM entries WHERE transfer_id = ? AND debit = ? AND "
                    "credit = ? AND asset = ?", (transfer_id, debit, credit, asset))


def sessions(ledger, verified):
    """One dict per session the service knows, oldest first, with the ledger's movements."""
    db = ledger.db
    rows = db.all(f"SELECT {', '.join(_SESSION_COLUMNS)} FROM ev_sessions "
                  "ORDER BY authorized_at_s, session")
    result = []
    for row in rows:
        s = dict(zip(_SESSION_COLUMNS, row, strict=True))
        s["offline"] = bool(s["offline"])
        capture = f"#hold:ev:{s['session']}:capture"
        held = hold_account(f"ev:{s['session']}")
        s["paid_to_owner_micro"] = _moved(db, capture, held, member_account(s["owner"]))
        s["released_to_driver_micro"] = _moved(db, capture, held, member_account(s["member"]))
        s["hold_left_micro"] = int(ledger.balance(held, MONEY)) if s["hold_micro"] else 0
        ok, detail = verified.get(s["session"], (False, "no receipt file"))
        s["receipt_verified"], s["receipt"] = ok, detail
        result.append(s)
    return result


def station(ledger, device_id, owner, fee):
    """What the station's own consumption cost its owner, from the interval bookings."""
    db = ledger.db
    account = member_account(owner)
    return {"device_id": device_id, "member": owner, "fee_micro_per_kwh": fee,
            "burned_wh": _sum(db, "SELECT SUM(amount) FROM entries WHERE debit = ? AND "
                                  "credit = ? AND asset = ?", (account, BURN, WATT)),
            "grid_micro": _sum(db, "SELECT SUM(amount) FROM entries WHERE debit = ? AND "
                                   "credit = ? AND asset = ?", (account, GRID, MONEY)),
            "money_micro": int(ledger.balance(account, MONEY))}


def build(ledger, charge_point, verified):
    """The summary's "ev_sessions" block (see format_lines for what is shown)."""
    from host_tools.sim import ev

    rows = sessions(ledger, verified)
    paid = [s for s in rows if s["state"] == "settled" and s["receipt_verified"]]
    return {
        "planned": [{k: a[k] for k in ("member", "plug_s", "target_wh")}
                    for a in charge_point.plan],
        "sessions": rows,
        "paid_verified": len(paid),
        "receipts_dir": str(charge_point.receipts_dir),
        "station": station(ledger, charge_point.device_id, ev.OWNER,
                           ev.STATION_FEE_MICRO_PER_KWH),
        "fees_to_owner_micro": sum(s["fee_micro"] or 0 for s in rows),
        "paid_to_owner_micro": sum(s["paid_to_owner_micro"] for s in rows),
        "holds_released_micro": sum(s["released_to_driver_micro"] for s in rows),
        "holds_open_micro": sum(s["hold_left_micro"] for s in rows),
        "unverified_receipts": sorted(detail for ok, detail in verified.values() if not ok),
        "notes": charge_point.notes,
    }


def format_lines(block):
    """[(name, value)] for the summary table; one line per session, then the station's."""
    if block is None:
        return [("EV sessions", "not simulated (--no-ev)")]
    items = [("EV sessions (paid, receipt verified)",
              f"{block['paid_verified']} of {len(block['planned'])} planned; "
              f"{len(block['sessions'])} in the ledger")]
    for s in block["sessions"]:
        items.append((f"  {s['member']} {s['session'][:8]}",
                      f"{s['wh']} Wh at {s['price_micro_per_kwh']} + {s['fee_micro_per_kwh']} "
                      f"µ/kWh = {s['energy_micro']} + {s['fee_micro']} = {s['total_micro']} µ"
                      f" ({s['state']}); receipt "
                      + ("verified" if s["receipt_verified"] else "NOT verified")))
    st = block["station"]
    items += [
        ("station: energy burned / grid bill", f"{st['burned_wh']} Wh / {st['grid_micro']} µ"),
        ("station owner paid (of it fees)",
         f"{block['paid_to_owner_micro']} µ ({block['fees_to_owner_micro']} µ)"),
        ("EV holds released / still held",
         f"{block['holds_released_micro']} µ / {block['holds_open_micro']} µ"),
        ("receipts", block["receipts_dir"]),
    ]
    for detail in block["unverified_receipts"]:
        items.append(("receipt NOT verified", detail))
    return items
