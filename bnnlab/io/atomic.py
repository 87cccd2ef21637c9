"""Atomic file writes: a temporary file in the target folder, fsync, then rename.

A reader never sees a half-written file, and a failure (a full disk, an interrupt)
leaves the previous file untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], suffix: str = "") -> None:
    """Call ``write(f)`` on a binary temporary file, then move it onto ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
