"""One firmware run of one board: its module table, its builtins, its `__main__`.

Why a namespace per run instead of a subprocess per board: fleets of 100+ boards must fit on two
cores, and a Python process costs tens of MB while a module table costs kilobytes. Isolation comes
from giving every firmware module a `__builtins__` of its own: `import` resolves through the
board's importer (shims first, then the flash's `/` and `/lib`), `open` opens files on the board's
flash and `print` writes to its serial console. Nothing the firmware imports touches `sys.modules`
of the host, so a reset is simply a new Runtime: every module object is gone, flash persists.
Compiled code objects are immutable, so boards holding the same source share them (a cache keyed
by the source hash).
"""
import builtins
import errno
import hashlib
import os
import posixpath
import sys
import threading
import traceback
import types

from sim_board import shims

_CODE_CACHE = {}
_CODE_CACHE_LOCK = threading.Lock()
_CODE_CACHE_MAX = 2048
# Filenames of code compiled for boards; only these frames appear in firmware tracebacks.
_BOARD_FILENAMES = set()


def compile_board_source(source, filename, mode="exec"):
    """Compile firmware source; `filename` is the board path shown in tracebacks."""
    _BOARD_FILENAMES.add(filename)
    return compile(source, filename, mode, dont_inherit=True)


def _cached_code(host_path, board_path):
    """Compiled code for a flash file, shared by every board holding the same source."""
    with open(host_path, "rb") as f:
        source = f.read()
    key = (board_path, hashlib.sha256(source).digest())
    with _CODE_CACHE_LOCK:
        code = _CODE_CACHE.get(key)
    if code is None:
        code = compile_board_source(source, board_path)
        with _CODE_CACHE_LOCK:
            if len(_CODE_CACHE) >= _CODE_CACHE_MAX:
                _CODE_CACHE.clear()
            _CODE_CACHE[key] = code
    return code


def exception_name(exc):
    """The class name MicroPython would print (it has no OSError subclasses)."""
    if isinstance(exc, OSError):
        return "OSError"
    if isinstance(exc, ModuleNotFoundError):
        return "ImportError"
    return type(exc).__name__


def format_exception(exc):
    """A traceback as MicroPython prints it, showing only frames of firmware code."""
    lines = ["Traceback (most recent call last):"]
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in _BOARD_FILENAMES:
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
    if isinstance(exc, OSError) and exc.errno is not None and len(exc.args) == 2:
        message = f"[Errno {exc.errno}] {exc.args[1]}"
    elif isinstance(exc, OSError) and len(exc.args) == 1:
        message = str(exc.args[0])
    elif isinstance(exc, SyntaxError):
        message = exc.msg
    else:
        message = str(exc)
    lines.append(f"{exception_name(exc)}: {message}")
    return "\n".join(lines) + "\n"


class Runtime:
    """The RAM of one firmware run: modules, `__main__` globals, builtins."""

    def __init__(self, board):
        self.board = board
        self.modules = {}
        self.path = ["", "/lib"]
        self.builtins = dict(builtins.__dict__)
        self.builtins.update(
            __import__=self.import_module,
            open=self.open,
            print=self.print,
            input=self.input,
            help=self.help,
        )
        for name in ("exit", "quit", "copyright", "credits", "license", "breakpoint"):
            self.builtins.pop(name, None)
        self.main_globals = {"__name__": "__main__", "__builtins__": self.builtins}
        self.cwd = "/"
        self.loop = None  # the asyncio event loop of this run, made on first use
        # False once the board reset: code of this run that Python still finalizes later
        # (a suspended task's `finally`) must not reach the flash or the console.
        self.alive = True
        self.opt_level = 0
        self.atexit = None

    # ----- builtins the firmware sees -----
    def check_alive(self):
        if not self.alive:
            raise OSError(errno.EIO, "EIO")

    def open(self, path, mode="r", *args, **kwargs):
        self.check_alive()
        return self.board.flash.open(path, mode, self.cwd)

    def print(self, *args, sep=" ", end="\n", file=None):
        if not self.alive:
            return
        text = sep.join(str(a) for a in args) + end
        if file is None or file is sys.stdout or file is sys.stderr:
            self.board.console.write_text(text)
        else:
            file.write(text)

    def help(self, obj=None):
        """MicroPython's help() prints a short text (or an object's names) on the console."""
        if obj is None:
            self.board.console.write_text(
                "Welcome to MicroPython on the ESP32 (Energo board emulator)!\n")
        else:
            names = sorted(n for n in dir(obj) if not n.startswith("__"))
            self.board.console.write_text("".join(f"  {n}\n" for n in names))

    def input(self, prompt=""):
        self.board.console.write_text(prompt)
        return self.board.console.readline_echo()

    # ----- running code -----
    def exec_file(self, board_path):
        """Run a file from the flash as `__main__` code (boot.py, main.py, mpremote run)."""
        host = self.board.flash.host_path(board_path)
        code = _cached_code(host, board_path.lstrip("/"))
        exec(code, self.main_globals)

    def exec_source(self, source, filename="<stdin>"):
        exec(compile_board_source(source, filename), self.main_globals)

    # ----- import -----
    def import_module(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            package = (globals or {}).get("__package__") or ""
            if not package:
                package = (globals or {}).get("__name__", "").rpartition(".")[0]
            parts = package.split(".")
            if level > 1:
                parts = parts[: -(level - 1)]
            if not parts or not parts[0]:
                raise ImportError("can't perform relative import")
            base = ".".join(parts)
            name = f"{base}.{name}" if name else base
        parts = name.split(".")
        module = None
        for i in range(len(parts)):
            module = self._load(".".join(parts[: i + 1]))
        for item in fromlist or ():
            if item != "*" and not hasattr(module, item) and hasattr(module, "__path__"):
                try:
                    self._load(f"{module.__name__}.{item}")
                except ImportError:
                    pass
        if fromlist or level:
            return module
        return self.modules[parts[0]]

    def _load(self, name):
        module = self.modules.get(name)
        if module is not None:
            return module
        module = shims.build(name, self.board, self)
        if module is not None:
            self.modules[name] = module
            return module
        parent, _, leaf = name.rpartition(".")
        if parent:
            search = list(getattr(self.modules[parent], "__path__", []))
        else:
            search = [posixpath.join(self.cwd, p) if not p.startswith("/") else p for p in self.path]
        for directory in search:
            base = posixpath.join(directory, leaf)
            init = posixpath.join(base, "__init__.py")
            if os.path.isfile(self.board.flash.host_path(init)):
                return self._exec_module(name, init, package_dir=base)
            if os.path.isdir(self.board.flash.host_path(base)):
                return self._exec_module(name, None, package_dir=base)
            if os.path.isfile(self.board.flash.host_path(base + ".py")):
                return self._exec_module(name, base + ".py", package_dir=None)
        raise ImportError(f"no module named '{name}'")

    def _exec_module(self, name, board_path, package_dir):
        module = types.ModuleType(name)
        module.__builtins__ = self.builtins
        if board_path:
            module.__file__ = posixpath.normpath(board_path)
        if package_dir is not None:
            module.__path__ = [posixpath.normpath(package_dir)]
            module.__package__ = name
        else:
            module.__package__ = name.rpartition(".")[0]
        self.modules[name] = module
        if board_path is None:  # a namespace package: a directory without __init__.py
            parent, _, leaf = name.rpartition(".")
            if parent:
                setattr(self.modules[parent], leaf, module)
            return module
        try:
            code = _cached_code(self.board.flash.host_path(board_path), module.__file__)
            exec(code, module.__dict__)
        except BaseException:
            self.modules.pop(name, None)
            raise
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(self.modules[parent], leaf, module)  # `from pkg import sub` finds it
        return module
