"""The emulated board in process: boot order, resets and their causes, virtual time, faults."""
import time

from tests.sim_support import CapturedBoard, write_firmware


def test_boot_then_main_with_lib_on_the_path_and_fresh_modules_after_reset(tmp_path):
    write_firmware(tmp_path, {
        "boot.py": "print('boot')\n",
        "lib/state.py": "runs = []\n",
        "main.py": (
            "import machine, state\n"
            "state.runs.append(1)\n"
            "print('main', machine.reset_cause(), len(state.runs))\n"
            "try:\n    open('again').close()\nexcept OSError:\n"
            "    open('again', 'w').close()\n    machine.reset()\n"),
    })
    with CapturedBoard(tmp_path) as cb:
        text = cb.wait_for("main 5 1")
    # First boot: power-on; after machine.reset() (ESP_RST_SW): SOFT_RESET, and the module
    # state is fresh (len(state.runs) is 1 again), while the flash kept 'again'.
    assert text.index("boot") < text.index("main 1 1") < text.index("main 5 1")


def test_unfed_watchdog_resets_with_wdt_cause(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine, time\n"
        "print('cause', machine.reset_cause())\n"
        "if machine.reset_cause() != machine.WDT_RESET:\n"
        "    wdt = machine.WDT(timeout=2000)\n"
        "    for _ in range(3):\n        time.sleep_ms(500)\n        wdt.feed()\n"
        "    print('fed ok')\n"
        "    time.sleep(10)\n    print('not reached')\n")})
    with CapturedBoard(tmp_path) as cb:
        text = cb.wait_for("cause 3")
    assert "fed ok" in text and "not reached" not in text


def test_ten_virtual_minutes_at_speed_600_take_about_a_second(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import time, asyncio\n"
        "t0 = time.ticks_ms()\n"
        "async def tick():\n"
        "    for _ in range(60):\n        await asyncio.sleep_ms(5000)\n"
        "async def main():\n    await asyncio.gather(tick(), asyncio.sleep(300))\n"
        "    for _ in range(300):\n        time.sleep(1)\n"
        "asyncio.run(main())\n"
        "print('elapsed_ms', time.ticks_diff(time.ticks_ms(), t0))\n")})
    start = time.monotonic()
    with CapturedBoard(tmp_path, speed=600) as cb:
        text = cb.wait_for("elapsed_ms", timeout_s=10)
    wall_s = time.monotonic() - start
    elapsed_ms = int(text.split("elapsed_ms ")[1].split()[0])
    assert 600_000 <= elapsed_ms < 601_000
    assert 0.8 < wall_s < 3.0


def test_power_cut_at_a_time_restarts_with_power_on_cause_and_loses_unflushed_data(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine, time, os\n"
        "print('up', machine.reset_cause(), time.time() < 1_000_000_000)\n"
        "if 'log' not in os.listdir():\n"
        "    f = open('log', 'w')\n    f.write('unsynced')\n    time.sleep(100)\n")})
    scenario = {"faults": [{"kind": "power_cut", "at_s": 5, "off_s": 3}]}
    with CapturedBoard(tmp_path, scenario=scenario) as cb:
        cb.wait_for("up 1 True")
        text = cb.wait_for("up 1 True\r\n", timeout_s=10)
        deadline = time.monotonic() + 10
        while text.count("up 1 True") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            text = cb.text()
        assert cb.board.clock.now_s() >= 8  # off for 3 s after the cut at 5 s
    assert text.count("up 1 True") == 2
    assert (tmp_path / "log").read_bytes() == b""


def test_ctrl_c_interrupts_a_busy_main_loop(tmp_path):
    write_firmware(tmp_path, {"main.py": "print('spin')\nwhile True:\n    pass\n"})
    with CapturedBoard(tmp_path) as cb:
        cb.wait_for("spin")
        time.sleep(0.1)
        cb.board.console.feed(b"\x03")
        text = cb.wait_for(">>> ")
    assert "KeyboardInterrupt" in text


def test_clock_jump_moves_the_rtc_not_the_ticks(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import time, ntptime, network\n"
        "w = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('ap', 'pw')\n"
        "while not w.isconnected():\n    time.sleep_ms(100)\n"
        "ntptime.settime()\n"
        "t0, k0 = time.time(), time.ticks_ms()\ntime.sleep(20)\n"
        "print('jump', time.time() - t0, time.ticks_diff(time.ticks_ms(), k0))\n")})
    scenario = {"faults": [{"kind": "clock_jump", "at_s": 10, "by_s": -3600}],
                "start_epoch_s": 1_795_000_000}
    with CapturedBoard(tmp_path, scenario=scenario) as cb:
        text = cb.wait_for("jump")
    line = text.split("jump ")[1].split("\r\n")[0]
    assert line == "-3580 20000"


def test_cli_rejects_bad_input_with_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    result = subprocess.run(
        [sys.executable, "-m", "host_tools.cli", "board", "run", "--board", str(bad),
         "--flash", str(tmp_path / "f")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "energo board: board.role: must be a non-empty string"
    scenario = tmp_path / "s.json"
    scenario.write_text('{"faults": [{"kind": "meteor", "at_s": 1}]}')
    bad.write_text('{"name": "x", "role": "meter"}')
    result = subprocess.run(
        [sys.executable, "-m", "sim_board", "run", "--board", str(bad), "--flash",
         str(tmp_path / "f"), "--world", str(scenario)], capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 2 and "faults[0].kind" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "sim_board", "run", "--board", str(bad), "--flash",
         str(tmp_path / "f"), "--serial", "socket://10.1.1.1:5"], capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 2 and "loopback only" in result.stderr
    assert not (tmp_path / "f").exists()  # bad input changes nothing


def test_power_cut_at_a_flash_write_restarts_with_old_or_new_content(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import os, machine\n"
        "try:\n    v = open('v').read()\nexcept OSError:\n    v = ''\n"
        "print('boot', machine.reset_cause(), len(v), len(set(v)))\n"
        "for i in range(3):\n"
        "    with open('v.tmp', 'w') as f:\n        f.write(str(i) * 5000)\n"
        "    os.rename('v.tmp', 'v')\n"
        "print('done')\n")})
    scenario = {"faults": [{"kind": "power_cut", "at_write": 6, "off_s": 1}]}
    with CapturedBoard(tmp_path, scenario=scenario) as cb:
        text = cb.wait_for("done")
    boots = [line.split() for line in text.splitlines() if line.startswith("boot")]
    assert [b[1] for b in boots] == ["1", "1"]  # power-on, then power-on after the cut
    # After the cut the file is one complete earlier version: 5000 copies of one digit.
    assert boots[1][2:] == ["5000", "1"]
    assert (tmp_path / "v").read_text() == "2" * 5000


def test_brownout_is_a_power_on_reset(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine, time\nprint('cause', machine.reset_cause())\ntime.sleep(60)\n")})
    with CapturedBoard(tmp_path, scenario={"faults": [{"kind": "brownout", "at_s": 2}]}) as cb:
        cb.wait_for("cause 1")
        deadline = time.monotonic() + 10
        while cb.text().count("cause 1") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cb.text().count("cause 1") == 2
        assert "POWERON_RESET" in cb.text()


def test_ctrl_d_soft_reset_reruns_main_and_clears_ram(tmp_path):
    write_firmware(tmp_path, {"main.py": "print('main ran')\n"})
    with CapturedBoard(tmp_path) as cb:
        cb.wait_for(">>> ")
        cb.board.console.feed(b"x = 41\r")
        cb.board.console.feed(b"x + 1\r")
        cb.wait_for("42")
        cb.board.console.feed(b"\x04")
        cb.wait_for("MPY: soft reboot")
        cb.board.console.feed(b"x\r")
        text = cb.wait_for("NameError")
    assert text.count("main ran") == 2


def test_a_fault_at_an_instant_that_does_not_convert_back_exactly_still_happens(tmp_path):
    """`at_s` as a float of n / 1e9 seconds (what `power_cut()` reads off the clock) may come
    back as a hair more than n nanoseconds; the board, asleep, must still wake for it."""
    n = next(n for n in range(2_000_000_000, 2_001_000_000) if (n / 1e9) * 1e9 > n)
    write_firmware(tmp_path, {"main.py": (
        "import machine, time\nprint('cause', machine.reset_cause())\ntime.sleep(100)\n")})
    scenario = {"faults": [{"kind": "power_cut", "at_s": n / 1e9, "off_s": 1}]}
    with CapturedBoard(tmp_path, scenario=scenario, speed=10) as cb:
        cb.wait_for("cause 1")
        deadline = time.monotonic() + 10
        while cb.text().count("cause 1") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cb.text().count("cause 1") == 2, cb.board.events
    assert cb.board.events[1][0] == n / 1e9  # at the instant, not later


def test_faults_api_power_cut_and_pin_irq(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine, time\nprint('cause', machine.reset_cause())\nhits = []\n"
        "p = machine.Pin(4, machine.Pin.IN)\n"
        "p.irq(lambda pin: hits.append(pin.value()), trigger=machine.Pin.IRQ_RISING)\n"
        "while not hits:\n    time.sleep_ms(10)\n"
        "print('irq', hits)\ntime.sleep(3600)\n")})
    with CapturedBoard(tmp_path, speed=10) as cb:
        cb.wait_for("cause 1")
        time.sleep(0.2)
        cb.board.set_pin(4, 1)
        cb.wait_for("irq [1]")
        cb.board.power_cut(off_s=2)
        deadline = time.monotonic() + 10
        while cb.text().count("cause 1") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cb.text().count("cause 1") == 2
    assert any("power_cut" in what for _, what in cb.board.events)


def test_repl_runs_in_real_time_so_a_left_over_watchdog_gives_its_real_window(tmp_path):
    write_firmware(tmp_path, {"main.py": (
        "import machine\nprint('cause', machine.reset_cause())\nmachine.WDT(timeout=3000)\n")})
    with CapturedBoard(tmp_path, speed=600) as cb:
        cb.wait_for(">>> ")
        time.sleep(1.0)  # 600 s at the firmware's speed, 1 s at the REPL's
        assert "cause 3" not in cb.text()
        text = cb.wait_for("cause 3", timeout_s=5)  # ... and 3 s later the watchdog fires
    assert text.count("cause") == 2
