"""MicroPython's REPL on the board console: friendly, raw and raw-paste, as mpremote expects.

Why byte-exact: mpremote matches literal strings (`raw REPL; CTRL-B to exit\\r\\n>`, `OK`,
`\\x04` separators, `soft reboot\\r\\n`, `R\\x01` and the window) and parses error text such as
`OSError: [Errno 2] ENOENT`; anything else makes it hang or misreport.
"""
import struct

from sim_board.runtime import compile_board_source

BANNER = ("MicroPython v1.29.0 on 2026-01-01; Generic ESP32 module with ESP32\r\n"
          'Type "help()" for more information.\r\n')
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_PASTE_WINDOW = 128
_CTRL_A, _CTRL_B, _CTRL_C, _CTRL_D, _CTRL_E = 1, 2, 3, 4, 5
_LINE_MAX = 64 * 1024
_PASTE_BYTES_MAX = 1024 * 1024


class Repl:
    def __init__(self, board):
        self.board = board
        self.friendly = True

    def run(self, runtime):
        """Serve the console until a reset (raised as an exception) ends this firmware run."""
        self.runtime = runtime
        if self.friendly:
            self._write(BANNER.encode())
        else:
            self._write(RAW_BANNER)
        while True:
            if self.friendly:
                self._friendly()
            else:
                self._raw()

    # ----- helpers -----
    def _write(self, data):
        self.board.console.write(data)

    def _read(self):
        return self.board.console.read_byte()

    def _execute(self, source, single=False):
        """Run a friendly-REPL entry; an expression's value is printed as its repr."""
        def run():
            code = None
            if single:
                try:
                    code = compile_board_source(source, "<stdin>", "eval")
                except SyntaxError:
                    code = None
            if code is None:
                self.runtime.exec_source(source)
                return
            value = eval(code, self.runtime.main_globals)
            if value is not None:
                self.board.console.write_text(repr(value) + "\n")

        self.board.console.write_text(self.board.run_code(run))

    # ----- friendly REPL -----
    def _friendly(self):
        self._write(b">>> ")
        lines = []
        line = bytearray()
        while True:
            c = self._read()
            if c == _CTRL_A:
                self._write(b"\r\n")
                self.friendly = False
                self._write(RAW_BANNER)
                return
            if c == _CTRL_B:
                self._write(b"\r\n" + BANNER.encode())
                return
            if c == _CTRL_C:
                self._write(b"\r\n")
                return
            if c == _CTRL_D:
                if not line and not lines:
                    self._write(b"\r\n")
                    from sim_board.board import SoftReset

                    raise SoftReset()
                continue
            if c == _CTRL_E:
                self._paste_mode()
                return
            if c == 27:  # escape sequence (arrow keys): ignore it
                self._read()
                self._read()
                continue
            if c in (8, 127):
                if line:
                    line.pop()
                    self._write(b"\x08 \x08")
                continue
            if c in (10, 13):
                self._write(b"\r\n")
                text = line.decode(errors="replace")
                line = bytearray()
                if lines or text.rstrip().endswith(":"):
                    if text.strip() == "" and lines:
                        self._execute("\n".join(lines) + "\n")
                        return
                    lines.append(text)
                    self._write(b"... ")
                    continue
                if text.strip():
                    self._execute(text, single=True)
                return
            if len(line) < _LINE_MAX:
                line.append(c)
                self._write(bytes([c]))

    def _paste_mode(self):
        self._write(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        buf = bytearray()
        while True:
            c = self._read()
            if c == _CTRL_C:
                self._write(b"\r\n")
                return
            if c == _CTRL_D:
                self._write(b"\r\n")
                self._execute(buf.decode(errors="replace"))
                return
            buf.append(c)
            self._write(b"\r\n=== " if c == 13 else bytes([c]))

    # ----- raw REPL -----
    def _raw(self):
        self._write(b">")
        line = bytearray()
        overflow = False
        while True:
            c = self._read()
            if c == _CTRL_A:
                if len(line) == 2 and line[0] == _CTRL_E:
                    if line[1] == ord("A"):
                        self._raw_paste()
                    else:
                        self._write(b"R\x00")
                    return
                self._write(RAW_BANNER)
                return
            if c == _CTRL_B:
                self._write(b"\r\n" + BANNER.encode())
                self.friendly = True
                return
            if c == _CTRL_C:
                line = bytearray()
                overflow = False
                continue
            if c == _CTRL_D:
                if not line:
                    self._write(b"\r\n")
                    from sim_board.board import SoftReset

                    raise SoftReset()
                self._write(b"OK")
                if overflow:
                    self._write(b"\x04MemoryError: \r\n\x04")
                else:
                    self._run_raw(bytes(line))
                return
            if len(line) < _PASTE_BYTES_MAX:
                line.append(c)
            else:
                overflow = True  # too big for the chip's heap: refused when it ends

    def _run_raw(self, source):
        try:
            text = source.decode()
        except UnicodeDecodeError:
            text = None
        if text is None:
            self._write(b"\x04")
            self.board.console.write_text("UnicodeError: \n")
        else:
            self._execute_split(text)
        self._write(b"\x04")

    def _execute_split(self, text):
        """Output, then \\x04, then the error text (the caller writes the final \\x04)."""
        error_text = self.board.run_code(lambda: self.runtime.exec_source(text))
        self._write(b"\x04")
        if error_text:
            self.board.console.write_text(error_text)

    def _drain_until_eof(self):
        while self._read() != _CTRL_D:
            pass

    def _raw_paste(self):
        self._write(b"R\x01" + struct.pack("<H", _PASTE_WINDOW) + b"\x01")
        buf = bytearray()
        since_ack = 0
        while True:
            c = self._read()
            if c == _CTRL_D:
                self._write(b"\x04")
                break
            if c == _CTRL_C:
                self._write(b"\x04")
                return
            if len(buf) >= _PASTE_BYTES_MAX:
                self._write(b"\x04")  # abrupt end, which mpremote acknowledges
                self._drain_until_eof()
                return
            buf.append(c)
            since_ack += 1
            if since_ack >= _PASTE_WINDOW:
                since_ack = 0
                self._write(b"\x01")
        try:
            text = bytes(buf).decode()
        except UnicodeDecodeError:
            self._write(b"\x04UnicodeError: \r\n\x04")
            return
        self._execute_split(text)
        self._write(b"\x04")

