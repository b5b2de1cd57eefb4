# The vehicle link: one JSON frame per line over the board's `vehicle_link` UART (the stand-in
# for the power-line modem), framed and checked by energo.evproto.
#
# Why a reader of its own rather than UART.readline(): a line arrives in pieces, and a vehicle
# that sends garbage or a line that never ends must not make the charger allocate without
# bound or stop. Bytes go into one pre-sized buffer; a line that outgrows it is dropped up to
# its newline and answered with one `error` frame, and so is a line that is not a valid
# frame. Nothing a vehicle sends raises out of poll().
try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo import evproto

_READ_BYTES = const(512)
# The longest line a charger takes from a vehicle. A vehicle sends auth, meter, stop and error
# frames: an auth, the longest, is ~700 bytes (its key, the nonce, the limits, a signature).
# evproto.LINE_MAX (6144) bounds the frames a charger sends (an offer carries the
# certificate, a receipt two records); a buffer that size would keep 4 KB more of the heap.
LINE_MAX = const(2048)
FRAMES_MAX = const(4)  # frames handed over per poll; the rest wait in the buffer


class VehicleLink:
    """Reads frames from, and writes frames to, a UART-like object (any(), read(), write())."""

    def __init__(self, uart, line_max=LINE_MAX):
        self.uart = uart
        self.line_max = line_max
        self._buf = bytearray(line_max + 1)  # the newline may follow a maximal line
        self._len = 0
        self._dropping = False  # inside an oversized line: discard up to its newline
        self._rest = b""  # read past the end of the buffered line: at most one UART read
        self.errors = {"ev_malformed": 0, "ev_oversized": 0, "ev_write": 0}
        self.last_error = None

    def poll(self):
        """Frames (checked dicts) that arrived since the last call; never raises for input."""
        out = []
        while len(out) < FRAMES_MAX:
            line = self._line()
            if line is None:
                if not self._fill():
                    break
                continue
            if line == b"":
                continue  # an oversized line ended, or a blank line
            try:
                out.append(evproto.read_frame(line))
            except evproto.ProtocolError as exc:
                self._refuse(exc.reason, exc.detail)
        return out

    def _fill(self):
        """Move bytes from the UART into the buffer up to the end of one line; False when
        nothing came. A line that outgrows the buffer is refused and skipped to its newline."""
        data = self._rest
        self._rest = b""
        if not data:
            try:
                if not self.uart.any():
                    return False
                data = self.uart.read(_READ_BYTES)
            except OSError:
                return False
            if not data:
                return False
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl + 1
            n = end - start
            if self._dropping:
                self._dropping = nl < 0
            elif self._len + n > len(self._buf):
                self._len = 0
                self._refuse("oversized", "line longer than %d bytes" % self.line_max)
                self._dropping = nl < 0
            else:
                self._buf[self._len:self._len + n] = data[start:end]
                self._len += n
                if nl >= 0:
                    self._rest = data[end:]  # one whole line at a time in the buffer
                    return True
            start = end
        return True

    def _line(self):
        """The next complete line from the buffer (without its newline), or None."""
        if not self._len or self._buf[self._len - 1] != 10:  # b"\n"
            return None
        line = bytes(memoryview(self._buf)[:self._len - 1])
        self._len = 0
        return line.strip()

    def _refuse(self, reason, detail):
        self.errors["ev_" + reason] = self.errors.get("ev_" + reason, 0) + 1
        self.last_error = "%s: %s" % (reason, detail)
        self.send("error", reason=reason, detail=detail[:evproto.DETAIL_MAX])

    def send(self, kind, **fields):
        """Write one frame; False (counted) if it cannot be built or written."""
        try:
            line = evproto.frame(kind, **fields)
        except evproto.ProtocolError as exc:
            self.errors["ev_write"] += 1
            self.last_error = "cannot send %s: %s" % (kind, exc)
            return False
        try:
            self.uart.write(line)
        except OSError:
            self.errors["ev_write"] += 1
            return False
        return True
