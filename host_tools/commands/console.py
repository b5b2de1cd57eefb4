"""`energo console --port PORT [--raw]`: watch a board's serial console with timestamps.

Read-only on purpose: it never writes to the board, so it cannot disturb a running firmware or
an mpremote session, and opening it does not pulse DTR/RTS (which resets an ESP32 dev board).
A board reset keeps the port (USB-UART bridge, emulator pty) and simply shows the new boot;
a port that disappears (USB unplugged, native-USB reset, emulator stopped) is reopened every
second until it is back. Ctrl-C exits with status 0.
"""
import codecs
import datetime
import os
import sys
import threading
import time

from host_tools.cli import UsageError

READ_BYTES_MAX = 4096
RETRY_S = 1.0


def register(sub):
    parser = sub.add_parser(
        "console",
        help="serial monitor with timestamps that survives board resets",
        description="Print the board's serial output, each line prefixed with the local time "
        "(HH:MM:SS.mmm). Read-only: it never writes to the board. Close it before using mpremote "
        "on the same port (two readers would split the bytes between them). A lost port is "
        "reopened every second; Ctrl-C exits.",
        epilog="Example: energo console --port /dev/ttyUSB0",
    )
    parser.add_argument("--port", required=True,
                        help="serial device (/dev/ttyUSB0, an emulator's pty, socket://HOST:PORT)")
    parser.add_argument("--raw", action="store_true",
                        help="pass the bytes through unchanged (no timestamps)")
    parser.add_argument("--baudrate", type=int, default=115200, help="default 115200")
    parser.set_defaults(func=run)


def run(args):
    check_port(args.port)
    if not 300 <= args.baudrate <= 5_000_000:
        raise UsageError("--baudrate: expected 300 to 5000000")
    monitor = Monitor(args.port, sys.stdout, raw=args.raw, baudrate=args.baudrate)
    try:
        monitor.run()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
        monitor.note("closed")
    return 0


def check_port(port):
    """A port spec the monitor can ever open; UsageError for one it never can."""
    if not port or "\n" in port:
        raise UsageError("--port: give the board's serial device, e.g. /dev/ttyUSB0")
    if "://" in port:
        scheme = port.split("://", 1)[0]
        if scheme not in ("socket", "rfc2217", "loop"):
            raise UsageError(f"--port: unsupported URL scheme {scheme!r}")
        return
    parent = os.path.dirname(os.path.abspath(port))
    if not os.path.isdir(parent):
        raise UsageError(f"--port: {parent} does not exist")


class Monitor:
    """Copies one serial port to a text stream, a timestamp at the start of every line."""

    def __init__(self, port, out, raw=False, baudrate=115200, now=time.time, retry_s=RETRY_S):
        self.port = port
        self.out = out
        self.raw = raw
        self.baudrate = baudrate
        self.now = now
        self.retry_s = retry_s
        self.stop = threading.Event()
        self._serial = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._line_start = True

    def stamp(self):
        return datetime.datetime.fromtimestamp(self.now()).strftime("%H:%M:%S.%f")[:-3] + " "

    def note(self, text):
        """A message of the monitor itself, on a line of its own."""
        if not self._line_start:
            self.out.write("\n")
            self._line_start = True
        self.out.write(f"{self.stamp()}[energo console: {self.port} {text}]\n")
        self.out.flush()

    def _open(self):
        import serial

        s = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0.2,
                                  do_not_open=True)
        # Opening with DTR/RTS asserted would reset an ESP32 on most USB-UART boards.
        s.dtr = False
        s.rts = False
        s.open()
        return s

    def write(self, data):
        if self.raw:
            buffer = getattr(self.out, "buffer", None)
            if buffer is not None:
                self.out.flush()
                buffer.write(data)
                buffer.flush()
            else:
                self.out.write(data.decode("utf-8", "replace"))
            return
        text = self._decoder.decode(data).replace("\r", "")
        for piece in text.splitlines(keepends=True):
            if self._line_start:
                self.out.write(self.stamp())
            self.out.write(piece)
            self._line_start = piece.endswith("\n")
        self.out.flush()

    def run(self):
        """Until stop is set (or KeyboardInterrupt): read, print, reopen a lost port."""
        import serial

        waiting = False
        while not self.stop.is_set():
            if self._serial is None:
                try:
                    self._serial = self._open()
                except (serial.SerialException, OSError) as exc:
                    if not waiting:
                        self.note(f"not available ({_reason(exc)}); retrying every "
                                  f"{self.retry_s:g} s")
                        waiting = True
                    self.stop.wait(self.retry_s)
                    continue
                self.note("connected" if not waiting else "back")
                waiting = False
            try:
                data = self._serial.read(min(self._serial.in_waiting or 1, READ_BYTES_MAX))
            except (serial.SerialException, OSError) as exc:
                self.close()
                self.note(f"lost ({_reason(exc)}); retrying every {self.retry_s:g} s")
                waiting = True
                self.stop.wait(self.retry_s)
                continue
            if data:
                self.write(data)

    def close(self):
        s, self._serial = self._serial, None
        if s is not None:
            try:
                s.close()
            except (OSError, ValueError):
                pass


def _reason(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]
