"""Holds for EV charge-and-pay (ARCHITECTURE §4.3): hold, capture ≤ hold, release the rest.

A hold moves the authorised maximum from the member's money into an account of
its own (`hold:<id>`), so the money is visibly set aside and cannot be spent
twice; capture pays the actual cost out of it and returns the rest in the same
transaction. Each step is idempotent by the hold id.
"""
import json

from host_tools.settlement.errors import HoldError, InvalidTransfer
from host_tools.settlement.ledger import (
    MONEY,
    Leg,
    hold_account,
    member_account,
    validate_amount,
    validate_transfer_id,
)

_PAYEE_KINDS = ("member", "storage_owner", "network_operator", "education_pool", "grid")


def _load(ledger, hold_id):
    row = ledger.db.one("SELECT member, amount_micro, captured_micro, state FROM holds "
                        "WHERE hold_id = ?", (hold_id,))
    if row is None:
        raise HoldError(f"no hold {hold_id!r}")
    return row


def place(ledger, hold_id, member, amount_micro, at_s=None):
    """Set `amount_micro` of the member's money aside (refused beyond their credit limit)."""
    validate_transfer_id(hold_id)
    validate_amount("amount_micro", amount_micro)
    with ledger.db.transaction():
        ledger.lock()
        ledger._require_member(member)
        existing = ledger.db.one("SELECT member, amount_micro FROM holds WHERE hold_id = ?",
                                 (hold_id,))
        if existing is not None:
            if tuple(existing) != (member, amount_micro):
                raise HoldError(f"hold id {hold_id} was already used for other data")
            return {"hold_id": hold_id, "member": member, "amount_micro": amount_micro,
                    "replayed": True}
        interval_s = ledger._booking_interval(at_s)
        ledger.db.execute("INSERT INTO holds (hold_id, member, amount_micro, state) "
                          "VALUES (?, ?, ?, 'open')", (hold_id, member, amount_micro))
        ledger.db.execute("INSERT INTO accounts (name, kind, member, created_interval_s) "
                          "VALUES (?, 'hold', ?, ?)", (hold_account(hold_id), member, interval_s))
        legs = [Leg(member_account(member), hold_account(hold_id), MONEY, amount_micro)]
        ledger._book(f"#hold:{hold_id}", "hold", interval_s, legs, {"member": member})
        ledger._enforce_limits(legs)
    return {"hold_id": hold_id, "member": member, "amount_micro": amount_micro, "replayed": False}


def capture(ledger, hold_id, payments, at_s=None):
    """Pay `payments` [(account, amount_micro), ...] from the hold and release the rest.

    The total may not exceed the hold. A replay with the same payments returns
    the original result; a different capture of a finished hold is refused.
    """
    validate_transfer_id(hold_id)
    if not isinstance(payments, list | tuple) or len(payments) > ledger.config.transfer_legs_max - 1:
        raise InvalidTransfer(f"payments must be a list of at most "
                              f"{ledger.config.transfer_legs_max - 1} (account, amount_micro)")
    checked = []
    for payment in payments:
        if not isinstance(payment, list | tuple) or len(payment) != 2:
            raise InvalidTransfer("each payment is (account, amount_micro)")
        account, amount = payment
        validate_amount("payment amount_micro", amount)
        checked.append((account, amount))
    request = json.dumps(checked, separators=(",", ":"))
    with ledger.db.transaction():
        ledger.lock()
        member, amount_micro, _, state = _load(ledger, hold_id)
        transfer_id = f"#hold:{hold_id}:capture"
        if state != "open":
            done = ledger.transfer_info(transfer_id)
            if done is not None and done["meta"].get("request") == request:
                return dict(done["meta"]["result"], replayed=True)
            raise HoldError(f"hold {hold_id} is already {state}")
        total = sum(amount for _, amount in checked)
        if total > amount_micro:
            raise HoldError(f"capture of {total} µ exceeds the hold of {amount_micro} µ")
        source = hold_account(hold_id)
        legs = []
        for account, amount in checked:
            if ledger.account_kind(account) not in _PAYEE_KINDS:
                raise InvalidTransfer(f"account {account} cannot be paid from a hold")
            legs.append(Leg(source, account, MONEY, amount))
        released = amount_micro - total
        if released:
            legs.append(Leg(source, member_account(member), MONEY, released))
        result = {"hold_id": hold_id, "captured_micro": total, "released_micro": released}
        if legs:
            ledger._book(transfer_id, "capture", ledger._booking_interval(at_s), legs,
                         {"request": request, "result": result})
        ledger.db.execute("UPDATE holds SET captured_micro = ?, state = 'captured' WHERE hold_id = ?",
                          (total, hold_id))
    return dict(result, replayed=False)


def release(ledger, hold_id, at_s=None):
    """Cancel an open hold: everything goes back to the member (idempotent)."""
    validate_transfer_id(hold_id)
    with ledger.db.transaction():
        ledger.lock()
        member, amount_micro, _, state = _load(ledger, hold_id)
        if state == "released":
            return {"hold_id": hold_id, "released_micro": amount_micro, "replayed": True}
        if state != "open":
            raise HoldError(f"hold {hold_id} is already {state}")
        ledger._book(f"#hold:{hold_id}:release", "release", ledger._booking_interval(at_s),
                     [Leg(hold_account(hold_id), member_account(member), MONEY, amount_micro)], {})
        ledger.db.execute("UPDATE holds SET state = 'released' WHERE hold_id = ?", (hold_id,))
    return {"hold_id": hold_id, "released_micro": amount_micro, "replayed": False}
