"""`energo console`: timestamps, a board reset on the same pty, a lost and returning port, and a
clean exit on Ctrl-C — run as a user runs it, as a separate process on the emulator's port."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from host_tools import cli
from host_tools.commands.console import Monitor
from tests.test_provision_standin import ROOT, EmulatedBoard

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
STAMP = r"\d\d:\d\d:\d\d\.\d\d\d "


def test_lines_get_the_time_of_their_first_byte():
    out = io.StringIO()
    clock = iter([0.5, 1.25, 2.0, 3.0])
    monitor = Monitor("/dev/null", out, now=lambda: 1_700_000_000 + next(clock))
    monitor.write(b"boot\r\nhal")
    monitor.write(b"f line\r\n\xe2\x82")  # a character split across reads stays whole
    monitor.write(b"\xac\n")
    lines = out.getvalue().splitlines()
    assert [line[13:] for line in lines] == ["boot", "half line", "\u20ac"]
    stamps = [line[:13] for line in lines]
    assert all(re.fullmatch(STAMP, s) for s in stamps)
    assert stamps[0][9:12] == "500" and stamps[1][9:12] == "250"  # not the second read's time


def test_raw_mode_passes_bytes_through():
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    Monitor("/dev/null", out, raw=True).write(b">>> \r\n\x00")
    out.flush()
    assert out.buffer.getvalue() == b">>> \r\n\x00"


def test_bad_port_arguments(capsys):
    assert cli.main(["console", "--port", "ftp://x"]) == 2
    assert "unsupported URL scheme" in capsys.readouterr().err
    assert cli.main(["console", "--port", "/no/such/dir/ttyUSB0"]) == 2
    assert "does not exist" in capsys.readouterr().err


class ConsoleProcess:
    """`energo console` as a separate process; its output is collected."""

    def __init__(self, port):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host_tools.cli", "console", "--port", port], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output = bytearray()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def text(self):
        return bytes(self.output).decode(errors="replace")

    def wait_for(self, pattern, timeout_s=20):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text(), re.M)
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the console output: {self.text()[-2000:]!r}")

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(10)
        return rc, self.proc.stderr.read().decode()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def reset_under_console(board):
    """Start `energo console` on the board's port and reset the board through its REPL.

    mpremote and the console must not read the port at the same time (each would get part of
    the bytes), so mpremote leaves the board waiting for a file on its flash, and the file is
    made once the console is connected."""
    go = board.flash / "go-reset"
    done = subprocess.run(
        [MPREMOTE, "connect", board.port, "exec", "--no-follow",
         "import os, time, machine\nwhile 'go-reset' not in os.listdir('/'):\n"
         "    time.sleep(0.02)\nos.remove('go-reset')\nmachine.reset()"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    console = ConsoleProcess(board.port)
    console.wait_for(rf"^{STAMP}\[energo console: .* connected\]$")
    go.write_text("")
    return console


def _ticker(tmp_path, word):
    """A board whose main.py prints `word <n>` forever (so a reconnecting console sees it)."""
    flash = tmp_path / f"{word}-flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import time, machine\nprint('boot cause', machine.reset_cause())\nn = 0\n"
        f"while True:\n    print('{word}', n)\n    n += 1\n    time.sleep(0.05)\n")
    board = tmp_path / "board.json"
    board.write_text(json.dumps({"name": "console-test", "role": "meter"}))
    return flash, board


def test_console_shows_a_reset_on_the_same_pty_and_exits_cleanly(tmp_path):
    flash, board_file = _ticker(tmp_path, "tick")
    board = EmulatedBoard(tmp_path, board=str(board_file), flash=flash, world={}, speed=1)
    console = None
    try:
        board.wait_output("tick 1")
        console = reset_under_console(board)
        console.wait_for(rf"^{STAMP}rst:0xc \(SW_CPU_RESET\)")
        console.wait_for(rf"^{STAMP}boot cause 5$")
        console.wait_for(rf"^{STAMP}tick 3$")
        rc, err = console.interrupt()
        assert rc == 0 and "Traceback" not in err, err
        assert console.text().rstrip().endswith("closed]")
    finally:
        if console is not None:
            console.kill()
        board.close()


def test_console_waits_for_a_lost_port_and_reconnects(tmp_path):
    flash, board_file = _ticker(tmp_path, "first")
    first = EmulatedBoard(tmp_path, board=str(board_file), flash=flash, world={},
                          serial="socket://127.0.0.1:0", name="first")
    port = first.port
    console = ConsoleProcess(port)
    second = None
    try:
        console.wait_for(rf"^{STAMP}first \d+$")
        first.close()
        console.wait_for(r"\[energo console: socket://.* lost \(.*\); retrying every 1 s\]")
        flash2, _ = _ticker(tmp_path, "second")
        second = EmulatedBoard(tmp_path, board=str(board_file), flash=flash2, world={},
                               serial=port, name="second")
        console.wait_for(r"\[energo console: socket://.* back\]")
        console.wait_for(rf"^{STAMP}second \d+$")
        rc, err = console.interrupt()
        assert rc == 0 and "Traceback" not in err, err
    finally:
        console.kill()
        first.close()
        if second is not None:
            second.close()


def test_console_reports_a_pty_that_disappears(tmp_path):
    flash, board_file = _ticker(tmp_path, "tick")
    board = EmulatedBoard(tmp_path, board=str(board_file), flash=flash, world={}, speed=1)
    console = ConsoleProcess(board.port)
    try:
        console.wait_for(rf"^{STAMP}tick \d+$")
        board.close()
        console.wait_for(r"\[energo console: /dev/.* lost \(.*\); retrying every 1 s\]")
        rc, err = console.interrupt()
        assert rc == 0 and "Traceback" not in err, err
    finally:
        console.kill()
        board.close()
