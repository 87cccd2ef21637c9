"""Compare over seeds in the window: the action, the band plots, the summary, the results
table, and cancelling."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from bnnlab.app.session import Session
from bnnlab.gui.main_window import MainWindow
from bnnlab.io.scenes import load_preset

pytestmark = pytest.mark.gui

WAIT_MS = 240_000


@pytest.fixture
def window(qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    scene = load_preset("toy-xor")
    scene.limit_train, scene.limit_test = 128, 64
    w = MainWindow(Session(warm_up=False, scene=scene))
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"
    w.show()
    yield w
    w.close()


def _done(window, qtbot):
    qtbot.waitUntil(lambda: (window._refresh(), not window.session.comparing)[1],
                    timeout=WAIT_MS)
    window._heavy.reset()
    window._refresh()
    window._push_current_tab()


def test_compare_over_seeds_end_to_end(window, qtbot):
    window.actions_["compare_seeds"].trigger()
    assert window.current_page().title == "Compare seeds"
    panel = window.current_panel()
    assert panel.variant.count() > 0  # the other presets on xor data
    assert panel.seeds.value() == 5
    panel.seeds.setValue(2)
    panel.epochs.setValue(1)
    panel.start.click()
    c = window.session.comparison
    assert c is not None and c.seeds == 2 and c.epochs == 1
    _done(window, qtbot)
    assert c.state == "finished", c.error
    assert not panel.cancel.isEnabled() and panel.start.isEnabled()
    # The band plot draws one mean curve per scene, at the means of the seeds' figures.
    drawn = panel.band_data()
    assert len(drawn) == 2
    for label in c.labels:
        x, y = drawn[f"{label} (n=2)"]
        vals = [r.val_accuracy for r in c.runs[label]]
        np.testing.assert_allclose(y, [100 * np.mean(vals)])
    assert panel.summary.rowCount() == 2
    assert panel.summary.item(0, 2).text() == "2"
    assert "95% CI" in panel.difference.text() and "Welch" in panel.difference.text()
    # Every training is a row of the results table.
    window.tabs.setCurrentWidget(window.page("Results"))
    window._push_current_tab()
    results = window.panel("Results")
    assert results.column("run") == ["C1"] * 4
    assert sorted(results.column("seed")) == ["0", "0", "1", "1"]
    assert all(v.endswith("%") for v in results.column("val_accuracy"))


def test_compare_over_seeds_cancels(window, qtbot):
    window.show_seed_comparison()
    panel = window.current_panel()
    panel.seeds.setValue(100)
    panel.epochs.setValue(50)
    panel.start.click()
    window._refresh()
    window._push_current_tab()
    assert panel.cancel.isEnabled() and not panel.start.isEnabled()
    panel.cancel.click()
    _done(window, qtbot)
    c = window.session.comparison
    assert c.state == "cancelled"
    assert sum(len(v) for v in c.runs.values()) < 200
    assert "cancelled" in panel.status.text()
    assert panel.start.isEnabled()
