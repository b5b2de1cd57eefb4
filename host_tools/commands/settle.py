"""`energo settle`: run the settlement service (ingest worker) until SIGINT/SIGTERM.

A thin layer over `host_tools.settlement.service.Service`; every refusal at start-up
(bad URL, unreachable database, foreign ledger) is one line and exit status 2.
"""
import multiprocessing
import os
import signal
import sys

from host_tools.cli import UsageError
from host_tools.settlement import LedgerError

_WORKERS_MAX = 32


def _positive(name, low, high):
    def parse(text):
        import argparse

        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number from {low} to {high}")
        return int(text)
    return parse


def register(sub):
    parser = sub.add_parser(
        "settle",
        help="run the settlement service: verify, settle and ack signed records",
        description="Subscribe to the community's records on MQTT, verify each against its "
                    "enrolled key, settle every (device, counter) exactly once into the ledger, "
                    "and publish cumulative acks. Runs until SIGINT or SIGTERM.",
        epilog="Example: energo settle --db sqlite:///community.db --mqtt mqtt://127.0.0.1:1883 "
               "--community demo",
    )
    parser.add_argument("--db", default=os.environ.get("ENERGO_LEDGER_URL"),
                        help="ledger URL: sqlite:///PATH or postgresql://HOST/DB "
                             "(default: $ENERGO_LEDGER_URL)")
    parser.add_argument("--mqtt", required=True, metavar="URL", help="broker, mqtt://HOST:PORT")
    parser.add_argument("--community", required=True, help="community name in the topics")
    parser.add_argument("--key", metavar="FILE",
                        help="service signing key for checkpoints (created if missing; "
                             "default for SQLite: next to the database file)")
    parser.add_argument("--mqtt-secret", metavar="FILE",
                        help="broker secret: connect as user 'settlement' with its derived "
                             "password (default: anonymous)")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve the HTTP API (with /metrics and /healthz) on this address")
    parser.add_argument("--admin-token-file", metavar="FILE",
                        help="the HTTP API's admin token (created with a random token if "
                             "missing); enables device enrollment over HTTP")
    parser.add_argument("--workers", type=_positive("--workers", 1, _WORKERS_MAX), default=1,
                        help="worker processes sharing the load via an MQTT shared "
                             "subscription (default 1)")
    parser.add_argument("--shared", action="store_true",
                        help="use the shared subscription even with one worker (to run "
                             "several `energo settle` processes side by side)")
    parser.add_argument("--batch-max", type=_positive("--batch-max", 1, 10_000), default=500,
                        help="messages per database transaction at most (default 500)")
    parser.add_argument("--batch-wait-ms", type=_positive("--batch-wait-ms", 1, 10_000),
                        default=50, help="how long a batch collects messages (default 50)")
    parser.add_argument("--grace-s", type=_positive("--grace-s", 0, 7 * 86_400), default=None,
                        help="event-time grace before an interval closes without a silent "
                             "device (default: one interval)")
    parser.add_argument("--status-every-s", type=_positive("--status-every-s", 1, 3600),
                        default=10, help="seconds between status lines (default 10)")
    parser.set_defaults(func=_run)


def _make_service(args, shared, http):
    from host_tools.settlement.registry import RegistryError
    from host_tools.settlement.service import Service, ServiceError

    if not args.db:
        raise UsageError("no ledger given: use --db URL or set ENERGO_LEDGER_URL")
    try:
        return Service(args.db, args.mqtt, args.community, key_path=args.key,
                       mqtt_secret_path=args.mqtt_secret, shared=shared,
                       batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms,
                       grace_s=args.grace_s, status_every_s=args.status_every_s,
                       out=sys.stdout, http_address=http,
                       admin_token_path=args.admin_token_file if http else None)
    except (ServiceError, RegistryError, LedgerError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _serve(service):
    def stop(signum, frame):
        service.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()


def _worker(args, index):
    try:
        service = _make_service(args, True, None)
    except UsageError as exc:
        print(f"energo settle: worker {index}: {exc}", file=sys.stderr)
        sys.exit(2)
    _serve(service)


def _run(args):
    shared = args.shared or args.workers > 1
    service = _make_service(args, shared, args.http)
    print(f"energo settle: community {args.community}, broker {args.mqtt}, "
          f"{args.workers} worker(s)", flush=True)
    children = []
    if args.workers > 1:
        context = multiprocessing.get_context("spawn")
        for index in range(1, args.workers):
            child = context.Process(target=_worker, args=(args, index), daemon=True)
            child.start()
            children.append(child)
    try:
        _serve(service)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(10)
    return 0
