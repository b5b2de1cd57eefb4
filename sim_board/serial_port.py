"""The board's USB serial port on the host: a pseudo-terminal or a TCP socket (`socket://`).

mpremote opens devices with pyserial's `serial_for_url`, so both a pty path and
`socket://127.0.0.1:PORT` work. A client may disconnect and reconnect at any time; output with
no reader is dropped, as a UART with nobody listening would.
"""
import os
import select
import socket
import threading
import tty

_SEND_TIMEOUT_S = 2.0


class PtyPort:
    """A pty whose slave side is the board's serial device."""

    def __init__(self, console):
        self.console = console
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a UART passes bytes through
        os.set_blocking(self._master, False)
        self.url = os.ttyname(self._slave)
        self._closed = False
        console.sinks.append(self._send)
        self._thread = threading.Thread(target=self._reader, daemon=True, name="pty-reader")
        self._thread.start()

    def _send(self, data):
        view = memoryview(data)
        while view and not self._closed:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                return  # nobody is reading: drop
            view = view[n:]

    def _reader(self):
        while not self._closed:
            try:
                r, _, _ = select.select([self._master], [], [], 0.2)
                if r:
                    data = os.read(self._master, 4096)
                    if data:
                        self.console.feed(data)
            except OSError:
                if self._closed:
                    return
                threading.Event().wait(0.05)

    def close(self):
        self._closed = True
        self.console.sinks.remove(self._send)
        os.close(self._master)
        os.close(self._slave)


class SocketPort:
    """A TCP listener on loopback; the newest client is the connected terminal."""

    def __init__(self, console, host="127.0.0.1", port=0):
        self.console = console
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(2)
        host, port = self._server.getsockname()[:2]
        self.url = f"socket://{host}:{port}"
        self._client = None
        self._lock = threading.Lock()
        self._closed = False
        console.sinks.append(self._send)
        threading.Thread(target=self._accept, daemon=True, name="serial-accept").start()

    def _send(self, data):
        with self._lock:
            client = self._client
        if client is None:
            return
        try:
            client.sendall(data)
        except OSError:
            self._drop(client)

    def _drop(self, client):
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(_SEND_TIMEOUT_S)  # a client that stops reading is dropped
            with self._lock:
                old, self._client = self._client, client
            if old is not None:
                old.close()
            threading.Thread(target=self._reader, args=(client,), daemon=True).start()

    def _reader(self, client):
        while True:
            try:
                data = client.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            self.console.feed(data)

    def close(self):
        self._closed = True
        self.console.sinks.remove(self._send)
        self._server.close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def parse_spec(spec):
    """("pty", None) or ("socket", port) from `pty` / `socket://127.0.0.1:PORT`; ValueError."""
    if spec == "pty":
        return "pty", None
    if spec.startswith("socket://"):
        host, sep, port = spec[len("socket://"):].rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"bad serial spec {spec!r}: expected socket://HOST:PORT")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the serial socket listens on loopback only (127.0.0.1)")
        return "socket", int(port)
    raise ValueError(f"bad serial spec {spec!r}: expected pty or socket://127.0.0.1:PORT")


def open_port(spec, console):
    """Open the serial endpoint `spec` (see parse_spec); PORT 0 picks a free port."""
    kind, port = parse_spec(spec)
    return PtyPort(console) if kind == "pty" else SocketPort(console, "127.0.0.1", port)
