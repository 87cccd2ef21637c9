"""The training dashboard: the experiment form, the list of runs, and the live curves.

All three take plain data (a Scene, RunView tuples) and report edits through signals; the
main window wires them to the session.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.optimizers import optimizer_names
from ...data import DatasetError, dataset_info, dataset_names
from ...io.scenes import Scene, preset_names
from ...app.health import batchnorm_gap_warning
from ...app.runs import RunState
from ...app.describe import binarizer_choice, binarizer_spec, effective_binarizer, effective_clip
from ..views.style import epoch_axis, make_pen, style_plot

__all__ = ["Dashboard", "ExperimentForm", "RunList"]

_MODES = [("deterministic", "sign (deterministic)"), ("stochastic", "stochastic sign")]
_STES = [("ste_sign", "ste_sign", "gradient 1 where |x| ≤ 1 (BinaryNet)"),
         ("approx_sign", "approx_sign (Bi-Real)", "gradient 2 − 2|x| where |x| ≤ 1 (Bi-Real Net)"),
         ("swish_sign", "swish_sign (BNN+)", "smooth gradient of a scaled swish (BNN+), no hard cut")]
_CUSTOM = "(edited)"


def _compact(combo: QComboBox) -> QComboBox:
    # Long item texts must not widen the side panel; the popup still shows them in full.
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    return combo


def _tight(form: QFormLayout) -> QFormLayout:
    # Rows closer together than the style's default: the sidebar's settings and the runs
    # below them fit a 1280 x 800 screen without scrolling.
    form.setContentsMargins(8, 2, 8, 4)
    form.setVerticalSpacing(3)
    return form


def _set_combo(combo: QComboBox, data) -> None:
    i = combo.findData(data)
    if i < 0:
        combo.addItem(str(data), data)
        i = combo.count() - 1
    combo.setCurrentIndex(i)


class _BinarizerBox(QGroupBox):
    """Mode, straight-through estimator and gating for one kind of binarizer."""

    changed = Signal(object)  # the new binarizer spec

    def __init__(self, title: str, what: str, parent=None):
        super().__init__(title, parent)
        self.mode = _compact(QComboBox())
        for key, text in _MODES:
            self.mode.addItem(text, key)
        self.mode.setToolTip(f"How {what} become ±1: sign(x), or +1 with probability "
                             "hard_sigmoid(x) = clip((x+1)/2, 0, 1)")
        self.ste = _compact(QComboBox())
        for key, text, tip in _STES:
            self.ste.addItem(text, key)
            self.ste.setItemData(self.ste.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.ste.setToolTip("The straight-through estimator: the surrogate gradient used in "
                            "place of sign's zero derivative")
        self.gate = QCheckBox("gate gradients where |x| > 1")
        self.gate.setToolTip("ste_sign clip_value = 1 (checked) or none: with gating, units "
                             "saturated beyond ±1 get no gradient")
        form = _tight(QFormLayout(self))
        form.addRow("binarizer", self.mode)
        form.addRow("gradient", self.ste)
        form.addRow(self.gate)
        for w in (self.mode, self.ste):
            w.currentIndexChanged.connect(self._emit)
        self.gate.toggled.connect(self._emit)

    def show_spec(self, spec) -> None:
        mode, ste, gated = binarizer_choice(spec)
        with QSignalBlocker(self.mode), QSignalBlocker(self.ste), QSignalBlocker(self.gate):
            _set_combo(self.mode, mode)
            _set_combo(self.ste, ste)
            self.gate.setChecked(gated)
        self._sync_enabled()

    def _sync_enabled(self) -> None:
        stochastic = self.mode.currentData() == "stochastic"
        ste = self.ste.currentData()
        # stochastic_sign backpropagates with the gated ste_sign estimator; approx_sign is
        # gated by construction, swish_sign has no hard window: only ste_sign's gate is a choice.
        self.ste.setEnabled(not stochastic)
        self.gate.setEnabled(stochastic or ste == "ste_sign")

    def _emit(self) -> None:
        mode, ste = self.mode.currentData(), self.ste.currentData()
        if mode == "stochastic":
            ste = "ste_sign"
        gated = self.gate.isChecked()
        if mode == "deterministic" and ste != "ste_sign":
            gated = ste == "approx_sign"
        self.changed.emit(binarizer_spec(mode, ste, gated))


class ExperimentForm(QWidget):
    """Every setting of the scene a person changes between runs."""

    edited = Signal(dict)  # Scene field -> new value
    preset_chosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.preset = _compact(QComboBox())
        self.preset.setToolTip("Built-in scenes; File > Open scene for your own")
        for name in preset_names():
            self.preset.addItem(name, name)
        self.preset.activated.connect(lambda i: self.preset_chosen.emit(self.preset.itemData(i))
                                      if self.preset.itemData(i) != _CUSTOM else None)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setStyleSheet("color: #555;")

        self.dataset = _compact(QComboBox())
        self.dataset.setToolTip("Only datasets with the model's input shape are enabled")
        self.limit = QSpinBox()
        self.limit.setRange(0, 1_000_000)
        self.limit.setSingleStep(500)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Train on the first N examples only (0 = all)")

        self.optimizer = _compact(QComboBox())
        for name in optimizer_names():
            self.optimizer.addItem(name, name)
        self.optimizer.setToolTip("bop flips binary weights directly (Helwegen et al. 2019); "
                                  "the learning rate then applies to the real-valued parameters")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 10.0)
        self.lr.setStepType(QDoubleSpinBox.StepType.AdaptiveDecimalStepType)
        self.lr.setKeyboardTracking(False)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setKeyboardTracking(False)
        self.batch = QSpinBox()
        self.batch.setRange(1, 8192)
        self.batch.setKeyboardTracking(False)

        self.activations = _BinarizerBox("Activations", "layer inputs")
        self.weights = _BinarizerBox("Weights", "latent weights")
        self.clip = QCheckBox("clip latent weights to [−1, 1]")
        self.clip.setToolTip("weight_clip: without it latent weights drift away from 0, where "
                             "updates stop flipping their signs")
        self.weights.layout().addRow(self.clip)

        scene_box = QGroupBox("Scene")
        sf = _tight(QFormLayout(scene_box))
        sf.addRow("preset", self.preset)
        sf.addRow(self.description)
        data_box = QGroupBox("Data and training")
        df = _tight(QFormLayout(data_box))
        df.addRow("dataset", self.dataset)
        df.addRow("train examples", self.limit)
        df.addRow("optimizer", self.optimizer)
        df.addRow("learning rate", self.lr)
        sizes = QHBoxLayout()  # two short numbers share a row
        sizes.addWidget(self.epochs, 1)
        batch_label = QLabel("batch")
        batch_label.setToolTip("Batch size: examples per training step")
        sizes.addWidget(batch_label)
        sizes.addWidget(self.batch, 1)
        df.addRow("epochs", sizes)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        for box in (scene_box, data_box, self.activations, self.weights):
            layout.addWidget(box)

        self.dataset.activated.connect(
            lambda i: self.edited.emit({"dataset": self.dataset.itemData(i)}))
        self.limit.editingFinished.connect(lambda: self._emit_if("limit_train", self.limit.value()))
        self.optimizer.activated.connect(
            lambda i: self.edited.emit({"optimizer": self.optimizer.itemData(i)}))
        self.lr.valueChanged.connect(lambda v: self._emit_if("learning_rate", float(v)))
        self.epochs.valueChanged.connect(lambda v: self._emit_if("epochs", int(v)))
        self.batch.valueChanged.connect(lambda v: self._emit_if("batch_size", int(v)))
        self.activations.changed.connect(lambda spec: self.edited.emit({"activation_binarizer": spec}))
        self.weights.changed.connect(lambda spec: self.edited.emit({"kernel_binarizer": spec}))
        self.clip.toggled.connect(lambda on: self.edited.emit({"weight_clip": bool(on)}))
        self._scene: Scene | None = None

    def _emit_if(self, key: str, value) -> None:
        if self._scene is not None and getattr(self._scene, key) != value:
            self.edited.emit({key: value})

    def show_scene(self, scene: Scene, preset: str | None = None) -> None:
        """Show ``scene`` in the controls without emitting edits."""
        self._scene = scene
        blockers = [QSignalBlocker(w) for w in (self.preset, self.dataset, self.limit,
                                                  self.optimizer, self.lr, self.epochs,
                                                  self.batch, self.clip)]
        i = self.preset.findData(_CUSTOM)
        if i >= 0:
            self.preset.removeItem(i)
        if preset is not None and self.preset.findData(preset) >= 0:
            _set_combo(self.preset, preset)
        else:
            self.preset.addItem(f"{scene.name} {_CUSTOM}", _CUSTOM)
            self.preset.setCurrentIndex(self.preset.count() - 1)
        self.description.setText(scene.description)
        self._fill_datasets(scene)
        self.limit.setValue(scene.limit_train)
        _set_combo(self.optimizer, scene.optimizer)
        self.lr.setValue(scene.learning_rate)
        self.epochs.setValue(scene.epochs)
        self.batch.setValue(scene.batch_size)
        act = effective_binarizer(scene, "input_quantizer")
        kernel = effective_binarizer(scene, "kernel_quantizer")
        self.activations.show_spec(act)
        self.weights.show_spec(kernel)
        self.activations.setEnabled(act is not None)
        self.activations.setTitle("Activations" if act is not None
                                  else "Activations (none binarized)")
        self.weights.setEnabled(kernel is not None)
        self.weights.setTitle("Weights" if kernel is not None else "Weights (none binarized)")
        clip = effective_clip(scene)
        self.clip.setChecked(bool(clip))
        del blockers

    def _fill_datasets(self, scene: Scene) -> None:
        self.dataset.clear()
        try:
            shape = dataset_info(scene.dataset).input_shape
        except DatasetError:
            shape = None
        for name in dataset_names():
            info = dataset_info(name)
            self.dataset.addItem(name, name)
            item = self.dataset.model().item(self.dataset.count() - 1)
            if shape is not None and info.input_shape != shape:
                item.setEnabled(False)
                item.setToolTip(f"{info.title}: input shape {info.input_shape} needs another model")
            else:
                item.setToolTip(f"{info.title}: {info.description}")
        _set_combo(self.dataset, scene.dataset)


LEGEND_CHARS = 30  # a legend wider than this covers the curves it explains


def legend_label(title: str, limit: int = LEGEND_CHARS) -> str:
    """A run's title cut to ``limit`` characters with an ellipsis (the run list shows it
    whole)."""
    return title if len(title) <= limit else title[:limit - 1].rstrip(" ,") + "…"


def _swatch(color: str) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(color))
    return QIcon(pm)


class RunList(QWidget):
    """Runs kept for comparison: tick to show, select to inspect, remove to forget."""

    run_selected = Signal(int)
    visibility_changed = Signal(int, bool)
    remove_requested = Signal(int)
    twin_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setToolTip("Tick to show a run in the plots; select it to inspect its "
                             "weights, gating and filters")
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.currentItemChanged.connect(self._on_current)
        # A long title is cut at its end (its tooltip and the selected run's header show it
        # whole) rather than behind a scroll bar that would hide a row.
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        # Three runs stay in view however short the window: the settings above give way.
        rows = 3 * max(self.list.fontMetrics().height() + 4, 18)
        self.list.setMinimumHeight(rows + 2 * self.list.frameWidth())
        self.remove = QPushButton("Remove")
        self.remove.setToolTip("Forget the selected run (stops it if it is training)")
        self.remove.clicked.connect(self._on_remove)
        self.twin = QPushButton("Train full-precision twin")
        self.twin.setToolTip("Train the same network without binarizers or clipping, on the "
                             "same data, as a new run to compare with")
        self.twin.clicked.connect(self.twin_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.twin, 1)
        buttons.addWidget(self.remove)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._shown: tuple = ()

    def set_runs(self, views) -> None:
        key = tuple((v.number, v.title, v.color, v.visible, v.selected, v.state) for v in views)
        if key == self._shown:
            return
        self._shown = key
        with QSignalBlocker(self.list):
            numbers = [v.number for v in views]
            current = [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]
            if numbers != current:
                self.list.clear()
                for v in views:
                    item = QListWidgetItem(_swatch(v.color), "")
                    item.setData(Qt.ItemDataRole.UserRole, v.number)
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    self.list.addItem(item)
            for i, v in enumerate(views):
                item = self.list.item(i)
                item.setText(f"{v.title}  · {v.state}")
                item.setToolTip(v.title)
                item.setCheckState(Qt.CheckState.Checked if v.visible else Qt.CheckState.Unchecked)
                if v.selected:
                    self.list.setCurrentItem(item)
        self.remove.setEnabled(bool(views))

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        self.visibility_changed.emit(item.data(Qt.ItemDataRole.UserRole),
                                     item.checkState() == Qt.CheckState.Checked)

    def _on_current(self, item, _previous) -> None:
        if item is not None:
            self.run_selected.emit(item.data(Qt.ItemDataRole.UserRole))

    def _on_remove(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.remove_requested.emit(item.data(Qt.ItemDataRole.UserRole))


class _Card(QWidget):
    """A caption above a big number."""

    def __init__(self, caption: str, tooltip: str = "", parent=None):
        super().__init__(parent)
        self.caption = QLabel(caption)
        self.caption.setStyleSheet("color: #666; font-size: 9pt;")
        self.value = QLabel("–")
        self.value.setStyleSheet("font-size: 15pt; font-weight: 600;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.setSpacing(0)
        layout.addWidget(self.caption)
        layout.addWidget(self.value)
        self.setToolTip(tooltip)


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v, fmt=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _epoch_segments(steps, batches_per_epoch: int, y) -> np.ndarray:
    """Which consecutive points to join: every pair of finite points. The training curves
    are moving averages that run on across epoch ends, so nothing restarts there."""
    steps = np.asarray(steps)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    connect = ok & np.roll(ok, -1)
    if connect.size:
        connect[-1] = False
    return connect


class Dashboard(QWidget):
    """Progress of the selected run and the loss/accuracy curves of every run."""

    title = "Training"

    def show_focus(self, focus) -> None:
        self.set_runs(focus.runs)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("epoch –")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("batch –")
        for bar in (self.epoch_bar, self.batch_bar):
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setMinimumWidth(150)
        self.cards = {
            "run": _Card("selected run"),
            "loss": _Card("loss", "Moving average of the training loss (about a quarter epoch)"),
            "accuracy": _Card("train accuracy", "Moving average (about a quarter epoch)"),
            "val_accuracy": _Card("validation accuracy", "On the test split, at the last epoch end"),
            "ips": _Card("images / s", "Training throughput (validation time excluded)"),
        }
        self.cards["run"].value.setStyleSheet("font-size: 11pt; font-weight: 600;")
        self.cards["run"].value.setWordWrap(True)
        self.cards["run"].setMaximumWidth(230)
        bars = QVBoxLayout()
        bars.setSpacing(2)
        bars.addWidget(self.epoch_bar)
        bars.addWidget(self.batch_bar)
        top = QHBoxLayout()
        top.addLayout(bars)
        for card in self.cards.values():
            top.addWidget(card)
        top.addStretch(1)

        self.plots = pg.GraphicsLayoutWidget()
        self.loss_plot = self.plots.addPlot(row=0, col=0)
        self.acc_plot = self.plots.addPlot(row=0, col=1)
        # Titles and labels short enough for two plots side by side beside the sidebar at
        # 1024 px: a plot is at least as wide as its longest label, and the second one was
        # cut off.
        x_label = "epoch (solid: train, ¼-epoch average)"
        style_plot(self.loss_plot, "Loss (dashed ○: validation)",
                   x_label, "cross-entropy", legend=True)
        style_plot(self.acc_plot, "Accuracy (dashed ○: validation)",
                   x_label, "accuracy (%)", legend=True)
        self.loss_legend, self.acc_legend = self.loss_plot.legend, self.acc_plot.legend
        # Accuracy curves climb to the top right: their legend sits bottom right instead.
        self.acc_legend.anchor(itemPos=(1, 1), parentPos=(1, 1), offset=(-8, -8))
        self._show_legends()
        self.acc_plot.setYRange(0, 100, padding=0.02)
        self.acc_plot.enableAutoRange(axis="y", enable=False)
        for plot in (self.loss_plot, self.acc_plot):
            plot.setXRange(0, 1, padding=0.02)
        self.empty_note = pg.TextItem("Press Start (Space) to train the scene", color="#888",
                                      anchor=(0.5, 0.5))
        self.loss_plot.addItem(self.empty_note, ignoreBounds=True)
        self.empty_note.setPos(0.5, 0.5)

        # Shown when validation with the running batch-norm statistics and with batch
        # statistics disagree: the figure on the card would otherwise mislead.
        self.bn_warning = QLabel()
        self.bn_warning.setWordWrap(True)
        self.bn_warning.setStyleSheet("background: #fff3cd; color: #5c4400; border: 1px solid "
                                      "#e0c36a; border-radius: 3px; padding: 4px 6px;")
        self.bn_warning.hide()
        self._bn_warnings: dict[int, str | None] = {}

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.bn_warning)
        layout.addWidget(self.plots, 1)
        self.curves: dict[int, dict[str, pg.PlotDataItem]] = {}
        self._drawn: dict[int, tuple] = {}

    # -- per-run plot items, created once per run
    def _items_for(self, v) -> dict[str, pg.PlotDataItem]:
        items = self.curves.get(v.number)
        if items is None:
            items = {
                "loss": pg.PlotDataItem(name=v.title),
                "val_loss": pg.PlotDataItem(symbol="o", symbolSize=7),
                "accuracy": pg.PlotDataItem(name=v.title),
                "val_accuracy": pg.PlotDataItem(symbol="o", symbolSize=7),
            }
            for key, item in items.items():
                (self.loss_plot if "loss" in key else self.acc_plot).addItem(item)
            self.curves[v.number] = items
        return items

    def _drop(self, number: int) -> None:
        for key, item in self.curves.pop(number).items():
            plot = self.loss_plot if "loss" in key else self.acc_plot
            plot.removeItem(item)
        self._drawn.pop(number, None)
        self._bn_warnings.pop(number, None)

    def set_runs(self, views) -> None:
        for number in [n for n in self.curves if n not in {v.number for v in views}]:
            self._drop(number)
        max_epoch = 0.0
        for v in views:
            items = self._items_for(v)
            width = 3.0 if v.selected else 1.8
            s = v.snapshot
            # A legend entry means a curve is drawn: a model opened from a file has none.
            drawn = v.visible and s is not None and len(s.history.step) > 0
            style = (v.title, v.color, v.visible, v.selected, drawn)
            if self._drawn.get(v.number, (None,))[:len(style)] != style:
                items["loss"].setPen(make_pen(v.color, width))
                items["accuracy"].setPen(make_pen(v.color, width))
                for key in ("val_loss", "val_accuracy"):
                    items[key].setPen(make_pen(v.color, width, dashed=True))
                    items[key].setSymbolBrush(v.color)
                    items[key].setSymbolPen("w")
                for legend, key in ((self.loss_legend, "loss"), (self.acc_legend, "accuracy")):
                    legend.removeItem(items[key])
                    if drawn:
                        legend.addItem(items[key], legend_label(v.title))
                for item in items.values():
                    item.setVisible(v.visible)
            key = style + (None if s is None else (s.step, s.event),)
            if s is not None and self._drawn.get(v.number) != key:
                h, bpe = s.history, s.batches_per_epoch
                x = epoch_axis(h.step, bpe)
                loss, acc = np.asarray(h.loss), 100 * np.asarray(h.accuracy)
                items["loss"].setData(x, loss, connect=_epoch_segments(h.step, bpe, loss))
                items["accuracy"].setData(x, acc, connect=_epoch_segments(h.step, bpe, acc))
                ex = np.asarray(h.epoch, dtype=np.float64)
                items["val_loss"].setData(ex, np.asarray(h.val_loss), connect="finite")
                items["val_accuracy"].setData(ex, 100 * np.asarray(h.val_accuracy), connect="finite")
            self._drawn[v.number] = key
            if s is not None and v.visible:
                max_epoch = max(max_epoch, float(s.epochs))
        if max_epoch:
            for plot in (self.loss_plot, self.acc_plot):
                plot.setXRange(0, max_epoch, padding=0.02)
        self._show_legends()
        selected = next((v for v in views if v.selected), None)
        self._show_empty_note(views, selected)
        self._show_selected(selected)

    def _show_legends(self) -> None:
        for legend in (self.loss_legend, self.acc_legend):
            legend.setVisible(bool(legend.items))  # an empty legend is a bare box

    def _show_empty_note(self, views, selected) -> None:
        """Say why the plots are empty: nothing trained yet, or a model opened from a file
        (it has no curves: nothing trained it here)."""
        text = None
        if not views:
            text = "Press Start (Space) to train the scene"
        elif selected is not None and selected.opened is not None and not any(
                v.visible and v.snapshot is not None and len(v.snapshot.history.step)
                for v in views):
            head = (f"{legend_label(selected.title)}\nwas opened from a file, not trained "
                    "here:\nit has no curves. Evaluate measures it")
            if selected.opened.has_latent_weights:
                text = head + ";\nEvaluate > Continue training… trains it\nfurther and draws them."
            else:  # a .bnn: only the signs of the weights, nothing to train further
                text = head + ".\nA .bnn file keeps only the signs of\nthe weights: it cannot be " \
                    "trained further."
        if text is not None:
            self.empty_note.setText(text)
        self.empty_note.setVisible(text is not None)

    def _show_bn_warning(self, v) -> None:
        """The selected run's batch-norm warning, from its latest epoch end (the snapshots
        in between carry no batch-statistics figure, so the last verdict is kept)."""
        s = None if v is None else v.snapshot
        if s is not None and s.val_accuracy_batch_stats is not None:
            self._bn_warnings[v.number] = batchnorm_gap_warning(s)
        text = None if v is None else self._bn_warnings.get(v.number)
        self.bn_warning.setText(f"⚠ {text}" if text else "")
        self.bn_warning.setVisible(bool(text))

    def _show_selected(self, v) -> None:
        c = self.cards
        self._show_bn_warning(v)
        if v is None or v.snapshot is None or not v.snapshot.step:
            # Nothing has run (e.g. a model opened from a file, not trained here): no counts.
            c["run"].value.setText("–" if v is None else f"{v.title}\n{v.state}")
            if v is not None:
                c["run"].value.setStyleSheet(f"font-size: 11pt; font-weight: 600; "
                                             f"color: {v.color};")
            for key in ("loss", "accuracy", "val_accuracy", "ips"):
                c[key].value.setText("–")
            self.epoch_bar.setRange(0, 1)
            self.epoch_bar.setValue(0)
            self.epoch_bar.setFormat("epoch –")  # not "0 / 1": nothing has run
            self.batch_bar.setRange(0, 1)
            self.batch_bar.setValue(0)
            self.batch_bar.setFormat("batch –")
            return
        s = v.snapshot
        c["run"].value.setText(f"{v.title}\n{v.state}")
        c["run"].value.setStyleSheet(f"font-size: 11pt; font-weight: 600; color: {v.color};")
        c["loss"].value.setText(_num(s.loss))
        c["accuracy"].value.setText(_pct(s.accuracy))
        c["val_accuracy"].value.setText(_pct(s.val_accuracy))
        # Only while batches run back to back: a rate over single steps or a pause says nothing.
        c["ips"].value.setText(f"{s.images_per_second:,.0f}" if v.state is RunState.TRAINING else "–")
        self.epoch_bar.setRange(0, s.epochs)
        done_epochs = s.epoch if s.batch >= s.batches_per_epoch else s.epoch - 1
        self.epoch_bar.setValue(done_epochs)
        self.epoch_bar.setFormat(f"epoch {s.epoch} / {s.epochs}")
        self.batch_bar.setRange(0, s.batches_per_epoch)
        self.batch_bar.setValue(s.batch)
        self.batch_bar.setFormat("batch %v / %m")
