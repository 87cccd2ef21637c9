"""The freedesktop launcher entry: ``bnnlab install-desktop`` puts the app in the menus.

It writes, under ``$XDG_DATA_HOME`` (default ``~/.local/share``):

- ``applications/bnnlab.desktop``, which starts this installation's ``bnnlab`` and
  opens ``.bnn`` model files (``MimeType=``);
- ``icons/hicolor/scalable/apps/bnnlab.svg``, the icon the entry and the window use;
- ``mime/packages/bnnlab.xml``, the shared-mime-info type of ``.bnn`` files
  (:data:`MIME_TYPE`: the ``*.bnn`` name, or the file's first eight bytes), and its icon
  ``icons/hicolor/scalable/mimetypes/application-x-bnnlab-model.svg``;

then refreshes the MIME and application databases of that folder
(``update-mime-database``, ``update-desktop-database``) where those tools are installed.

The window sets its desktop file name to ``bnnlab`` so that window managers match the
running app with the entry (and its icon).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

from .atomic import write_atomic

__all__ = ["APP_ID", "BNN_MAGIC", "MIME_TYPE", "data_home", "desktop_entry", "exec_command",
           "icon_bytes", "install_desktop", "mime_xml", "uninstall_desktop"]

APP_ID = "bnnlab"
MIME_TYPE = "application/x-bnnlab-model"
# The first bytes of every .bnn file (bnnlab.deploy.format.MAGIC, which the tests compare).
BNN_MAGIC = b"\x89BNN\r\n\x1a\n"

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
        f"MimeType={MIME_TYPE};",
        "Categories=Science;ArtificialIntelligence;",
        "Keywords=BNN;binary;neural network;Larq;XNOR;",
        f"StartupWMClass={APP_ID}",
        "",
    ])


def icon_bytes() -> bytes:
    """The application icon (SVG), read from the installed package."""
    return importlib.resources.files("bnnlab").joinpath("icons", f"{APP_ID}.svg").read_bytes()


def _magic_value(data: bytes) -> str:
    """``data`` as a shared-mime-info string match: letters and digits as they are,
    every other byte as a ``\\xHH`` escape."""
    return "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"\\x{b:02x}"
                   for b in data)


def mime_xml() -> str:
    """The shared-mime-info definition of ``.bnn`` model files."""
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">',
        f'  <mime-type type="{MIME_TYPE}">',
        "    <comment>bnnlab binary neural network model</comment>",
        f'    <icon name="{MIME_TYPE.replace("/", "-")}"/>',
        '    <magic priority="60">',
        f'      <match type="string" offset="0" value={quoteattr(_magic_value(BNN_MAGIC))}/>',
        "    </magic>",
        '    <glob pattern="*.bnn"/>',
        "  </mime-type>",
        "</mime-info>",
        "",
    ])


def _targets(home: Path) -> tuple[Path, ...]:
    """Where the entry, the icon, the MIME type and its icon go, in that order."""
    icons = home / "icons" / "hicolor" / "scalable"
    return (home / "applications" / f"{APP_ID}.desktop",
            icons / "apps" / f"{APP_ID}.svg",
            home / "mime" / "packages" / f"{APP_ID}.xml",
            icons / "mimetypes" / f"{MIME_TYPE.replace('/', '-')}.svg")


def _refresh(home: Path) -> None:
    """Rebuild the MIME and application databases under ``home`` where the tools exist
    (without them the files are still right; the desktop reads them at its next update)."""
    for tool, folder in (("update-mime-database", home / "mime"),
                         ("update-desktop-database", home / "applications")):
        exe = shutil.which(tool)
        if exe is None or not folder.is_dir():
            continue
        try:
            subprocess.run([exe, str(folder)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                           check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def install_desktop(home: str | os.PathLike | None = None,
                    command: list[str] | None = None) -> list[Path]:
    """Write the entry, the icon and the ``.bnn`` MIME type under ``home`` (default
    :func:`data_home`); their paths."""
    home = Path(home) if home is not None else data_home()
    paths = _targets(home)
    entry_path, icon_path, mime_path, mime_icon_path = paths
    icon = icon_bytes()
    for path, data in ((icon_path, icon), (mime_icon_path, icon),
                       (mime_path, mime_xml().encode("utf-8")),
                       (entry_path, desktop_entry(command).encode("utf-8"))):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f, d=data: f.write(d))
    _refresh(home)
    return list(paths)


def uninstall_desktop(home: str | os.PathLike | None = None) -> list[Path]:
    """Remove what :func:`install_desktop` wrote; the paths that were removed."""
    home = Path(home) if home is not None else data_home()
    removed = []
    for path in _targets(home):
        if path.is_file():
            path.unlink()
            removed.append(path)
    if removed:
        _refresh(home)
    return removed
