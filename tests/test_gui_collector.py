"""Cyclic garbage is collected on the window's thread only, while the window is open."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QObject

from bnnlab.app.session import Session
from bnnlab.gui.main_window import MainWindow

pytestmark = pytest.mark.gui

WAIT_MS = 120_000


@pytest.fixture
def window(qtbot):
    w = MainWindow(Session(warm_up=False))
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"
    w.show()
    yield w
    w.close()


class _Cycle:
    """A Qt object held by a Python object that refers to itself: only the cyclic collector
    frees it."""

    def __init__(self):
        self.qobject = QObject()
        self.me = self


def test_a_qt_object_dropped_in_a_cycle_on_a_job_thread_is_freed_on_the_gui_thread(window, qtbot):
    freed_on = []

    def job():
        cycle = _Cycle()
        weakref.finalize(cycle, lambda: freed_on.append(threading.get_ident()))
        del cycle
        # Allocating many containers is what makes Python collect on this thread.
        junk = [[] for _ in range(20 * gc.get_threshold()[0])]
        del junk

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert freed_on == [] or freed_on == [threading.get_ident()]
    qtbot.waitUntil(lambda: bool(freed_on), timeout=10_000)  # the window's timer, not the test
    assert freed_on == [threading.get_ident()]


def test_automatic_collection_is_off_while_the_window_is_open_and_back_after(qtbot):
    assert gc.isenabled()
    w = MainWindow(Session(warm_up=False))
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"
    w.show()
    assert not gc.isenabled()
    other = MainWindow(Session(warm_up=False))  # windows nest
    qtbot.addWidget(other)
    other.ask_unsaved = lambda what: "discard"
    other.close()
    assert not gc.isenabled()
    w.close()
    assert gc.isenabled()


def test_collection_stays_off_after_closing_when_it_was_off_before(qtbot):
    gc.disable()
    try:
        w = MainWindow(Session(warm_up=False))
        qtbot.addWidget(w)
        w.ask_unsaved = lambda what: "discard"
        w.close()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_garbage_is_collected_while_training_runs(window, qtbot):
    s = window.session
    s.update_scene(epochs=100)  # runs until stopped
    s.start()
    qtbot.waitUntil(lambda: (window._refresh(), s.latest_snapshot is not None)[1], timeout=WAIT_MS)
    young = window.collector.collections[0]
    seen = []

    def collected_while_training():
        window._refresh()
        assert s.busy
        seen.append(gc.get_count()[0])
        return window.collector.collections[0] >= young + 3

    qtbot.waitUntil(collected_while_training, timeout=WAIT_MS)
    s.stop(wait=True)
    # The young generation never piles up: each check empties it.
    assert max(seen) < 50 * gc.get_threshold()[0]
