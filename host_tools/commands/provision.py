"""`energo provision --port PORT --member NAME --service URL --token FILE`: enroll a flashed board
with the settlement service and give it its MQTT credentials."""
from host_tools import flashing
from host_tools.cli import UsageError


def register(sub):
    parser = sub.add_parser(
        "provision",
        help="enroll a flashed board and write its MQTT credentials",
        description="Stop the board's firmware, open its device key through the REPL (created "
        "on the board on first use; the private key never leaves it), read the public key and "
        "device id, enroll them for the member with POST /api/v1/devices on the settlement "
        "service, then write /device.json with the returned MQTT user and password (plus "
        "community, broker and Wi-Fi) and reset the board. Settings already in /device.json "
        "are kept unless given here. Flash the board with energo flash first.",
        epilog="Example: energo provision --port /dev/ttyUSB0 --member alice "
        "--service http://127.0.0.1:8080 --token admin.token --community demo",
    )
    parser.add_argument("--port", required=True, help="serial device of the board")
    parser.add_argument("--member", required=True, help="member account the device belongs to")
    parser.add_argument("--service", required=True, help="settlement service URL (http(s)://)")
    parser.add_argument("--token", required=True, help="file holding the service's admin token")
    parser.add_argument("--community", help="community name (default: the board's, or demo)")
    parser.add_argument("--mqtt-url", help="broker as mqtt://host:port "
                        "(default: the board's, or the service's host on port 1883)")
    parser.add_argument("--wifi-ssid", help="Wi-Fi network name")
    parser.add_argument("--wifi-password", help="Wi-Fi password")
    parser.set_defaults(func=run)


def run(args):
    try:
        summary = flashing.provision(args.port, args.member, args.service, args.token,
                                     community=args.community, mqtt_url=args.mqtt_url,
                                     wifi_ssid=args.wifi_ssid, wifi_password=args.wifi_password,
                                     log=_say)
    except flashing.FlashError as exc:
        raise UsageError(str(exc)) from None
    print(f"provisioned {summary['device_id']} for {summary['member']} in community "
          f"{summary['community']}, broker {summary['mqtt_url']}")
    print(f"public key {summary['public_key']}")
    return 0


def _say(text):
    print(f"energo provision: {text}", flush=True)
