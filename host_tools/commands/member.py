"""`energo member add|list`: members of the community's ledger.

A thin layer over `Ledger.add_member` / `Ledger.members`, the same calls the
HTTP API makes.
"""
import json

from host_tools.cli import UsageError
from host_tools.commands.ledger import add_db_argument, call_and_close, open_ledger
from host_tools.settlement import LedgerError, SettlementConfig


def _capacity(text):
    """argparse type: a non-negative integer number of Wh."""
    import argparse

    if not text.isdigit() or len(text) > 15:
        raise argparse.ArgumentTypeError(f"capacity must be a whole number of Wh, got {text!r}")
    return int(text)


def register(sub):
    parser = sub.add_parser(
        "member",
        help="add or list the community's members",
        description="Add members (each receives the new-member TSL grant) and list them with "
                    "their balances. The ledger is created on first use.",
        epilog="Example: energo member add alice --db sqlite:///community.db --storage-owner 10000",
    )
    actions = parser.add_subparsers(dest="member_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="add a member, optionally owning storage capacity",
        epilog="Example: energo member add alice --db sqlite:///community.db")
    add.add_argument("name", help="member name: letters, digits, '.', '_' or '-'")
    add_db_argument(add)
    add.add_argument("--storage-owner", dest="capacity_wh", metavar="CAPACITY_WH",
                     type=_capacity, default=0,
                     help="storage capacity in Wh the member owns (earns the owners' fee share)")
    add.add_argument("--config", metavar="FILE",
                     help="settlement config (JSON) used when this creates the ledger")
    add.set_defaults(func=_add)
    listing = actions.add_parser(
        "list", help="list members with balances and caps",
        epilog="Example: energo member list --db sqlite:///community.db --json")
    add_db_argument(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    listing.set_defaults(func=_list)


def _add(args):
    try:
        config = SettlementConfig.load(args.config) if args.config else None
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    ledger = open_ledger(args, create=True, config=config)
    result = call_and_close(ledger, ledger.add_member, args.name,
                            storage_capacity_wh=args.capacity_wh)
    owner = f", owns {result['storage_capacity_wh']} Wh of storage" if args.capacity_wh else ""
    print(f"added member {result['member']} (account {result['account']}); "
          f"granted {result['tsl_granted']} TSL{owner}")
    return 0


def _list(args):
    ledger = open_ledger(args)
    members = call_and_close(ledger, ledger.members)
    if args.json:
        print(json.dumps(members, sort_keys=True))
        return 0
    print(f"{'name':24} {'WATT Wh':>10} {'cap Wh':>8} {'TSL':>10} {'money µ':>14} {'storage Wh':>11}")
    for member in members:
        print(f"{member['name']:24} {member['watt_wh']:>10} {member['cap_wh']:>8} "
              f"{member['tsl']:>10} {member['money_micro']:>14} {member['storage_capacity_wh']:>11}")
    return 0
