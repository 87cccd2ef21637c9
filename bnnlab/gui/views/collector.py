"""Cyclic garbage collected on the window's thread only, while a window is open.

Python's automatic collector runs on whichever thread happens to allocate past its
threshold; in this app that is often a job's thread (training, evaluating, compiling).
A Qt object freed there, from a reference cycle, takes Qt's object lock in its
destructor, and if another thread holds that lock while it waits for the interpreter
lock, both wait for ever. So while a window is open, automatic collection is off and
:class:`MainThreadCollector` collects on a timer of the GUI thread, by the same counts
and thresholds Python would use itself.
"""

from __future__ import annotations

import gc
import time

from PySide6.QtCore import QObject, QTimer

__all__ = ["MainThreadCollector"]

# How often the counts are checked. Young collections are cheap (about a millisecond);
# checking often keeps the garbage a training thread leaves between two checks small.
CHECK_MS = 100
# A full collection walks every tracked object (tens of milliseconds in a large session):
# it waits at least this long after the previous one, and at least this many times as
# long as the previous one took, so that full collections cost at most ~1/FULL_BUDGET of
# the GUI thread's time.
FULL_MIN_SECONDS = 5.0
FULL_BUDGET = 50


class MainThreadCollector(QObject):
    """While started, Python's automatic collection is off and a GUI-thread timer collects.

    Starts and stops nest (several windows): the first :meth:`start` turns automatic
    collection off and remembers whether it was on; the last :meth:`stop` collects once and
    puts it back as it was.
    """

    _users = 0
    _was_enabled = True

    def __init__(self, parent=None):
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(CHECK_MS)
        self._timer.timeout.connect(self.check)
        self._started = False
        self._next_full = 0.0
        self.collections = [0, 0, 0]  # collections made per generation (for tests)

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> None:
        if self._started:
            return
        cls = MainThreadCollector
        if cls._users == 0:
            cls._was_enabled = gc.isenabled()
            gc.disable()
        cls._users += 1
        self._started = True
        self._next_full = time.monotonic() + FULL_MIN_SECONDS
        self._timer.start()

    def stop(self) -> None:
        if not self._started:
            return
        self._timer.stop()
        self._started = False
        cls = MainThreadCollector
        cls._users -= 1
        if cls._users == 0:
            gc.collect()  # here, on this thread, before any other thread could
            if cls._was_enabled:
                gc.enable()

    def check(self) -> None:
        """Collect the generations whose counts passed their thresholds (as Python would)."""
        counts, limits = gc.get_count(), gc.get_threshold()
        if limits[0] == 0 or counts[0] < limits[0]:
            return
        generation = 0
        if counts[1] >= limits[1]:
            generation = 1
            if counts[2] >= limits[2] and time.monotonic() >= self._next_full:
                generation = 2
        began = time.monotonic()
        gc.collect(generation)
        self.collections[generation] += 1
        if generation == 2:
            took = time.monotonic() - began
            self._next_full = time.monotonic() + max(FULL_MIN_SECONDS, FULL_BUDGET * took)
