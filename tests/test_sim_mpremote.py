"""The real mpremote against an emulated board, over a pty and over socket://."""
import os
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")


class Emulator:
    """`python -m sim_board run` in a subprocess; its stdout (the console mirror) is collected."""

    def __init__(self, tmp_path, serial):
        board = tmp_path / "board.json"
        board.write_text('{"name": "mp-test", "role": "meter"}')
        self.flash = tmp_path / "flash"
        self.flash.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim_board", "run", "--board", str(board), "--flash",
             str(self.flash), "--serial", serial, "--speed", "10"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first = self.proc.stdout.readline().decode()
        assert first.startswith("serial: "), first
        self.url = first.split(" ", 1)[1].strip()
        self.output = bytearray()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def mpremote(self, *args, cwd=None):
        return subprocess.run([MPREMOTE, "connect", self.url, *args], capture_output=True,
                              text=True, timeout=60, cwd=cwd)

    def wait_output(self, needle, timeout_s=15):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle.encode() in self.output:
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not on the console: {bytes(self.output)!r}")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(params=["pty", "socket://127.0.0.1:0"])
def emulator(request, tmp_path):
    emu = Emulator(tmp_path, request.param)
    yield emu
    emu.close()


def test_copy_firmware_reset_and_boot(emulator, tmp_path):
    src = tmp_path / "firmware"
    (src / "lib" / "greet").mkdir(parents=True)
    (src / "lib" / "greet" / "__init__.py").write_text("WORD = 'hello from flash'\n")
    (src / "main.py").write_text("import greet, machine\nprint(greet.WORD, machine.reset_cause())\n")
    result = emulator.mpremote("fs", "cp", "-r", ".", ":", "+", "reset", cwd=src)
    assert result.returncode == 0, result.stderr
    emulator.wait_output("hello from flash 5")  # booted after machine.reset(): SOFT_RESET
    assert (emulator.flash / "lib" / "greet" / "__init__.py").read_text().startswith("WORD")

    listing = emulator.mpremote("fs", "ls", ":")
    assert listing.returncode == 0, listing.stderr
    for name in os.listdir(emulator.flash):
        assert name in listing.stdout
    cat = emulator.mpremote("fs", "cat", ":main.py")
    assert cat.stdout == (emulator.flash / "main.py").read_text()

    missing = emulator.mpremote("fs", "cat", ":no_such_file.py")
    assert missing.returncode != 0
    assert "No such file or directory" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr

    script = tmp_path / "script.py"
    script.write_text("import machine\nprint('ran on', machine.unique_id().hex()[:6])\n")
    ran = emulator.mpremote("run", str(script))
    assert ran.returncode == 0 and "ran on 240ac4" in ran.stdout, ran.stderr

    evaluated = emulator.mpremote("exec", "import os; print(os.statvfs('/')[0])", "eval", "6*7")
    assert evaluated.stdout.split() == ["4096", "42"]
    removed = emulator.mpremote("fs", "rm", ":main.py", "+", "fs", "mkdir", ":d",
                                "+", "fs", "rmdir", ":d")
    assert removed.returncode == 0, removed.stderr
    assert not (emulator.flash / "main.py").exists()


def test_ctrl_c_interrupts_running_firmware_for_mpremote(emulator):
    started = emulator.mpremote(
        "exec", "--no-follow",
        "import asyncio\nasync def f():\n    while True:\n        await asyncio.sleep(1)\n"
        "asyncio.run(f())")
    assert started.returncode == 0, started.stderr
    spin = emulator.mpremote("resume", "exec", "--no-follow", "while True:\n    pass")
    assert spin.returncode == 0, spin.stderr
    run = emulator.mpremote("resume", "exec", "print('alive')")
    assert run.returncode == 0, run.stderr
    assert "alive" in run.stdout
