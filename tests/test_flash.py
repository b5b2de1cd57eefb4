"""`energo flash` against an emulated board's pty, exactly as against /dev/ttyUSB0: inputs are
checked before the board is touched, the firmware lands as the board can run it, /data stays."""
import json
import pathlib
import shutil

import pytest

from host_tools import cli, flashing
from tests.test_provision_standin import ROOT, EmulatedBoard, require_umqtt

BOARD = "boards/esp32-meter-sdm630.json"
FIRMWARE = ROOT / "firmware"


def test_compile_tree_uses_mpy_cross_and_names_what_micropython_rejects(tmp_path):
    written = flashing.compile_tree(str(FIRMWARE / "lib"), str(tmp_path / "out"))
    sources = sorted(p.relative_to(FIRMWARE / "lib").with_suffix(".mpy").as_posix()
                     for p in (FIRMWARE / "lib").rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(written) == sources
    head = (tmp_path / "out" / "energo" / "p256.mpy").read_bytes()[:4]
    assert head[:2] == b"M\x06"  # MicroPython 1.29's .mpy version
    bad = tmp_path / "bad"
    (bad / "pkg").mkdir(parents=True)
    (bad / "pkg" / "fine.py").write_text("X = 1\n")
    # CPython accepts a match statement; MicroPython does not.
    (bad / "pkg" / "modern.py").write_text("match 1:\n    case 1:\n        pass\n")
    with pytest.raises(flashing.FlashError, match="MicroPython rejects pkg/modern.py"):
        flashing.compile_tree(str(bad), str(tmp_path / "out2"))


def test_board_and_device_files_are_checked(tmp_path):
    assert flashing.load_board_file(str(ROOT / BOARD))["role"] == "meter"
    bad_board = tmp_path / "board.json"
    bad_board.write_text(json.dumps({**json.loads((ROOT / BOARD).read_text()), "status_led": 6}))
    with pytest.raises(flashing.FlashError, match=r"board file .*status_led"):
        flashing.load_board_file(str(bad_board))
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"community": "demo", "mqtt": {"url": "mqtt://h:1883"},
                                  "record_interval_s": 2}))
    with pytest.raises(flashing.FlashError, match="record_interval_s"):
        flashing.load_device_file(str(device))
    device.write_text("{not json")
    with pytest.raises(flashing.FlashError, match="not valid JSON"):
        flashing.load_device_file(str(device))


@pytest.fixture
def board(tmp_path):
    emu = EmulatedBoard(tmp_path)
    yield emu
    emu.close()


def test_flash_an_emulated_board(board, tmp_path, capsys):
    require_umqtt()
    # A board that has run before: a key in /data, a stale module, an old main.py.
    (board.flash / "data").mkdir()
    (board.flash / "data" / "keep.bin").write_bytes(b"\x01\x02")
    (board.flash / "lib" / "energo").mkdir(parents=True)
    (board.flash / "lib" / "energo" / "stale.py").write_text("raise ImportError\n")
    device = tmp_path / "device.json"
    settings = {"community": "demo", "mqtt": {"url": "mqtt://127.0.0.1:1"},
                "wifi": {"ssid": "energo-sim", "password": "sim-password"}}
    device.write_text(json.dumps(settings))
    mark = len(board.output)
    assert cli.main(["flash", "--port", board.port, "--board", BOARD,
                     "--device-config", str(device)]) == 0
    out = capsys.readouterr().out
    assert "as source" in out and "micropython-umqtt.simple 1.3.4" in out
    flash = board.flash
    assert (flash / "main.py").read_bytes() == (FIRMWARE / "main.py").read_bytes()
    assert (flash / "boot.py").read_bytes() == (FIRMWARE / "boot.py").read_bytes()
    for src in (FIRMWARE / "lib" / "energo").glob("*.py"):
        assert (flash / "lib" / "energo" / src.name).read_bytes() == src.read_bytes()
    assert not (flash / "lib" / "energo" / "stale.py").exists()
    assert "class MQTTClient" in (flash / "lib" / "umqtt" / "simple.py").read_text()
    assert json.loads((flash / "board.json").read_text()) == json.loads((ROOT / BOARD).read_text())
    assert json.loads((flash / "device.json").read_text()) == settings
    assert (flash / "data" / "keep.bin").read_bytes() == b"\x01\x02"
    # The board was reset and now runs the firmware: the key is made and printed at boot.
    board.wait_output("energo: meter m-", start=mark)
    key_files = {p.name: p.read_bytes() for p in (flash / "data").iterdir() if "devkey" in p.name}
    assert sorted(key_files) == ["devkey.a", "devkey.b"]

    # Flashing again while the firmware runs (its 30 s watchdog started, which survives a soft
    # reset): the flash hard-resets the board (that stops a watchdog) right after removing
    # main.py, before copying; the identity and device.json stay.
    mark = len(board.output)
    assert cli.main(["flash", "--port", board.port, "--board", BOARD, "--emulated"]) == 0
    assert "device.json" not in capsys.readouterr().out.splitlines()[-1]
    assert json.loads((flash / "device.json").read_text()) == settings
    board.wait_output("energo: meter m-", start=mark)
    log = board.text()[mark:]
    steps = ["energo-flash: prepared", "rst:0xc (SW_CPU_RESET)", "raw REPL; CTRL-B to exit",
             "rst:0xc (SW_CPU_RESET)", "energo: meter m-"]
    at = 0
    for step in steps:
        assert step in log[at:], f"{step!r} missing after offset {at} of:\n{log}"
        at = log.index(step, at) + len(step)
    assert "TG0WDT_SYS_RESET" not in log
    assert {p.name: p.read_bytes() for p in (flash / "data").iterdir()
            if "devkey" in p.name} == key_files


def test_bad_input_changes_nothing_on_the_board(board, tmp_path, capsys):
    (board.flash / "main.py").write_text("print('old firmware')\n")
    bad_device = tmp_path / "device.json"
    bad_device.write_text(json.dumps({"community": "demo", "mqtt": {"url": "tcp://x"}}))
    broken = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "lib" / "energo" / "oops.py").write_text("match 1:\n    case 1:\n        pass\n")
    assert cli.main(["flash", "--port", board.port, "--board", BOARD,
                     "--device-config", str(bad_device)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.url" in err and "Traceback" not in err
    assert cli.main(["flash", "--port", board.port, "--board", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(flashing.FlashError, match="oops.py"):
        flashing.flash(board.port, str(ROOT / BOARD), firmware_dir=str(broken))
    assert sorted(p.name for p in board.flash.iterdir()) == ["main.py"]
    assert (board.flash / "main.py").read_text() == "print('old firmware')\n"


def test_an_unreachable_port_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["flash", "--port", str(tmp_path / "ttyUSB9"), "--board", BOARD]) == 2
    err = capsys.readouterr().err
    assert err.startswith("energo flash: mpremote on ") and "Traceback" not in err
    assert err.count("\n") == 1


def test_every_command_has_an_example():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("flash", "provision", "console"):
        assert f"Example: energo {name} " in sub.choices[name].epilog


class RecordingMpremote:
    """Stands in for mpremote where no emulator can go: a real board that imports .mpy.

    It answers the probe as MicroPython does (`answer`) and records every call with a snapshot
    of the files it was asked to copy, so the real-board path is checked step by step.
    """

    def __init__(self, answer="energo-probe: mpy", romfs_bytes=None):
        self.answer = answer
        self.romfs_bytes = romfs_bytes  # None: a MicroPython without vfs.rom_ioctl
        self.calls = []
        self.staged = {}
        self.images = []

    def run(self, *args, cwd=None):
        self.calls.append(args)
        if cwd is not None:
            for path in sorted(pathlib.Path(cwd).rglob("*")):
                if path.is_file():
                    self.staged[path.relative_to(cwd).as_posix()] = path.read_bytes()
        if args[:2] == ("romfs", "deploy"):
            self.images.append(pathlib.Path(args[2]).read_bytes())
        if "exec" in args and "_energo_probe" in args[args.index("exec") + 1]:
            return self.answer + "\n"
        if "exec" in args and "rom_ioctl" in args[args.index("exec") + 1]:
            if self.romfs_bytes is None:
                return "energo-romfs: 0 0\n"
            return f"energo-romfs: 1 {self.romfs_bytes}\n"
        return ""

    run_retrying = run


def test_a_real_board_without_romfs_gets_mpy_files_and_umqtt_by_mip():
    mp = RecordingMpremote()
    said = []
    summary = flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp, log=said.append)
    assert summary["runs"] == "mpy" and summary["umqtt"] == "umqtt.simple (mpremote mip)"
    assert summary["code"] == "files" and "image_bytes" not in summary
    assert any("no ROMFS partition" in line and "35 KB" in line for line in said)
    probe, query, first, copy, mip, last = mp.calls
    assert query[0] == "exec" and "rom_ioctl" in query[1]
    assert first[0] == "exec" and "lib/energo" in first[1] and first[-1] == "reset"
    assert probe[:2] == ("fs", "cp") and probe[3] == ":_energo_probe.mpy"
    assert copy[:5] == ("fs", "cp", "-r", "lib", ":") and ":device.json" not in copy
    assert mip == ("mip", "install", "umqtt.simple")
    assert last == ("fs", "cp", "main.py", ":main.py", "+", "reset")
    lib = sorted(name for name in mp.staged if name.startswith("lib/"))
    assert lib == sorted("lib/" + p.relative_to(FIRMWARE / "lib").with_suffix(".mpy").as_posix()
                         for p in (FIRMWARE / "lib").rglob("*.py")
                         if "__pycache__" not in p.parts)
    assert all(mp.staged[name][:2] == b"M\x06" for name in lib)
    assert mp.staged["main.py"] == (FIRMWARE / "main.py").read_bytes()


def test_a_board_with_another_micropython_is_refused():
    mp = RecordingMpremote("energo-probe: incompatible incompatible .mpy file")
    with pytest.raises(flashing.FlashError, match="flash MicroPython 1.29 first"):
        flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp)
    assert len(mp.calls) == 1  # the probe only: the board is not changed


def test_a_board_with_romfs_gets_the_image_and_no_lib_files():
    require_umqtt()
    mp = RecordingMpremote(romfs_bytes=512 * 1024)
    summary = flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp)
    assert summary["code"] == "romfs" and summary["runs"] == "mpy"
    assert summary["umqtt"] == "umqtt.simple (in the ROMFS image)"
    probe, query, first, copy, deploy, last = mp.calls
    assert first[0] == "exec" and "lib/energo" in first[1] and first[-1] == "reset"
    assert "lib" not in copy and copy[:4] == ("fs", "cp", "boot.py", ":boot.py")
    assert deploy[:2] == ("romfs", "deploy") and deploy[2].endswith(".romfs")
    assert last == ("fs", "cp", "main.py", ":main.py", "+", "reset")
    assert not any(call[0] == "mip" for call in mp.calls)
    assert not any(name.startswith("lib/") for name in mp.staged)
    (image,) = mp.images
    assert image[:3] == b"\xd2\xcd\x31" and summary["image_bytes"] == len(image)
    # The image carries the package, the comb table and umqtt.
    for name in (b"energo", b"meter.mpy", b"p256comb.mpy", b"umqtt", b"simple.mpy"):
        assert name in image


def test_an_image_larger_than_the_partition_changes_nothing():
    require_umqtt()
    mp = RecordingMpremote(romfs_bytes=64 * 1024)
    with pytest.raises(flashing.FlashError, match=r"image is \d+ bytes .* holds 65536 bytes"):
        flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp)
    assert [call[1] for call in mp.calls[1:]] == [flashing._ROMFS_QUERY]  # probe, query only


def test_code_files_on_a_romfs_board_clears_the_old_image():
    mp = RecordingMpremote(romfs_bytes=512 * 1024)
    summary = flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp, code="files")
    assert summary["code"] == "files"
    probe, query, first, copy, deploy, mip, last = mp.calls
    assert copy[:5] == ("fs", "cp", "-r", "lib", ":") and mip[0] == "mip"
    assert deploy[:2] == ("romfs", "deploy")
    assert mp.images == [b"\xd2\xcd\x31\x00"]  # an empty image: nothing shadows /lib


def test_code_romfs_without_a_partition_is_a_clear_error(monkeypatch, capsys):
    mp = RecordingMpremote()
    monkeypatch.setattr(flashing, "Mpremote", lambda port: mp)
    assert cli.main(["flash", "--port", "/dev/ttyUSB0", "--board", BOARD,
                     "--code", "romfs"]) == 2
    err = capsys.readouterr().err
    assert "no ROMFS partition" in err and "MICROPY_VFS_ROM" in err and "Traceback" not in err
    assert len(mp.calls) == 2  # the probe and the question: the board is not changed
    with pytest.raises(flashing.FlashError, match="--code: expected one of"):
        flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp, code="flash")
    with pytest.raises(flashing.FlashError, match="emulated board"):
        flashing.flash("/dev/ttyUSB0", str(ROOT / BOARD), mpremote=mp, code="romfs",
                       emulated=True)
