"""The Shortcuts panel: gradient norms of a residual model with and without its shortcuts,
drawn for bireal-mnist, and a note (no empty charts) for a plain stack; the gradient-norm
curve the trainer records for it."""

from types import SimpleNamespace

import numpy as np
import pytest

from bnnlab.app.runs import Focus, RunState, RunView
from bnnlab.core.model import Sequential
from bnnlab.core.shortcuts import compare_shortcuts
from bnnlab.core.trainer import Trainer
from bnnlab.experiment import build_model, epoch_record
from bnnlab.gui.panels.shortcuts import ShortcutsPanel
from bnnlab.io.scenes import load_preset

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, 10, n)


@pytest.fixture(scope="module")
def bireal_run():
    model = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    x, y = _data()
    snaps = list(Trainer(model, x, y, epochs=1, batch_size=32, snapshot_every=1, seed=0))
    return snaps[-1], x, y


def _focus(snap, x, y, *, number=1, seed=0, batch_size=32, runs=()):
    view = RunView(number, f"#{number} test", "#1f77b4", True, True, RunState.FINISHED, snap,
                   batch_size=batch_size, seed=seed)
    prepared = SimpleNamespace(dataset=SimpleNamespace(x_train=x), x_train=x, y_train=y)
    return Focus(runs=(view, *runs), run=view, prepared=prepared,
                 model_config=snap.model_config if snap is not None else None)


def test_the_trainer_records_each_layers_gradient_norm(bireal_run):
    snap, _, _ = bireal_run
    h = snap.history
    assert h.grad_norm.shape == (len(h.step), len(snap.layers))
    np.testing.assert_allclose(h.grad_norm[-1], [t.grad_norm for t in snap.layers])
    assert np.all(h.grad_norm > 0)
    record = epoch_record(snap, 1.0, 96)
    assert [d["grad_norm"] for d in record["layers"]] == pytest.approx(
        [t.grad_norm for t in snap.layers])


def test_panel_draws_bireal_with_and_without_its_shortcuts(qtbot, bireal_run):
    snap, x, y = bireal_run
    panel = ShortcutsPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.show_focus(_focus(snap, x, y))
    qtbot.waitUntil(lambda: panel.is_idle() and panel.effect is not None, timeout=WAIT_MS)
    assert panel.pages.currentIndex() == 1
    model = Sequential.from_config(snap.model_config)
    model.load_state_dict(snap.model_state)
    want = compare_shortcuts(model, x, y, batches=4, batch_size=32, seed=0)
    values = panel.weight_chart.values()
    np.testing.assert_allclose(values[0], [g.weight_mean for g in want.with_shortcuts], rtol=1e-6)
    np.testing.assert_allclose(values[1], [g.weight_mean for g in want.without_shortcuts],
                               rtol=1e-6)
    inputs = panel.input_chart.values()  # the stem reads the data: not drawn
    np.testing.assert_allclose(inputs[0], [g.input_mean for g in want.with_shortcuts[1:]],
                               rtol=1e-6)
    assert panel.weight_chart._categories[1].startswith("conv1 ×")
    assert "add1" in panel.cut_text.text() and "stem_bn" in panel.cut_text.text()
    assert f"step {snap.step}" in panel.status.text()
    assert len(panel._curves) == len(snap.layers)  # one curve per layer over training

    panel.scale.setCurrentIndex(1)  # relative to the output layer: the last bars are 1
    values = panel.weight_chart.values()
    assert values[0][-1] == pytest.approx(1.0) and values[1][-1] == pytest.approx(1.0)
    assert values[0][0] == pytest.approx(want.with_shortcuts[0].weight_mean
                                         / want.with_shortcuts[-1].weight_mean)

    panel.weights.setCurrentIndex(1)  # the initial weights, rebuilt from the seed: the
    # choice measures again by itself (the window sends no new focus for a finished run)
    qtbot.waitUntil(lambda: panel.status.text().startswith("At the initial weights"),
                    timeout=WAIT_MS)
    initial = compare_shortcuts(Sequential.from_config(snap.model_config, seed=0), x, y,
                                batches=4, batch_size=32, seed=0)
    assert panel.effect.with_shortcuts[2].weight == initial.with_shortcuts[2].weight

    panel.batches.setValue(2)  # another number of batches: measured again
    qtbot.waitUntil(lambda: panel.effect.batches == 2, timeout=WAIT_MS)
    first = panel.effect
    panel.measure_button.click()  # Measure now, with nothing new: measured again all the same
    qtbot.waitUntil(lambda: panel.effect is not first, timeout=WAIT_MS)
    assert panel.effect.with_shortcuts[0].weight == first.with_shortcuts[0].weight
    panel.close()


def test_panel_explains_a_stack_instead_of_drawing_empty_charts(qtbot):
    model = build_model(load_preset("quickstart"), (28, 28, 1), 10)
    x, y = _data(64)
    snap = list(Trainer(model, x, y, epochs=1, batch_size=32, snapshot_every=1))[-1]
    panel = ShortcutsPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.show_focus(_focus(snap, x, y))
    assert panel.pages.currentIndex() == 0
    assert "no shortcuts" in panel.note.text() and "plain stack" in panel.note.text()
    assert panel.effect is None and panel.is_idle()
    panel.close()


def test_panel_measures_an_opened_model_on_the_test_set_it_comes_with(qtbot, bireal_run):
    from bnnlab.app.models import OpenedModel

    snap, x, y = bireal_run
    model = Sequential.from_config(snap.model_config)
    model.load_state_dict(snap.model_state)
    opened = OpenedModel.from_model(model, "bireal", dataset="mnist")
    view = RunView(1, "#1 opened", "#1f77b4", True, True, RunState.OPENED, None, opened=opened,
                   batch_size=16)
    empty = np.zeros((0, 28, 28, 1), np.float32)
    ds = SimpleNamespace(x_train=empty, x_test=x, y_test=y, name="mnist")
    prepared = SimpleNamespace(dataset=ds, x_train=empty, y_train=np.zeros(0, np.int64))
    panel = ShortcutsPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.show_focus(Focus(runs=(view,), run=view, prepared=prepared))
    qtbot.waitUntil(lambda: panel.effect is not None, timeout=WAIT_MS)
    assert "batches of 16 test images" in panel.status.text()
    assert "--split test" in panel.cut_text.text() and "--dataset mnist" in panel.cut_text.text()
    want = compare_shortcuts(model, x, y, batches=4, batch_size=16, seed=0)
    assert [g.weight for g in panel.effect.without_shortcuts] == [
        g.weight for g in want.without_shortcuts]
    assert panel.history_plot.isHidden()  # nothing recorded over training: no empty axes
    panel.close()
