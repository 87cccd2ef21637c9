"""Atomic file and folder writes: a temporary sibling, fsync, then rename.

A reader never sees a half-written file, and a failure (a full disk, an interrupt) leaves
the previous file untouched and no temporary file behind. A process killed outright
cannot clean up after itself, so temporary names carry the writer's process id
(``.NAME.tmp-PID-RANDOM``) and every later write of ``NAME`` removes those whose process
is gone.

New files get the permissions an ordinary ``open()`` would give them (``0o666`` less the
umask); a file that is replaced keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_folder", "clean_stale", "default_mode", "fsync_folder", "write_atomic"]

_TMP = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def default_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: what ``open()`` or ``mkdir()`` would create."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return base & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no other way to read it; put it back at once
    os.umask(mask)
    return base & ~mask


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(target: str | os.PathLike) -> list[str]:
    """Remove temporary siblings of ``target`` left by writers that were killed; their names."""
    target = Path(os.path.abspath(target))
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if not m or m["name"] != target.name or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], suffix: str = "") -> None:
    """Call ``write(f)`` on a binary temporary file, then move it onto ``path``.

    ``suffix`` is accepted for callers that name the kind of file; temporary names do not
    need it.
    """
    del suffix
    target = Path(os.path.abspath(path))
    clean_stale(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = default_mode()
    tmp = _temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not on this system or file system
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Fill a temporary folder, then swap it in for ``path`` in one step.

    Entries of an existing ``path`` not named in ``replaces`` (the files being written and
    their build products) are carried over as hard links (copies where links fail); a
    sub-folder stops the export with :class:`IsADirectoryError` rather than being moved.
    Where the system cannot swap two folders atomically, the files are renamed into the
    existing folder one by one (each still atomic).
    """
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", os.fspath(target))
    tmp = _temp_name(target)
    os.mkdir(tmp, 0o777)  # the umask applies, as for any new folder
    try:
        yield tmp
        names = set(os.listdir(tmp))
        for name in names:
            fd = os.open(tmp / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if not target.exists():
            os.rename(tmp, target)
            fsync_folder(target.parent)
            return
        keep = [e for e in os.scandir(target) if e.name not in names and e.name not in replaces]
        for e in keep:
            if e.is_dir(follow_symlinks=False):
                raise IsADirectoryError(21, f"holds the folder {e.name!r}; export into a folder "
                                        "of plain files", os.fspath(target))
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        for name in names:  # a replaced file keeps its mode
            with contextlib.suppress(OSError):
                os.chmod(tmp / name, stat.S_IMODE(os.stat(target / name).st_mode))
        for e in keep:
            try:
                os.link(e.path, tmp / e.name, follow_symlinks=False)
            except OSError:
                shutil.copy2(e.path, tmp / e.name, follow_symlinks=False)
        fsync_folder(tmp)
        if _exchange(tmp, target):
            fsync_folder(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            return
        for name in names:  # fallback: file by file
            os.replace(tmp / name, target / name)
        for name in replaces:
            if name not in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target / name)
        fsync_folder(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
