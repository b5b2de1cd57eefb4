"""`energo ledger check|verify-checkpoints`: audit a settlement ledger.

Exit status 0 when everything holds, 1 when a check fails, 2 on a usage error
(bad URL, missing ledger, unreadable key).
"""
import os

from host_tools.cli import UsageError
from host_tools.settlement import Ledger, LedgerError
from host_tools.settlement import checkpoints as chain


def add_db_argument(parser):
    parser.add_argument(
        "--db", default=os.environ.get("ENERGO_LEDGER_URL"),
        help="ledger database URL: sqlite:///PATH or postgresql://HOST/DB "
             "(default: $ENERGO_LEDGER_URL)")


def open_ledger(args, create=False, config=None):
    """Open the ledger named by --db, turning every refusal into a one-line usage error."""
    if not args.db:
        raise UsageError("no ledger given: use --db URL or set ENERGO_LEDGER_URL")
    try:
        return Ledger.open(args.db, config=config, create=create)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None


def call_and_close(ledger, method, *args, **kwargs):
    """Run one ledger call, close the ledger, and report refusals as one-line usage errors."""
    try:
        return method(*args, **kwargs)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    except ledger.db.errors as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"database error: {first_line}") from None
    finally:
        ledger.close()


def register(sub):
    parser = sub.add_parser(
        "ledger",
        help="check a settlement ledger's invariants and signed checkpoints",
        description="Audit the settlement ledger: recompute balances, supply and caps from the "
                    "entries, or recompute the hash chain and every signed checkpoint.",
        epilog="Example: energo ledger check --db sqlite:///community.db",
    )
    actions = parser.add_subparsers(dest="ledger_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="recompute balances and invariants from the entries",
        epilog="Example: energo ledger check --db sqlite:///community.db")
    add_db_argument(check)
    check.set_defaults(func=_check)
    verify = actions.add_parser(
        "verify-checkpoints", help="recompute the hash chain, Merkle roots and signatures",
        epilog="Example: energo ledger verify-checkpoints --db sqlite:///community.db "
               "--key service-key.pub.pem")
    add_db_argument(verify)
    verify.add_argument("--key", metavar="FILE",
                        help="trusted service key (PEM, public or private); default: the key "
                             "recorded in the ledger, which proves consistency, not authorship")
    verify.set_defaults(func=_verify)


def _check(args):
    ledger = open_ledger(args)
    report = call_and_close(ledger, ledger.check)
    if report.ok:
        print(f"ok: {report.entries} entries, {report.accounts} accounts, "
              f"{report.checkpoints} checkpoints; all invariants hold")
        return 0
    for problem in report.problems:
        print(f"FAIL: {problem}")
    return 1


def _verify(args):
    public_key = None
    if args.key:
        try:
            public_key = chain.load_public_key(args.key)
        except LedgerError as exc:
            raise UsageError(str(exc)) from None
    ledger = open_ledger(args)
    report = call_and_close(ledger, ledger.verify_checkpoints, public_key)
    if report.ok:
        print(f"ok: {report.entries} entries chained, {report.checkpoints} checkpoints verified "
              f"with the {report.key_source}")
        return 0
    print(f"FAIL: {report.problem}")
    return 1
