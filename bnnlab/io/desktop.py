"""The freedesktop launcher entry: ``bnnlab install-desktop`` puts the app in the menus.

It writes, under ``$XDG_DATA_HOME`` (default ``~/.local/share``):

- ``applications/bnnlab.desktop``, which starts this installation's ``bnnlab``;
- ``icons/hicolor/scalable/apps/bnnlab.svg``, the icon the entry and the window use.

The window sets its desktop file name to ``bnnlab`` so that window managers match the
running app with the entry (and its icon).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path

from .atomic import write_atomic

__all__ = ["APP_ID", "data_home", "desktop_entry", "exec_command", "icon_bytes",
           "install_desktop", "uninstall_desktop"]

APP_ID = "bnnlab"

# Characters that force an Exec argument into double quotes (Desktop Entry spec, "Exec key").
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def data_home() -> Path:
    """``$XDG_DATA_HOME`` when it is an absolute path, else ``~/.local/share``."""
    env = os.environ.get("XDG_DATA_HOME", "")
    return Path(env) if os.path.isabs(env) else Path.home() / ".local" / "share"


def exec_command() -> list[str]:
    """The command that starts this installation: its ``bnnlab`` script, else ``python -m``."""
    script = Path(sys.executable).with_name("bnnlab")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("bnnlab")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "bnnlab"]


def _quote_exec_arg(arg: str) -> str:
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise ValueError(f"cannot put {arg!r} on a desktop entry's Exec line")
    arg = arg.replace("%", "%%")
    if any(c in _RESERVED for c in arg):
        arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    # The Exec value is itself a desktop-entry string, where a backslash is written twice.
    return arg.replace("\\", "\\\\")


def desktop_entry(command: list[str] | None = None) -> str:
    """The text of ``bnnlab.desktop`` for ``command`` (default: :func:`exec_command`)."""
    argv = [_quote_exec_arg(a) for a in (command or exec_command())]
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.4",
        "Name=bnnlab",
        "GenericName=Binary neural network explorer",
        "Comment=Train, inspect and export binarized neural networks",
        f"Exec={' '.join(argv)} %f",
        f"Icon={APP_ID}",
        "Terminal=false",
        "Categories=Science;ArtificialIntelligence;",
        "Keywords=BNN;binary;neural network;Larq;XNOR;",
        f"StartupWMClass={APP_ID}",
        "",
    ])


def icon_bytes() -> bytes:
    """The application icon (SVG), read from the installed package."""
    return importlib.resources.files("bnnlab").joinpath("icons", f"{APP_ID}.svg").read_bytes()


def _targets(home: Path) -> tuple[Path, Path]:
    return (home / "applications" / f"{APP_ID}.desktop",
            home / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg")


def install_desktop(home: str | os.PathLike | None = None,
                    command: list[str] | None = None) -> list[Path]:
    """Write the entry and the icon under ``home`` (default :func:`data_home`); their paths."""
    entry_path, icon_path = _targets(Path(home) if home is not None else data_home())
    entry = desktop_entry(command).encode("utf-8")
    icon = icon_bytes()
    for path, data in ((icon_path, icon), (entry_path, entry)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f, d=data: f.write(d))
    return [entry_path, icon_path]


def uninstall_desktop(home: str | os.PathLike | None = None) -> list[Path]:
    """Remove what :func:`install_desktop` wrote; the paths that were removed."""
    removed = []
    for path in _targets(Path(home) if home is not None else data_home()):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed
