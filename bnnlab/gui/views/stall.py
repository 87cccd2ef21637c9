"""Measuring how responsive the event loop stays (``bnnlab gui --measure-stall``)."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal

__all__ = ["StallMonitor"]


class StallMonitor(QObject):
    """Measures how long the event loop goes without running a 10 ms timer.

    A responsive window services the timer every ~10 ms; any longer gap is time the GUI
    thread could not react (painting, a long slot, or waiting for the GIL). ``longest_gap_ms``
    is the worst gap since the last :meth:`reset`.
    """

    measured = Signal(float)  # a new longest gap, in ms

    def __init__(self, interval_ms: int = 10, parent=None):
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self.reset()

    def start(self) -> None:
        self.reset()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def reset(self) -> None:
        self._last = time.perf_counter()
        self.longest_gap_ms = 0.0
        self.ticks = 0
        self._gaps: list[float] = []

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self._gaps, q)) if self._gaps else 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000.0
        self._last = now
        self.ticks += 1
        self._gaps.append(gap)
        if gap > self.longest_gap_ms:
            self.longest_gap_ms = gap
            self.measured.emit(gap)
