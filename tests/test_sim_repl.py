"""The REPL's bytes, exactly as mpremote and pyboard.py expect them."""
import struct

from tests.sim_support import CapturedBoard, write_firmware


def _session(tmp_path):
    write_firmware(tmp_path, {"main.py": "print('ready')\n"})
    return CapturedBoard(tmp_path)


def test_raw_repl_and_raw_paste_bytes(tmp_path):
    with _session(tmp_path) as cb:
        cb.wait_for(">>> ")
        start = len(cb.output)
        cb.board.console.feed(b"\r\x01")
        cb.wait_for("raw REPL; CTRL-B to exit\r\n>")
        cb.board.console.feed(b"print(6*7)\x04")
        cb.wait_for("OK42")
        cb.board.console.feed(b"\x05A\x01")
        cb.wait_for("R\x01")
        code = b"import os\nprint(len(os.listdir('/')))\n" + b"#" * 300 + b"\n1/0\n"
        cb.board.console.feed(code + b"\x04")
        text = cb.wait_for("ZeroDivisionError")
        cb.wait_for("\x04>")
        raw = bytes(cb.output[start:])
    assert raw.startswith(b"\r\n>>> \r\nraw REPL; CTRL-B to exit\r\n>OK42\r\n\x04\x04>")
    paste = raw[raw.index(b"R\x01"):]
    window = struct.unpack("<H", paste[2:4])[0]
    assert window > 0 and paste[4:5] == b"\x01"
    # One more window credit per `window` bytes consumed, then the end-of-data acknowledgement.
    acks = paste[5:].split(b"\x04")[0]
    assert acks == b"\x01" * (len(code) // window)
    body = paste[5 + len(acks):]
    assert body.startswith(b"\x041\r\n\x04Traceback (most recent call last):\r\n")
    assert body.endswith(b"ZeroDivisionError: division by zero\r\n\x04>")
    assert "ready" in text


def test_friendly_repl_ctrl_c_clears_and_ctrl_b_shows_banner(tmp_path):
    with _session(tmp_path) as cb:
        cb.wait_for(">>> ")
        cb.board.console.feed(b"abc\x03")
        cb.board.console.feed(b"\x02")
        text = cb.wait_for("Type \"help()\"", timeout_s=5)
        cb.board.console.feed(b"for i in range(2):\r    print(i * 10)\r\r")
        text = cb.wait_for("10\r\n>>> ")
    assert "abc\r\n>>> " in text
    assert "... " in text and "0\r\n10\r\n" in text
