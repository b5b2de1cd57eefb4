"""Emulated meter boards: how many keep real time on this machine, and CPU per board-second.

Every board runs the unmodified meter firmware (the CT board: ADC sampling windows, a signed
record a minute, MQTT to a real Mosquitto) against its own simulated household. The fleet
size doubles until boards fall behind real time, then is bisected; `boards_realtime` is the
largest size that kept up. The baseline is one board alone, measured in the same run.

A fleet is split over `--processes` worker processes (default: one per core), as
`python -m sim_board fleet` would be run once per core on a real test rig: the boards of one
process share its interpreter lock, so one process can use one core at most.
"""
import multiprocessing
import os
import resource
import shutil
import tempfile
import time

from host_tools.errors import UsageError
from host_tools.sim import boards as sim_boards

NAME = "emulator"
_BEHIND_MAX_S = 0.5  # a board this far behind its schedule has fallen behind real time


def add_arguments(parser):
    parser.add_argument("--max-boards", type=int, default=320,
                        help="largest fleet to try (default 320)")
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="measured wall seconds per fleet size, after warm-up (default 12)")
    parser.add_argument("--speed", type=float, default=1.0, help="virtual speed (default 1)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="worker processes a fleet is split over (default: one per core)")


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _template(tmp, port):
    flash = os.path.join(tmp, "template")
    board = sim_boards.board_file("esp32-meter-ct")
    sim_boards.flash_firmware(flash, board, sim_boards.device_config(
        "bench", f"mqtt://127.0.0.1:{port}", record_interval_s=60, sample_interval_ms=1000))
    return flash, board


def _measure(count, speed, seconds, tmp, template, board_cfg, processes=1):
    """Run `count` boards split over `processes` workers; one figure for the whole fleet."""
    if processes <= 1 or count < 2:
        result = _measure_part(range(count), count, speed, seconds, tmp, template, board_cfg)
        del result["cpu_s"], result["board_s"]
        return result
    parts = [range(p, count, processes) for p in range(min(processes, count))]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(parts)) as pool:
        results = pool.starmap(_measure_part, [(list(part), count, speed, seconds, tmp, template,
                                                board_cfg) for part in parts])
    cpu_s = sum(r["cpu_s"] for r in results)
    board_s = sum(r["board_s"] for r in results)
    behind = max(r["behind_s_max"] for r in results)
    resets = sum(r["resets"] for r in results)
    return {"boards": count, "processes": len(parts), "behind_s_max": behind, "resets": resets,
            "cpu_ms_per_board_s": round(1000 * cpu_s / board_s, 3) if board_s else None,
            "kept_up": behind <= _BEHIND_MAX_S and resets == 0}


def _measure_part(indices, count, speed, seconds, tmp, template, board_cfg):
    from sim_board.board import Board, attach_world

    boards, worlds = [], []
    try:
        for i in indices:
            flash = os.path.join(tmp, f"n{count}-b{i:04d}")
            shutil.copytree(template, flash)
            cfg = dict(board_cfg, name=f"meter-{i:04d}")
            scenario = {"wifi": sim_boards.WIFI, "world": {
                "seed": i, "site": "house",
                "scenario": {"sites": {"house": {"load": {"base_w": 300 + i % 7 * 50},
                                                 "pv_kwp": 4.0}}}}}
            board = Board(flash, cfg, scenario, speed=speed, seed=i)
            boards.append(board)
            worlds.append(attach_world(board, scenario))
        for board in boards:
            board.start()
        time.sleep(min(8.0, 2.0 + count * 0.02))  # boot: keys, first windows, MQTT connect
        cpu0, virtual0 = _cpu_s(), sum(b.clock.now_s() for b in boards)
        time.sleep(seconds)
        cpu = _cpu_s() - cpu0
        board_s = sum(b.clock.now_s() for b in boards) - virtual0
        behind = max(b.clock.behind_s() for b in boards)
        resets = sum(b.boot_count for b in boards) - len(boards)
        return {"boards": len(boards), "behind_s_max": round(behind, 3), "resets": resets,
                "cpu_ms_per_board_s": round(1000 * cpu / board_s, 3) if board_s else None,
                "kept_up": behind <= _BEHIND_MAX_S and resets == 0,
                "cpu_s": cpu, "board_s": board_s}
    finally:
        for board in boards:
            board.stop(timeout_s=2.0)
        for world in worlds:
            if world is not None and hasattr(world, "close"):
                world.close()


def run(args):
    from host_tools.mosquitto import Mosquitto

    if not 1 <= args.max_boards <= 2000 or not 2 <= args.seconds <= 600 or not args.speed > 0:
        raise UsageError("--max-boards 1..2000, --seconds 2..600 and a positive --speed")
    if not 1 <= args.processes <= 64:
        raise UsageError("--processes 1..64")
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="energo-bench-") as tmp:
        template, board_cfg = _template(tmp, broker.port)
        single = _measure(1, args.speed, min(args.seconds, 6.0), tmp, template, board_cfg)
        trials = []
        good, bad = 0, None
        count = min(25, args.max_boards)
        while True:  # double until a fleet falls behind
            result = _measure(count, args.speed, args.seconds, tmp, template, board_cfg,
                              args.processes)
            trials.append(result)
            if not result["kept_up"]:
                bad = count
                break
            good = count
            if count >= args.max_boards:
                break
            count = min(count * 2, args.max_boards)
        while bad is not None and bad - good > max(8, good // 8):  # then bisect
            count = (good + bad) // 2
            result = _measure(count, args.speed, args.seconds, tmp, template, board_cfg,
                              args.processes)
            trials.append(result)
            if result["kept_up"]:
                good = count
            else:
                bad = count
    best = next((t for t in trials if t["boards"] == good), None)
    return {
        "firmware": "meter (esp32-meter-ct), unmodified",
        "speed": args.speed,
        "processes": args.processes,
        "boards_realtime": good,
        "cpu_ms_per_board_s": best["cpu_ms_per_board_s"] if best else None,
        "baseline_single_board_cpu_ms_per_board_s": single["cpu_ms_per_board_s"],
        "trials": trials,
    }
