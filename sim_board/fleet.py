"""Many emulated boards in one process: one thread per board, shared compiled code.

Why in one process: 100+ boards must fit on two cores; a board costs a thread, its module table
and its flash directory, not an interpreter. Each board gets its own flash directory (copied from
a firmware tree on first use) and its own seed, so runs are reproducible.
"""
import os
import resource
import shutil
import time

from sim_board.board import Board, Shutdown, attach_world


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Fleet:
    def __init__(self, count, flash_root, firmware_dir=None, role="meter", scenario=None,
                 speed=1.0, seed=None, echo=None):
        if not 1 <= count <= 10_000:
            raise ValueError("count must be between 1 and 10000")
        if firmware_dir is not None and not os.path.isdir(firmware_dir):
            raise ValueError(f"firmware directory {firmware_dir} does not exist")
        self.boards = []
        self.worlds = []
        for i in range(count):
            flash_dir = os.path.join(flash_root, f"board-{i:04d}")
            if firmware_dir is not None and not os.path.exists(flash_dir):
                shutil.copytree(firmware_dir, flash_dir)
            config = {"name": f"{role}-{i:04d}", "role": role}
            board = Board(flash_dir, config, scenario, speed=speed,
                          seed=None if seed is None else seed + i, echo=echo)
            self.boards.append(board)
            self.worlds.append(attach_world(board, scenario or {}))
        self._started_wall_s = None
        self._started_cpu_s = None

    def start(self):
        self._started_wall_s = time.monotonic()
        self._started_cpu_s = _cpu_s()
        for board in self.boards:
            board.start()
        return self

    def stop(self):
        for board in self.boards:
            board.inject(Shutdown)
        for board in self.boards:
            board.stop(timeout_s=2.0)
        for world in self.worlds:
            if hasattr(world, "close"):
                world.close()

    def status(self):
        """A summary: boots, virtual time, how far boards lag, CPU per virtual board-second."""
        wall_s = time.monotonic() - self._started_wall_s
        virtual_s = [b.clock.now_s() for b in self.boards]
        behind_s = [b.clock.behind_s() for b in self.boards]
        cpu_s = _cpu_s() - self._started_cpu_s
        board_seconds = sum(virtual_s)
        return {
            "boards": len(self.boards),
            "wall_s": round(wall_s, 3),
            "boots_total": sum(b.boot_count for b in self.boards),
            "virtual_s_min": round(min(virtual_s), 3),
            "behind_s_max": round(max(behind_s), 3),
            "boards_behind": sum(1 for s in behind_s if s > 1.0),
            "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_board_s": round(1000 * cpu_s / board_seconds, 4) if board_seconds else None,
        }

