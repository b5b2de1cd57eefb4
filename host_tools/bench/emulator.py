"""Emulated boards: how many keep real time at a speed, and CPU per virtual board-second."""
import os
import tempfile
import time

NAME = "emulator"

_FIRMWARE = (
    "import time, os\n"
    "n = 0\n"
    "while True:\n"
    "    time.sleep_ms(200)\n"
    "    n += 1\n"
    "    if n % 50 == 0:\n"
    "        with open('tick.tmp', 'w') as f:\n"
    "            f.write(str(n))\n"
    "        os.rename('tick.tmp', 'tick')\n"
)


def add_arguments(parser):
    parser.add_argument("--boards", type=int, default=100, help="fleet size (default 100)")
    parser.add_argument("--speed", type=float, default=10.0, help="virtual speed (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="wall seconds per run")


def _measure(count, speed, seconds):
    from sim_board.fleet import Fleet

    with tempfile.TemporaryDirectory() as tmp:
        firmware = f"{tmp}/firmware"
        os.makedirs(firmware)
        with open(f"{firmware}/main.py", "w") as f:
            f.write(_FIRMWARE)
        fleet = Fleet(count, f"{tmp}/flash", firmware, speed=speed).start()
        time.sleep(seconds)
        status = fleet.status()
        fleet.stop()
    return status


def run(args):
    """The baseline is one board alone, measured in the same run, for the per-board CPU."""
    if args.boards < 1 or not args.speed > 0 or not args.seconds > 0:
        raise ValueError("--boards, --speed and --seconds must be positive")
    baseline = _measure(1, args.speed, min(args.seconds, 2.0))
    fleet = _measure(args.boards, args.speed, args.seconds)
    return {
        "boards": args.boards,
        "speed": args.speed,
        "boards_realtime": args.boards - fleet["boards_behind"],
        "behind_s_max": fleet["behind_s_max"],
        "cpu_ms_per_board_s": fleet["cpu_ms_per_board_s"],
        "baseline_cpu_ms_per_board_s": baseline["cpu_ms_per_board_s"],
        "cpu_ratio_vs_single": (round(fleet["cpu_ms_per_board_s"]
                                      / baseline["cpu_ms_per_board_s"], 2)
                                if baseline["cpu_ms_per_board_s"] else None),
    }
