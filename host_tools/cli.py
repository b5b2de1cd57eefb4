"""The `energo` command line.

One thin layer over the Python API: every subcommand lives in its own module
under `host_tools.commands` and registers itself through `register(subparsers)`.
Errors a user can cause are reported as one line on stderr with exit status 2;
no traceback reaches the user.
"""
import argparse
import importlib
import pkgutil
import sys

from host_tools import commands
from host_tools.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="energo",
        description="Energo: signed metering, settlement and EV charge-and-pay for an energy community.",
        epilog="Example: energo verify records.txt --key 3059...",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UsageError as exc:
        print(f"energo {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"energo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
