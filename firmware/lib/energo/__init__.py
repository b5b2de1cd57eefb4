"""Energo firmware package: runs on MicroPython (ESP32) and on CPython."""


def release(*names):
    """Forget boot-only modules of this package (e.g. "boardcfg") so their code can be freed.

    Why: a module loaded from .mpy keeps its bytecode in the heap for as long as sys.modules
    (or this package, as an attribute) refers to it, and an ESP32 without PSRAM has ~110 KB of
    heap in all. A later import simply loads the module again. Only under MicroPython (on a
    board or in the emulator, whose sys.modules is the board's own): on CPython the host may
    hold these modules, and a second copy would have other exception classes.
    """
    import sys

    if sys.implementation.name != "micropython":
        return
    package = sys.modules.get("energo")
    for name in names:
        sys.modules.pop("energo." + name, None)
        try:
            delattr(package, name)
        except (AttributeError, KeyError):  # never imported or released; MicroPython: KeyError
            pass
