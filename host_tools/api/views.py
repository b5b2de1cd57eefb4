"""Handlers of the ledger side: digest, checkpoints, intervals, members, entries, devices.

Each handler takes a `Context` (validated path, query and body, the caller, a ledger connection
owned by the current worker thread) and returns `(status, json_value)`. Public handlers return
community totals and checkpoint roots only, never a member's name, load or generation
(ECONOMICS §9); members' details need the member's token.
"""
import json

from host_tools.api import auth, store
from host_tools.api.errors import not_found, unavailable, unprocessable
from host_tools.settlement.ledger import (
    ASSETS,
    BURN,
    MINT,
    member_account,
    storage_account,
)

_DIGEST_CHECKPOINTS = 5
# Accounts that belong to members: shown to another member only as "member".
_PRIVATE_KINDS = ("member", "storage_owner")


def _int(value):
    """SUM() is NUMERIC on PostgreSQL (a Decimal in Python): back to the ledger's integers."""
    return 0 if value is None else int(value)


def _checkpoint_row(row):
    keys = ("number", "interval_start_s", "first_seq", "last_seq", "entry_count", "merkle_root",
            "chain_hash", "prev_checkpoint_hash", "closed_at_ms", "body", "hash", "signature")
    return dict(zip(keys, row, strict=True))


_CHECKPOINT_COLUMNS = ("number, interval_start_s, first_seq, last_seq, entry_count, merkle_root, "
                       "chain_hash, prev_checkpoint_hash, closed_at_ms, body, hash, signature")


def health(ctx):
    """Liveness for load balancers: the database answers, plus the service's own checks."""
    ctx.ledger.db.one("SELECT seq FROM chain_head WHERE id = 1")
    report = {"ok": True, "database": True}
    if ctx.app.health is not None:
        extra = ctx.app.health()
        if not isinstance(extra, dict) or not isinstance(extra.get("ok"), bool):
            raise TypeError("health() must return a dict with a boolean 'ok'")
        report.update(extra)
    return (200 if report["ok"] else 503), report


def digest(ctx):
    """Totals per asset, member count, chain head and the latest signed checkpoints."""
    ledger = ctx.ledger
    db = ledger.db
    member_sums = {asset: _int(amount) for asset, amount in db.all(
        "SELECT b.asset, SUM(b.amount) FROM balances b JOIN accounts a ON a.name = b.account "
        "WHERE a.kind = 'member' GROUP BY b.asset")}
    assets = {}
    for asset in ASSETS:
        minted = -ledger.balance(MINT, asset)
        burned = ledger.balance(BURN, asset)
        assets[asset] = {"minted": minted, "burned": burned, "in_circulation": minted - burned,
                         "held_by_members": member_sums.get(asset, 0)}
    head_seq, head_hash = db.one("SELECT seq, hash FROM chain_head WHERE id = 1")
    members_count = _int(db.one("SELECT COUNT(*) FROM accounts WHERE kind = 'member'")[0])
    rows = db.all(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY number DESC LIMIT ?",
                  (_DIGEST_CHECKPOINTS,))
    return 200, {
        "assets": assets,
        "members_count": members_count,
        "entries_count": head_seq,
        "chain_head_hash": head_hash,
        "next_open_interval_s": ledger.next_open_interval(),
        "interval_s": ledger.config.interval_s,
        "service_public_key_pem": db.get_meta("service_public_key"),
        "checkpoints": [_public_checkpoint(_checkpoint_row(row)) for row in rows],
    }


def _public_checkpoint(checkpoint):
    checkpoint.pop("body")  # recomputable from the other fields; the signature covers it
    return checkpoint


def checkpoints(ctx):
    """Signed checkpoints, newest first, with the exact signed body for offline checks."""
    before = ctx.query["before"]
    rows = ctx.ledger.db.all(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE number < ? ORDER BY number DESC "
        "LIMIT ?", (before, ctx.query["limit"]))
    items = [_checkpoint_row(row) for row in rows]
    return 200, {"checkpoints": items,
                 "next_before": items[-1]["number"] if len(items) == ctx.query["limit"] else None}


def intervals(ctx):
    """Closed intervals' community totals (minted, burned, billed, fees), newest first."""
    rows = ctx.ledger.db.all(
        "SELECT interval_start_s, result FROM intervals WHERE interval_start_s < ? "
        "ORDER BY interval_start_s DESC LIMIT ?", (ctx.query["before"], ctx.query["limit"]))
    items = []
    for interval_start_s, text in rows:
        totals = json.loads(text)
        totals["interval_start_s"] = interval_start_s
        items.append(totals)
    next_before = items[-1]["interval_start_s"] if len(items) == ctx.query["limit"] else None
    return 200, {"intervals": items, "next_before": next_before}


def create_member(ctx):
    """Add a member and issue their token in one transaction; the token is shown only here."""
    ledger = ctx.ledger
    body = ctx.body
    with ledger.db.transaction():
        added = ledger.add_member(body["name"], body.get("storage_capacity_wh", 0))
        token = auth.issue_member_token(ledger.db, body["name"], ledger.clock_ms())
    return 201, {"name": added["member"], "storage_capacity_wh": added["storage_capacity_wh"],
                 "tsl_granted": added["tsl_granted"], "token": token}


def rotate_token(ctx):
    """A new token for an existing member; the old one stops working at once."""
    ledger = ctx.ledger
    name = ctx.path["name"]
    with ledger.db.transaction():
        _require_member(ledger, name)
        token = auth.issue_member_token(ledger.db, name, ledger.clock_ms())
    return 201, {"name": name, "token": token}


def _require_member(ledger, name):
    if not ledger.is_member(name):
        raise not_found("unknown_member", f"no member {name!r}")


def members(ctx):
    """Every member with balances and cap (admin: the operator's view of the community)."""
    return 200, {"members": ctx.ledger.members()}


def member(ctx):
    """A member's balances, cap and storage capacity."""
    ledger = ctx.ledger
    name = ctx.path["name"]
    _require_member(ledger, name)
    balances = ledger.balances(member_account(name))
    row = ledger.db.one("SELECT storage_capacity_wh FROM accounts WHERE name = ?",
                        (storage_account(name),))
    return 200, {"name": name, "balances": balances, "watt_wh": balances["WATT"],
                 "tsl": balances["TSL"], "money_micro": balances["money"],
                 "cap_wh": ledger.cap_wh(name),
                 "storage_capacity_wh": 0 if row is None else row[0]}


def entries(ctx):
    """The member's ledger entries, newest first; other members are shown only as 'member'."""
    ledger = ctx.ledger
    name = ctx.path["name"]
    _require_member(ledger, name)
    mine = (member_account(name), storage_account(name))
    rows = ledger.db.all(
        "SELECT e.seq, e.transfer_id, t.kind, e.debit, da.kind, e.credit, ca.kind, e.asset, "
        "e.amount, e.interval_start_s FROM entries e "
        "JOIN transfers t ON t.transfer_id = e.transfer_id "
        "JOIN accounts da ON da.name = e.debit JOIN accounts ca ON ca.name = e.credit "
        "WHERE (e.debit IN (?, ?) OR e.credit IN (?, ?)) AND e.seq < ? "
        "ORDER BY e.seq DESC LIMIT ?", mine + mine + (ctx.query["before"], ctx.query["limit"]))
    items = []
    for (seq, transfer_id, kind, debit, debit_kind, credit, credit_kind, asset, amount,
         interval_start_s) in rows:
        incoming = credit in mine
        account, other, other_kind = ((credit, debit, debit_kind) if incoming
                                      else (debit, credit, credit_kind))
        private = other_kind in _PRIVATE_KINDS and other not in mine
        items.append({
            "seq": seq, "transfer_id": transfer_id, "kind": kind, "account": account,
            "asset": asset, "amount": amount if incoming else -amount,
            "counterparty": "member" if private else other,
            "interval_start_s": interval_start_s,
        })
    next_before = items[-1]["seq"] if len(items) == ctx.query["limit"] else None
    return 200, {"entries": items, "next_before": next_before}


def _registry(ctx):
    if ctx.app.registry_factory is None:
        raise unavailable("not_configured", "this service has no device registry")
    return ctx.app.registry_for(ctx.ledger)


def enroll_device(ctx):
    """Enroll a device key for a member and hand out its MQTT credentials."""
    body = ctx.body
    registry = _registry(ctx)
    secret = ctx.app.mqtt_secret
    if secret is None:
        raise unavailable("not_configured", "this service has no MQTT secret; cannot issue "
                          "device credentials")
    try:
        spki_der = bytes.fromhex(body["public_key"])
    except ValueError:
        raise unprocessable("bad_key", "public_key must be hex (SPKI DER)") from None
    try:
        from host_tools.broker_auth import derive_password
    except ImportError:
        raise unavailable("not_configured", "broker credentials are not available") from None

    device = registry.enroll(body["device_id"], spki_der, body["role"], body["member"])
    return 201, {"device_id": device["device_id"], "role": device["role"],
                 "member": device["member"], "mqtt_username": device["device_id"],
                 "mqtt_password": derive_password(secret, device["device_id"])}


def devices(ctx):
    return 200, {"devices": list(_registry(ctx).list())}


def put_agent(ctx):
    """Store a member's agent settings; the agents runner reads them each interval."""
    ledger = ctx.ledger
    name = ctx.path["name"]
    settings = dict(ctx.body)
    settings.setdefault("upper_threshold_ppm", 800_000)
    settings.setdefault("lower_threshold_ppm", 200_000)
    try:
        store.agent_config(name, settings)
    except ValueError as exc:
        raise unprocessable("invalid_agent_settings", str(exc)) from None
    price_max = ctx.app.price_max_micro_per_kwh()
    if price_max is not None and settings["ceiling_micro_per_kwh"] > price_max:
        raise unprocessable("invalid_agent_settings",
                            f"ceiling_micro_per_kwh must not exceed the exchange's {price_max}")
    with ledger.db.transaction():
        _require_member(ledger, name)
        store.put_agent_settings(ledger.db, name, settings, ledger.clock_ms())
    return 200, dict(settings, member=name)


def get_agent(ctx):
    ledger = ctx.ledger
    name = ctx.path["name"]
    _require_member(ledger, name)
    settings = store.get_agent_settings(ledger.db, name)
    if settings is None:
        raise not_found("no_agent", f"{name} has no agent settings")
    return 200, dict(settings, member=name)
