"""Run Python on real MicroPython 1.29: the WebAssembly port (npm package
`@micropython/micropython-webassembly-pyscript`, pinned in package.json) under Node.

Used by the MicroPython gate in the tests and by benchmarks that measure the
firmware on MicroPython. `run.mjs` beside this file copies host directories into
MicroPython's in-memory filesystem and puts them on `sys.path`.
"""
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN_MJS = pathlib.Path(__file__).with_name("run.mjs")
FIRMWARE_LIB = ROOT / "firmware" / "lib"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


def unavailable_reason():
    """None when MicroPython-wasm can run here, else why it cannot."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not PACKAGE.is_dir():
        return "npm package missing: run `make setup` (npm ci)"
    return None


def run(script, args=(), mounts=(), heap_bytes=8 << 20, timeout_s=300):
    """CompletedProcess of `script` on MicroPython, with firmware/lib mounted at /lib.

    `mounts` are (host_dir, micropython_dir) pairs, each also prepended to sys.path.
    """
    cmd = ["node", str(RUN_MJS), "--heap", str(heap_bytes), "--mount", f"{FIRMWARE_LIB}:/lib"]
    for host_dir, mp_dir in mounts:
        cmd += ["--mount", f"{host_dir}:{mp_dir}"]
    cmd += [str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
