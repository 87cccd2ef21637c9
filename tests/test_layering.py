"""The package's layering, checked on the source (AST), with every import counted, also the
ones inside functions:

    kernels < core < io, data < experiment < deploy < app, bench < cli, gui

A module may import modules of its own layer or of lower ones, never of a higher one;
the import graph has no cycles; only ``bnnlab/gui`` imports Qt. ``docs/architecture.md``
describes the layers.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bnnlab"

# Longest matching prefix wins.
LAYERS = {
    "bnnlab": 0,
    "bnnlab.core.kernels": 1,
    "bnnlab.core.settings": 1,  # environment settings the kernels read; imports nothing of ours
    "bnnlab.core": 2,
    "bnnlab.io": 3,
    "bnnlab.data": 3,
    "bnnlab.experiment": 4,
    "bnnlab.deploy": 5,
    "bnnlab.app": 6,
    "bnnlab.bench": 6,
    "bnnlab.cli": 7,
    "bnnlab.cli_base": 7,
    "bnnlab.cli_deploy": 7,
    "bnnlab.cli_compare": 7,
    "bnnlab.cli_shortcuts": 7,
    "bnnlab.__main__": 7,
    "bnnlab.gui": 7,
}
QT = ("PySide6", "pyqtgraph", "shiboken6")


def layer_of(module: str) -> int:
    best = None
    for prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None or (best == "bnnlab" and module != "bnnlab"):
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return LAYERS[best]


def module_files(root: Path = PKG) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported bnnlab module, line) for every import statement, and every top-level import
    of another package (prefixed with ``!``) so the Qt rule can use the same walk."""
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append((a.name if a.name.startswith("bnnlab") else "!" + a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("bnnlab"):
                found.append(("!" + target, node.lineno))
                continue
            # ``from . import kernels`` imports the submodule, not the package.
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.extend((s, node.lineno) for s in subs)
            if len(subs) < len(node.names):
                found.append((target, node.lineno))
    return found


def import_graph(root: Path = PKG) -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    files = module_files(root)
    known = set(files)
    return files, {m: imports_of(m, p, known) for m, p in files.items()}


def layer_violations(files, graph) -> list[str]:
    bad = []
    for mod, edges in graph.items():
        for target, line in edges:
            if target.startswith("!"):
                continue
            if target not in files:
                bad.append(f"{mod}:{line}: imports {target}, which does not exist")
            elif layer_of(target) > layer_of(mod):
                bad.append(f"{mod}:{line} (layer {layer_of(mod)}) imports {target} "
                           f"(layer {layer_of(target)})")
    return bad


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, ()):
            if w.startswith("!") or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(t == v for t, _ in graph[v]):
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def qt_offenders(files, graph) -> list[str]:
    return [f"{m}:{line}"
            for m, edges in graph.items() if not (m == "bnnlab.gui" or m.startswith("bnnlab.gui."))
            for target, line in edges if target.startswith("!") and target[1:].split(".")[0] in QT]


def test_every_import_goes_down_the_layers():
    files, graph = import_graph()
    assert layer_violations(files, graph) == []


def test_no_import_cycles():
    _, graph = import_graph()
    assert cycles(graph) == []


def test_no_qt_import_outside_gui_package():
    assert qt_offenders(*import_graph()) == []


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_the_checks_catch_what_they_forbid(tmp_path):
    pkg = tmp_path / "bnnlab"
    for rel in ("__init__.py", "core/__init__.py", "io/__init__.py", "deploy/__init__.py",
                "gui/__init__.py"):
        _write(pkg, rel, "")
    _write(pkg, "core/model.py", "def f():\n    from ..io import atomic\n")  # upward, lazily
    _write(pkg, "io/atomic.py", "from ..core import model\n")
    _write(pkg, "deploy/a.py", "from . import b\n")
    _write(pkg, "deploy/b.py", "def g():\n    from .a import x\n")
    _write(pkg, "deploy/qt.py", "from PySide6.QtCore import QObject\n")
    _write(pkg, "gui/ok.py", "import pyqtgraph\nfrom ..deploy import a\n")
    files, graph = import_graph(pkg)
    bad = layer_violations(files, graph)
    assert len(bad) == 1 and "bnnlab.core.model:2 (layer 2) imports bnnlab.io.atomic" in bad[0]
    found = cycles(graph)
    assert ["bnnlab.core.model", "bnnlab.io.atomic"] in found
    assert ["bnnlab.deploy.a", "bnnlab.deploy.b"] in found
    assert qt_offenders(files, graph) == ["bnnlab.deploy.qt:1"]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("bnnlab.newthing")


def test_cli_commands_do_not_load_qt():
    code = ("import sys; from bnnlab.cli import main; "
            "main(['summary', 'toy-xor']); main(['filters', 'quickstart', '--json']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph')]; "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
