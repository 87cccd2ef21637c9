"""Compare over seeds: the current scene against a variant, each trained with seeds 0..N-1.

The curves are the mean over seeds per epoch with a shaded band of ±1 sample standard
deviation; the table gives each scene's final validation accuracy (mean, sd, min, max,
n) and the line under it the difference between the first two scenes with its 95%
confidence interval, computed as ``bnnlab compare`` computes them (bnnlab/app/compare.py).
Every training also becomes a row of the Results table.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...app.seeds import default_variant, variant_choices
from ..views.style import make_brush, make_pen, palette_color, style_plot

__all__ = ["SeedsPanel"]

_SUMMARY_COLUMNS = ("scene", "what differs", "n", "mean", "sd", "min", "max")


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


class SeedsPanel(QWidget):
    """Choose a variant and a number of seeds, train both over the seeds, read the spread."""

    title = "Compare seeds"
    compare_requested = Signal(str, int, int)  # variant preset, seeds, epochs (0: the scenes')
    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.variant = QComboBox()
        self.variant.setToolTip("A preset on the same dataset, trained with the same seeds")
        self.seeds = QSpinBox()
        self.seeds.setRange(1, 100)
        self.seeds.setValue(5)
        self.seeds.setToolTip("Each scene trains with seeds 0..N-1 (initial weights, batch "
                              "order, stochastic draws)")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setSpecialValueText("each scene's")
        self.epochs.setToolTip("Epochs of every training (each scene's own when not set)")
        self.start = QPushButton("Compare over seeds")
        self.start.clicked.connect(self._request)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop within a batch; finished trainings stay")
        self.cancel.clicked.connect(self.cancel_requested)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)

        controls = QGridLayout()
        controls.addWidget(QLabel("compare with"), 0, 0)
        controls.addWidget(self.variant, 0, 1)
        controls.addWidget(QLabel("seeds"), 0, 2)
        controls.addWidget(self.seeds, 0, 3)
        controls.addWidget(QLabel("epochs"), 0, 4)
        controls.addWidget(self.epochs, 0, 5)
        controls.addWidget(self.start, 0, 6)
        controls.addWidget(self.cancel, 0, 7)
        controls.setColumnStretch(1, 1)

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setMinimumHeight(220)
        self.plots.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.acc_plot = self.plots.addPlot(row=0, col=0)
        self.loss_plot = self.plots.addPlot(row=0, col=1)
        style_plot(self.acc_plot, "Validation accuracy: mean over seeds, band ±1 sd",
                   "epoch", "validation accuracy (%)", legend=True)
        style_plot(self.loss_plot, "Training loss: mean over seeds, band ±1 sd",
                   "epoch", "training loss (epoch mean)", legend=True)
        # Accuracy climbs to the top right: its legend sits bottom right instead.
        self.acc_plot.legend.anchor(itemPos=(1, 1), parentPos=(1, 1), offset=(-8, -8))
        self.acc_plot.setYRange(0, 100, padding=0.02)
        self.empty_note = pg.TextItem("Choose a variant and press Compare over seeds",
                                      color="#888", anchor=(0.5, 0.5))
        self.acc_plot.addItem(self.empty_note, ignoreBounds=True)
        self.empty_note.setPos(0.5, 50)
        self._items: list = []

        self.summary = QTableWidget(0, len(_SUMMARY_COLUMNS))
        self.summary.setHorizontalHeaderLabels(
            ["scene", "what differs", "n", "mean", "sd (points)", "min", "max"])
        self.summary.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.summary.verticalHeader().setVisible(False)
        header = self.summary.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.summary.setMaximumHeight(110)
        self.summary.setToolTip("Final validation accuracy over seeds (running batch-norm "
                                "statistics); sd: sample standard deviation")
        self.difference = QLabel()
        self.difference.setWordWrap(True)
        self.difference.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        bottom = QHBoxLayout()
        bottom.addWidget(self.progress)
        bottom.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.heading)
        layout.addLayout(controls)
        layout.addLayout(bottom)
        layout.addWidget(self.plots, 1)
        layout.addWidget(QLabel("<b>Final validation accuracy</b> (every training is also a "
                                "row of the Results table)"))
        layout.addWidget(self.summary)
        layout.addWidget(self.difference)
        self._scene_key = None
        self._shown = None
        self.busy = False
        self.set_scene(None)
        self._show_comparison(None)

    # -- the scene the comparison starts from
    def set_scene(self, scene) -> None:
        """Offer the variants of ``scene`` (the window calls this when the scene changes)."""
        if scene is None:
            self.heading.setText("Open a scene to compare it over seeds.")
            self.variant.clear()
            self.start.setEnabled(False)
            return
        choices = variant_choices(scene)
        key = (scene.name, tuple(choices))
        self.heading.setText(
            f"Train <b>{scene.name}</b> (the current scene, with its settings) and a variant "
            "with seeds 0..N-1, then compare: curves are the mean over seeds with a band of "
            "±1 standard deviation; the difference of final validation accuracy comes with "
            "its 95% confidence interval.")
        if key != self._scene_key:
            self._scene_key = key
            current = self.variant.currentData()
            self.variant.clear()
            for name in choices:
                self.variant.addItem(name, name)
            pick = current if current in choices else default_variant(scene, choices)
            if pick is not None:
                self.variant.setCurrentIndex(choices.index(pick))
        self._sync_buttons()

    def _request(self) -> None:
        name = self.variant.currentData()
        if name:
            self.compare_requested.emit(name, self.seeds.value(), self.epochs.value())

    def _sync_buttons(self) -> None:
        self.start.setEnabled(not self.busy and self.variant.count() > 0)
        self.cancel.setEnabled(self.busy)

    # -- the panel protocol
    def show_focus(self, focus) -> None:
        c = focus.comparison
        self.busy = c is not None and c.live
        self._sync_buttons()
        key = None if c is None else (c.number, c.version)
        if key != self._shown:
            self._shown = key
            self._show_comparison(c)

    def _show_comparison(self, c) -> None:
        if c is None:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("not started")
            self.status.setText("")
        else:
            self.progress.setRange(0, max(1, c.total))
            self.progress.setValue(c.done)
            self.progress.setFormat("%v/%m epochs")
            trained = sum(len(v) for v in c.runs.values())
            where = {"running": f"training {c.current}" if c.current else "starting",
                     "cancelling": "cancelling…",
                     "finished": "finished",
                     "cancelled": "cancelled",
                     "failed": f"failed: {c.error.splitlines()[0] if c.error else ''}"}[c.state]
            self.status.setText(f"Comparison {c.number}: {where} · {trained} of "
                                f"{c.seeds * len(c.variants)} trainings done · "
                                f"{c.seconds:.0f} s")
        self._draw_bands(c)
        self._fill_summary(c)

    def _draw_bands(self, c) -> None:
        for plot, item in self._items:
            plot.removeItem(item)
        self._items = []
        for plot in (self.acc_plot, self.loss_plot):
            plot.legend.clear()
        self.empty_note.setVisible(c is None or not any(c.runs.values()))
        for plot in (self.acc_plot, self.loss_plot):  # no empty legend box
            plot.legend.setVisible(not self.empty_note.isVisible())
        if c is None:
            return
        if any(c.runs.values()):  # the spread matters more than the distance from zero
            self.acc_plot.enableAutoRange(axis="y")
        acc, loss = c.bands("val_accuracy"), c.bands("loss")
        longest = max((b.epochs.size for b in acc.values()), default=0)
        for plot in (self.acc_plot, self.loss_plot):  # whole epochs on the axis
            plot.getAxis("bottom").setTickSpacing(*((1, 1) if longest <= 20 else (5, 1)))
        for i, label in enumerate(c.labels):
            color = palette_color(i)
            for plot, bands, scale in ((self.acc_plot, acc, 100.0), (self.loss_plot, loss, 1.0)):
                band = bands.get(label)
                if band is None:
                    continue
                x = band.epochs.astype(np.float64)
                mean = band.mean * scale
                sd = np.nan_to_num(band.std) * scale  # one seed: no band
                n = int(band.n.min()) if band.n.size else 0
                line = pg.PlotDataItem(x, mean, pen=make_pen(color), symbol="o", symbolSize=6,
                                       symbolBrush=make_brush(color), symbolPen=None,
                                       name=f"{label} (n={n})")
                upper = pg.PlotDataItem(x, mean + sd, pen=pg.mkPen(None))
                lower = pg.PlotDataItem(x, mean - sd, pen=pg.mkPen(None))
                fill = pg.FillBetweenItem(upper, lower, brush=make_brush(color, 60))
                for item in (fill, upper, lower, line):
                    plot.addItem(item)
                    self._items.append((plot, item))

    def _fill_summary(self, c) -> None:
        doc = c.report() if c is not None else None
        rows = doc["scenes"] if doc is not None else []
        self.summary.setRowCount(len(rows))
        for i, s in enumerate(rows):
            std = s["val_accuracy_std"]
            cells = [s["scene"], c.differs(s["scene"]), str(s["n"]), _pct(s["val_accuracy_mean"]),
                     "–" if std is None else f"{100 * std:.2f}", _pct(s["val_accuracy_min"]),
                     _pct(s["val_accuracy_max"])]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.summary.setItem(i, j, item)
        d = doc["difference"] if doc is not None else None
        if d is None:
            self.difference.setText("The difference between the two scenes appears when both "
                                    "have finished a training.")
            return
        a, b = d["scenes"]
        text = (f"<b>{a} − {b}</b>: {100 * d['val_accuracy_difference']:+.2f} points of final "
                "validation accuracy, ")
        if d["ci_low"] is None:
            text += "no confidence interval yet (it needs two seeds of each)"
        else:
            text += (f"95% CI [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] "
                     f"({d['method']})")
            p = d.get("paired")
            if p and p["ci_low"] is not None:
                text += (f"; paired by seed: [{100 * p['ci_low']:+.2f}, "
                         f"{100 * p['ci_high']:+.2f}]")
        self.difference.setText(text + ".")

    # -- for tests
    def band_data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The mean curves drawn in the accuracy plot: legend name -> (x, y)."""
        out = {}
        for plot, item in self._items:
            if plot is self.acc_plot and isinstance(item, pg.PlotDataItem) and item.name():
                x, y = item.getData()
                out[item.name()] = (x, y)
        return out
