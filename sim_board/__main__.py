"""`python -m sim_board run --board B.json --flash DIR ...`: run one emulated ESP32.

The first line printed is `serial: <pty path or socket URL>` (connect mpremote there); after it
the board's console output is mirrored to stdout unless --quiet.
"""
import argparse
import signal
import sys
import threading


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m sim_board",
        description="Emulated ESP32 boards running unmodified Energo firmware.",
        epilog="Example: python -m sim_board run --board boards/meter-1.json --flash out/m1",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_fleet_parser(sub)
    return parser


def add_fleet_parser(sub, name="fleet"):
    fleet = sub.add_parser(
        name, help="run N emulated boards in one process",
        description="Run N boards, each with its own flash copied from a firmware tree, and "
                    "print a JSON status line every --report-s seconds.",
        epilog="Example: energo board fleet --count 100 --firmware firmware --flash-root out/fleet")
    fleet.add_argument("--count", type=int, required=True, help="number of boards")
    fleet.add_argument("--firmware", help="firmware tree copied into each new board's flash")
    fleet.add_argument("--flash-root", required=True, help="directory of the boards' flashes")
    fleet.add_argument("--role", default="meter", help="role of every board (default meter)")
    fleet.add_argument("--world", help="scenario JSON file applied to every board")
    fleet.add_argument("--speed", type=float, default=1.0, help="virtual seconds per second")
    fleet.add_argument("--seed", type=int, help="seed of board 0, board i gets seed+i "
                       "(default: fresh entropy)")
    fleet.add_argument("--duration-s", type=float, help="stop after this many wall seconds")
    fleet.add_argument("--report-s", type=float, default=5.0, help="status interval (wall s)")
    fleet.set_defaults(sim_action=run_fleet)
    return fleet


def run_fleet(args, out=sys.stdout):
    """Run the fleet until SIGINT/SIGTERM or --duration-s; one JSON status line per report."""
    import json
    import time

    from sim_board.faults import load_scenario
    from sim_board.fleet import Fleet

    if not args.speed > 0 or not args.report_s > 0:
        raise ValueError("--speed and --report-s must be > 0")
    scenario = load_scenario(args.world) if args.world else {}
    fleet = Fleet(args.count, args.flash_root, args.firmware, args.role, scenario,
                  speed=args.speed, seed=args.seed)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    fleet.start()
    end = None if args.duration_s is None else time.monotonic() + args.duration_s
    while not done.is_set():
        wait_s = args.report_s if end is None else min(args.report_s, end - time.monotonic())
        if wait_s <= 0 or done.wait(wait_s) or (end is not None and time.monotonic() >= end):
            break
        print(json.dumps(fleet.status(), sort_keys=True), file=out, flush=True)
    print(json.dumps(fleet.status(), sort_keys=True), file=out, flush=True)
    fleet.stop()
    return 0


def add_run_parser(sub, name="run"):
    run = sub.add_parser(
        name, help="run one emulated board",
        description="Run boot.py then main.py from the flash directory; serve its REPL.",
        epilog="Example: energo board run --board boards/meter-1.json --flash out/m1 --speed 60")
    run.add_argument("--board", required=True, help="board JSON file (name, role, pins, ...)")
    run.add_argument("--flash", required=True, help="host directory that is the board's flash")
    run.add_argument("--world", help="scenario JSON file (faults, Wi-Fi, world)")
    run.add_argument("--serial", default="pty",
                     help="pty (default) or socket://127.0.0.1:PORT")
    run.add_argument("--speed", type=float, help="virtual seconds per wall second (default 1)")
    run.add_argument("--seed", type=int,
                     help="make the board's randomness reproducible (default: fresh entropy)")
    run.add_argument("--install-umqtt", action="store_true",
                     help="install micropython-lib's umqtt.simple into the flash first")
    run.add_argument("--install-board-json", action="store_true",
                     help="copy the board file to the flash as /board.json first")
    run.add_argument("--quiet", action="store_true", help="do not mirror the console to stdout")
    run.set_defaults(sim_action=run_board)
    return run


def run_board(args, out=sys.stdout):
    """Start the board and serve until SIGINT/SIGTERM. Raises ValueError on bad input."""
    from sim_board.board import Board, attach_world, load_board_config
    from sim_board.faults import load_scenario
    from sim_board.serial_port import open_port, parse_spec

    if args.speed is not None and not args.speed > 0:
        raise ValueError("--speed must be > 0")
    parse_spec(args.serial)  # every argument is checked before anything is created
    config = load_board_config(args.board)
    scenario = load_scenario(args.world) if args.world else {}
    if args.install_board_json:
        import json
        import os

        os.makedirs(args.flash, exist_ok=True)
        with open(os.path.join(args.flash, "board.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, sort_keys=True)
    if args.install_umqtt:
        from sim_board.umqtt_install import install

        install(args.flash)

    def echo(data):
        out.buffer.write(data) if hasattr(out, "buffer") else out.write(data.decode("latin-1"))
        out.flush()

    board = Board(args.flash, config, scenario, speed=args.speed, seed=args.seed,
                  echo=None if args.quiet else echo)
    world = attach_world(board, scenario)
    port = open_port(args.serial, board.console)
    print(f"serial: {port.url}", file=out, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    board.start()
    while not done.wait(0.5):
        pass
    board.stop()
    port.close()
    if hasattr(world, "close"):
        world.close()
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.sim_action(args)
    except (ValueError, OSError) as exc:
        print(f"sim_board: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
