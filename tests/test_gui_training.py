"""Live training in the window: curves, histograms, single steps, overlaid runs, results."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from bnnlab.app.runs import RunState
from bnnlab.app.session import Session
from bnnlab.gui.main_window import MainWindow

pytestmark = pytest.mark.gui

WAIT_MS = 120_000


@pytest.fixture
def window(qtbot):
    w = MainWindow(Session())
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"  # closing never waits on a dialog
    w.show()
    yield w
    w.close()


def _points(item) -> int:
    x, _ = item.getData()
    return 0 if x is None else len(x)


def _idle(window, qtbot):
    qtbot.waitUntil(lambda: (window._refresh(), not window.session.busy)[1], timeout=WAIT_MS)
    window._refresh()


def _show(window, title):
    page = window.page(title)
    window.tabs.setCurrentWidget(page)
    window._push_current_tab()
    assert not page.error.isVisible(), page.error.message.text()
    if hasattr(page.panel, "flush"):
        page.panel.flush()
    return page.panel


def test_short_run_updates_curves_and_histograms(window, qtbot):
    s = window.session
    dashboard = window.panel("Training")
    assert dashboard.empty_note.isVisible()  # "Press Start"
    s.update_scene(limit_train=512, limit_test=200, epochs=1)
    s.start()
    window._refresh()
    assert not dashboard.empty_note.isVisible()  # gone as soon as a run exists
    _idle(window, qtbot)
    assert s.runs[0].state is RunState.FINISHED
    curves = dashboard.curves[s.runs[0].number]
    assert _points(curves["loss"]) >= 2
    assert _points(curves["accuracy"]) == _points(curves["loss"])
    assert _points(curves["val_accuracy"]) == 1  # one epoch end
    assert dashboard.cards["val_accuracy"].value.text().endswith("%")

    weights = _show(window, "Latent weights")
    snap = s.latest_snapshot
    assert len(weights.histograms) == len(snap.layers)
    _, counts = weights.histograms[0].curve.getData()
    assert counts.sum() == snap.layers[0].weight_counts.sum() > 0
    assert _points(weights.flip_curves[0]) == len(snap.history.step)

    gating = _show(window, "Gradient gating")
    gated_layers = [t for t in snap.layers if t.preact_counts is not None]
    assert len(gating.gates) == len(gated_layers)
    gate = gating.gates[0]
    _, passing = gate.passing.getData()
    _, gated = gate.gated.getData()
    assert np.array_equal(passing + gated, gated_layers[0].preact_counts)
    assert gated.sum() > 0  # some inputs fall outside |x| <= 1

    results = _show(window, "Results")
    assert results.table.rowCount() == 1
    assert results.column("state") == ["finished"]


def test_single_step_advances_exactly_one_batch(window, qtbot):
    s = window.session
    s.update_scene(limit_train=512, limit_test=100, epochs=1, snapshot_every=100)
    window.actions_["step"].trigger()  # no run yet: starts one, paused, and trains one batch
    qtbot.waitUntil(lambda: (window._refresh(), s.latest_snapshot is not None)[1], timeout=WAIT_MS)
    assert s.latest_snapshot.step == 1 and s.state is RunState.PAUSED
    assert window.panel("Training").cards["ips"].value.text() == "–"  # no rate while stepping
    window.actions_["step"].trigger()
    qtbot.waitUntil(lambda: (window._refresh(), s.latest_snapshot.step == 2)[1], timeout=WAIT_MS)
    qtbot.wait(300)
    window._refresh()
    assert s.latest_snapshot.step == 2  # a paused trainer does not move on its own
    assert s.paused
    s.stop(wait=True)


def test_runs_are_overlaid_with_distinct_labels(window, qtbot):
    s = window.session
    s.open_preset("toy-xor")
    s.update_scene(epochs=2)
    s.start()
    _idle(window, qtbot)
    window.form.activations.mode.setCurrentIndex(
        window.form.activations.mode.findData("stochastic"))
    s.start()
    _idle(window, qtbot)
    s.train_twin()
    _idle(window, qtbot)
    dashboard = _show(window, "Training")
    titles = [r.title for r in s.runs]
    assert titles[:2] == ["#1 toy-xor", "#2 act=stochastic_sign"]
    assert titles[2].startswith("#3 full precision")
    assert s.runs[2].twin_of == 2  # the twin of the run selected when it was asked for
    assert len({r.color for r in s.runs}) == 3
    legend = [label.text for _, label in dashboard.loss_legend.items]
    assert legend == titles
    for run in s.runs:
        assert _points(dashboard.curves[run.number]["loss"]) > 0
    assert window.run_list.list.count() == 3

    s.set_run_visible(s.runs[0], False)
    window._refresh()
    assert not dashboard.curves[1]["loss"].isVisible()
    assert len(dashboard.loss_legend.items) == 2
    s.remove_run(s.runs[1])
    window._refresh()
    assert sorted(dashboard.curves) == [1, 3]
    assert window.run_list.list.count() == 2
    assert s.runs[1].twin_of is None  # its run is gone


def _short_run(window, qtbot):
    """Trains a one-epoch run on a few images and returns the session."""
    s = window.session
    s.update_scene(limit_train=512, limit_test=64, epochs=1)
    s.start()
    _idle(window, qtbot)
    return s


def _tryit_after_a_short_run(window, qtbot):
    """Trains a one-epoch run on a few images and returns Try it once it has answered."""
    _short_run(window, qtbot)
    tryit = _show(window, "Try it")
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and tryit.probabilities() is not None)[1], timeout=WAIT_MS)
    return tryit


def test_tryit_uses_the_selected_runs_own_twin(window, qtbot):
    s = window.session
    tryit = _tryit_after_a_short_run(window, qtbot)
    assert tryit.twin_probabilities() is None
    assert "Binary network (#1)" in tryit.prediction.text()
    s.train_twin()
    _idle(window, qtbot)
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and tryit.twin_probabilities() is not None)[1], timeout=WAIT_MS)
    assert "Full-precision twin of #1 (#2)" in tryit.prediction.text()
    # A 2-D scene's run: its own network only, no twin from another scene.
    s.open_preset("toy-xor")
    s.update_scene(epochs=1)
    s.start()
    _idle(window, qtbot)
    window._push_current_tab()
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and tryit.heatmap() is not None)[1], timeout=WAIT_MS)
    assert tryit.twin_heatmap() is None and not tryit.twin_boundary.isVisible()
    window.confirm = lambda *a: True
    window.reset()
    window._push_current_tab()
    assert tryit.probabilities() is None and tryit.twin_probabilities() is None
    assert "Train a run" in tryit.prediction.text()


def test_tryit_clearing_leaves_it_idle(window, qtbot):
    s = window.session
    tryit = _tryit_after_a_short_run(window, qtbot)
    tryit.clear("nothing to try")
    assert tryit.is_idle() and tryit.probabilities() is None  # nothing is on its way
    tryit.show_focus(s.focus())  # the run again: asked, answered, idle
    qtbot.waitUntil(lambda: tryit.is_idle() and tryit.probabilities() is not None,
                    timeout=WAIT_MS)


def test_an_opened_model_file_shows_in_every_panel(window, qtbot, tmp_path):
    s = _short_run(window, qtbot)
    path = tmp_path / "exported.bnn"
    s.export_run(s.runs[0], path)
    window.open_path(str(path))
    qtbot.waitUntil(lambda: (window._refresh(), len(s.runs) == 2
                             and s.runs[1].prepared is not None)[1], timeout=WAIT_MS)
    opened = s.runs[1]
    assert s.selected is opened and opened.opened.computes_on == "runtime"
    assert window.run_list.list.item(1).text().startswith("#2 opened: exported.bnn")
    for page in window.pages:
        _show(window, page.title)  # asserts no panel error
    tryit = _show(window, "Try it")
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and tryit.probabilities() is not None)[1], timeout=WAIT_MS)
    assert "exported.bnn, packed runtime" in tryit.prediction.text()
    x = s.runs[1].prepared.x_test[:1]
    assert np.allclose(tryit.probabilities(), opened.opened.predict_proba(x)[0], atol=1e-6)
    evaluate = _show(window, "Evaluate")
    assert evaluate.dataset.currentData() == "digits"
    evaluate.run_button.click()
    qtbot.waitUntil(lambda: (window._refresh(), opened.evaluation is not None
                             and not s.evaluating)[1], timeout=WAIT_MS)
    window._push_current_tab()
    assert evaluate.matrix.rowCount() == 10 and "accuracy on" in evaluate.result.text()
    assert "runtime" in evaluate.result.text()


def test_an_opened_model_says_why_its_training_plots_are_empty(window, qtbot, tmp_path):
    pytest.importorskip("h5py")
    s = _short_run(window, qtbot)
    path = tmp_path / "mine.h5"
    s.export_run_h5(s.runs[0], path)
    dashboard = _show(window, "Training")
    assert not dashboard.empty_note.isVisible()  # a trained run: curves, no note
    window.open_path(str(path))
    qtbot.waitUntil(lambda: (window._refresh(), len(s.runs) == 2)[1], timeout=WAIT_MS)
    opened = s.runs[1]
    assert s.selected is opened and opened.snapshot is not None
    s.set_run_visible(s.runs[0], False)  # only the opened model's (absent) curves
    dashboard = _show(window, "Training")
    assert dashboard.empty_note.isVisible()
    assert "was opened from a file, not trained here" in dashboard.empty_note.textItem.toPlainText()
    weights = _show(window, "Latent weights")
    assert len(weights.histograms) == len(opened.snapshot.layers) > 0
    assert "no training steps recorded" in weights._flip_note.textItem.toPlainText()
    assert not weights.flip_plot.legend.isVisible()
    s.set_run_visible(s.runs[0], True)
    dashboard = _show(window, "Training")
    assert not dashboard.empty_note.isVisible()


def test_tryit_averages_stochastic_passes(window, qtbot):
    from bnnlab.app.stochastic import averaged_proba
    from bnnlab.core.model import model_from_state

    s = window.session
    s.open_preset("ablation-stochastic")
    s.update_scene(limit_train=512, limit_test=64, epochs=1)
    s.start()
    _idle(window, qtbot)
    tryit = _show(window, "Try it")
    assert not tryit.passes.isHidden()
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and "K=16" in tryit.passes_accuracy.text())[1], timeout=WAIT_MS)
    tryit.passes.setValue(8)
    qtbot.waitUntil(lambda: tryit.is_idle() and "mean of 8 passes" in tryit.prediction.text(),
                    timeout=WAIT_MS)
    snap = s.latest_snapshot
    model = model_from_state(snap.model_config, snap.model_state)
    x = tryit._model_input(tryit.input_image())
    assert np.allclose(tryit.probabilities(), averaged_proba(model, x, 8)[0], atol=1e-5)
    s.open_preset("quickstart")  # deterministic activations: no passes to average
    s.start()
    _idle(window, qtbot)
    window._push_current_tab()
    assert tryit.passes.isHidden()


def test_bits_panel_explains_a_clicked_unit_of_try_its_input(window, qtbot):
    from PySide6.QtCore import QPoint

    s = window.session
    s.update_scene(limit_train=256, limit_test=32, epochs=1)
    s.start()
    _idle(window, qtbot)
    tryit = _show(window, "Try it")
    tryit.test_spin.setValue(5)  # Try it's input is what the Bits panel runs
    assert s.probe is not None and s.probe.label.startswith("test image #5")
    bits = _show(window, "Bits")
    qtbot.waitUntil(lambda: (window._push_current_tab(), bits._worker.idle()
                             and bool(bits.blocks) and bits.explanation is not None)[1],
                    timeout=WAIT_MS)
    assert "test image #5" in bits.input_label.text()
    assert "Computing" not in bits.input_label.text()  # the answer came
    bits._ask()
    assert "Computing the maps" in bits.input_label.text()  # until it comes again
    qtbot.waitUntil(lambda: bits._worker.idle() and "Computing" not in bits.input_label.text(),
                    timeout=WAIT_MS)
    x5 = s.runs[0].prepared.dataset.x_test[5]
    np.testing.assert_array_equal(bits.probe.raw, bits._opened.raw_inputs(x5[None])[0])
    xnor = [i for i, (b, kb, _t) in enumerate(bits.blocks) if kb is not None and b.input == "bits"]
    assert xnor and bits.block.currentData() == xnor[0]
    assert bits.selected_unit() == (0, 0, 0)
    view = bits.output_map
    for unit in ((2, 1, 3), (0, 3, 1)):  # (row, column, channel), each a new selection
        scene_pos = view.view_point(*unit)
        pos = view.mapFromScene(scene_pos)
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos.x(), pos.y()))
        assert bits.selected_unit() == unit
        qtbot.waitUntil(lambda: bits._worker.idle() and bits.explanation is not None
                        and bits.explanation.unit == unit, timeout=WAIT_MS)
        e = bits.explanation
        assert e.agrees and e.output == e.runtime_output
        assert e.output == bits.probe.maps[e.block].values[unit]  # the bit drawn under the click
        w = max(e.windows, key=lambda w: w.dot)
        assert w.dot == w.k - 2 * w.popcount
        text = bits.steps.toPlainText()
        assert f"dot = K - 2d = {w.k} - 2*{w.popcount}" in text and "the same" in text
        assert "the same" in bits.verdict.text()
    assert bits.layout_table.rowCount() > 3


def test_tryit_on_an_opened_bnn_agrees_with_bnnlab_run(window, qtbot, tmp_path, capsys):
    """File > Open's path, Try it's prediction on test images, and `bnnlab run`'s code
    path on the same images: every prediction equal."""
    import json

    from bnnlab.cli import main
    from bnnlab.cli_base import open_arg
    from bnnlab.cli_deploy import run_inputs
    from bnnlab.data import load_dataset
    from bnnlab.deploy import export_model
    from bnnlab.deploy.fold import input_spec_for
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset

    scene = load_preset("quickstart")
    scene.seed, scene.dataset = 7, "digits"
    model = build_model(scene, (28, 28, 1), 10)
    rng = np.random.default_rng(7)
    state = model.state_dict()
    for k, v in state.items():  # varied thresholds: not every image gets the same class
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 2, v.shape).astype(np.float32)
    model.load_state_dict(state)
    names = load_dataset("digits", seed=7, limit_train=1, limit_test=1).class_names
    path = tmp_path / "m.bnn"
    export_model(model, path, input_spec_for((28, 28, 1)), names,
                 {"name": "m", "dataset": "digits", "seed": "7"})

    s = window.session
    window.open_path(str(path))  # what File > Open model and drag-and-drop call
    qtbot.waitUntil(lambda: (window._refresh(), len(s.runs) == 1
                             and s.runs[0].prepared is not None)[1], timeout=WAIT_MS)
    tryit = _show(window, "Try it")
    n = 40
    tried = []
    for i in range(n):
        tryit.test_spin.setValue(i)
        qtbot.waitUntil(lambda: tryit.is_idle() and tryit.probabilities() is not None,
                        timeout=WAIT_MS)
        tried.append(int(np.argmax(tryit.probabilities())))
    x_tryit = s.runs[0].prepared.dataset.x_test

    rt = open_arg(str(path), "model").runtime()  # `bnnlab run`'s own steps
    ds = load_dataset("digits", seed=7, splits=("test",))
    np.testing.assert_array_equal(ds.x_test[:n], x_tryit[:n])  # the same test images
    run_pred = rt.predict(run_inputs(rt, ds))
    assert tried == run_pred[:n].tolist()
    assert len(set(tried)) > 1
    assert main(["run", str(path), "--data", "digits", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["accuracy"] == pytest.approx(float(np.mean(run_pred == ds.y_test)))


def test_a_bnn_the_engine_cannot_build_opens_in_every_panel(window, qtbot, tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_app_engineless import _files

    _, path = _files(tmp_path)
    s = window.session
    window.open_path(str(path))
    qtbot.waitUntil(lambda: (window._refresh(), len(s.runs) == 1
                             and s.runs[0].prepared is not None)[1], timeout=WAIT_MS)
    opened = s.runs[0].opened
    assert opened.model is None and s.runs[0].snapshot is None
    for page in window.pages:
        _show(window, page.title)  # asserts no panel error
    summary = _show(window, "Model summary")
    assert summary.profile is not None and summary.profile.name == "odd"
    assert summary.profile.total_params == opened.profile().total_params
    filters = _show(window, "Filters")
    assert "Not available for this file" in filters.stats.text() and "padding" in filters.stats.text()
    weights = _show(window, "Latent weights")
    assert "keeps only the signs" in weights.caption.text() and not weights.histograms
    gating = _show(window, "Gradient gating")
    assert "keeps only the signs" in gating.caption.text() and not gating.gates
    tryit = _show(window, "Try it")
    qtbot.waitUntil(lambda: (window._push_current_tab(), tryit.is_idle()
                             and tryit.probabilities() is not None)[1], timeout=WAIT_MS)
    x = s.runs[0].prepared.x_test[:1]
    assert np.allclose(tryit.probabilities(), opened.predict_proba(x)[0], atol=1e-6)
    bits = _show(window, "Bits")
    qtbot.waitUntil(lambda: (window._push_current_tab(), bits._worker.idle()
                             and bits.explanation is not None)[1], timeout=WAIT_MS)
    assert len(bits.blocks) == 3 and bits.explanation.agrees


@pytest.mark.skipif(not __import__("os").path.exists("/work/shared/testdata/larq/larq_mnist_bnn.h5"),
                    reason="Larq test model not available")
def test_gating_of_an_opened_h5_says_it_shows_training(window, qtbot):
    s = window.session
    window.open_path("/work/shared/testdata/larq/larq_mnist_bnn.h5")
    qtbot.waitUntil(lambda: (window._refresh(), len(s.runs) == 1)[1], timeout=WAIT_MS)
    gating = _show(window, "Gradient gating")
    assert "opened from a file, not trained here" in gating.caption.text() and not gating.gates
    weights = _show(window, "Latent weights")
    assert "keeps only the signs" not in weights.caption.text()
