"""Shortcuts: what the real-valued shortcuts of a residual binary network do to its
gradients.

For the selected run (at its latest weights) or an opened model, two bar charts compare
the graph as it is with the same graph with its shortcuts cut (each ``Add`` passes only
its residual branch; :mod:`bnnlab.core.shortcuts`), from the same weights on the same
training batches: the norm of each quantized layer's latent-weight gradient, and of the
gradient reaching the tensor each layer reads. A third plot follows the latent-weight
gradient norms over training, for the selected run and any other run of a model with the
same layers (e.g. ``bireal-mnist`` and ``bireal-mnist-noshortcut`` trained side by side).

The weights are the run's latest, or its initial ones (rebuilt from the scene's seed),
where the classic argument for shortcuts is cleanest. The norms are shown as they are, or
relative to the output layer's, which shows how much of the gradient survives to each
depth whatever the loss of either graph. The measurement runs on a worker thread; while a
run trains it is repeated at each epoch's end (or on **Measure now**), not at every
snapshot.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from ...app.runs import RunState
from ...core.layer_types import is_quantized
from ..panel import FitPage, NotedPanel
from ..views.bars import BarChart
from ..views.style import epoch_axis, make_pen, make_plot, palette_color

__all__ = ["ShortcutsPanel", "measure"]

WITH_COLOR = "#1f77b4"
CUT_COLOR = "#ff7f0e"
DEFAULT_BATCHES = 4
SEED = 0  # picks the measured batches; `bnnlab shortcuts --seed` says the same
LATEST, INITIAL = 0, 1  # which weights
ABSOLUTE, RELATIVE = 0, 1  # how the norms are shown


def measure(config: dict, state: dict | None, x, y, batches: int, batch_size: int,
            init_seed: int = 0):
    """The comparison for a model given by config and weights, or by config and the seed
    of its initial weights when ``state`` is None (runs on the worker)."""
    from ...core.model import Sequential, model_from_state
    from ...core.shortcuts import compare_shortcuts

    model = (Sequential.from_config(config, seed=init_seed) if state is None
             else model_from_state(config, state))
    return compare_shortcuts(model, x, y, batches=batches, batch_size=batch_size, seed=SEED)


def relative(values, reference: float | None) -> list[float]:
    """``values`` divided by ``reference`` (NaN when there is none)."""
    if not reference:
        return [float("nan")] * len(values)
    return [v / reference for v in values]


def _has_add(config: dict | None) -> bool:
    return bool(config) and any(lc.get("type") == "Add" for lc in config.get("layers", []))


def _quant_names(config: dict | None) -> tuple[str, ...]:
    if not config:
        return ()
    return tuple(lc.get("name", "") for lc in config.get("layers", []) if is_quantized(lc.get("type")))


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return ""
    return f"×{a / b:.2f}"


class ShortcutsPanel(NotedPanel):
    """Gradient norms per layer with and without the shortcuts, and over training."""

    title = "Shortcuts"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.batches = QSpinBox()
        self.batches.setRange(1, 64)
        self.batches.setValue(DEFAULT_BATCHES)
        self.batches.setToolTip("Training batches the gradients are averaged over")
        self.batches.valueChanged.connect(self._controls_changed)
        self.weights = QComboBox()
        self.weights.addItems(["latest weights", "initial weights"])
        self.weights.setToolTip("The run's latest weights, or those it started from (its "
                                "scene's seed)")
        self.weights.currentIndexChanged.connect(self._controls_changed)
        self.scale = QComboBox()
        self.scale.addItems(["absolute", "relative to the output layer"])
        self.scale.setToolTip("Relative: each graph's norms divided by its own last layer's, "
                              "so the profile over depth compares whatever the loss")
        self.scale.currentIndexChanged.connect(self._redraw)
        self.measure_button = QPushButton("Measure now")
        self.measure_button.setToolTip("Measure at the run's latest weights")
        self.measure_button.clicked.connect(self.measure_now)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #444;")
        controls = QHBoxLayout()
        controls.addWidget(self.weights)
        controls.addWidget(QLabel("batches"))
        controls.addWidget(self.batches)
        controls.addWidget(QLabel("norms"))
        controls.addWidget(self.scale)
        controls.addWidget(self.measure_button)
        controls.addStretch(1)
        key = QLabel(f"<span style='color:{WITH_COLOR}'>■</span> with shortcuts &nbsp; "
                     f"<span style='color:{CUT_COLOR}'>■</span> shortcuts cut")
        controls.addWidget(key)

        fmt = lambda v: f"{v:.3g}"  # noqa: E731
        series = [("with shortcuts", WITH_COLOR), ("shortcuts cut", CUT_COLOR)]
        # No legends over the bars: the key is in the row of controls.
        self.weight_chart = BarChart("Latent-weight gradient of each quantized layer",
                                     "layer, input to output (ratio with / cut)",
                                     "‖∂L/∂W‖", series, value_format=fmt, legend=False)
        self.input_chart = BarChart("Gradient reaching the tensor each layer reads",
                                    "layer, input to output (ratio with / cut)",
                                    "‖∂L/∂x‖", series, value_format=fmt, legend=False)
        for chart in (self.weight_chart, self.input_chart):
            chart.setMinimumSize(260, 170)
            chart.getPlotItem().getAxis("left").enableAutoSIPrefix(False)
        self.history_plot = make_plot("Latent-weight gradient over training",
                                      "epoch", "‖∂L/∂W‖, last batch")
        self.history_plot.setMinimumSize(260, 150)
        self.history_plot.getPlotItem().getAxis("left").enableAutoSIPrefix(False)
        self.history_note = QLabel("")
        self.history_note.setWordWrap(True)
        self.history_note.setStyleSheet("color: #444;")
        self.cut_text = QLabel("")
        self.cut_text.setWordWrap(True)
        self.cut_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        charts = QHBoxLayout()
        charts.addWidget(self.weight_chart, 1)
        charts.addWidget(self.input_chart, 1)
        content = FitPage()
        col = QVBoxLayout(content)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(controls)
        col.addWidget(self.status)
        col.addLayout(charts, 3)
        col.addWidget(self.cut_text)
        col.addWidget(self.history_plot, 2)
        col.addWidget(self.history_note)
        self._frame(content, heading_style="font-size: 10pt; padding: 2px 4px;")
        self._focus = None  # the latest focus: the controls measure it again
        self._source = None  # what the shown (or pending) measurement is of
        self._pending = None  # (source, job args) of the latest snapshot, not yet measured
        self._measured_run = None
        self._history_key = None
        self._curves: list = []
        self._where = ""
        self._split = "training"
        self._hint = self._shown_hint = self._result_text = ""
        self.effect = None
        self.show_note("Select a run (or open a model) of a residual network, e.g. the "
                        "bireal-mnist preset.")


    def is_idle(self) -> bool:
        return self._worker.idle()

    # ------------------------------------------------------------------ focus
    def _controls_changed(self, *_args) -> None:
        if self._focus is not None:
            self.show_focus(self._focus)

    def show_focus(self, focus, force: bool = False) -> None:
        self._focus = focus
        run = focus.run
        if run is None:
            self.heading.setText("")
            self._source = self._pending = None
            self.show_note("Select a run (or open a model) of a residual network, e.g. the "
                            "bireal-mnist preset.")
            return
        name = f"<b style='color:{run.color}'>{run.title}</b>"
        opened = run.opened
        config = opened.model.config() if opened is not None and opened.model is not None \
            else focus.model_config
        self._show_history(focus, config)
        if opened is not None and not opened.has_latent_weights:
            self._refuse(run, f"{name}: a .bnn file keeps only the signs of the weights, not "
                         "the latent weights whose gradients this page compares; open the .npz "
                         "or .h5 it came from.")
            return
        if not _has_add(config):
            self._refuse(run, f"{name} has no shortcuts: it is a plain stack of layers, so "
                         "there is nothing to cut and compare. Choose a residual network such "
                         "as the bireal-mnist preset (File > Open scene, or the scene list).")
            return
        prepared = focus.prepared
        snap = run.snapshot
        if prepared is None or (opened is None and snap is None):
            self._refuse(run, f"{name}: the gradients are measured on training batches at the "
                         "run's weights; waiting for its data and first weights…")
            return
        initial = self.weights.currentIndex() == INITIAL
        if initial and opened is not None:
            self._refuse(run, f"{name} was opened from a file: its initial weights are not "
                         "known. Choose latest weights.", keep_controls=True)
            return
        source = (run.number, id(opened) if opened is not None else id(snap),
                  self.weights.currentIndex(), self.batches.value())
        if not force and (source == self._source
                          or (self._pending and self._pending[0] == source)):
            return
        split = "training"
        if opened is not None:
            # A model opened from a file comes with the test set only: measured on it.
            ds = prepared.dataset
            x, y = (ds.x_train, prepared.y_train) if len(ds.x_train) else (ds.x_test, ds.y_test)
            split = "training" if len(ds.x_train) else "test"
            try:
                x = opened.engine_inputs(x)
            except ValueError as exc:
                self._refuse(run, f"{name}: {exc}")
                return
            n = len(x)
            args = (opened.model.config(), opened.model.state_dict(), x, y, run.batch_size, 0)
            where = "its weights as opened"
        elif initial:
            args = (snap.model_config, None, prepared.x_train, prepared.y_train,
                    run.batch_size, run.seed)
            where = f"the initial weights (seed {run.seed})"
        else:
            args = (snap.model_config, snap.model_state, prepared.x_train, prepared.y_train,
                    run.batch_size, 0)
            where = f"step {snap.step:,} (epoch {snap.epoch} of {snap.epochs})"
        self.heading.setText(self._caption(name))
        if opened is None:
            n = len(prepared.x_train)
        hint = (f"--dataset {getattr(prepared.dataset, 'name', 'NAME')} "
                + ("--split test" if split == "test" else f"--limit-train {n}"))
        if opened is not None:
            target, meaning = "FILE", "the file opened here"
        elif initial:
            target, meaning = "SCENE", "the run's scene file, or its preset if unchanged"
        else:
            target, meaning = "MODEL", ("this run exported with File > Export model for Larq, "
                                        "or a checkpoint")
        self._hint = f"<code>bnnlab shortcuts {target} {hint}</code> ({target}: {meaning})"
        self._pending = (source, args, where, run.number, split)
        training = run.state is RunState.TRAINING and opened is None
        fresh_run = self._measured_run != run.number
        if force or not training or fresh_run or initial or snap.event != "step":
            self._submit()
        elif self.effect is not None and self._worker.idle():
            self.status.setText(f"{self._result_text} The run has trained on to step "
                                f"{snap.step:,}: measured again at the epoch's end, or press "
                                "Measure now.")

    def _refuse(self, run, text: str, keep_controls: bool = False) -> None:
        self._source = (run.number, None)
        self._pending = None
        self.effect = None
        if keep_controls:  # the choice that led here stays reachable
            self.status.setText(text)
            self.weight_chart.set_values([None, None])
            self.input_chart.set_values([None, None])
            self.show_content()
            return
        self.heading.setText("")
        self.show_note(text)

    def _caption(self, name: str) -> str:
        return (f"{name}: how the gradient of one training step reaches each quantized layer "
                f"with the real-valued shortcuts (<b style='color:{WITH_COLOR}'>blue</b>) and "
                f"with them cut (<b style='color:{CUT_COLOR}'>orange</b>: every Add passes only "
                "its residual branch). Both graphs from the same weights, on the same batches "
                "of images, in training mode (batch statistics); no weight is updated.")

    def measure_now(self) -> None:
        """Measure the selected run's latest weights (or the choice made) now, on the worker."""
        if self._pending is not None:
            self._submit()
        elif self._focus is not None:
            self.show_focus(self._focus, force=True)

    def _submit(self) -> None:
        source, args, where, number, split = self._pending
        self._pending = None
        self._shown_hint = self._hint
        self._source = source
        self._where = where
        self._split = split
        self._measured_run = number
        self.status.setText(f"Measuring at {where}…")
        self.measure_button.setEnabled(False)
        self._worker.submit("measure", _job, source, where, *args, self.batches.value())

    def _on_failed(self, key, msg: str) -> None:
        self.measure_button.setEnabled(True)
        self.effect = None
        self.show_note(f"Cannot compare the shortcuts: {msg}")

    def _on_result(self, key, result) -> None:
        source, where, effect = result
        self.measure_button.setEnabled(True)
        if source != self._source:
            return  # a newer request is on its way
        self.effect = effect
        self._where = where
        self.show_content()
        self._draw(effect, where)

    def _redraw(self, *_args) -> None:
        if self.effect is not None:
            self._draw(self.effect, self._where)

    def _draw(self, e, where: str) -> None:
        rel = self.scale.currentIndex() == RELATIVE
        w_with = [g.weight_mean for g in e.with_shortcuts]
        w_cut = [g.weight_mean for g in e.without_shortcuts]
        reads = [(a, b) for a, b in zip(e.with_shortcuts, e.without_shortcuts) if a.input is not None]
        i_with = [a.input_mean for a, _ in reads]
        i_cut = [b.input_mean for _, b in reads]
        # The ratio under each pair compares the values drawn.
        if rel:
            w_with, w_cut = relative(w_with, w_with[-1]), relative(w_cut, w_cut[-1])
            if reads:
                i_with, i_cut = relative(i_with, i_with[-1]), relative(i_cut, i_cut[-1])
        unit = " ÷ last layer's" if rel else ""
        self.weight_chart.getPlotItem().setLabel("left", "‖∂L/∂W‖" + unit)
        self.input_chart.getPlotItem().setLabel("left", "‖∂L/∂x‖" + unit)
        self.weight_chart.set_categories(
            [f"{g.name} {_ratio(a, b)}" for g, a, b in zip(e.with_shortcuts, w_with, w_cut)])
        self.weight_chart.set_values([w_with, w_cut])
        self.input_chart.set_categories(
            [f"{a.name} {_ratio(x, y)}" for (a, _), x, y in zip(reads, i_with, i_cut)])
        self.input_chart.set_values([i_with, i_cut])
        data_readers = [g.name for g in e.with_shortcuts if g.input is None]
        loss_with, loss_cut = float(np.mean(e.loss_with)), float(np.mean(e.loss_without))
        self._result_text = (
            f"At {where}: mean over {e.batches} batches of {e.batch_size} {self._split} "
            f"images (seed {e.seed}); loss on them {loss_with:.3f} with the shortcuts, "
            f"{loss_cut:.3f} cut.")
        self.status.setText(self._result_text)
        cuts = "; ".join(f"<b>{s.add}</b> keeps {', '.join(s.kept)}, loses "
                         f"{', '.join(s.cut)}" for s in e.shortcuts)
        skipped = (f" Not in the right chart: {', '.join(data_readers)} (reads the data, "
                   "which has no gradient)." if data_readers else "")
        self.cut_text.setText(
            f"Cut: {cuts}.{skipped} ‖·‖: L2 norm of the gradient of a batch's mean loss. "
            "Cutting the shortcuts changes what the weights compute (see the loss), so this "
            "compares the two graphs at one point, not how either trains: for that, train "
            "bireal-mnist-noshortcut beside it or Compare seeds. From the "
            f"terminal, with <code>--batches {e.batches} --batch-size {e.batch_size}</code>: "
            f"{self._shown_hint}.")

    # ------------------------------------------------------------------ over training
    def _show_history(self, focus, config) -> None:
        """Latent-weight gradient norms over training: the selected run solid, other runs
        of a model with the same quantized layers dashed."""
        run = focus.run
        names = _quant_names(config)
        runs = [r for r in focus.runs if r.snapshot is not None and r.opened is None
                and (r.number == run.number or r.visible)
                and _quant_names(r.snapshot.model_config) == names]
        key = (names, tuple((r.number, id(r.snapshot)) for r in runs), run.number)
        if key == self._history_key:
            return
        self._history_key = key
        plot = self.history_plot.getPlotItem()
        for c in self._curves:
            plot.removeItem(c)
        self._curves = []
        runs.sort(key=lambda r: r.number != run.number)  # the selected run first
        for r in runs:
            h = r.snapshot.history
            g = np.asarray(getattr(h, "grad_norm", ()), float)
            x = epoch_axis(h.step, r.snapshot.batches_per_epoch)
            if g.ndim != 2 or g.shape[0] != len(x):
                continue
            mine = r.number == run.number
            for i, n in enumerate(names):
                pen = make_pen(palette_color(i), 2.0 if mine else 1.5, dashed=not mine)
                curve = pg.PlotDataItem(x, g[:, i], pen=pen, connect="finite")
                plot.addItem(curve)
                self._curves.append(curve)
        self.history_plot.setVisible(bool(self._curves))  # no empty axes
        others = [r.title for r in runs if r.number != run.number]
        colors = " ".join(f"<b style='color:{palette_color(i)}'>{n}</b>"
                          for i, n in enumerate(names))
        if not runs or run.opened is not None:
            self.history_note.setText("The gradient norms over training are drawn for runs "
                                      "trained here, not for a model opened from a file.")
        elif others:
            self.history_note.setText(
                f"Layers {colors}. Solid: {run.title}; dashed: {', '.join(others)} (the same "
                "layers). One point per snapshot, the gradient of its last batch: noisy, but "
                "its level over training is what the shortcuts change.")
        else:
            self.history_note.setText(
                f"Layers {colors}, one point per snapshot (the gradient of its last batch). "
                "Train bireal-mnist-noshortcut beside this run to see the same layers without "
                "shortcuts here, dashed.")


def _job(source, where, config, state, x, y, batch_size, init_seed, batches):
    return source, where, measure(config, state, x, y, batches, batch_size, init_seed)
