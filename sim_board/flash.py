"""A board's flash: a host directory with MicroPython/LittleFS semantics, including power loss.

Why a model and not plain host files: the firmware's outbox and energy register must survive a
power cut exactly as they would on an ESP32, so the emulator must lose what a real flash loses.

The model (LittleFS as MicroPython mounts it, block size 4096):
- File data goes to a RAM cache first; it reaches flash one block (4096 bytes) at a time, and the
  rest on flush(), close() or os.sync(). A power cut loses whatever is still cached.
- Every flash program operation counts as one write: a data block, or a metadata change (create or
  truncate on open, rename, remove, mkdir, rmdir). A power cut can be injected at the k-th write:
  a data write is then cut part-way (only its first half reaches the flash, so a plain overwrite
  can leave a torn file), a metadata write does not happen at all (rename is atomic).
- open() for writing creates (or truncates) the file at once, so it exists, possibly empty, even
  if nothing was written.
- Size is bounded: `statvfs` counts 4096-byte blocks, and a write that does not fit raises
  OSError(ENOSPC) and writes nothing.
"""
import errno
import os
import posixpath

BLOCK_SIZE = 4096
DEFAULT_SIZE_BYTES = 2 * 1024 * 1024  # the esp32 port's default vfs partition is about 2 MiB
_S_IFDIR = 0x4000
_S_IFREG = 0x8000


def oserror(code):
    """An OSError that prints like MicroPython's: `[Errno 2] ENOENT`."""
    return OSError(code, errno.errorcode.get(code, str(code)))


class PowerCut(BaseException):
    """Raised in the firmware's thread when the board loses power; firmware cannot catch it
    with `except Exception`, and the board turns it into a power-on restart."""


class Flash:
    """The flash of one board, rooted at host directory `root`."""

    def __init__(self, root, size_bytes=DEFAULT_SIZE_BYTES, block_size=BLOCK_SIZE):
        if size_bytes < 4 * block_size or size_bytes % block_size:
            raise ValueError(f"flash size must be a multiple of {block_size} and >= 4 blocks")
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.size_bytes = size_bytes
        self.block_size = block_size
        self.write_count = 0
        self.cut_at_write = None  # k: the k-th write (1-based, counted from now on) is cut
        self.on_cut = None  # called (from the firmware thread) when a cut write happened
        self.rtc_s = None  # callable giving the board's RTC time, stamped as mtime on close
        self._open_files = set()
        self._used = None  # blocks in use, once counted (see used_blocks)

    # ----- paths -----
    def host_path(self, path, cwd="/"):
        """Map a board path (absolute, or relative to `cwd`) to the host path under root."""
        if not isinstance(path, str):
            raise TypeError("path must be str")
        if "\x00" in path:
            raise oserror(errno.EINVAL)
        board = posixpath.normpath(posixpath.join(cwd, path))
        if board.startswith("//"):
            board = board[1:]
        rel = board.lstrip("/")
        return os.path.join(self.root, rel) if rel else self.root

    # ----- accounting -----
    def used_blocks(self):
        """Blocks in use: two per directory (a LittleFS metadata pair), data blocks per file.

        Counted by walking the tree once, then kept up to date by every change made through
        this model: walking on every file creation cost a running board more CPU than its
        metering. A power loss forgets the count, since the host may change the files of a
        board that is off.
        """
        if self._used is None:
            self._used = self._count_used()
        return self._used

    def file_blocks(self, host_path):
        """Blocks a file takes (at least one, even empty); 0 when there is no such file."""
        try:
            size = os.path.getsize(host_path)
        except OSError:
            return 0
        return max(1, -(-size // self.block_size))

    def _count_used(self):
        used = 2
        for dirpath, dirnames, filenames in os.walk(self.root):
            used += 2 * len(dirnames)
            for name in filenames:
                size = os.path.getsize(os.path.join(dirpath, name))
                used += max(1, -(-size // self.block_size))
        return used

    def total_blocks(self):
        return self.size_bytes // self.block_size

    def statvfs(self):
        free = max(0, self.total_blocks() - self.used_blocks())
        return (self.block_size, self.block_size, self.total_blocks(), free, free, 0, 0, 0, 0, 255)

    # ----- the write counter and power cuts -----
    def _count_write(self):
        """Count one flash write; True when this is the write a power cut interrupts."""
        self.write_count += 1
        if self.cut_at_write is not None:
            self.cut_at_write -= 1
            if self.cut_at_write <= 0:
                self.cut_at_write = None
                return True
        return False

    def _cut(self):
        self.power_lost()
        if self.on_cut is not None:
            self.on_cut()
        raise PowerCut("power cut during a flash write")

    def power_lost(self):
        """Drop every RAM cache: what was not yet programmed never reaches the flash."""
        for f in list(self._open_files):
            f._drop()
        self._open_files.clear()
        self._used = None

    def sync(self):
        for f in list(self._open_files):
            f.flush()

    def metadata_op(self, apply, delta=None):
        """One atomic metadata write: either all of `apply()` happens or (power cut) nothing.

        `delta` is the change in blocks used (a new file's first block, a new directory's
        metadata pair: positive; a removed file's blocks: negative; None: not known, counted
        afresh when next needed). A positive change without room raises ENOSPC and changes
        nothing.
        """
        if delta is not None and delta > 0 \
                and self.used_blocks() + delta > self.total_blocks():
            raise oserror(errno.ENOSPC)
        if self._count_write():
            self._cut()
        apply()
        if self._used is not None:
            self._used = None if delta is None else self._used + delta

    def program(self, host_path, offset, data):
        """Program `data` at `offset` of a file; one flash write, cut part-way on a power cut."""
        size = os.path.getsize(host_path)
        end = offset + len(data)
        if end > size:
            grow = -(-end // self.block_size) - -(-size // self.block_size)
            if grow > 0 and self.used_blocks() + grow > self.total_blocks():
                raise oserror(errno.ENOSPC)
        cut = self._count_write()
        if cut:
            data = data[: len(data) // 2]
        with open(host_path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        if cut:
            self._cut()
        if end > size and self._used is not None:
            self._used += max(1, -(-end // self.block_size)) - max(1, -(-size // self.block_size))

    # ----- files -----
    def open(self, path, mode="r", cwd="/"):
        return FlashFile(self, path, mode, cwd)


def _parse_mode(mode):
    if not isinstance(mode, str) or not mode or any(c not in "rwaxbt+" for c in mode):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or mode.count("+") > 1 or ("b" in mode and "t" in mode):
        raise ValueError(f"invalid mode: {mode!r}")
    return kinds[0], "+" in mode, "b" in mode


class FlashFile:
    """A file opened on the board; reads see pending writes, power loss drops them."""

    def __init__(self, flash, path, mode, cwd):
        kind, plus, binary = _parse_mode(mode)
        self._flash = flash
        self._host = flash.host_path(path, cwd)
        self._binary = binary
        self._readable = kind == "r" or plus
        self._writable = kind != "r" or plus
        self._append = kind == "a"
        self._pending = bytearray()
        self._pending_at = 0
        self._pos = 0
        self.closed = False
        exists = os.path.exists(self._host)
        if exists and os.path.isdir(self._host):
            raise oserror(errno.EISDIR)
        parent = os.path.dirname(self._host)
        if not os.path.isdir(parent):
            raise oserror(errno.ENOENT)
        if kind == "r" and not exists:
            raise oserror(errno.ENOENT)
        if kind == "x" and exists:
            raise oserror(errno.EEXIST)
        if kind in "wx" or (kind == "a" and not exists):
            # Created, or truncated to one (empty) block.
            flash.metadata_op(lambda: open(self._host, "wb").close(),
                              delta=1 - flash.file_blocks(self._host))
        if self._append:
            self._pos = os.path.getsize(self._host)
        flash._open_files.add(self)

    # ----- internals -----
    def _check_open(self):
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _drop(self):
        self._pending = bytearray()
        self.closed = True

    def _program_pending(self, whole_blocks_only):
        bs = self._flash.block_size
        while self._pending and (len(self._pending) >= bs or not whole_blocks_only):
            chunk = bytes(self._pending[:bs])
            self._flash.program(self._host, self._pending_at, chunk)
            del self._pending[: len(chunk)]
            self._pending_at += len(chunk)

    # ----- stream API -----
    def write(self, data):
        self._check_open()
        if not self._writable:
            raise oserror(errno.EBADF)
        if isinstance(data, str):
            if self._binary:
                raise TypeError("a bytes-like object is required")
            data = data.encode()
        data = bytes(data)
        if self._append:
            self._pos = max(self._pos, os.path.getsize(self._host) + len(self._pending))
        if self._pending and self._pos != self._pending_at + len(self._pending):
            self.flush()
        if not self._pending:
            self._pending_at = self._pos
        self._pending += data
        self._pos += len(data)
        try:
            self._program_pending(whole_blocks_only=True)
        except OSError:
            # Nothing of a failed write stays behind to be programmed later.
            start = self._pos - len(data)
            still_pending = self._pos - max(start, self._pending_at)
            del self._pending[len(self._pending) - still_pending:]
            self._pos -= still_pending
            raise
        return len(data)

    def flush(self):
        if self.closed:
            return
        self._program_pending(whole_blocks_only=False)

    def _read_bytes(self, n):
        self._check_open()
        if not self._readable:
            raise oserror(errno.EBADF)
        self.flush()
        with open(self._host, "rb") as f:
            f.seek(self._pos)
            data = f.read() if n is None or n < 0 else f.read(n)
        self._pos += len(data)
        return data

    def read(self, n=-1):
        data = self._read_bytes(n)
        return data if self._binary else data.decode()

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = self._read_bytes(n)
        buf[: len(data)] = data
        return len(data)

    def readline(self, limit=-1):
        self._check_open()
        self.flush()
        with open(self._host, "rb") as f:
            f.seek(self._pos)
            data = f.readline(limit if limit and limit > 0 else -1)
        self._pos += len(data)
        return data if self._binary else data.decode()

    def readlines(self):
        lines = []
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset, whence=0):
        self._check_open()
        self.flush()
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        elif whence == 2:
            pos = os.path.getsize(self._host) + offset
        else:
            raise oserror(errno.EINVAL)
        if pos < 0:
            raise oserror(errno.EINVAL)
        self._pos = pos
        return pos

    def tell(self):
        self._check_open()
        return self._pos

    def close(self):
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            self._flash._open_files.discard(self)
        if self._writable and self._flash.rtc_s is not None:
            mtime_s = int(self._flash.rtc_s())
            os.utime(self._host, (mtime_s, mtime_s))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
