"""The MicroPython modules an emulated board's firmware can import.

Each entry builds a fresh module for one firmware run (`build(board, runtime)`), so a reset drops
all module state. MicroPython 1.29 still has the `u`-prefixed aliases (`usocket`, `ustruct`, ...),
which micropython-lib's umqtt.simple imports, so they map to the same modules.
"""
import importlib

# module name -> (shim module under sim_board.shims, builder function)
SHIMS = {
    "machine": ("machine", "build"),
    "network": ("network", "build"),
    "esp32": ("esp32", "build"),
    "micropython": ("mp_sys", "build_micropython"),
    "sys": ("mp_sys", "build_sys"),
    "gc": ("mp_sys", "build_gc"),
    "time": ("mp_time", "build"),
    "os": ("mp_os", "build"),
    "socket": ("mp_socket", "build"),
    "select": ("mp_select", "build"),
    "asyncio": ("mp_asyncio", "build"),
    "cryptolib": ("cryptolib", "build"),
    "ntptime": ("ntptime", "build"),
    "errno": ("stdlib", "build_errno"),
    "struct": ("stdlib", "build_struct"),
    "binascii": ("stdlib", "build_binascii"),
    "json": ("stdlib", "build_json"),
    "hashlib": ("stdlib", "build_hashlib"),
    "math": ("stdlib", "build_math"),
    "collections": ("stdlib", "build_collections"),
    "heapq": ("stdlib", "build_heapq"),
    "re": ("stdlib", "build_re"),
    "io": ("stdlib", "build_io"),
    "random": ("stdlib", "build_random"),
    "array": ("stdlib", "build_array"),
}
ALIASES = {"u" + name: name for name in (
    "socket", "struct", "binascii", "time", "os", "asyncio", "json", "hashlib", "select",
    "cryptolib", "errno", "io", "collections", "random", "sys", "heapq", "re", "machine",
    "array")}


def build(name, board, runtime):
    """The module `name` for this run, or None when it is not a shim (then the flash is searched).

    An alias and its module are one object, as on MicroPython.
    """
    target = ALIASES.get(name, name)
    entry = SHIMS.get(target)
    if entry is None:
        return None
    if target != name and target in runtime.modules:
        return runtime.modules[target]
    module_name, builder = entry
    shim = importlib.import_module(f"{__name__}.{module_name}")
    module = getattr(shim, builder)(board, runtime)
    runtime.modules[target] = module
    return module
