"""Keeping redraws cheap: a rate limiter, a spreader of plot updates over event-loop
turns, and an axis range that does not move on every update."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QObject, QTimer

__all__ = ["Staggered", "SteadyRange", "Throttle"]


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


class Staggered(QObject):
    """Runs a batch of plot updates one per event-loop turn instead of all at once.

    The graphics view repaints only what changed, so updating one plot per turn splits a
    ~30 ms repaint of a six-plot grid into six short ones with the event loop free in
    between. A new batch replaces whatever is still pending: the newest data wins.
    """

    def __init__(self, interval_ms: int = 8, parent=None):
        super().__init__(parent)
        self._jobs: list = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._run_one)

    def submit(self, jobs) -> None:
        self._jobs = list(jobs)
        if self._jobs and not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run everything pending now (tests, exports)."""
        self._timer.stop()
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job()

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _run_one(self) -> None:
        if self._jobs:
            self._jobs.pop(0)()
        if self._jobs:
            self._timer.start()


class SteadyRange:
    """An axis upper limit that grows at once but shrinks only when the data fall below
    half of it.

    Re-ranging an axis regenerates its ticks and repaints the whole plot; with autorange
    a live histogram re-ranges on every snapshot, which made the six-plot panels stall the
    event loop for ~100 ms per update.
    """

    def __init__(self, headroom: float = 1.1):
        self.headroom = headroom
        self.top: float | None = None

    def fit(self, peak: float) -> float | None:
        """The new upper limit for data reaching ``peak``, or None to keep the current one."""
        if not np.isfinite(peak) or peak <= 0:
            return None
        if self.top is None or peak > self.top or peak < 0.5 * self.top:
            self.top = float(peak) * self.headroom
            return self.top
        return None
