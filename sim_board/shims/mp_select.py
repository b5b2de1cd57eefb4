"""MicroPython's `select.poll` / `select.select` over board sockets and UARTs, on the clock."""
import select as host_select
import types

POLLIN = 1
POLLOUT = 4
POLLERR = 8
POLLHUP = 16


def _fd(obj):
    if hasattr(obj, "_s"):
        return obj._s.fileno()
    if getattr(obj, "_port", None) is not None:
        return obj._port.fileno()
    if hasattr(obj, "fileno"):
        return obj.fileno()
    raise TypeError("object with stream protocol required")


def build(board, runtime):
    m = types.ModuleType("select")
    m.POLLIN, m.POLLOUT, m.POLLERR, m.POLLHUP = POLLIN, POLLOUT, POLLERR, POLLHUP

    class _Poll:
        def __init__(self):
            self._objs = {}

        def register(self, obj, eventmask=POLLIN | POLLOUT):
            self._objs[id(obj)] = (obj, eventmask)

        def unregister(self, obj):
            self._objs.pop(id(obj), None)

        def modify(self, obj, eventmask):
            if id(obj) not in self._objs:
                raise OSError(2, "ENOENT")
            self._objs[id(obj)] = (obj, eventmask)

        def poll(self, timeout=-1):
            found = []

            def ready(real_s):
                p = host_select.poll()
                by_fd = {}
                for obj, mask in self._objs.values():
                    fd = _fd(obj)
                    by_fd[fd] = obj
                    p.register(fd, mask & (POLLIN | POLLOUT))
                events = p.poll(real_s * 1000)
                found[:] = [(by_fd[fd], ev & (POLLIN | POLLOUT | POLLERR | POLLHUP))
                            for fd, ev in events]
                return bool(found)

            board.clock.wait(None if timeout is None or timeout < 0 else timeout / 1000, ready)
            return list(found)

        def ipoll(self, timeout=-1, flags=0):
            return iter(self.poll(timeout))

    def poll():
        return _Poll()

    def select(rlist, wlist, xlist, timeout=None):
        result = ([], [], [])

        def ready(real_s):
            r, w, _ = host_select.select([_fd(o) for o in rlist], [_fd(o) for o in wlist], [],
                                         real_s)
            result[0][:] = [o for o in rlist if _fd(o) in r]
            result[1][:] = [o for o in wlist if _fd(o) in w]
            return bool(r or w)

        board.clock.wait(timeout, ready)
        return result

    m.poll = poll
    m.select = select
    return m
