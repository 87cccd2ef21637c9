"""Rate limiting for views fed faster than they are worth redrawing."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

__all__ = ["Throttle"]


class Throttle(QObject):
    """Runs ``callback`` at most once per ``interval`` seconds, and always after the last request.

    The first request after a quiet spell runs at once (so a single update, as in tests, is
    never delayed); requests inside the interval collapse into one trailing call, so the view
    ends on the newest data without doing work for every intermediate one.
    """

    def __init__(self, callback: Callable[[], None], interval: float, parent: QObject | None = None):
        super().__init__(parent)
        self._callback = callback
        self._interval = float(interval)
        self._last = float("-inf")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._fire)

    def request(self) -> None:
        if self._timer.isActive():
            return
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0:
            self._fire()
        else:
            self._timer.start(int(wait * 1000) + 1)

    def flush(self) -> None:
        """Run a pending call now."""
        if self._timer.isActive():
            self._timer.stop()
            self._fire()

    def reset(self) -> None:
        """Forget the last call, so the next request runs at once; drop a pending one."""
        self._timer.stop()
        self._last = float("-inf")

    def _fire(self) -> None:
        self._last = time.monotonic()
        self._callback()
