"""`energo enroll`: register a device's public key for a member (the registry's CLI).

The key is the SPKI hex a board prints on its console at boot. Enrolling the
same device again with the same data is a no-op, so provisioning can be re-run.
"""
import json

from host_tools.cli import UsageError
from host_tools.commands.ledger import add_db_argument, open_ledger
from host_tools.settlement import LedgerError


def register(sub):
    parser = sub.add_parser(
        "enroll",
        help="enroll a meter's or charger's public key for a member",
        description="Register (device id, public key, role, member) so the settlement service "
                    "accepts the device's signed records. The id must be the one derived from "
                    "the key; the member must exist.",
        epilog="Example: energo enroll --db sqlite:///community.db --device-id m-1a2b3c4d5e6f "
               "--pubkey 3059301306072A... --role meter --member alice",
    )
    add_db_argument(parser)
    parser.add_argument("--device-id", required=True, help="the id the board printed, m-/c-…")
    parser.add_argument("--pubkey", required=True, metavar="HEX",
                        help="the device's public key as DER SubjectPublicKeyInfo in hex")
    parser.add_argument("--role", required=True, choices=("meter", "charger"))
    parser.add_argument("--member", required=True, help="the member account the device meters for")
    parser.add_argument("--mqtt-secret", metavar="FILE",
                        help="broker secret: also print the device's MQTT username and password")
    parser.set_defaults(func=_run)


def _run(args):
    from host_tools.settlement.registry import Registry, RegistryError

    text = args.pubkey.strip().replace(" ", "").replace(":", "")
    if not text or len(text) > 400 or len(text) % 2:
        raise UsageError("--pubkey must be hex (DER SubjectPublicKeyInfo)")
    try:
        spki = bytes.fromhex(text)
    except ValueError:
        raise UsageError("--pubkey must be hex (DER SubjectPublicKeyInfo)") from None
    ledger = open_ledger(args, create=False)
    try:
        device = Registry(ledger).enroll(args.device_id, spki, args.role, args.member)
    except (RegistryError, LedgerError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.close()
    if args.mqtt_secret:
        try:
            from host_tools import broker_auth
        except ImportError:
            raise UsageError("--mqtt-secret needs host_tools.broker_auth, which is not "
                             "installed") from None
        secret = broker_auth.load_or_create_secret(args.mqtt_secret)
        device["mqtt_username"] = device["device_id"]
        device["mqtt_password"] = broker_auth.derive_password(secret, device["device_id"])
    print(json.dumps(device, sort_keys=True))
    return 0
