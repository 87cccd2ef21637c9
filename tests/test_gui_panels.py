"""The explorer panels driven through their real widgets (offscreen): binarization,
duplicate filters, model summary and try-it."""

from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from bnnlab.core.filters import analyze_kernel
from bnnlab.core.model import Sequential, model_from_state
from bnnlab.experiment import build_model, make_trainer, prepare_data
from bnnlab.gui.panels.binarize import BinarizationPanel
from bnnlab.gui.panels.filters import FiltersPanel, binary_conv_signature
from bnnlab.gui.panels.summary import SummaryPanel, full_precision_config
from bnnlab.gui.panels.tryit import GRID, TryItPanel
from bnnlab.gui.views.digit_prep import to_mnist
from bnnlab.io.scenes import load_preset

pytestmark = pytest.mark.gui


def _digits(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 6:22, 10:18, 0] = 0.9  # a bar, so sign and mean images have structure
    x += rng.uniform(0, 0.1, x.shape).astype(np.float32)
    return np.clip(x, 0, 1), np.arange(n)


@pytest.fixture(scope="module")
def _binarize_panel(qapp):
    # Built once: a panel of nine plots takes most of a second to construct.
    panel = BinarizationPanel(seed=3)
    panel.set_images(*_digits())  # before show: no default dataset is loaded
    panel.show()
    yield panel
    panel.close()
    panel.deleteLater()


@pytest.fixture
def binarize(_binarize_panel):
    panel = _binarize_panel
    panel.combo.setCurrentIndex(panel.combo.findData("ste_sign"))
    for slider, value in ((panel.x_slider, 0.3), (panel.n_slider, 200), (panel.k_slider, 16),
                          (panel.scale_slider, 1.0), (panel.offset_slider, 0.0)):
        slider.set_value(value)
    return panel


# ----------------------------------------------------------------- binarization
def test_x_slider_moves_markers_and_values(binarize):
    panel = binarize
    panel.combo.setCurrentIndex(panel.combo.findData("ste_sign"))
    panel.x_slider.set_value(0.5)
    x, y = panel.forward_marker.getData()
    assert x[0] == pytest.approx(0.5) and y[0] == 1.0
    assert panel.prob_marker.getData()[1][0] == 1.0
    before = panel.readout.text()

    panel.x_slider.set_value(-1.5)
    x, y = panel.forward_marker.getData()
    assert x[0] == pytest.approx(-1.5) and y[0] == -1.0
    assert panel.grad_marker.getData()[1][0] == 0.0  # outside the STE window: gated
    assert panel.readout.text() != before and "gated off" in panel.readout.text()
    assert all(line.value() == pytest.approx(-1.5) for line in panel._x_lines)
    target = panel.target_curve.getData()[1]
    assert np.allclose(target, -1.0)


def test_dragging_the_line_moves_the_slider(binarize):
    binarize._x_lines[1].setValue(0.8)
    assert binarize.x_value() == pytest.approx(0.8)


def test_stochastic_binarizer_marks_expectation(binarize):
    binarize.combo.setCurrentIndex(binarize.combo.findData("stochastic_sign"))
    binarize.x_slider.set_value(0.4)
    assert binarize.forward_marker.getData()[1][0] == pytest.approx(0.4)
    assert binarize.prob_marker.getData()[1][0] == pytest.approx(0.7)


def test_more_draws_change_the_mean_and_approach_clip(binarize):
    binarize.x_slider.set_value(0.3)
    binarize.n_slider.set_value(1)
    one = binarize.draw_mean()
    assert binarize.running_mean.getData()[0].size == 1
    binarize.n_slider.set_value(2000)
    many = binarize.draw_mean()
    assert many != one
    assert binarize.running_mean.getData()[1][-1] == pytest.approx(many)
    assert abs(many - 0.3) < 0.08  # 2000 draws: standard error ~0.02


def test_more_samples_change_the_image_mean(binarize):
    binarize.k_slider.set_value(1)
    m1 = binarize.image_mean()
    assert set(np.unique(m1)) <= {-1.0, 1.0}
    binarize.k_slider.set_value(256)
    m256 = binarize.image_mean()
    assert not np.array_equal(m1, m256)
    expected = np.clip(binarize.binarized_input(), -1, 1)
    assert np.abs(m256 - expected).mean() < np.abs(m1 - expected).mean()
    np.testing.assert_array_equal(binarize.mean_view.image(), m256)


def test_scale_and_offset_change_what_is_binarized(binarize):
    binarize.offset_slider.set_value(1.5)
    z = binarize.binarized_input()
    assert z.min() >= 1.5 - 1.0 - 1e-6
    assert np.all(binarize.sign_view.image() == 1.0)  # every pixel now above threshold
    assert "+ 1.50" in binarize.formula.text()
    binarize.scale_slider.set_value(0.0)
    assert np.allclose(binarize.binarized_input(), 1.5)


def test_another_image_and_resample(binarize):
    first = binarize.original_view.image().copy()
    binarize.next_image()
    assert binarize._index != 0
    sample = binarize.sample_view.image().copy()
    binarize.resample()
    assert binarize.original_view.image().shape == first.shape
    assert sample.shape == (28, 28)


# ----------------------------------------------------------------- filters
def _report(name, kernel):
    return analyze_kernel(name, kernel, output_pixels=10)


def test_identical_filters_count_as_one(qtbot):
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    same = np.ones((3, 3, 4, 8), np.float32)
    same[0, 0] = -1.0  # one tap -1 in every 2-D filter: all 32 filters share a pattern
    rng = np.random.default_rng(0)
    mixed = rng.choice([-1.0, 1.0], size=(3, 3, 16, 16)).astype(np.float32)
    reports = [_report("conv_same", same), _report("conv_mixed", mixed)]
    panel.set_reports(reports)

    assert panel.layer_combo.count() == 2
    assert panel.current_report() is reports[1]  # the biggest layer comes first
    panel.layer_combo.setCurrentIndex(0)
    assert "<b>1</b> distinct 2-D filters out of <b>32</b>" in panel.stats.text()
    assert "<b>1</b> up to sign" in panel.stats.text()
    # 4 x 8 tiles of 3 pixels with 1-pixel gaps
    assert panel.tiles.image_item.image.shape == (4 * 4 + 1, 8 * 4 + 1)
    assert panel.histogram_bars.opts["height"].max() == 32
    assert "32" == panel.top_counts[0].toPlainText()

    panel.layer_combo.setCurrentIndex(1)
    r = reports[1]
    assert f"<b>{r.unique}</b> distinct 2-D filters out of <b>256</b>" in panel.stats.text()
    assert f"<b>{r.unique_up_to_sign}</b> up to sign" in panel.stats.text()
    assert panel.ops_chart.values()[0].tolist() == [r.ops_total / 1000, r.ops_dedup / 1000]


def test_inverse_pair_merges_up_to_sign(qtbot):
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    k = np.ones((3, 3, 1, 2), np.float32)
    k[..., 1] = -1.0  # the second filter is the first one's inverse
    panel.set_reports([_report("conv", k)])
    assert "<b>2</b> distinct" in panel.stats.text()
    assert "<b>1</b> up to sign" in panel.stats.text()


def test_hovering_a_tile_frames_its_twins(qtbot):
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    panel.set_reports([_report("conv", np.ones((3, 3, 2, 3), np.float32))])
    panel._hovered(1, 2)
    assert "pattern #0, used 6×" in panel.hover.text()
    overlay = panel.tiles.highlight_item.image
    assert overlay.shape[:2] == panel.tiles.image_item.image.shape
    assert overlay[..., 3].any()


def _conv_model(seed=0):
    config = {"name": "tiny", "input_shape": [8, 8, 1], "layers": [
        {"type": "QuantConv2D", "filters": 4, "kernel_size": 3, "kernel_quantizer": "ste_sign",
         "use_bias": False},
        {"type": "QuantConv2D", "filters": 6, "kernel_size": 3, "input_quantizer": "ste_sign",
         "kernel_quantizer": "ste_sign", "use_bias": False},
        {"type": "Flatten"},
        {"type": "QuantDense", "units": 3, "input_quantizer": "ste_sign",
         "kernel_quantizer": "ste_sign", "use_bias": False},
    ]}
    return Sequential.from_config(config, seed=seed)


def _snapshot(model, step=0):
    return SimpleNamespace(model_config=model.config(), model_state=model.state_dict(), step=step)


def test_filters_follow_snapshots_only_when_signs_change(qtbot, monkeypatch):
    import bnnlab.gui.panels.filters as filters_module

    calls = []
    real = filters_module.analyze_filters
    monkeypatch.setattr(filters_module, "analyze_filters",
                        lambda model: calls.append(1) or real(model))
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    panel.show()
    model = _conv_model()
    panel.set_snapshot(_snapshot(model))
    assert len(calls) == 1 and panel.layer_combo.count() == 2
    assert [r.in_channels for r in panel.reports] == [1, 4]

    state = {k: v.copy() for k, v in model.state_dict().items()}
    state["quant_conv2d/kernel"] *= 0.5  # magnitudes move, signs do not
    panel.set_snapshot(SimpleNamespace(model_config=model.config(), model_state=state))
    panel._throttle.flush()
    assert len(calls) == 1

    state["quant_conv2d/kernel"][0, 0, 0, 0] *= -1  # one sign flips
    panel.set_snapshot(SimpleNamespace(model_config=model.config(), model_state=state))
    panel._throttle.flush()  # may be held back by the rate limit; no timing assumed
    assert len(calls) == 2
    assert panel._signature == binary_conv_signature(model.config(), state)


def test_hidden_filters_panel_defers_work(qtbot):
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    panel.set_snapshot(_snapshot(_conv_model()))
    assert panel.layer_combo.count() == 0  # not visible: nothing analysed yet
    panel.show()
    assert panel.layer_combo.count() == 2


# ----------------------------------------------------------------- summary
def test_summary_rows_totals_and_twin(qtbot):
    scene = load_preset("quickstart")
    model = build_model(scene, (28, 28, 1), 10)
    panel = SummaryPanel()
    qtbot.addWidget(panel)
    panel.set_model_config(model.config())

    n = len(model.layers)
    assert panel.table.rowCount() == n + 1
    names = [panel.table.item(r, 0).text() for r in range(n)]
    assert names == [layer.name for layer in model.layers]
    assert panel.table.item(n, 0).text() == "Total"
    total = panel.profile.memory_kib
    assert panel.table.item(n, 5).text() == f"{total:.2f}"
    assert f"{total:.2f} KiB" in panel.headline.text()
    assert panel.total_memory_text() == f"{total:.2f} KiB"

    assert panel.twin_table.rowCount() == n + 1
    twin_types = {lp.type_name for lp in panel.twin_profile.layers}
    assert not twin_types & {"QuantConv2D", "QuantDense"}
    assert panel.twin_profile.params_1bit == 0
    assert panel.twin_profile.memory_kib > 20 * total
    memory = panel.memory_chart.values()[0]
    assert memory.tolist() == pytest.approx([total, panel.twin_profile.memory_kib])
    macs = panel.macs_chart.values()
    assert macs[0, 1] == 0 and macs[0, 0] > 0  # the twin has no 1-bit MACs
    assert "Total params" in panel.text.toPlainText()


def test_twin_of_a_graph_model_keeps_the_names_its_inputs_use():
    config = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10).config()
    twin = Sequential.from_config(full_precision_config(config))  # builds
    assert twin.is_graph and "add1" in [layer.name for layer in twin.layers]
    assert not any(layer.type_name.startswith("Quant") for layer in twin.layers)


def test_summary_uses_given_twin_and_derives_one():
    scene = load_preset("quickstart")
    config = build_model(scene, (28, 28, 1), 10).config()
    twin = full_precision_config(config)
    assert [lc["type"] for lc in twin["layers"]][:1] == ["Conv2D"]
    assert all("kernel_quantizer" not in lc for lc in twin["layers"])
    Sequential.from_config(twin)  # builds


def test_summary_reports_bad_config(qtbot):
    panel = SummaryPanel()
    qtbot.addWidget(panel)
    panel.set_model_config({"name": "bad", "input_shape": [4], "layers": [{"type": "Nope"}]})
    assert "Cannot summarize" in panel.headline.text()


# ----------------------------------------------------------------- try it
def _settle(qtbot, panel):
    # Inference runs on a worker thread; wait until every request has come back.
    qtbot.waitUntil(panel.is_idle, timeout=20000)

@pytest.fixture(scope="module")
def xor_run():
    scene = load_preset("toy-xor")
    scene.limit_train, scene.limit_test = 96, 64
    prepared = prepare_data(scene)
    model = build_model(scene, prepared.dataset.input_shape, prepared.dataset.num_classes)
    snaps = list(make_trainer(scene, model, prepared, epochs=1))
    return snaps[-1], prepared


def test_tryit_points_boundary(qtbot, xor_run):
    snap, prepared = xor_run
    ds = prepared.dataset
    panel = TryItPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_snapshot(snap, "points", ds.class_names, prepared.x_test, prepared.y_test)
    _settle(qtbot, panel)
    field = panel.heatmap()
    assert field.shape == (GRID, GRID)
    assert panel.boundary.image_item.image.shape == (GRID, GRID)
    assert 0.0 <= field.min() and field.max() <= 1.0
    # the heatmap is the model's own P(class 1) over the grid
    model = model_from_state(snap.model_config, snap.model_state)
    probs = model.predict_proba(panel._grid_points)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(field.ravel(), probs[:, 1], rtol=1e-5)
    assert len(panel.boundary.points.data) == len(prepared.x_test)
    assert not panel.twin_boundary.isVisibleTo(panel)

    panel.set_twin_snapshot(snap)
    panel._refresh.flush()
    _settle(qtbot, panel)
    assert panel.twin_boundary.isVisibleTo(panel)
    np.testing.assert_allclose(panel.twin_heatmap(), field)


def _image_model():
    config = {"name": "tiny-image", "input_shape": [28, 28, 1], "layers": [
        {"type": "QuantConv2D", "filters": 4, "kernel_size": 3, "kernel_quantizer": "ste_sign",
         "use_bias": False},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "BatchNorm", "scale": False},
        {"type": "Flatten"},
        {"type": "QuantDense", "units": 10, "input_quantizer": "ste_sign",
         "kernel_quantizer": "ste_sign", "use_bias": False},
        {"type": "BatchNorm", "scale": False},
        {"type": "Activation", "activation": "softmax"},
    ]}
    return Sequential.from_config(config, seed=1)


@pytest.fixture(scope="module")
def _tryit_image_panel(qapp):
    panel = TryItPanel()
    panel.show()
    yield panel
    panel.close()
    panel.deleteLater()


@pytest.fixture
def tryit_image(qtbot, _tryit_image_panel):
    panel = _tryit_image_panel
    panel.set_twin_snapshot(None)
    x, y = _digits(6)
    panel.set_snapshot(_snapshot(_image_model()), "image", [str(i) for i in range(10)], x, y)
    panel._refresh.flush()
    _settle(qtbot, panel)
    return panel


def test_tryit_image_probabilities(qtbot, tryit_image):
    panel = tryit_image
    probs = panel.probabilities()
    assert probs.shape == (10,)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(panel.prob_chart.values()[0], probs)
    assert np.isnan(panel.prob_chart.values()[1]).all()  # no twin yet
    panel.set_twin_snapshot(_snapshot(_image_model()))
    panel._refresh.flush()
    _settle(qtbot, panel)
    assert panel.twin_probabilities().sum() == pytest.approx(1.0, abs=1e-5)
    assert "Full-precision twin" in panel.prediction.text()


def test_tryit_picks_test_images(tryit_image):
    panel = tryit_image
    panel.test_spin.setValue(3)
    np.testing.assert_allclose(panel.input_image(), _digits(6)[0][3, :, :, 0])
    assert "#3" in panel.source_label.text()
    panel.pick_random_test_image()
    assert 0 <= panel.test_spin.value() < 6


def test_drawing_changes_the_input(qtbot, tryit_image):
    panel = tryit_image
    canvas = panel.canvas
    canvas.clear()
    assert not panel.input_image().any()
    qtbot.mousePress(canvas, Qt.LeftButton, pos=QPoint(140, 60))
    for y in range(70, 230, 10):
        qtbot.mouseMove(canvas, QPoint(140, y))
    qtbot.mouseRelease(canvas, Qt.LeftButton, pos=QPoint(140, 220))
    image = panel.input_image()
    _settle(qtbot, panel)
    assert image.shape == (28, 28) and image.max() == pytest.approx(1.0)
    assert not canvas.is_empty()
    # a vertical stroke becomes a centred vertical bar, 20 pixels tall like MNIST digits
    rows = np.nonzero(image.max(axis=1) > 0.05)[0]
    assert rows.size == 20
    assert abs(np.average(np.arange(28), weights=image.sum(axis=0)) - 13.5) < 1.0
    assert panel.probabilities().sum() == pytest.approx(1.0, abs=1e-5)
    assert panel.source_label.text() == "Input: your drawing"
    panel.clear_button.click()
    assert canvas.is_empty() and not panel.input_image().any()


def test_to_mnist_centres_and_scales():
    canvas = np.zeros((280, 280), np.float32)
    canvas[20:120, 200:240] = 1.0  # a blob in a corner
    image = to_mnist(canvas)
    ys = np.nonzero(image > 0.05)[0]
    assert ys.max() - ys.min() + 1 == 20
    cy = np.average(np.arange(28), weights=image.sum(axis=1))
    cx = np.average(np.arange(28), weights=image.sum(axis=0))
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert not to_mnist(np.zeros((50, 50))).any()


def test_draws_slider_reaches_every_small_count(binarize):
    slider = binarize.n_slider.slider
    seen = []
    for k in range(slider.minimum(), slider.maximum() + 1):
        slider.setValue(k)
        seen.append(int(binarize.n_slider.value()))
    assert seen[:10] == list(range(1, 11))  # 1, 2, 3, ... one slider step each
    assert seen[-1] == 2000 and seen == sorted(set(seen))
    assert slider.maximum() < 200  # log scale: not 2000 positions


def test_long_run_titles_are_cut_in_legends():
    from bnnlab.gui.panels.training import LEGEND_CHARS, legend_label

    long = "#4 act=stochastic_sign, weights=ste_sign ungated, clip off, lr=0.01, seed=3"
    short = legend_label(long)
    assert len(short) <= LEGEND_CHARS and short.endswith("…") and long.startswith(short[:-1])
    assert legend_label("#1 quickstart") == "#1 quickstart"


def test_results_table_sorts_by_value(qtbot):
    from bnnlab.gui.panels.results import ResultsPanel

    panel = ResultsPanel()
    qtbot.addWidget(panel)
    rows = [{"run": n, "scene": "s", "differs": d, "seed": n, "state": "finished", "epochs": 1,
             "loss": loss, "accuracy": 0.5, "val_loss": None, "val_accuracy": acc,
             "seconds": 1.0, "parameters": 10}
            for n, d, loss, acc in ((1, "", 0.9, 0.8), (2, "lr=0.1", 0.3, None), (10, "x", 2.0, 0.95))]
    panel.set_rows(rows)
    assert panel.column("run") == ["1", "2", "10"]  # numbers, not text ("10" < "2")
    panel.table.sortByColumn(6, Qt.SortOrder.AscendingOrder)  # loss
    assert panel.column("run") == ["2", "1", "10"]
    panel.table.sortByColumn(9, Qt.SortOrder.DescendingOrder)  # validation, blanks last
    assert panel.column("val_accuracy") == ["95.00%", "80.00%", "–"]


def _bn_snapshot(run_acc, batch_acc, *, reestimated=False, step=282):
    from types import SimpleNamespace

    return SimpleNamespace(
        loss=0.5, accuracy=0.9, val_accuracy=run_acc, val_accuracy_batch_stats=batch_acc,
        bn_reestimated=reestimated, step=step, images_per_second=1000.0, epochs=3, epoch=3,
        batch=94, batches_per_epoch=94,
        model_config={"layers": [{"type": "QuantDense"}, {"type": "BatchNorm", "momentum": 0.99}]})


def test_dashboard_warns_when_running_and_batch_statistics_disagree(qtbot):
    from types import SimpleNamespace

    from bnnlab.app.runs import RunState
    from bnnlab.gui.panels.training import Dashboard

    panel = Dashboard()
    qtbot.addWidget(panel)
    view = SimpleNamespace(number=1, title="#1 quickstart", state=RunState.FINISHED,
                           color="#1f77b4", snapshot=_bn_snapshot(0.616, 0.950))
    panel._show_selected(view)
    assert not panel.bn_warning.isHidden()
    text = panel.bn_warning.text()
    assert "61.6%" in text and "95.0%" in text and "momentum 0.99" in text
    # A mid-epoch snapshot carries no batch-statistics figure: the verdict stays.
    view.snapshot = _bn_snapshot(0.616, None)
    panel._show_selected(view)
    assert not panel.bn_warning.isHidden()
    # The next epoch end agrees: the warning goes away.
    view.snapshot = _bn_snapshot(0.948, 0.950)
    panel._show_selected(view)
    assert panel.bn_warning.isHidden()
    panel._show_selected(None)
    assert panel.bn_warning.isHidden()


def test_evaluate_panel_says_what_it_will_show_before_any_evaluation(qtbot):
    from bnnlab.gui.panels.evaluate import EvaluatePanel

    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.show()
    assert "confusion matrix" in panel.result.text()
    assert not panel.matrix.isVisible() and not panel.matrix_title.isVisible()
    e = SimpleNamespace(complete=True, n=4, total=4, accuracy=0.5, dataset="digits",
                        computed_on="engine", seconds=0.1,
                        confusion=np.array([[1, 1], [1, 1]]), class_names=("0", "1"),
                        per_class_accuracy=np.array([0.5, 0.5]))
    panel.show_evaluation(e)
    assert panel.matrix.isVisible() and panel.matrix.rowCount() == 2
    assert "50.00%" in panel.result.text()


def test_the_uses_under_the_most_repeated_patterns_never_touch(qtbot):
    # At 1024 x 640 the tiles are ~25 px apart: "×15×14×14×13..." read as one string.
    panel = FiltersPanel()
    qtbot.addWidget(panel)
    panel.resize(990, 470)
    panel.show()
    qtbot.waitExposed(panel)
    rng = np.random.default_rng(1)
    kernel = rng.choice([-1.0, 1.0], size=(3, 3, 64, 64)).astype(np.float32)
    panel.set_reports([_report("conv", kernel)])
    qtbot.wait(100)
    boxes = []
    for text in panel.top_counts:
        assert len(text.toPlainText()) >= 2  # two-digit counts, the widest here
        ink = text.textItem.boundingRect()
        m = text.textItem.document().documentMargin()
        boxes.append(text.textItem.mapRectToScene(ink.adjusted(m, m, -m, -m)))
    for a, b in zip(boxes, boxes[1:]):
        assert a.right() + 2 <= b.left()
    # The MAC chart's axis title fits beside its short plot.
    item = panel.ops_chart.getPlotItem()
    label = item.getAxis("left").label
    assert label.mapRectToScene(label.boundingRect()).height() <= item.sceneBoundingRect().height()
