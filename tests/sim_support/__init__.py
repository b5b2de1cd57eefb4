"""Helpers for the board emulator tests: an in-process board with a captured console."""
import threading
import time

from sim_board.board import Board


class CapturedBoard:
    """A started Board whose console output is collected for assertions."""

    def __init__(self, flash_dir, scenario=None, speed=1000.0, name="t"):
        self.output = bytearray()
        self._lock = threading.Lock()
        self.board = Board(str(flash_dir), {"name": name, "role": "meter"}, scenario,
                           speed=speed, echo=self._echo)

    def _echo(self, data):
        with self._lock:
            self.output += data

    def text(self):
        with self._lock:
            return self.output.decode(errors="replace")

    def wait_for(self, needle, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return self.text()
            time.sleep(0.01)
        raise AssertionError(f"{needle!r} not seen on the console; got:\n{self.text()}")

    def __enter__(self):
        self.board.start()
        return self

    def __exit__(self, *exc):
        self.board.stop()


def write_firmware(flash_dir, files):
    for name, source in files.items():
        path = flash_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
