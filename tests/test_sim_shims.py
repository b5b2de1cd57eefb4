"""The MicroPython modules the firmware sees, exercised through a board's own importer."""
import errno
import os
import socket
import threading
import tty

import pytest

from sim_board.board import Board
from sim_board.runtime import Runtime


def make_runtime(tmp_path, scenario=None, analog=None, speed=1000.0):
    board = Board(str(tmp_path / "flash"), {"name": "shim", "role": "meter"}, scenario,
                  speed=speed)
    board.analog = analog
    return Runtime(board)


def run(rt, source):
    """Execute firmware source in the board's __main__ and return its globals."""
    rt.exec_source(source)
    return rt.main_globals


def test_firmware_imports_resolve_to_board_shims_not_host_modules(tmp_path):
    rt = make_runtime(tmp_path)
    g = run(rt, "import os, time, socket, usocket, ustruct, ubinascii, machine\n"
                "same = usocket is socket\nhas_ilistdir = hasattr(os, 'ilistdir')\n"
                "has_getpid = hasattr(os, 'getpid')\n")
    assert g["same"] and g["has_ilistdir"] and not g["has_getpid"]
    with pytest.raises(ImportError):
        run(rt, "import subprocess")


def test_os_is_micropython_style_and_rooted_at_the_flash(tmp_path):
    rt = make_runtime(tmp_path)
    g = run(rt, (
        "import os\nos.mkdir('d')\nf = open('d/a.txt', 'w')\nf.write('abc')\nf.close()\n"
        "entries = list(os.ilistdir('d'))\nst = os.stat('d/a.txt')\n"
        "os.rename('d/a.txt', 'd/b.txt')\nnames = os.listdir('/d')\n"
        "os.chdir('d')\ncwd = os.getcwd()\n"
        "try:\n    os.remove('missing')\nexcept OSError as e:\n    err = e.errno\n"
        "try:\n    os.rmdir('/d')\nexcept OSError as e:\n    err2 = e.errno\n"
        "vfs = os.statvfs('/')\nrnd = os.urandom(4)\n"))
    assert g["entries"] == [("a.txt", 0x8000, 0, 3)]
    assert len(g["st"]) == 10 and g["st"][0] == 0x8000 and g["st"][6] == 3
    assert g["names"] == ["b.txt"] and g["cwd"] == "/d"
    assert g["err"] == errno.ENOENT and g["err2"] == errno.ENOTEMPTY
    assert g["vfs"][0] == 4096 and len(g["vfs"]) == 10
    assert (tmp_path / "flash" / "d" / "b.txt").read_text() == "abc"
    assert isinstance(g["rnd"], bytes) and len(g["rnd"]) == 4


def test_cryptolib_aes_matches_fips197_and_round_trips(tmp_path):
    rt = make_runtime(tmp_path)
    g = run(rt, (
        "import cryptolib, binascii\n"
        "k = bytes(range(16))\n"
        "ct = cryptolib.aes(k, 1).encrypt(binascii.unhexlify('00112233445566778899aabbccddeeff'))\n"
        "iv = bytes(16)\nmsg = b'sixteen byte msg' * 2\n"
        "cbc = cryptolib.aes(k, 2, iv).encrypt(msg)\n"
        "back = cryptolib.aes(k, 2, iv).decrypt(cbc)\n"
        "ctr = cryptolib.aes(k, 6, iv).encrypt(b'odd length')\n"
        "ctr_back = cryptolib.aes(k, 6, iv).decrypt(ctr)\n"))
    assert g["ct"].hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"  # FIPS-197 appendix C.1
    assert g["back"] == b"sixteen byte msg" * 2 and g["cbc"] != g["back"]
    assert g["ctr_back"] == b"odd length"
    with pytest.raises(ValueError):
        run(rt, "cryptolib.aes(k, 1).encrypt(b'short')")


class _Analog:
    def __init__(self):
        self.calls = []

    def read_code(self, pin, t_s, atten):
        self.calls.append((pin, t_s, atten))
        return 4095 if pin == 36 else 1000


def test_adc_reads_the_analog_front_end_and_scales_like_esp32(tmp_path):
    analog = _Analog()
    rt = make_runtime(tmp_path, analog=analog)
    g = run(rt, (
        "from machine import ADC, Pin\n"
        "a = ADC(Pin(36), atten=ADC.ATTN_11DB)\nb = ADC(Pin(39))\n"
        "full = (a.read(), a.read_u16(), a.read_uv())\nmid = (b.read(), b.read_u16(), b.read_uv())\n"
        "b.width(ADC.WIDTH_10BIT)\nten = b.read()\n"))
    assert g["full"] == (4095, 65535, 2_450_000)
    assert g["mid"] == (1000, (1000 << 4) | (1000 >> 8), 1000 * 950_000 // 4095)
    assert g["ten"] == 250
    assert analog.calls[0][0] == 36 and analog.calls[0][2] == 3
    no_world = make_runtime(tmp_path / "b")
    assert run(no_world, "import machine\nv = machine.ADC(34).read()\n")["v"] == 2048


def test_nvs_commits_and_persists_across_boards(tmp_path):
    rt = make_runtime(tmp_path)
    run(rt, "import esp32\nn = esp32.NVS('energo')\nn.set_i32('boots', 7)\n"
            "n.set_blob('secret', b'\\x01\\x02')\nn.commit()\nn.set_i32('lost', 1)\n")
    rt2 = make_runtime(tmp_path)  # the same flash directory: a new power-on
    g = run(rt2, "import esp32\nn = esp32.NVS('energo')\nboots = n.get_i32('boots')\n"
                 "buf = bytearray(8)\nln = n.get_blob('secret', buf)\n"
                 "try:\n    n.get_i32('lost')\nexcept OSError as e:\n    missing = e.args[0]\n")
    assert g["boots"] == 7 and bytes(g["buf"][: g["ln"]]) == b"\x01\x02"
    assert g["missing"] == -0x1102


def _server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


def test_sockets_have_micropython_semantics(tmp_path):
    srv = _server()
    port = srv.getsockname()[1]
    peer = []
    threading.Thread(target=lambda: peer.append(srv.accept()[0]), daemon=True).start()
    rt = make_runtime(tmp_path, speed=50)
    run(rt, "import network\nw = network.WLAN(network.STA_IF)\nw.active(True)\n"
            "w.connect('ap', 'pw')\nimport time\n"
            "while not w.isconnected():\n    time.sleep_ms(100)\n")
    g = run(rt, (
        "import socket\n"
        f"addr = socket.getaddrinfo('127.0.0.1', {port})[0][-1]\n"
        "s = socket.socket()\ns.connect(addr)\ns.setblocking(False)\n"
        "nothing = s.read(10)\n"
        "s.settimeout(0.5)\n"
        "try:\n    s.read(1)\nexcept OSError as e:\n    timeout_errno = e.errno\n"))
    assert g["addr"] == ("127.0.0.1", port)
    assert g["nothing"] is None
    assert g["timeout_errno"] == errno.ETIMEDOUT
    peer[0].sendall(b"line one\nrest")
    g = run(rt, "s.settimeout(5)\nline = s.readline()\nrest = s.read(4)\nn = s.write('hey')\n")
    assert g["line"] == b"line one\n" and g["rest"] == b"rest" and g["n"] == 3
    assert peer[0].recv(10) == b"hey"
    peer[0].close()
    srv.close()


def test_wifi_down_window_aborts_sockets_and_recovers(tmp_path):
    srv = _server()
    port = srv.getsockname()[1]
    peer = []  # keep the accepted socket open: the abort must come from the link, not EOF
    threading.Thread(target=lambda: peer.append(srv.accept()), daemon=True).start()
    scenario = {"faults": [{"kind": "wifi_down", "at_s": 10, "for_s": 20}]}
    rt = make_runtime(tmp_path, scenario=scenario, speed=100)
    g = run(rt, (
        "import network, socket, time\nw = network.WLAN()\nw.active(True)\nw.connect('a', 'b')\n"
        "while not w.isconnected():\n    time.sleep_ms(100)\n"
        f"s = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.settimeout(30)\n"
        "try:\n    s.read(1)\nexcept OSError as e:\n    aborted = e.errno\n"
        "down = w.isconnected()\n"
        "while not w.isconnected():\n    time.sleep(1)\n"
        "back_at = time.ticks_ms()\n"))
    assert g["aborted"] == errno.ECONNABORTED and g["down"] is False
    assert 30_000 <= g["back_at"] <= 33_000
    srv.close()


def test_uart_talks_to_the_pty_the_world_gives(tmp_path):
    master, slave = os.openpty()
    tty.setraw(master)
    rt = make_runtime(tmp_path, scenario={"uart_ports": {"2": os.ttyname(slave)}})
    g = run(rt, "from machine import UART\nimport time\nu = UART(2, 9600, timeout=200)\n"
                "t0 = time.ticks_us()\nn = u.write(b'\\x01\\x04')\n"
                "line_us = time.ticks_diff(time.ticks_us(), t0)\n")
    assert g["n"] == 2 and os.read(master, 2) == b"\x01\x04"
    assert g["line_us"] == 2 * 10 * 1_000_000 // 9600  # 8N1: ten bits per byte
    os.write(master, b"reply")
    g = run(rt, "got = u.read(5)\nnone = u.read(1)\n")
    assert g["got"] == b"reply" and g["none"] is None
    run(rt, "u.deinit()")
    os.close(master)
    os.close(slave)


def test_tracebacks_read_like_micropython(tmp_path):
    rt = make_runtime(tmp_path)
    from sim_board.runtime import format_exception

    with pytest.raises(OSError) as info:
        run(rt, "open('missing.txt')")
    assert format_exception(info.value).splitlines() == [
        "Traceback (most recent call last):",
        '  File "<stdin>", line 1, in <module>',
        "OSError: [Errno 2] ENOENT"]


def test_packages_and_submodules_import_like_micropython(tmp_path):
    rt = make_runtime(tmp_path)
    lib = tmp_path / "flash" / "lib" / "pkg"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("NAME = 'pkg'\n")
    (lib / "sub.py").write_text("from . import helper\nVALUE = helper.K + 1\n")
    (lib / "helper.py").write_text("K = 41\n")
    g = run(rt, "from pkg import sub\nimport pkg.helper\nv = sub.VALUE\nk = pkg.helper.K\n")
    assert g["v"] == 42 and g["k"] == 41
