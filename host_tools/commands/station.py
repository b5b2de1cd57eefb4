"""`energo station fee`: a charger's service fee, paid to its owner per kWh charged.

A station is a device enrolled with role `charger` (`energo enroll`); its member is the owner.
Until a fee is set, the config's `ev_station_fee_micro_per_kwh` applies. The fee goes into the
station certificate the service signs, so a charger offers it from its next sync on.
"""
import json

from host_tools.cli import UsageError
from host_tools.commands.ledger import add_db_argument
from host_tools.commands.vehicle import _accounts, _micro
from host_tools.settlement import LedgerError


def register(sub):
    parser = sub.add_parser(
        "station",
        help="set a charger's service fee",
        description="Set the service fee (µ/kWh) a charger's owner receives for each kWh "
                    "charged there.",
        epilog="Example: energo station fee --db sqlite:///community.db "
               "--device-id c-1a2b3c4d5e6f --fee 30000",
    )
    actions = parser.add_subparsers(dest="station_action", metavar="ACTION", required=True)
    fee = actions.add_parser(
        "fee", help="set a charger's service fee in µ/kWh",
        epilog="Example: energo station fee --db sqlite:///community.db "
               "--device-id c-1a2b3c4d5e6f --fee 30000")
    add_db_argument(fee)
    fee.add_argument("--device-id", required=True, help="the charger's id, c-…")
    fee.add_argument("--fee", required=True, type=_micro, metavar="MICRO_PER_KWH",
                     help="service fee in µ per kWh")
    fee.set_defaults(func=_fee)


def _fee(args):
    from host_tools.settlement.ev_accounts import EvError

    ledger, accounts = _accounts(args)
    try:
        station = accounts.set_station_fee(args.device_id, args.fee)
    except (EvError, LedgerError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.close()
    print(json.dumps(station, sort_keys=True))
    return 0
