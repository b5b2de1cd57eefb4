"""`energo board run|fleet ...`: emulated ESP32 boards (the same as `python -m sim_board`)."""
from host_tools.cli import UsageError


def register(sub):
    parser = sub.add_parser(
        "board", help="run an emulated ESP32 board",
        description="Emulated ESP32 boards running unmodified Energo firmware.",
        epilog="Example: energo board run --board boards/meter-1.json --flash out/m1 --speed 60")
    actions = parser.add_subparsers(dest="board_action", metavar="ACTION", required=True)
    from sim_board.__main__ import add_fleet_parser, add_run_parser

    add_run_parser(actions)
    add_fleet_parser(actions)
    parser.set_defaults(func=_run)


def _run(args):
    try:
        return args.sim_action(args)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
