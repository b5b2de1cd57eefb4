"""Every public name a shim module offers must exist on MicroPython for ESP32 (1.29 stubs)."""
import ast
import pathlib

import pytest

from sim_board import shims
from tests.sim_support import CapturedBoard


def _stub_roots():
    import site

    roots = []
    for base in site.getsitepackages():
        p = pathlib.Path(base)
        if (p / "machine.pyi").exists():
            roots.append(p)
    return roots


def _names_in(pyi):
    """Module-level names, including those defined under `if sys.version_info ...:` blocks."""
    names = set()
    pending = list(ast.parse(pyi.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If):
            pending.extend(node.body + node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name) for a in node.names)
    return names


def stub_names(module):
    roots = _stub_roots()
    if not roots:
        pytest.fail("micropython-esp32-stubs==1.29.0.post1 is not installed")
    root = roots[0]
    for candidate in (root / f"{module}.pyi", root / "stdlib" / module / "__init__.pyi",
                      root / "stdlib" / f"{module}.pyi"):
        if candidate.exists():
            names = _names_in(candidate)
            if candidate.name == "__init__.pyi":  # asyncio: names re-exported from submodules
                for sub in candidate.parent.glob("*.pyi"):
                    names |= _names_in(sub)
            return names
    pytest.fail(f"no stub for {module}")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    cb = CapturedBoard(tmp_path_factory.mktemp("flash"))
    from sim_board.runtime import Runtime

    return Runtime(cb.board)


@pytest.mark.parametrize("module", sorted(shims.SHIMS))
def test_shim_names_exist_on_micropython(module, runtime):
    built = shims.build(module, runtime.board, runtime)
    offered = {n for n in vars(built) if not n.startswith("_")}
    invented = offered - stub_names(module)
    assert not invented, f"{module} offers names MicroPython lacks: {sorted(invented)}"


@pytest.mark.parametrize("module,cls", [("machine", "Pin"), ("machine", "ADC"),
                                        ("machine", "UART"), ("machine", "RTC"),
                                        ("network", "WLAN"), ("esp32", "NVS")])
def test_shim_class_methods_exist_on_micropython(module, cls, runtime):
    built = shims.build(module, runtime.board, runtime)
    root = _stub_roots()[0]
    tree = ast.parse((root / f"{module}.pyi").read_text())
    stub_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    allowed = {n.name for n in stub_cls.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    allowed |= {t.id for n in stub_cls.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    allowed |= {n.target.id for n in stub_cls.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    offered = {n for n in vars(getattr(built, cls)) if not n.startswith("_")}
    invented = offered - allowed
    assert not invented, f"{module}.{cls} offers names MicroPython lacks: {sorted(invented)}"
