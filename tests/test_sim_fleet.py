"""Several boards in one process; deep sleep, timers and ThreadSafeFlag on the virtual clock."""
import json
import subprocess
import sys
import time

from sim_board.fleet import Fleet
from tests.sim_support import CapturedBoard, write_firmware


def test_fleet_boards_run_isolated_with_their_own_seed(tmp_path):
    firmware = tmp_path / "fw"
    write_firmware(firmware, {"main.py": (
        "import os, time\nwith open('id', 'w') as f:\n    f.write(os.urandom(4).hex())\n"
        "while True:\n    time.sleep(1)\n")})
    fleet = Fleet(5, str(tmp_path / "flash"), str(firmware), speed=100).start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids = [(tmp_path / "flash" / f"board-{i:04d}" / "id") for i in range(5)]
            if all(p.exists() and p.stat().st_size == 8 for p in ids):
                break
            time.sleep(0.05)
        status = fleet.status()
    finally:
        fleet.stop()
    assert status["boards"] == 5 and status["boots_total"] == 5
    assert len({p.read_text() for p in ids}) == 5  # each board its own seed


def test_fleet_cli_prints_json_status(tmp_path):
    firmware = tmp_path / "fw"
    write_firmware(firmware, {"main.py": "import time\nwhile True:\n    time.sleep(1)\n"})
    result = subprocess.run(
        [sys.executable, "-m", "sim_board", "fleet", "--count", "3", "--firmware", str(firmware),
         "--flash-root", str(tmp_path / "flash"), "--speed", "50", "--duration-s", "1.5",
         "--report-s", "0.5"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["boards"] == 3 and last["virtual_s_min"] >= 30


def test_deepsleep_timer_and_threadsafeflag(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine, asyncio, time\n"
        "if machine.reset_cause() == machine.DEEPSLEEP_RESET:\n"
        "    print('woke at', time.ticks_ms() // 1000)\n"
        "    flag = asyncio.ThreadSafeFlag()\n"
        "    t = machine.Timer(0)\n"
        "    t.init(mode=machine.Timer.ONE_SHOT, period=1500, callback=lambda _: flag.set())\n"
        "    async def main():\n"
        "        t0 = time.ticks_ms()\n        await flag.wait()\n"
        "        print('flag after', time.ticks_diff(time.ticks_ms(), t0))\n"
        "    asyncio.run(main())\n"
        "else:\n    machine.deepsleep(30_000)\n")})
    with CapturedBoard(tmp_path, speed=100) as cb:
        text = cb.wait_for("flag after")
    assert "woke at 30" in text
    waited_ms = int(text.split("flag after ")[1].split()[0])
    assert 1500 <= waited_ms < 2500  # paced against the wall: a few ms of real jitter x100
