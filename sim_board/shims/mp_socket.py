"""MicroPython sockets on the board's clock and Wi-Fi link.

Semantics kept from MicroPython: `read`/`readinto`/`write` return None when a non-blocking socket
would block, `recv`/`send` raise OSError(EAGAIN) then; a timeout raises OSError(ETIMEDOUT); a
blocking `read(n)` collects n bytes unless the peer closes. Timeouts are virtual seconds. When the
Wi-Fi link drops, every open socket is aborted (OSError(ECONNABORTED)), as lwIP does.
"""
import errno
import select as host_select
import socket as host_socket
import types

from sim_board.flash import oserror

NET_WALL_FLOOR_S = 0.25

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 0xFFF
SO_REUSEADDR = 4
SO_BROADCAST = 32
TCP_NODELAY = 1
MSG_PEEK = 1
MSG_DONTWAIT = 8
_EAI_FAIL = -202  # what the esp32 port raises when DNS fails
_CONSTANTS = ("AF_INET", "AF_INET6", "SOCK_STREAM", "SOCK_DGRAM", "SOCK_RAW", "IPPROTO_IP",
              "IPPROTO_TCP", "IPPROTO_UDP", "SOL_SOCKET", "SO_REUSEADDR", "SO_BROADCAST",
              "TCP_NODELAY", "MSG_PEEK", "MSG_DONTWAIT")
_HOST_AF = {AF_INET: host_socket.AF_INET, AF_INET6: host_socket.AF_INET6}
_HOST_TYPE = {SOCK_STREAM: host_socket.SOCK_STREAM, SOCK_DGRAM: host_socket.SOCK_DGRAM}
_HOST_SOCKOPT = {(SOL_SOCKET, SO_REUSEADDR): (host_socket.SOL_SOCKET, host_socket.SO_REUSEADDR),
                 (SOL_SOCKET, SO_BROADCAST): (host_socket.SOL_SOCKET, host_socket.SO_BROADCAST),
                 (IPPROTO_TCP, TCP_NODELAY): (host_socket.IPPROTO_TCP, host_socket.TCP_NODELAY)}
_RECV_CHUNK = 4096


def _as_bytes(data):
    return data.encode() if isinstance(data, str) else bytes(data)


def build(board, runtime):
    m = types.ModuleType("socket")
    for name in _CONSTANTS:
        setattr(m, name, globals()[name])
    clock = board.clock

    class socket:
        def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0, *, _sock=None):
            if af not in _HOST_AF or type not in _HOST_TYPE:
                raise oserror(errno.EINVAL)
            self._s = _sock or host_socket.socket(_HOST_AF[af], _HOST_TYPE[type])
            self._s.setblocking(False)
            self._timeout_s = None
            self._aborted = False
            board.sockets.add(self)

        # ----- internals -----
        def _abort(self):
            """The link went down: lwIP drops the connection."""
            self._aborted = True
            try:
                self._s.close()
            except OSError:
                pass

        def _check(self):
            if self._aborted:
                raise oserror(errno.ECONNABORTED)
            if self._s.fileno() < 0:
                raise oserror(errno.EBADF)

        def _wait(self, for_write):
            """Wait for readiness within the timeout; False means would-block (timeout 0)."""
            if self._timeout_s == 0:
                return False
            fd = self._s.fileno()

            def ready(real_s):
                if self._aborted:
                    return True
                r, w, _ = host_select.select([] if for_write else [fd], [fd] if for_write else [],
                                             [], real_s)
                return bool(r or w)

            # The peers are real programs running in wall time; a board sped up 900x must not
            # give up on a loopback round trip that took a few real milliseconds. So the peer
            # first gets up to NET_WALL_FLOOR_S of real time, during which the virtual clock
            # stands still (to the board the network answered at once). Only then does the
            # virtual timeout run: a board behind schedule would otherwise jump straight to
            # the end of every timeout, before the peer had a chance to answer.
            if not ready(NET_WALL_FLOOR_S) and not clock.wait(self._timeout_s, ready):
                raise oserror(errno.ETIMEDOUT)
            self._check()
            return True

        def _io(self, op, for_write):
            if for_write:
                clock.catch_up()  # a peer must not see a board that ran ahead early
            while True:
                self._check()
                try:
                    return op()
                except (BlockingIOError, InterruptedError):
                    if not self._wait(for_write):
                        return None
                except OSError as exc:
                    raise oserror(exc.errno or errno.EIO) from None

        # ----- configuration -----
        def settimeout(self, value):
            if value is not None and value < 0:
                raise ValueError("timeout must be >= 0")
            self._timeout_s = value

        def setblocking(self, flag):
            self._timeout_s = None if flag else 0

        def setsockopt(self, level, optname, value):
            mapped = _HOST_SOCKOPT.get((level, optname))
            if mapped is not None:
                self._s.setsockopt(*mapped, value)

        def close(self):
            board.sockets.discard(self)
            self._s.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def makefile(self, mode="rb", buffering=0):
            return self

        # ----- connections -----
        def connect(self, address):
            if not board.wifi.link_up():
                raise oserror(errno.EHOSTUNREACH)
            self._check()
            clock.catch_up()
            err = self._s.connect_ex(tuple(address))
            if err in (0, errno.EISCONN):
                return
            if err not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                raise oserror(err)
            if self._timeout_s == 0:
                raise oserror(errno.EINPROGRESS)
            self._wait(for_write=True)
            err = self._s.getsockopt(host_socket.SOL_SOCKET, host_socket.SO_ERROR)
            if err:
                raise oserror(err)

        def bind(self, address):
            self._s.bind(tuple(address))

        def listen(self, backlog=2):
            self._s.listen(backlog)

        def accept(self):
            pair = self._io(self._s.accept, for_write=False)
            if pair is None:
                raise oserror(errno.EAGAIN)
            conn, addr = pair
            return socket(_sock=conn), addr

        # ----- data -----
        def recv(self, bufsize, flags=0):
            data = self._io(lambda: self._s.recv(bufsize), for_write=False)
            if data is None:
                raise oserror(errno.EAGAIN)
            return data

        def recvfrom(self, bufsize):
            pair = self._io(lambda: self._s.recvfrom(bufsize), for_write=False)
            if pair is None:
                raise oserror(errno.EAGAIN)
            return pair

        def send(self, data):
            n = self._io(lambda: self._s.send(_as_bytes(data)), for_write=True)
            if n is None:
                raise oserror(errno.EAGAIN)
            return n

        def sendto(self, data, address):
            return self._io(lambda: self._s.sendto(bytes(data), tuple(address)), for_write=True)

        def sendall(self, data):
            self.write(data)

        def write(self, buf, nbytes=None):
            # MicroPython's stream write takes a str as its UTF-8 bytes.
            view = memoryview(_as_bytes(buf))[:nbytes]
            sent = 0
            while sent < len(view):
                n = self._io(lambda sent=sent: self._s.send(view[sent:]), for_write=True)
                if n is None:
                    return sent or None
                sent += n
            return sent

        def read(self, size=-1):
            chunks = []
            got = 0
            while size is None or size < 0 or got < size:
                want = _RECV_CHUNK if size is None or size < 0 else min(_RECV_CHUNK, size - got)
                try:
                    data = self._io(lambda want=want: self._s.recv(want), for_write=False)
                except OSError:
                    if chunks:  # like MicroPython's stream read: what arrived, then the error
                        break
                    raise
                if data is None:
                    if not chunks:
                        return None
                    break
                if not data:
                    break
                chunks.append(data)
                got += len(data)
            return b"".join(chunks)

        def readinto(self, buf, nbytes=None):
            want = len(buf) if nbytes is None else min(nbytes, len(buf))
            data = self.read(want)
            if data is None:
                return None
            buf[: len(data)] = data
            return len(data)

        def readline(self):
            line = bytearray()
            while not line.endswith(b"\n"):
                data = self.read(1)
                if not data:
                    break
                line += data
            return bytes(line)

        def fileno(self):
            return self._s.fileno()

    def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
        if not board.wifi.link_up():
            raise OSError(_EAI_FAIL)
        try:
            infos = host_socket.getaddrinfo(host, port, host_socket.AF_INET,
                                            host_socket.SOCK_STREAM)
        except host_socket.gaierror:
            raise OSError(_EAI_FAIL) from None
        return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", info[4][:2]) for info in infos[:1]]

    m.socket = socket
    m.getaddrinfo = getaddrinfo
    return m
