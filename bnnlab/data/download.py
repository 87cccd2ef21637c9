"""Fetching one file from a list of mirrors, safely.

The file is streamed into a temporary file beside its destination, checked against its md5,
and only then renamed into place (:func:`bnnlab.io.atomic.write_atomic`), so the destination
name never holds a partial or wrong file; it gets the permissions any new file gets. A
failed or interrupted download removes its temporary file; one left by a process that was
killed outright is removed by the next download of the same file. A transfer that breaks
off (a time-out, a connection closed early, a server error 5xx or 429) is tried again on
the same mirror after a short wait, up to ``retries`` times; anything else moves on to the
next mirror at once.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from ..io.atomic import write_atomic
from ..io.outputs import output_problem
from .dataset import DatasetError

__all__ = ["CACHE_ENV", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "MIRROR_ENV", "ProgressFn", "fetch",
           "mirror_urls"]

#: Reports ``(bytes_done, bytes_total)``; ``bytes_total`` is -1 when the server did not say.
ProgressFn = Callable[[int, int], None]

#: Env var holding a URL prefix tried before the built-in mirrors, as ``<prefix>/<name>/<file>``.
MIRROR_ENV = "BNNLAB_MIRROR"
#: Seconds a connection may stay silent before the mirror counts as failed.
DEFAULT_TIMEOUT = 30.0
#: Further attempts on one mirror after a transfer broke off; the waits grow 1 s, 2 s, ...
DEFAULT_RETRIES = 2
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
    """One mirror did not deliver the right bytes; the next one may. ``transient`` failures
    (the transfer broke off) are worth another try on the same mirror."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def fetch(
    urls: Iterable[str],
    dest: str | os.PathLike,
    md5: str,
    progress: ProgressFn | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    retry_wait: float = 1.0,
) -> Path:
    """Download the first of ``urls`` that yields a file with checksum ``md5`` to ``dest``.

    ``progress`` restarts from 0 for each attempt. Raises :class:`DatasetError` listing
    every URL tried and why it failed; no file is left behind on failure or interruption.
    """
    dest = Path(dest)
    urls = list(urls)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        problem = output_problem(dest)
    except OSError as exc:
        problem = f"cannot write into {dest.parent} ({exc.strerror or exc})"
    if problem:
        raise DatasetError(
            f"cannot download {dest.name}: {problem}. Set {CACHE_ENV} to a writable folder, "
            f"or copy the file into a folder of your own and pass it with --data-dir."
        ) from None
    failures = []
    for url in urls:
        for attempt in range(retries + 1):
            try:
                _fetch_one(url, dest, md5.lower(), progress, timeout)
                return dest
            except _AttemptFailed as exc:
                again = exc.transient and attempt < retries
                if not again:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    failures.append(f"  {url}: {exc}{tries}")
                    break
            time.sleep(retry_wait * (attempt + 1))
    tried = "\n".join(failures) if failures else "  (no mirror is configured)"
    raise DatasetError(
        f"could not download {dest.name} into {dest.parent}. Mirrors tried:\n{tried}\n"
        f"Check the network connection, set {MIRROR_ENV} to a working mirror, or copy the file "
        f"into {dest.parent} yourself."
    )


def _fetch_one(url: str, dest: Path, md5: str, progress: ProgressFn | None, timeout: float) -> None:
    def write(out) -> None:
        digest = _stream(url, _Sink(out, dest), progress, timeout)
        if digest != md5:  # raised inside: write_atomic removes the temporary file
            raise _AttemptFailed(f"checksum mismatch (md5 {digest}, expected {md5})")

    try:
        write_atomic(dest, write)
    except OSError as exc:  # creating, syncing or renaming the temporary file
        raise DatasetError(f"cannot write {dest}: {exc.strerror or exc}; free some space or "
                           f"set {CACHE_ENV} to another folder") from None


class _Sink:
    """The temporary file; a failed write (a full disk) ends the download, not just one mirror."""

    def __init__(self, out, dest: Path):
        self._out, self._path = out, dest

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
        busy = exc.code >= 500 or exc.code == 429
        raise _AttemptFailed(f"HTTP {exc.code} {exc.reason}", transient=busy) from None
    except urllib.error.URLError as exc:
        timed_out = isinstance(exc.reason, TimeoutError)
        raise _AttemptFailed(f"cannot connect ({exc.reason})", transient=timed_out) from None
    except http.client.IncompleteRead as exc:
        got = done + len(exc.partial)
        raise _AttemptFailed(f"connection closed early after {got} bytes", transient=True) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise _AttemptFailed(f"transfer failed after {done} bytes ({reason})",
                             transient=True) from None
    if total >= 0 and done != total:
        raise _AttemptFailed(f"received {done} bytes but the server announced {total}",
                             transient=True)
    return digest.hexdigest()
