"""The live dashboard's data (`GET /api/v1/dashboard`) and its page, read from the ledger database.

The page (`static/dashboard.html`, plain HTML/CSS/JS served by this API, nothing from elsewhere)
polls this endpoint every few seconds and redraws the community map, the price chart, the caps
and the charging sessions. Everything comes from the settlement database on each request, so
the page shows what the ledger holds, never a second bookkeeping:
- production: WATT minted to a member (their export into the community's storage);
- from storage: WATT burned for a member's import; from grid: the shortfall billed at retail;
- to grid: WATT above the cap sold at the feed-in tariff; bought/sold: trades between members;
- live: energy of intervals still open (settled records, not yet closed into the ledger).
"Last" is the latest closed interval, "today" the (event-time, UTC) day it belongs to.
Charging sessions come from the charge-and-pay tables (`charging_sessions`, also the
simulation's progress count).

Privacy (ECONOMICS §9, "public digest, private detail"): the route is public, but what it
answers depends on the caller. Anonymous: community totals only (no member name, load or
generation); a member's token: that member's own row as well; the admin token (the operator):
every member's row. The response schema is closed, so a field that would leak cannot be added
without failing its tests. The page takes its token from the URL fragment (`/#token=…`), which
browsers never send to the server and which therefore never reaches a request log.
"""
import functools
import json
import pathlib

from host_tools.api import auth
from host_tools.api.schemas import INT, INT_OR_NULL, STR, array, obj
from host_tools.settlement.ledger import BURN, GRID, MINT, WATT

DAY_S = 86_400
INTERVALS_DEFAULT = 32
INTERVALS_MAX = 96
SESSIONS_SHOWN = 20
STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
# name → content type; nothing else under static/ is served.
STATIC_FILES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Only what this service serves: no inline script, no other origin (the page works offline).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
FLOW_KEYS = ("production_wh", "consumption_wh", "from_storage_wh", "from_grid_wh", "to_grid_wh",
             "bought_wh", "sold_wh")

_FLOWS = obj(**{key: INT for key in FLOW_KEYS})
_LIVE = obj(import_wh=INT, export_wh=INT)
MEMBER_ROW = obj(name=STR, watt_wh=INT, cap_wh=INT, money_micro=INT, storage_capacity_wh=INT,
                 last=_FLOWS, today=_FLOWS, live=_LIVE)
SESSION_ROW = obj(session=STR, station=STR, vehicle=STR, member=STR, owner=STR, state=STR,
                  wh=INT_OR_NULL, total_micro=INT_OR_NULL, authorized_at_s=INT)
RESPONSE = obj(
    viewer=obj(kind={"type": "string", "enum": ["public", "member", "admin"]},
               member={"type": ["string", "null"]}),
    interval_s=INT, latest_interval_s=INT_OR_NULL, next_open_interval_s=INT_OR_NULL,
    day_start_s=INT_OR_NULL, members_count=INT, records_settled=INT, entries_count=INT,
    community=obj(last=_FLOWS, today=_FLOWS, live=_LIVE, stored_wh=INT, cap_wh=INT,
                  storage_capacity_wh=INT),
    prices=obj(retail_micro_per_kwh=INT, feed_in_micro_per_kwh=INT,
               intervals=array(obj(interval_start_s=INT, price_micro_per_kwh=INT_OR_NULL,
                                   volume_wh=INT, trade_count=INT, minted_wh=INT,
                                   burned_wh=INT, shortfall_wh=INT, sold_wh=INT))),
    members={"anyOf": [array(MEMBER_ROW), {"type": "null"}]},
    sessions=obj(count=INT, energy_wh=INT,
                 items={"anyOf": [array(SESSION_ROW), {"type": "null"}]}),
)
PAGE_SCHEMA = {"type": "string", "contentMediaType": "text/html"}


class Page:
    """A static answer (HTML, JS, CSS) with the headers that keep it self-contained.

    Quacks like `routes.Text` (content_type, text); `headers` are added by the server."""

    __slots__ = ("content_type", "text", "headers")

    def __init__(self, content_type, text, headers):
        self.content_type = content_type
        self.text = text
        self.headers = headers


@functools.cache
def _static(name):
    """The file's text, read once: the static files change only with the code."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def static_handler(name):
    """A route handler answering the named static file."""
    if name not in STATIC_FILES:
        raise ValueError(f"{name!r} is not a dashboard file")

    def handler(ctx):
        return 200, Page(STATIC_FILES[name], _static(name), dict(PAGE_HEADERS))

    handler.__name__ = "static_" + name.replace(".", "_")
    return handler


# --- the data ------------------------------------------------------------------------------


def _int(value):
    return 0 if value is None else int(value)


def _zero():
    return dict.fromkeys(FLOW_KEYS, 0)


def _viewer(principal):
    if principal.kind == auth.ADMIN:
        return {"kind": "admin", "member": None}
    if principal.kind == auth.MEMBER:
        return {"kind": "member", "member": principal.member}
    return {"kind": "public", "member": None}


def _flows(db, accounts, day_start_s, latest_s):
    """{member: {"last": flows, "today": flows}} from the ledger's entries since `day_start_s`.

    `accounts` maps member account names to member names. Shortfall (energy from the grid)
    is not an entry in Wh: it is read from the burn or correction transfer's meta."""
    result = {member: {"last": _zero(), "today": _zero()} for member in accounts.values()}
    if day_start_s is None:
        return result
    rows = db.all(
        "SELECT t.transfer_id, t.kind, t.interval_start_s, t.meta, e.debit, e.credit, e.asset, "
        "e.amount FROM entries e JOIN transfers t ON t.transfer_id = e.transfer_id "
        "WHERE t.interval_start_s >= ? AND t.kind IN ('mint', 'burn', 'correction', 'feed_in', "
        "'trade') ORDER BY e.seq", (day_start_s,))
    shortfall_seen = set()
    for transfer_id, kind, interval_s, meta_text, debit, credit, asset, amount in rows:
        windows = ("last", "today") if interval_s == latest_s else ("today",)
        changes = []
        if asset == WATT:
            if debit == MINT and credit in accounts:
                changes.append((accounts[credit], "production_wh", amount))
            elif credit == BURN and debit in accounts:
                key = "to_grid_wh" if kind == "feed_in" else "from_storage_wh"
                changes.append((accounts[debit], key, amount))
            elif kind == "trade" and debit in accounts and credit in accounts:
                changes.append((accounts[debit], "sold_wh", amount))
                changes.append((accounts[credit], "bought_wh", amount))
        elif debit in accounts and credit == GRID and kind in ("burn", "correction") \
                and transfer_id not in shortfall_seen:
            shortfall_seen.add(transfer_id)
            meta = json.loads(meta_text)
            shortfall = meta.get("shortfall_wh")
            if isinstance(shortfall, int) and shortfall > 0:
                changes.append((accounts[debit], "from_grid_wh", shortfall))
        for member, key, value in changes:
            for window in windows:
                result[member][window][key] += value
    for both in result.values():
        for flows in both.values():
            flows["consumption_wh"] = flows["from_storage_wh"] + flows["from_grid_wh"]
    return result


def _live(db):
    """{member: {"import_wh", "export_wh"}} of the intervals still open (settled records)."""
    if db.get_meta("ingest_schema_version") is None:
        return {}
    return {member: {"import_wh": _int(imp), "export_wh": _int(exp)} for member, imp, exp in
            db.all("SELECT member, SUM(import_wh), SUM(export_wh) FROM ingest_open_energy "
                   "GROUP BY member")}


def _records_settled(db):
    if db.get_meta("ingest_schema_version") is None:
        return 0
    return _int(db.one("SELECT COUNT(*) FROM ingest_records WHERE state = 'settled'")[0])


def _price_intervals(db, count):
    """The latest closed intervals, oldest first, with the market's reference price if any."""
    rows = db.all("SELECT interval_start_s, result FROM intervals ORDER BY interval_start_s DESC "
                  "LIMIT ?", (count,))
    prices = {}
    if rows and db.get_meta("market_schema_version") is not None:
        prices = {start: (price, volume, trades) for start, price, volume, trades in db.all(
            "SELECT interval_start_s, price_micro_per_kwh, volume_wh, trade_count "
            "FROM market_reference_prices WHERE interval_start_s >= ?", (rows[-1][0],))}
    items = []
    for start, text in reversed(rows):
        totals = json.loads(text)
        price, volume, trades = prices.get(start, (None, 0, 0))
        items.append({"interval_start_s": start,
                      "price_micro_per_kwh": None if price is None else int(price),
                      "volume_wh": _int(volume), "trade_count": _int(trades),
                      **{key: _int(totals.get(key)) for key in
                         ("minted_wh", "burned_wh", "shortfall_wh", "sold_wh")}})
    return items


def charging_sessions(db, viewer):
    """Charging sessions for the dashboard: {"count", "energy_wh", "items"}, newest first.

    The one place that reads EV charging sessions (the charge-and-pay tables, `ev_sessions`).
    Everyone sees how many sessions there were and the energy they delivered; `items` is None
    for the public, the sessions a member paid for or hosted at their charger for a member's
    token (as `/api/v1/sessions` scopes them), all of them for the admin.
    """
    items = None if viewer["kind"] == "public" else []
    if db.get_meta("ev_schema_version") is None:  # no charging in this community yet
        return {"count": 0, "energy_wh": 0, "items": items}
    count, energy_wh = db.one("SELECT COUNT(*), SUM(wh) FROM ev_sessions")
    if items is not None:
        sql = ("SELECT session, station, vehicle, member, owner, state, wh, total_micro, "
               "authorized_at_s FROM ev_sessions")
        params = ()
        if viewer["kind"] == "member":
            sql += " WHERE member = ? OR owner = ?"
            params = (viewer["member"], viewer["member"])
        rows = db.all(sql + " ORDER BY authorized_at_s DESC, session LIMIT ?",
                      params + (SESSIONS_SHOWN,))
        items = [{"session": session, "station": station, "vehicle": vehicle, "member": member,
                  "owner": owner, "state": state, "wh": None if wh is None else int(wh),
                  "total_micro": None if total is None else int(total),
                  "authorized_at_s": int(at_s)}
                 for session, station, vehicle, member, owner, state, wh, total, at_s in rows]
    return {"count": _int(count), "energy_wh": _int(energy_wh), "items": items}


def sessions_count(db):
    """How many charging sessions the database holds (the simulation's progress line)."""
    return charging_sessions(db, {"kind": "admin", "member": None})["count"]


def view(ctx):
    """The dashboard's data; members' rows only for their own token or the admin's."""
    ledger = ctx.ledger
    db = ledger.db
    config = ledger.config
    viewer = _viewer(ctx.principal)
    latest_s = db.one("SELECT MAX(interval_start_s) FROM intervals")[0]
    latest_s = None if latest_s is None else int(latest_s)
    day_start_s = None if latest_s is None else latest_s - latest_s % DAY_S
    accounts = dict(db.all("SELECT name, member FROM accounts WHERE kind = 'member'"))
    flows = _flows(db, accounts, day_start_s, latest_s)
    live = _live(db)
    community = {"last": _zero(), "today": _zero(), "live": {"import_wh": 0, "export_wh": 0},
                 "stored_wh": 0, "cap_wh": 0, "storage_capacity_wh": 0}
    rows = []
    for member in ledger.members():
        name = member["name"]
        row = {"name": name, "watt_wh": member["watt_wh"], "cap_wh": member["cap_wh"],
               "money_micro": member["money_micro"],
               "storage_capacity_wh": member["storage_capacity_wh"],
               "last": flows[name]["last"], "today": flows[name]["today"],
               "live": live.get(name, {"import_wh": 0, "export_wh": 0})}
        for window in ("last", "today"):
            for key in FLOW_KEYS:
                community[window][key] += row[window][key]
        for key in ("import_wh", "export_wh"):
            community["live"][key] += row["live"][key]
        community["stored_wh"] += row["watt_wh"]
        community["cap_wh"] += row["cap_wh"]
        community["storage_capacity_wh"] += row["storage_capacity_wh"]
        if viewer["kind"] == "admin" or viewer["member"] == name:
            rows.append(row)
    head_seq = db.one("SELECT seq FROM chain_head WHERE id = 1")[0]
    return 200, {
        "viewer": viewer,
        "interval_s": config.interval_s,
        "latest_interval_s": latest_s,
        "next_open_interval_s": ledger.next_open_interval(),
        "day_start_s": day_start_s,
        "members_count": len(accounts),
        "records_settled": _records_settled(db),
        "entries_count": _int(head_seq),
        "community": community,
        "prices": {"retail_micro_per_kwh": config.retail_tariff_micro_per_kwh,
                   "feed_in_micro_per_kwh": config.feed_in_tariff_micro_per_kwh,
                   "intervals": _price_intervals(db, ctx.query["intervals"])},
        "members": None if viewer["kind"] == "public" else rows,
        "sessions": charging_sessions(db, viewer),
    }
