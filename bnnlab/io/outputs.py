"""Output files that must not cost the work behind them.

:func:`output_problem` says, before a long job starts, why its output could not be written
(a folder named instead of a file, a missing or read-only folder, too little free space).
:func:`save_with_fallback` writes the output at the end and, if that still fails (the disk
filled up meanwhile, the folder was removed), writes it into a fallback folder instead and
says where, so the result of a training run is never lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["fallback_dirs", "output_problem", "save_to_fallback", "save_with_fallback"]


def output_problem(path: str | os.PathLike, need_bytes: int = 0) -> str | None:
    """Why a file could not be written at ``path`` (one line), or None if it can be.

    The folder is tested by creating and removing a temporary file in it, so permissions,
    read-only mounts and the like are seen as the real write will see them. ``need_bytes``
    is the size the file will have, compared with the space free in the folder.
    """
    p = Path(path)
    if p.is_dir():
        return f"{p} is a folder; name a file inside it"
    folder = p.absolute().parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if p.exists() and not p.is_file():
        return f"{p} exists and is not a regular file"
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write into folder {folder} ({exc.strerror or exc})"
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            return (f"folder {folder} has {free:,} bytes free, the file needs about "
                    f"{need_bytes:,}")
    return None


def fallback_dirs() -> list[Path]:
    """Where an output goes when its own folder fails: the user's cache, then the temp folder."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return [cache / "bnnlab" / "unsaved", Path(tempfile.gettempdir())]


def save_with_fallback(path: str | os.PathLike, save: Callable[[str], object],
                       fallbacks: Iterable[str | os.PathLike] | None = None
                       ) -> tuple[str, OSError | None]:
    """``save(path)``; if it fails with an ``OSError``, :func:`save_to_fallback` instead.

    Returns (where it was saved, the error that prevented saving at ``path`` or None). When no
    fallback works either, the first error is raised.
    """
    path = os.fspath(path)
    try:
        save(path)
        return path, None
    except OSError as exc:
        first = exc
    try:
        return save_to_fallback(path, save, fallbacks), first
    except OSError:
        raise first from None


def save_to_fallback(path: str | os.PathLike, save: Callable[[str], object],
                     fallbacks: Iterable[str | os.PathLike] | None = None) -> str:
    """``save`` into the first fallback folder that takes it, under the name of ``path`` with
    a time stamp (never over an existing file); where it went. Raises the last ``OSError``."""
    p = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    last: OSError = FileNotFoundError("no fallback folder")
    for folder in fallback_dirs() if fallbacks is None else fallbacks:
        folder = Path(folder)
        candidate = folder / f"{p.stem}-{stamp}-{os.getpid()}{p.suffix}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save(os.fspath(candidate))
        except OSError as exc:
            last = exc
            continue
        return os.fspath(candidate)
    raise last
