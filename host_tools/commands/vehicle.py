"""`energo vehicle add|list`: vehicles that may charge and pay at the community's chargers.

A vehicle is registered by its public key (its id `v-…` derives from the key, as a device's
does) for the member whose money pays for its charging, with the most one session may cost
while a charger cannot reach the service (the offline limit on the signed allow-list).
"""
import json

from host_tools.cli import UsageError
from host_tools.commands.ledger import add_db_argument, open_ledger
from host_tools.settlement import LedgerError


def _micro(text):
    import argparse

    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(f"must be a whole number of µ, got {text!r}")
    return int(text)


def register(sub):
    parser = sub.add_parser(
        "vehicle",
        help="register or list vehicles for charge-and-pay",
        description="Register a vehicle's public key for the member who pays for its charging, "
                    "or list the registered vehicles.",
        epilog="Example: energo vehicle add --db sqlite:///community.db --pubkey 3059301306... "
               "--member alice --offline-limit 10000000",
    )
    actions = parser.add_subparsers(dest="vehicle_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="register a vehicle key for a member",
        epilog="Example: energo vehicle add --db sqlite:///community.db --pubkey 3059301306... "
               "--member alice")
    add_db_argument(add)
    add.add_argument("--pubkey", required=True, metavar="HEX",
                     help="the vehicle's public key as DER SubjectPublicKeyInfo in hex")
    add.add_argument("--member", required=True, help="the member whose money pays")
    add.add_argument("--offline-limit", type=_micro, metavar="MICRO",
                     help="most µ one offline session may cost (default: the config's "
                          "ev_offline_limit_micro; 0: never offline)")
    add.set_defaults(func=_add)
    listing = actions.add_parser(
        "list", help="list registered vehicles",
        epilog="Example: energo vehicle list --db sqlite:///community.db")
    add_db_argument(listing)
    listing.set_defaults(func=_list)


def _accounts(args):
    from host_tools.settlement.ev_accounts import EvAccounts
    from host_tools.settlement.registry import Registry

    ledger = open_ledger(args)
    try:
        return ledger, EvAccounts(ledger, Registry(ledger))
    except (LedgerError, ValueError) as exc:
        ledger.close()
        raise UsageError(str(exc)) from None


def _add(args):
    from host_tools.settlement.ev_accounts import EvError

    text = args.pubkey.strip().replace(" ", "").replace(":", "")
    if not text or len(text) > 400 or len(text) % 2:
        raise UsageError("--pubkey must be hex (DER SubjectPublicKeyInfo)")
    ledger, accounts = _accounts(args)
    try:
        vehicle = accounts.add_vehicle(text.lower(), args.member, args.offline_limit)
    except (EvError, LedgerError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.close()
    print(json.dumps(vehicle, sort_keys=True))
    return 0


def _list(args):
    ledger, accounts = _accounts(args)
    try:
        vehicles = accounts.vehicles()
    finally:
        ledger.close()
    print(json.dumps(vehicles, sort_keys=True))
    return 0
