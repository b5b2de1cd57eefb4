"""The wire between an emulated charger and a simulated vehicle: a UART peer in the same process.

On a real charger the vehicle link is a power-line modem behind a UART; here the charger board's
UART (`board.uart_ports[n]`) is given a `LinkPeer` instead of a pseudo-terminal path, and the
UART shim calls `LinkPeer.open(baudrate)` for the board's end. The two ends are a socket pair,
so the board can wait on its end with `select` exactly as it waits on a serial port, and the
vehicle, on its own thread, reads whole lines from the other end.

Like a cable, the link only carries bytes while the vehicle is plugged in (the modem signal
rides on the control pilot): the vehicle drops what it would send or receive while unplugged.

Timing follows the board's virtual clock. The board's UART write already charges the line time
of what the charger sends; the vehicle's answer is delivered when the board's schedule reaches
the moment the line was picked up, plus the vehicle's own computing time (as long in virtual
time as it took here), plus the answer's line time (10 bits a byte). So a benchmark at speed 1
sees what a real 115200 baud link and a vehicle as fast as this host cost, and a sped-up board
sees the same in virtual time.

`ev_control` applies a vehicle's change to the world's EV model at a virtual instant: the site's
integrator is brought to that instant first, so energy before and after is accounted exactly.
"""
import math
import socket
import threading
import time

from energo.evproto import LINE_MAX

_READ_CHUNK = 65536
_SEND_WAIT_S = 5.0  # real seconds a send may wait for a board that does not read


class _BoardEnd:
    """The board's end: the subset of pyserial's `Serial` the UART shim uses."""

    awaits_reply = False  # the vehicle's answer costs virtual time, as a real one's would

    def __init__(self, sock):
        self._sock = sock
        self._buf = bytearray()
        self.closed = False

    def _drain(self):
        while True:
            try:
                data = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            self._buf += data

    @property
    def in_waiting(self):
        if not self.closed:
            self._drain()
        return len(self._buf)

    def read(self, n=1):
        self.in_waiting  # noqa: B018 - pulls what has arrived
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def write(self, data):
        if self.closed:
            raise OSError("UART closed")
        try:
            self._sock.sendall(bytes(data))
        except OSError:
            pass  # the vehicle end is gone: a modem with no peer swallows the bytes
        return len(data)

    def fileno(self):
        return self._sock.fileno()

    def flush(self):
        pass

    def send_break(self, duration=0.25):
        pass

    def close(self):
        """The board resets or deinits its UART: the socket stays for the next `open`."""
        self.closed = True


class LinkPeer:
    """The vehicle's side of one charger UART; `open` is called by the board's UART shim."""

    def __init__(self, baudrate=115200, clock=None):
        self._board_sock, self._vehicle_sock = socket.socketpair()
        for s in (self._board_sock, self._vehicle_sock):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.baudrate = baudrate
        self.clock = clock  # the board's VirtualClock (None: no pacing, for scripted tests)
        self._rx_at = None  # (board ns, wall s) when the newest line was picked up
        self._end = None
        self._rx = bytearray()
        self._skipping = False  # inside an oversized line, dropping up to its newline
        self._lock = threading.Lock()
        self.oversized_in = 0

    # ---- the board's end -------------------------------------------------------------------

    def open(self, baudrate):
        """A fresh board end; bytes that arrived while the UART was closed are lost."""
        self.baudrate = baudrate
        if self._end is not None:
            self._end._drain()
        self._end = _BoardEnd(self._board_sock)
        self._end._buf.clear()
        return self._end

    # ---- the vehicle's end -----------------------------------------------------------------

    def _pace(self, nbytes):
        """Wait until the board's schedule reaches the end of these bytes' line time."""
        c = self.clock
        start_ns = c.now_ns()
        if self._rx_at is not None:  # an answer starts once the vehicle has thought about it
            rx_ns, rx_wall = self._rx_at
            start_ns = max(start_ns, rx_ns + int((time.monotonic() - rx_wall) * 1e9))
        due_ns = start_ns + nbytes * 10 * 1_000_000_000 // self.baudrate
        delay_s = c._wall_due_s(due_ns) - c._wall()
        if delay_s > 0:
            time.sleep(min(delay_s, 10.0))

    def send(self, data):
        """Bytes from the vehicle; they arrive after their line time on the board's clock."""
        if self.clock is not None:
            self._pace(len(data))
        view = memoryview(bytes(data))
        deadline = time.monotonic() + _SEND_WAIT_S
        with self._lock:
            while view and time.monotonic() < deadline:  # a board that never reads: give up
                try:
                    n = self._vehicle_sock.send(view)
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                except OSError:
                    return  # the link is closed
                view = view[n:]

    def wait_readable(self, timeout_s):
        """Wait up to `timeout_s` real seconds for bytes from the board (True if there are)."""
        import select

        if self._rx.find(b"\n") >= 0:
            return True
        r, _, _ = select.select([self._vehicle_sock], [], [], timeout_s)
        return bool(r)

    def lines(self):
        """Complete lines received so far (each ending in b'\\n'); a line longer than the
        link allows is dropped up to its newline and stands as None in the list."""
        while True:
            try:
                data = self._vehicle_sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            self._rx += data
        out = []
        while True:
            i = self._rx.find(b"\n")
            if i < 0:
                if len(self._rx) > LINE_MAX:  # no newline yet and already too long
                    self._rx.clear()
                    if not self._skipping:
                        self._skipping = True
                        self.oversized_in += 1
                        out.append(None)
                break
            line = bytes(self._rx[: i + 1])
            del self._rx[: i + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > LINE_MAX:
                self.oversized_in += 1
                out.append(None)
                continue
            out.append(line)
        if out and self.clock is not None:
            self._rx_at = (self.clock.now_ns(), time.monotonic())
        return out

    def discard_input(self):
        """Drop everything pending from the board (the vehicle was unplugged)."""
        self.lines()
        self._rx.clear()

    def close(self):
        for s in (self._board_sock, self._vehicle_sock):
            try:
                s.close()
            except OSError:
                pass


def ev_control(site, t_s, change):
    """Apply `change(ev)` to the site's EV from virtual time `t_s` on (now if that has passed).

    The integrator is advanced to `t_s` first, then the EV's plug-in edges are re-read and the
    power of the current step refreshed, as the site's own controls do.
    """
    with site.world.lock:
        site._at(t_s)
        change(site.ev)
        site._ev_next_s = -math.inf  # plug-in edges may have moved: look again
        site.ev.sync_session(site._t_done)
        site._refresh_current_step()
