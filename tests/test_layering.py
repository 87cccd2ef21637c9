"""The engine, I/O and CLI work without loading Qt (only bnnlab/gui imports it)."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bnnlab"


def test_no_qt_import_outside_gui_package():
    offenders = []
    for path in PKG.rglob("*.py"):
        if "gui" in path.relative_to(PKG).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("PySide6", "pyqtgraph") for n in names):
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert offenders == []


def test_cli_commands_do_not_load_qt():
    code = ("import sys; from bnnlab.cli import main; "
            "main(['summary', 'toy-xor']); main(['filters', 'quickstart', '--json']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph')]; "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
