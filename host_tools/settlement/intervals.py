"""End-of-interval settlement (ECONOMICS §1–§3) and late corrections.

Two steps, because ECONOMICS §2 wants energy above a member's cap offered on
the market before the rest is sold to the grid:
- `settle_energy` (steps 1–2 below) mints and burns the interval's metered
  energy and commits, so the market for the interval trades on it;
- `settle_interval` books whatever metered energy is not booked yet (all of
  it when `settle_energy` was not called), then steps 3–5, in one transaction.
An energy step stores the cumulative input it booked; a later step with more
energy books only the difference (transfer ids get a `:<step>` suffix), less
energy than booked is refused.

The steps, in this order:
1. mint: each member's exported Wh are minted to them;
2. burn: each member's imported Wh are burned from their balance, as far as it
   goes; the shortfall came from the main grid and is billed at the retail
   tariff (member money → grid; a negative member money balance is a receivable);
3. cap: WATT above the member's cap (min(Bmax, TSL × quota)) leaves storage,
   sold to the grid at the feed-in tariff (burned; grid money → member);
4. storage fee: storage_fee_ppm of each member's remaining balance (sub-Wh
   fractions carried per member, see rules.storage_fee_wh) is collected and
   split owners/education/operator by largest remainder, the owners' part
   again by largest remainder pro rata to capacity (no capacity: nothing to owners);
5. close: a signed checkpoint over every entry since the previous one.
Exports are minted before imports are burned: production and consumption inside
one interval net off first, as a meter register would. Members are processed in
name order and every tie breaks by name, so a replay computes the same entries.
Money amounts are rounded half up per transfer (rules.money_for_energy_micro);
each amount is booked on both sides of one leg, so rounding creates no µ.

Intervals close in order: after the first close, only the next interval may be
settled, because the storage fee is due at every boundary. A settled interval
replayed with the same input returns its original result; with other input it
is refused — late data goes to `book_correction`, booked into the first open
interval and referencing the original one.
"""
import hashlib
import json

from host_tools.settlement import checkpoints, rules
from host_tools.settlement.errors import IntervalError, InvalidTransfer, InvariantViolation
from host_tools.settlement.ledger import (
    BURN,
    EDUCATION_POOL,
    FEE_POOL,
    GRID,
    MINT,
    MONEY,
    NETWORK_OPERATOR,
    TSL,
    WATT,
    Leg,
    member_account,
    validate_amount,
    validate_transfer_id,
)


def _validate_interval(ledger, interval_start_s):
    validate_amount("interval_start_s", interval_start_s, minimum=0)
    if interval_start_s % ledger.config.interval_s:
        raise IntervalError(
            f"interval start {interval_start_s} is not aligned to {ledger.config.interval_s} s")


def _validate_metered(ledger, metered):
    """{member: (import_wh, export_wh)} → sorted list of (member, import_wh, export_wh)."""
    if not isinstance(metered, dict):
        raise InvalidTransfer("metered must map member names to (import_wh, export_wh)")
    known = set(ledger.member_names())
    limit = ledger.config.interval_energy_wh_max
    result = []
    for member in sorted(metered, key=str):
        value = metered[member]
        if member not in known:
            raise InvalidTransfer(f"metered energy for unknown member {member!r}")
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise InvalidTransfer(f"metered[{member!r}] must be (import_wh, export_wh)")
        import_wh, export_wh = value
        for name, amount in (("import_wh", import_wh), ("export_wh", export_wh)):
            validate_amount(f"{member} {name}", amount, minimum=0)
            if amount > limit:
                raise InvalidTransfer(f"{member} {name} {amount} exceeds {limit} Wh per interval")
        if import_wh or export_wh:
            result.append((member, import_wh, export_wh))
    return result


_ENERGY_TOTALS = ("minted_wh", "burned_wh", "shortfall_wh", "grid_bill_micro")


def settle_energy(ledger, interval_start_s, metered):
    """Step one: mint and burn the interval's energy now, committed; the interval stays open.

    Returns the interval's energy totals so far (`replayed` when nothing new was booked).
    """
    _validate_interval(ledger, interval_start_s)
    rows = _validate_metered(ledger, metered)
    with ledger.db.transaction():
        ledger.lock()
        if ledger.db.one("SELECT 1 FROM intervals WHERE interval_start_s = ?",
                         (interval_start_s,)) is not None:
            raise IntervalError(f"interval {interval_start_s} is closed; "
                                "book late data with book_correction")
        _require_next_open(ledger, interval_start_s)
        totals, booked = _book_energy(ledger, interval_start_s, rows)
    return dict(totals, interval_start_s=interval_start_s, replayed=not booked)


def settle_interval(ledger, interval_start_s, metered):
    """Settle and close one interval; returns a dict of totals and its checkpoint."""
    _validate_interval(ledger, interval_start_s)
    rows = _validate_metered(ledger, metered)
    digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    signing_key = ledger.signing_key()  # fail before writing anything if there is no key
    db = ledger.db
    with db.transaction():
        ledger.lock()
        done = db.one("SELECT input_digest, result FROM intervals WHERE interval_start_s = ?",
                      (interval_start_s,))
        if done is not None:
            if done[0] != digest:
                raise IntervalError(
                    f"interval {interval_start_s} is closed with other data; "
                    "book late data with book_correction")
            return dict(json.loads(done[1]), replayed=True)
        _require_next_open(ledger, interval_start_s)
        totals = dict.fromkeys(
            ("sold_wh", "feed_in_micro", "storage_fee_wh", "fee_owners_wh", "fee_education_wh",
             "fee_operator_wh"), 0)
        totals.update(_book_energy(ledger, interval_start_s, rows)[0])
        totals["interval_start_s"] = interval_start_s
        _apply_cap_and_fee(ledger, interval_start_s, totals)
        totals["checkpoint"] = close_interval(ledger, interval_start_s, signing_key)
        db.execute("INSERT INTO intervals (interval_start_s, input_digest, result) VALUES (?, ?, ?)",
                   (interval_start_s, digest, json.dumps(totals, sort_keys=True)))
    return dict(totals, replayed=False)


def _require_next_open(ledger, interval_start_s):
    next_open = ledger.next_open_interval()
    if next_open is not None and interval_start_s != next_open:
        raise IntervalError(
            f"interval {interval_start_s} is not the next open interval ({next_open}); "
            "settle every interval in order")
    other = ledger.db.one(
        "SELECT e.interval_start_s FROM interval_energy e LEFT JOIN intervals i "
        "ON i.interval_start_s = e.interval_start_s WHERE i.interval_start_s IS NULL "
        "AND e.interval_start_s <> ? LIMIT 1", (interval_start_s,))
    if other is not None:
        raise IntervalError(f"interval {other[0]} has energy booked and is not closed; "
                            "close it first")


def _book_energy(ledger, interval_s, rows):
    """Mint and burn what `rows` hold beyond earlier energy steps of this interval.

    Returns (the interval's energy totals over all its steps, whether this call booked).
    """
    db = ledger.db
    steps = db.all("SELECT step, metered, totals FROM interval_energy WHERE interval_start_s = ? "
                   "ORDER BY step", (interval_s,))
    totals = dict.fromkeys(_ENERGY_TOTALS, 0)
    booked = {}
    for _, metered_text, totals_text in steps:
        booked = {member: (import_wh, export_wh)
                  for member, import_wh, export_wh in json.loads(metered_text)}
        for name, value in json.loads(totals_text).items():
            totals[name] += value
    deltas = []
    for member, import_wh, export_wh in rows:
        booked_import, booked_export = booked.pop(member, (0, 0))
        if import_wh < booked_import or export_wh < booked_export:
            raise IntervalError(
                f"interval {interval_s}: {member}'s metered energy is below what was already "
                f"booked ({booked_import} Wh in, {booked_export} Wh out)")
        deltas.append((member, import_wh - booked_import, export_wh - booked_export))
    if booked:
        raise IntervalError(f"interval {interval_s}: metered energy of {min(booked)} is missing, "
                            "but part of it was already booked")
    if not any(import_wh or export_wh for _, import_wh, export_wh in deltas):
        return totals, False
    step = len(steps) + 1
    suffix = "" if step == 1 else f":{step}"
    prefix = f"#iv:{interval_s}"
    step_totals = dict.fromkeys(_ENERGY_TOTALS, 0)
    for member, _, export_wh in deltas:
        if export_wh:
            ledger._book(f"{prefix}:mint:{member}{suffix}", "mint", interval_s,
                         [Leg(MINT, member_account(member), WATT, export_wh)], {})
            step_totals["minted_wh"] += export_wh
    for member, import_wh, _ in deltas:
        if import_wh:
            burned, shortfall, bill = _consume(ledger, f"{prefix}:burn:{member}{suffix}", "burn",
                                               interval_s, member, import_wh, {})
            step_totals["burned_wh"] += burned
            step_totals["shortfall_wh"] += shortfall
            step_totals["grid_bill_micro"] += bill
    db.execute("INSERT INTO interval_energy (interval_start_s, step, metered, totals) "
               "VALUES (?, ?, ?, ?)", (interval_s, step, json.dumps(rows, separators=(",", ":")),
                                       json.dumps(step_totals, sort_keys=True)))
    for name, value in step_totals.items():
        totals[name] += value
    return totals, True


def _apply_cap_and_fee(ledger, interval_s, totals):
    """Steps 3–4: feed in what is still above each cap, then the storage fee."""
    config = ledger.config
    members = ledger.member_names()
    prefix = f"#iv:{interval_s}"
    for member in members:
        account = member_account(member)
        excess_wh = ledger.balance(account, WATT) - rules.cap_wh(ledger.balance(account, TSL), config)
        if excess_wh > 0:
            pay = rules.money_for_energy_micro(excess_wh, config.feed_in_tariff_micro_per_kwh)
            legs = [Leg(account, BURN, WATT, excess_wh)]
            if pay:
                legs.append(Leg(GRID, account, MONEY, pay))
            ledger._book(f"{prefix}:feed-in:{member}", "feed_in", interval_s, legs,
                         {"sold_wh": excess_wh})
            totals["sold_wh"] += excess_wh
            totals["feed_in_micro"] += pay
    _storage_fee(ledger, prefix, interval_s, members, totals)
    _assert_members_within_caps(ledger, members)


def _consume(ledger, transfer_id, kind, interval_s, member, import_wh, meta):
    """Burn what the balance covers; bill the rest at retail. Returns (burned, shortfall, bill)."""
    account = member_account(member)
    burned = min(ledger.balance(account, WATT), import_wh)
    shortfall = import_wh - burned
    bill = rules.money_for_energy_micro(shortfall, ledger.config.retail_tariff_micro_per_kwh)
    legs = []
    if burned:
        legs.append(Leg(account, BURN, WATT, burned))
    if bill:
        legs.append(Leg(account, GRID, MONEY, bill))
    if legs:
        ledger._book(transfer_id, kind, interval_s, legs,
                     dict(meta, import_wh=import_wh, shortfall_wh=shortfall))
    return burned, shortfall, bill


def _storage_fee(ledger, prefix, interval_s, members, totals):
    config = ledger.config
    db = ledger.db
    collect = []
    for member in members:
        account = member_account(member)
        row = db.one("SELECT carry_micro_wh FROM fee_carry WHERE account = ?", (account,))
        fee_wh, carry = rules.storage_fee_wh(ledger.balance(account, WATT), config.storage_fee_ppm,
                                             0 if row is None else row[0])
        db.execute("INSERT INTO fee_carry (account, carry_micro_wh) VALUES (?, ?) ON CONFLICT "
                   "(account) DO UPDATE SET carry_micro_wh = excluded.carry_micro_wh",
                   (account, carry))
        if fee_wh:
            collect.append(Leg(account, FEE_POOL, WATT, fee_wh))
    total_wh = sum(leg.amount for leg in collect)
    if not total_wh:
        return
    owners = ledger.storage_owners()
    owners_weight = config.fee_split_owners_percent if owners else 0
    owners_wh, education_wh, operator_wh = rules.split_largest_remainder(
        total_wh, [owners_weight, config.fee_split_education_percent,
                   config.fee_split_operator_percent])
    pay = []
    if owners_wh:
        shares = rules.split_largest_remainder(owners_wh, [capacity for _, capacity in owners])
        pay += [Leg(FEE_POOL, account, WATT, share) for (account, _), share in zip(owners, shares, strict=True) if share]
    pay += [Leg(FEE_POOL, target, WATT, amount)
            for target, amount in ((EDUCATION_POOL, education_wh), (NETWORK_OPERATOR, operator_wh))
            if amount]
    ledger._book(f"{prefix}:storage-fee", "storage_fee", interval_s, collect + pay,
                 {"fee_wh": total_wh})
    totals.update(storage_fee_wh=total_wh, fee_owners_wh=owners_wh, fee_education_wh=education_wh,
                  fee_operator_wh=operator_wh)


def _assert_members_within_caps(ledger, members):
    """The interval-end invariant, checked before commit: a violation rolls everything back."""
    for member in members:
        account = member_account(member)
        balance = ledger.balance(account, WATT)
        cap = rules.cap_wh(ledger.balance(account, TSL), ledger.config)
        if not 0 <= balance <= cap:
            raise InvariantViolation(f"{account} holds {balance} Wh at interval end (cap {cap})")
    if any(ledger.balance(FEE_POOL, asset) for asset in (WATT, TSL, MONEY)):
        raise InvariantViolation("the fee clearing account is not empty after the fee split")


def close_interval(ledger, interval_start_s, signing_key):
    """Sign a checkpoint over the entries since the previous checkpoint."""
    db = ledger.db
    head_seq, head_hash = db.one("SELECT seq, hash FROM chain_head WHERE id = 1")
    last = db.one("SELECT number, last_seq, hash, chain_hash FROM checkpoints "
                  "ORDER BY number DESC LIMIT 1")
    number, first_seq, prev_hash = (1, 1, checkpoints.ZERO_HASH) if last is None else (
        last[0] + 1, last[1] + 1, last[2])
    leaves = [checkpoints.entry_leaf(*row) for row in db.all(
        "SELECT seq, transfer_id, leg, debit, credit, asset, amount, interval_start_s FROM entries "
        "WHERE seq >= ? AND seq <= ? ORDER BY seq", (first_seq, head_seq))]
    root = checkpoints.segment_root(leaves)
    body = checkpoints.checkpoint_body(number, interval_start_s, first_seq, head_seq, root,
                                       head_hash, prev_hash, ledger.clock_ms())
    body_hash = hashlib.sha256(body).hexdigest()
    signature = checkpoints.sign(signing_key, body)
    db.execute(
        "INSERT INTO checkpoints (number, interval_start_s, first_seq, last_seq, entry_count, "
        "merkle_root, chain_hash, prev_checkpoint_hash, closed_at_ms, body, hash, signature) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (number, interval_start_s, first_seq, head_seq, len(leaves), root, head_hash, prev_hash,
         json.loads(body)["closed_at_ms"], body.decode(), body_hash, signature))
    ledger._forget_next_open()
    if db.get_meta("service_public_key") is None:
        db.set_meta("service_public_key", checkpoints.public_key_pem(signing_key.public_key()))
    return {"number": number, "entry_count": len(leaves), "merkle_root": root, "hash": body_hash}


def book_correction(ledger, correction_id, original_interval_s, member, import_wh=0, export_wh=0):
    """Book late energy of a closed interval into the first open interval.

    The export is minted and the import burned (shortfall billed) exactly as at
    settlement; cap and storage fee apply when the open interval closes. The
    transfer's meta names the interval it corrects. Idempotent by `correction_id`.
    """
    validate_transfer_id(correction_id)
    _validate_interval(ledger, original_interval_s)
    ledger._require_member(member)
    limit = ledger.config.interval_energy_wh_max
    for name, amount in (("import_wh", import_wh), ("export_wh", export_wh)):
        validate_amount(name, amount, minimum=0)
        if amount > limit:
            raise InvalidTransfer(f"{name} {amount} exceeds {limit} Wh per interval")
    if not import_wh and not export_wh:
        raise InvalidTransfer("a correction needs import_wh or export_wh")
    db = ledger.db
    with db.transaction():
        ledger.lock()
        if db.one("SELECT 1 FROM intervals WHERE interval_start_s = ?",
                  (original_interval_s,)) is None:
            raise IntervalError(
                f"interval {original_interval_s} is not closed: include its data in settle_interval")
        existing = ledger.transfer_info(correction_id)
        if existing is not None:
            if existing["kind"] != "correction" or existing["meta"].get("request") != [
                    original_interval_s, member, import_wh, export_wh]:
                raise InvalidTransfer(f"correction id {correction_id} was used for other data")
            return dict(existing["meta"], transfer_id=correction_id, replayed=True)
        interval_s = ledger.next_open_interval()
        account = member_account(member)
        legs = [Leg(MINT, account, WATT, export_wh)] if export_wh else []
        burned = min(ledger.balance(account, WATT) + export_wh, import_wh)
        shortfall = import_wh - burned
        bill = rules.money_for_energy_micro(shortfall, ledger.config.retail_tariff_micro_per_kwh)
        if burned:
            legs.append(Leg(account, BURN, WATT, burned))
        if bill:
            legs.append(Leg(account, GRID, MONEY, bill))
        meta = {"corrects_interval_s": original_interval_s, "member": member,
                "request": [original_interval_s, member, import_wh, export_wh],
                "minted_wh": export_wh, "burned_wh": burned, "shortfall_wh": shortfall,
                "grid_bill_micro": bill, "interval_start_s": interval_s}
        if legs:
            ledger._book(correction_id, "correction", interval_s, legs, meta)
        else:
            # A pure import with a zero bill (tariff 0, nothing to burn) still records the request.
            ledger._book(correction_id, "correction", interval_s, [], meta)
    return dict(meta, transfer_id=correction_id, replayed=False)
