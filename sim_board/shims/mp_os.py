"""MicroPython's `os` on the board's flash (LittleFS semantics, see sim_board.flash)."""
import errno
import os as host_os
import posixpath
import types
from collections import namedtuple

from sim_board.flash import _S_IFDIR, _S_IFREG, oserror

_SYSNAME = "esp32"
_RELEASE = "1.29.0"
_VERSION = "v1.29.0 on 2026-01-01"
_MACHINE = "Generic ESP32 module with ESP32"
_UnameResult = namedtuple("uname_result", "sysname nodename release version machine")


def _host_call(fn, *args):
    """Run a host file-system call, turning its errors into MicroPython-style OSErrors."""
    try:
        return fn(*args)
    except FileNotFoundError:
        raise oserror(errno.ENOENT) from None
    except FileExistsError:
        raise oserror(errno.EEXIST) from None
    except IsADirectoryError:
        raise oserror(errno.EISDIR) from None
    except NotADirectoryError:
        raise oserror(errno.ENOTDIR) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise oserror(errno.ENOTEMPTY if exc.errno == errno.ENOTEMPTY else errno.EEXIST) from None
        raise oserror(exc.errno or errno.EIO) from None


def build(board, runtime):
    flash = board.flash
    m = types.ModuleType("os")

    def host(path):
        runtime.check_alive()
        return flash.host_path(path, runtime.cwd)

    def ilistdir(dir="."):
        path = host(dir)
        if not host_os.path.isdir(path):
            raise oserror(errno.ENOENT if not host_os.path.exists(path) else errno.ENOTDIR)
        entries = []
        for name in sorted(_host_call(host_os.listdir, path)):
            full = host_os.path.join(path, name)
            if host_os.path.isdir(full):
                entries.append((name, _S_IFDIR, 0, 0))
            else:
                entries.append((name, _S_IFREG, 0, host_os.path.getsize(full)))
        return iter(entries)

    def listdir(dir="."):
        return [entry[0] for entry in ilistdir(dir)]

    def stat(path):
        st = _host_call(host_os.stat, host(path))
        is_dir = host_os.path.isdir(host(path))
        mode = _S_IFDIR if is_dir else _S_IFREG
        size = 0 if is_dir else st.st_size
        mtime_s = int(st.st_mtime)
        return (mode, 0, 0, 0, 0, 0, size, mtime_s, mtime_s, mtime_s)

    def statvfs(path="/"):
        stat(path)
        return flash.statvfs()

    def mkdir(path):
        target = host(path)
        if host_os.path.exists(target):
            raise oserror(errno.EEXIST)
        if not host_os.path.isdir(host_os.path.dirname(target)):
            raise oserror(errno.ENOENT)
        flash.metadata_op(lambda: _host_call(host_os.mkdir, target), delta=2)

    def rmdir(path):
        target = host(path)
        if target == flash.root:
            raise oserror(errno.EPERM)
        if not host_os.path.isdir(target):
            raise oserror(errno.ENOENT if not host_os.path.exists(target) else errno.ENOTDIR)
        if host_os.listdir(target):
            raise oserror(errno.ENOTEMPTY)
        flash.metadata_op(lambda: _host_call(host_os.rmdir, target), delta=-2)

    def remove(path):
        target = host(path)
        if not host_os.path.exists(target):
            raise oserror(errno.ENOENT)
        if host_os.path.isdir(target):
            raise oserror(errno.EISDIR)
        flash.metadata_op(lambda: _host_call(host_os.remove, target),
                          delta=-flash.file_blocks(target))

    def rename(old_path, new_path):
        src, dst = host(old_path), host(new_path)
        if not host_os.path.exists(src):
            raise oserror(errno.ENOENT)
        if not host_os.path.isdir(host_os.path.dirname(dst)):
            raise oserror(errno.ENOENT)
        if host_os.path.isdir(dst) and host_os.listdir(dst):
            raise oserror(errno.ENOTEMPTY)
        # LittleFS renames atomically, replacing an existing file.
        # A replaced file's blocks are freed; a replaced (empty) directory: counted afresh.
        flash.metadata_op(lambda: _host_call(host_os.replace, src, dst),
                          delta=0 if src == dst else None if host_os.path.isdir(dst)
                          else -flash.file_blocks(dst))

    def chdir(path):
        target = host(path)
        if not host_os.path.isdir(target):
            raise oserror(errno.ENOENT)
        runtime.cwd = "/" + host_os.path.relpath(target, flash.root).replace(host_os.sep, "/")
        runtime.cwd = posixpath.normpath(runtime.cwd)

    def getcwd():
        return runtime.cwd

    def sync():
        flash.sync()

    def uname():
        return _UnameResult(_SYSNAME, _SYSNAME, _RELEASE, _VERSION, _MACHINE)

    def urandom(n):
        if not isinstance(n, int) or n < 0:
            raise ValueError("n must be a non-negative int")
        return board.urandom(n)

    def dupterm(stream_object=None, index=0):
        return None

    def dupterm_notify(obj_in=None):
        return None

    for f in (ilistdir, listdir, stat, statvfs, mkdir, rmdir, remove, rename, chdir, getcwd,
              sync, uname, urandom, dupterm, dupterm_notify):
        setattr(m, f.__name__, f)
    m.unlink = remove
    return m
