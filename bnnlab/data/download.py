"""Fetching one file from a list of mirrors, safely.

The file is streamed into a temporary file beside its destination, checked against its md5,
and only then renamed into place, so the destination name never holds a partial or wrong file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from .dataset import DatasetError

__all__ = ["CACHE_ENV", "DEFAULT_TIMEOUT", "MIRROR_ENV", "ProgressFn", "fetch", "mirror_urls"]

#: Reports ``(bytes_done, bytes_total)``; ``bytes_total`` is -1 when the server did not say.
ProgressFn = Callable[[int, int], None]

#: Env var holding a URL prefix tried before the built-in mirrors, as ``<prefix>/<name>/<file>``.
MIRROR_ENV = "BNNLAB_MIRROR"
#: Seconds a connection may stay silent before the mirror counts as failed.
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 16
_USER_AGENT = "bnnlab-dataset-fetch/1"
#: Env var naming the folder downloads go into (the dataset cache).
CACHE_ENV = "BNNLAB_CACHE_DIR"


def mirror_urls(dataset: str, filename: str, bases: Iterable[str]) -> list[str]:
    """URLs to try for ``filename`` of ``dataset``: the ``BNNLAB_MIRROR`` one first, if set."""
    urls = []
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        urls.append(f"{override.rstrip('/')}/{dataset}/{filename}")
    urls.extend(base.rstrip("/") + "/" + filename for base in bases)
    return urls


class _AttemptFailed(Exception):
    """One mirror did not deliver the right bytes; the next one may."""


def fetch(
    urls: Iterable[str],
    dest: str | os.PathLike,
    md5: str,
    progress: ProgressFn | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download the first of ``urls`` that yields a file with checksum ``md5`` to ``dest``.

    ``progress`` restarts from 0 for each mirror tried. Raises :class:`DatasetError` listing
    every URL tried and why it failed; no file is left behind on failure or interruption.
    """
    dest = Path(dest)
    urls = list(urls)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        probe_fd, probe = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(probe_fd)
        os.unlink(probe)
    except OSError as exc:
        raise DatasetError(
            f"cannot download {dest.name}: cannot write into {dest.parent} "
            f"({exc.strerror or exc}). Set {CACHE_ENV} to a writable folder, or copy the file "
            f"into a folder of your own and pass it with --data-dir."
        ) from None
    failures = []
    for url in urls:
        try:
            _fetch_one(url, dest, md5.lower(), progress, timeout)
            return dest
        except _AttemptFailed as exc:
            failures.append(f"  {url}: {exc}")
    tried = "\n".join(failures) if failures else "  (no mirror is configured)"
    raise DatasetError(
        f"could not download {dest.name} into {dest.parent}. Mirrors tried:\n{tried}\n"
        f"Check the network connection, set {MIRROR_ENV} to a working mirror, or copy the file "
        f"into {dest.parent} yourself."
    )


def _fetch_one(url: str, dest: Path, md5: str, progress: ProgressFn | None, timeout: float) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, _Sink(out, tmp), progress, timeout)
        if digest != md5:
            raise _AttemptFailed(f"checksum mismatch (md5 {digest}, expected {md5})")
        os.replace(tmp, dest)
    except BaseException:
        # BaseException so that Ctrl-C in the middle of a download leaves no stray .part file.
        tmp.unlink(missing_ok=True)
        raise


class _Sink:
    """The temporary file; a failed write (a full disk) ends the download, not just one mirror."""

    def __init__(self, out, path: Path):
        self._out, self._path = out, path

    def write(self, chunk: bytes) -> None:
        try:
            self._out.write(chunk)
        except OSError as exc:
            raise DatasetError(
                f"cannot write {self._path.parent}: {exc.strerror or exc}; free some space or "
                f"set {CACHE_ENV} to another folder"
            ) from None


def _stream(url: str, out, progress: ProgressFn | None, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else -1
            if progress:
                progress(0, total)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _AttemptFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _AttemptFailed(f"cannot connect ({exc.reason})") from None
    except http.client.IncompleteRead as exc:
        got = done + len(exc.partial)
        raise _AttemptFailed(f"connection closed early after {got} bytes") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise _AttemptFailed(f"transfer failed after {done} bytes ({reason})") from None
    if total >= 0 and done != total:
        raise _AttemptFailed(f"received {done} bytes but the server announced {total}")
    return digest.hexdigest()
