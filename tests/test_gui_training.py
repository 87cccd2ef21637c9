"""Live training in the window: curves, histograms, single steps, overlaid runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from bnnlab.gui.controller import Controller
from bnnlab.gui.main_window import MainWindow

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


@pytest.fixture
def window(qtbot):
    w = MainWindow(Controller())
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _points(item) -> int:
    x, _ = item.getData()
    return 0 if x is None else len(x)


def _show(window, panel, qtbot):
    window.tabs.setCurrentWidget(panel)
    window._refresh()
    panel.flush()


def test_short_run_updates_curves_and_histograms(window, qtbot):
    c = window.controller
    c.update_scene(limit_train=512, limit_test=200, epochs=1)
    c.start()
    qtbot.waitUntil(lambda: c.runs and c.runs[0].status == "finished", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    window._refresh()
    curves = window.dashboard.curves[c.runs[0].number]
    assert _points(curves["loss"]) >= 2
    assert _points(curves["accuracy"]) == _points(curves["loss"])
    assert _points(curves["val_accuracy"]) == 1  # one epoch end
    assert window.dashboard.cards["val_accuracy"].value.text().endswith("%")

    _show(window, window.weights, qtbot)
    snap = c.latest_snapshot
    assert len(window.weights.histograms) == len(snap.layers)
    _, counts = window.weights.histograms[0].curve.getData()
    assert counts.sum() == snap.layers[0].weight_counts.sum() > 0
    assert _points(window.weights.flip_curves[0]) == len(snap.history.step)

    _show(window, window.gating, qtbot)
    gated_layers = [t for t in snap.layers if t.preact_counts is not None]
    assert len(window.gating.gates) == len(gated_layers)
    gate = window.gating.gates[0]
    _, passing = gate.passing.getData()
    _, gated = gate.gated.getData()
    assert np.array_equal(passing + gated, gated_layers[0].preact_counts)
    assert gated.sum() > 0  # some inputs fall outside |x| <= 1
    assert window.gating.gates[0].region.isVisible()


def test_single_step_advances_exactly_one_batch(window, qtbot):
    c = window.controller
    c.update_scene(limit_train=512, limit_test=100, epochs=1, snapshot_every=100)
    window.act_step.trigger()  # no run yet: starts one, paused, and trains one batch
    qtbot.waitUntil(lambda: c.latest_snapshot is not None, timeout=WAIT_MS)
    assert c.latest_snapshot.step == 1 and c.state == "paused"
    window.act_step.trigger()
    qtbot.waitUntil(lambda: c.latest_snapshot.step == 2, timeout=WAIT_MS)
    qtbot.wait(300)  # a paused trainer must not move on its own
    assert c.latest_snapshot.step == 2
    assert c.paused
    c.stop(wait=True)


def test_runs_are_overlaid_with_distinct_labels(window, qtbot):
    c = window.controller
    c.open_preset("toy-xor")
    c.update_scene(epochs=2)
    c.start()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    window.form.activations.mode.setCurrentIndex(
        window.form.activations.mode.findData("stochastic"))
    c.start()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    c.train_twin()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    window.tabs.setCurrentWidget(window.dashboard)
    window._refresh()
    titles = [r.title for r in c.runs]
    assert titles[:2] == ["#1 toy-xor", "#2 act=stochastic_sign"]
    assert titles[2].startswith("#3 full precision")
    assert len({r.color for r in c.runs}) == 3
    legend = [label.text for _, label in window.dashboard.loss_legend.items]
    assert legend == titles
    for run in c.runs:
        assert _points(window.dashboard.curves[run.number]["loss"]) > 0
    assert window.run_list.list.count() == 3

    # hide one, then remove one
    c.set_run_visible(c.runs[0], False)
    window._refresh()
    assert not window.dashboard.curves[1]["loss"].isVisible()
    assert len(window.dashboard.loss_legend.items) == 2
    c.remove_run(c.runs[1])
    window._refresh()
    assert sorted(window.dashboard.curves) == [1, 3]
    assert window.run_list.list.count() == 2


def test_reset_forgets_runs(window, qtbot):
    c = window.controller
    c.open_preset("toy-xor")
    c.update_scene(epochs=1)
    c.start()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    window.act_reset.trigger()
    window._refresh()
    assert c.runs == [] and window.dashboard.curves == {}
