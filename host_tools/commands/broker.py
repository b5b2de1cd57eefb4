"""`energo broker`: the community's MQTT broker, or the files to run Mosquitto instead.

Both enforce the same per-device credentials and ACL (`host_tools.broker_auth`):
a device logs in as its device id with the password derived from the broker
secret, and may publish only under its own id.
"""
import argparse
import logging
import sys

from host_tools.cli import UsageError

_DESCRIPTION = """\
Run the embedded MQTT broker (amqtt) for a community, or with --mosquitto-config DIR write
mosquitto.conf, passwd and acl for a production Mosquitto 2.x.

Devices are the meters and chargers enrolled in the device registry of the ledger database
(--db). Each logs in with username = its device id and the password derived from the broker
secret (--secret, 32 random bytes, created with mode 0600 if missing; the settlement service
hands the same passwords out at enrollment). The settlement service logs in as "settlement".
A device may publish only energo/v1/COMMUNITY/ID/{rec,hello,state,ev} and read its own
ack and ev/reply and the community price; anonymous clients are refused.

The embedded broker re-reads the registry when an unknown device connects, so enrolling needs
no restart; it stops cleanly on Ctrl-C or SIGTERM.

Running Mosquitto with the generated files:
  energo broker --mosquitto-config /etc/energo/mosquitto --db URL --community NAME \\
      --secret broker.secret --port 1883
  mosquitto -c /etc/energo/mosquitto/mosquitto.conf
The directory must be readable by the user Mosquitto runs as (when started as root,
Mosquitto switches to the "mosquitto" user; the passwd file is then given to its group and
the data/ persistence directory to that user). Rerun the command after enrolling devices and
send Mosquitto SIGHUP (e.g. systemctl reload mosquitto) to reload passwords and ACL.
"""


def register(sub):
    from host_tools.commands.ledger import add_db_argument

    parser = sub.add_parser(
        "broker",
        help="run the embedded MQTT broker, or write a Mosquitto config, with per-device ACLs",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the worked example
        epilog="Example: energo broker --db sqlite:///community.db --community demo "
               "--secret broker.secret --listen 127.0.0.1:1883",
    )
    add_db_argument(parser)
    parser.add_argument("--community", required=True,
                        help="community name (the topic level after energo/v1/)")
    parser.add_argument("--secret", required=True, metavar="FILE",
                        help="broker secret file; created (mode 0600) if missing")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="embedded broker address (default 127.0.0.1:1883)")
    parser.add_argument("--mosquitto-config", metavar="DIR",
                        help="write mosquitto.conf, passwd and acl into DIR and exit")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help="with --mosquitto-config: Mosquitto's listener port (default 1883)")
    parser.add_argument("--bind", metavar="ADDRESS",
                        help="with --mosquitto-config: listen only on ADDRESS (default: all)")
    parser.set_defaults(func=_run)


def parse_listen(text):
    """`HOST:PORT` (IPv6 as `[::1]:1883`) -> (host, port); a UsageError otherwise."""
    host, sep, port_text = (text or "").rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--listen must be HOST:PORT with a port 1-65535, got {text!r}")
    if any(c.isspace() or c in "[]/" for c in host):
        raise UsageError(f"--listen host {host!r} is not an address")
    return host, int(port_text)


def _run(args):
    from host_tools import broker_auth

    if not args.db:
        raise UsageError("no ledger given: use --db URL or set ENERGO_LEDGER_URL")
    if args.mosquitto_config is None and (args.port is not None or args.bind is not None):
        raise UsageError("--port and --bind go with --mosquitto-config; use --listen for the "
                         "embedded broker")
    if args.mosquitto_config is not None and args.listen is not None:
        raise UsageError("--listen is for the embedded broker; use --port/--bind with "
                         "--mosquitto-config")
    try:
        broker_auth.validate_community(args.community)
        secret = broker_auth.load_or_create_secret(args.secret)
    except broker_auth.BrokerAuthError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot create broker secret {args.secret}: {exc.strerror}") from None
    if args.mosquitto_config is not None:
        return _write_mosquitto(args, secret)
    return _serve(args, secret)


def _devices(db_url):
    """The registry's (device id, role) pairs, with every failure as a one-line usage error."""
    from host_tools.broker import registry_devices
    from host_tools.settlement import LedgerError

    try:
        return registry_devices(db_url)()
    except (LedgerError, ValueError) as exc:  # RegistryError is a ValueError
        raise UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - database drivers raise their own errors
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot read the device registry: {first_line}") from None


def _write_mosquitto(args, secret):
    from host_tools import broker_auth

    devices = _devices(args.db)
    device_ids = []
    for device_id, role in devices:
        try:
            device_ids.append(broker_auth.validate_device(device_id, role))
        except broker_auth.BrokerAuthError:
            continue  # no broker access for this role
    port = 1883 if args.port is None else args.port
    try:
        paths = broker_auth.write_mosquitto_config(args.mosquitto_config, args.community,
                                                   secret, device_ids, port=port, bind=args.bind)
    except broker_auth.BrokerAuthError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.mosquitto_config}: {exc.strerror}") from None
    print(f"wrote {paths['mosquitto.conf']}, {paths['passwd']} ({len(device_ids)} devices + "
          f"settlement) and {paths['acl']}")
    print(f"run: mosquitto -c {paths['mosquitto.conf']}")
    return 0


class _OneLineFormatter(logging.Formatter):
    """Log lines without tracebacks: the broker's log is for operators, not for debugging."""

    def format(self, record):
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info = record.exc_text = record.stack_info = None
        return super().format(record)


def _configure_logging():
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("energo broker: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("energo.broker").setLevel(logging.INFO)


def _serve(args, secret):
    from host_tools import broker as embedded
    from host_tools import broker_auth

    host, port = parse_listen(args.listen or f"127.0.0.1:{embedded.DEFAULT_PORT}")
    _devices(args.db)  # fail fast on a wrong --db, before listening
    access = embedded.DeviceAccess(args.community, secret, embedded.registry_devices(args.db))
    try:
        count = access.load()
    except broker_auth.BrokerAuthError as exc:
        raise UsageError(str(exc)) from None
    _configure_logging()
    amqtt_log = logging.getLogger("amqtt")
    amqtt_log.setLevel(logging.CRITICAL)  # a failed start is reported once, as a usage error

    def ready(bound_port):
        amqtt_log.setLevel(logging.ERROR)
        print(f"energo broker: community {args.community}, {count} devices, listening on "
              f"mqtt://{host}:{bound_port} (Ctrl-C or SIGTERM to stop)", flush=True)

    try:
        embedded.run_until_signalled(access, host, port, on_ready=ready)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except Exception as exc:  # amqtt wraps bind errors in BrokerError
        cause = exc.__cause__ or exc
        if isinstance(cause, OSError):
            raise UsageError(f"cannot listen on {host}:{port}: {cause.strerror or cause}") from None
        raise
    print("energo broker: stopped", flush=True)
    return 0
