"""Running inference off the GUI thread, keeping only the newest request of each kind."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal
from shiboken6 import isValid

from ...core.kernels.threads import keep_serial

__all__ = ["LatestOnly"]


class LatestOnly(QObject):
    """One worker thread; ``submit(key, fn, *args)`` replaces any queued job with that key.

    A view that asks faster than jobs finish (a pen moving, snapshots arriving) never
    builds a backlog: it gets the result for the newest request, and the GUI thread never
    waits. Results come back on the GUI thread as ``finished(key, result)``; exceptions
    as ``failed(key, message)``. Jobs must not touch Qt objects.
    """

    finished = Signal(object, object)
    failed = Signal(object, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._jobs: dict[Any, tuple[Callable, tuple]] = {}
        self._wake = threading.Condition()
        self._running = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="bnnlab-inference", daemon=True)
        self._thread.start()

    def submit(self, key: Any, fn: Callable, *args) -> None:
        with self._wake:
            self._jobs[key] = (fn, args)
            self._wake.notify()

    def idle(self) -> bool:
        """True when nothing is queued or running."""
        with self._wake:
            return not self._jobs and not self._running

    def close(self) -> None:
        """Drop queued jobs and let the thread end (after a job that is running)."""
        with self._wake:
            self._closed = True
            self._jobs.clear()
            self._wake.notify()

    def _loop(self) -> None:
        keep_serial()  # small jobs; a pool of OpenMP workers here would slow training
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    # Wake now and then: once the Qt side is deleted there is no one to
                    # call close(), and the thread should not outlive its view for long.
                    if not self._wake.wait(timeout=1.0) and not isValid(self):
                        return
                if self._closed:
                    return
                key = next(iter(self._jobs))
                fn, args = self._jobs.pop(key)
                self._running += 1
            try:
                result, error = fn(*args), None
            except Exception as exc:  # noqa: BLE001 - reported to the view, which shows it
                result, error = None, f"{type(exc).__name__}: {exc}"
            finally:
                with self._wake:
                    self._running -= 1
            try:
                if error is None:
                    self.finished.emit(key, result)
                else:
                    self.failed.emit(key, error)
            except RuntimeError:
                return  # the view was deleted while the job ran
