"""Gradient gating: where each binarized layer's inputs fall relative to the
straight-through window |x| <= 1, and what fraction of their gradients is cut.

Inputs inside the window pass a gradient (green); outside they are gated off (grey).
With ``clip_value = none`` there is no window and nothing is gated.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout

from ..views.style import corner_note, epoch_axis, make_brush, make_pen, palette_color, style_plot
from ..views.throttle import Staggered, SteadyRange
from .perlayer import PerLayerPanel, layer_specs_from_snapshot

__all__ = ["GatingPanel"]

COLUMNS = 3
_EMPTY = "Pre-activations and gated gradients appear here while a binary network trains."
_NOTHING_GATED = "No layer binarizes its input: nothing is gated."
_PASS_COLOR = "#2a9d8f"
_GATED_COLOR = "#9a9a9a"


class _LayerGate:
    """One layer's pre-activation histogram with the gradient window shaded."""

    def __init__(self, plot: pg.PlotItem, name: str, type_name: str):
        self.plot = plot
        style_plot(plot, f"<b>{name}</b> <span style='color:#666'>{type_name}</span>",
                   "input to the binarizer x", "count")
        plot.enableAutoRange(enable=False)
        self.region = pg.LinearRegionItem(values=(-1, 1), movable=False,
                                          brush=make_brush(_PASS_COLOR, 35),
                                          pen=make_pen(_PASS_COLOR, 1.0, dashed=True))
        self.region.setZValue(-10)
        plot.addItem(self.region, ignoreBounds=True)
        # Two filled step curves (one path each) rather than 60 bars: far cheaper to paint.
        self.passing = pg.PlotDataItem(stepMode="center", fillLevel=0, pen=None,
                                       brush=make_brush(_PASS_COLOR, 220))
        self.gated = pg.PlotDataItem(stepMode="center", fillLevel=0, pen=None,
                                     brush=make_brush(_GATED_COLOR, 200))
        plot.addItem(self.passing)
        plot.addItem(self.gated)
        self.note = corner_note(plot)
        self._window = object()
        self._y = SteadyRange()
        self._text = None

    def update(self, t) -> None:
        edges = np.asarray(t.preact_edges, dtype=np.float64)
        counts = np.asarray(t.preact_counts, dtype=np.float64)
        centres = 0.5 * (edges[:-1] + edges[1:])
        window = t.gate_window
        if window is not None:
            inside = (centres >= window[0]) & (centres <= window[1])
        else:
            inside = np.ones(len(centres), dtype=bool)
        self.passing.setData(edges, np.where(inside, counts, 0.0))
        self.gated.setData(edges, np.where(inside, 0.0, counts))
        top = self._y.fit(float(counts.max()) if counts.size else 0.0)
        if top is not None:
            self.plot.setYRange(0, top, padding=0)
        if window != self._window:
            self._window = window
            self.region.setVisible(window is not None)
            if window is not None:
                self.region.setRegion(window)
            self.plot.setXRange(float(edges[0]), float(edges[-1]), padding=0.01)
        if window is None:
            text = "no gating:<br>every gradient passes"
        else:
            text = (f"gated off: <b>{100 * (t.gated_fraction or 0.0):.1f}%</b>"
                    f"<br>(|x| > {max(abs(window[0]), abs(window[1])):g})")
        if text != self._text:
            self._text = text
            self.note.setHtml(f"<span style='font-size:9pt'>{text}</span>")


class GatingPanel(PerLayerPanel):
    """Per-layer pre-activation histograms and the gated fraction over time."""

    title = "Gradient gating"
    training_only = True  # pre-activations and gradients exist only while a model trains

    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.caption = QLabel()
        self.caption.setStyleSheet("font-size: 10pt; padding: 2px 4px;")
        self.caption.setWordWrap(True)  # a long caption must not widen the page
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        layout.addWidget(self.caption)
        layout.addWidget(self.view, 1)
        self.gates: list[_LayerGate] = []
        self.columns: list[int] = []  # index into snapshot.layers of each gate
        self.fraction_plot: pg.PlotItem | None = None
        self.fraction_curves: list[pg.PlotDataItem] = []
        self._layout_key: tuple | None = None  # layer specs the plots are built for
        self._wanted: tuple = ()  # layer specs to build, once visible
        self._shown = None
        self._epochs = None
        self._updates = Staggered(parent=self)
        self._show_note(_EMPTY)

    def _show_note(self, text: str) -> None:
        self.view.clear()
        self.gates, self.columns, self.fraction_curves, self.fraction_plot = [], [], [], None
        self.view.addLabel(text, color="#888", size="12pt")

    def _build(self, specs) -> None:
        self.view.clear()
        self.columns = [i for i, spec in enumerate(specs) if spec[2]]
        self.gates, self.fraction_curves = [], []
        self._shown = self._epochs = None
        for cell, i in enumerate(self.columns):
            plot = self.view.addPlot(row=cell // COLUMNS, col=cell % COLUMNS)
            self.gates.append(_LayerGate(plot, specs[i][0], specs[i][1]))
        cell = len(self.columns)
        self.fraction_plot = self.view.addPlot(row=cell // COLUMNS, col=cell % COLUMNS,
                                               colspan=COLUMNS - cell % COLUMNS)
        style_plot(self.fraction_plot, "Gradients gated off by the STE", "epoch",
                   "inputs with zero gradient (%)", legend=True)
        self.fraction_plot.enableAutoRange(enable=False)
        self.fraction_plot.setYRange(0, 100, padding=0.02)
        self.fraction_plot.legend.setVisible(False)  # until there are curves to name
        for i in self.columns:
            curve = pg.PlotDataItem(pen=make_pen(palette_color(i), 2.0), name=specs[i][0])
            self.fraction_plot.addItem(curve)
            self.fraction_curves.append(curve)

    def _sync_layout(self) -> None:
        if self._wanted != self._layout_key:
            self._layout_key = self._wanted
            if any(spec[2] for spec in self._wanted):
                self._build(self._wanted)
            else:
                self._show_note(_NOTHING_GATED if self._wanted else _EMPTY)

    def set_snapshot(self, snapshot) -> None:
        """Draw ``snapshot`` (a trainer Snapshot, or None to show no data)."""
        if snapshot is None or not snapshot.layers:
            if self._shown is not None:
                self._shown = None
                self._updates.submit([])
                for gate in self.gates:
                    gate.passing.setData([], [])
                    gate.gated.setData([], [])
                for curve in self.fraction_curves:
                    curve.setData([], [])
            return
        self._wanted = layer_specs_from_snapshot(snapshot)
        self._sync_layout()
        if self.fraction_plot is not None and snapshot.epochs != self._epochs:
            self._epochs = snapshot.epochs
            self.fraction_plot.setXRange(0, snapshot.epochs, padding=0.02)
        if snapshot is self._shown or not self.gates:
            return
        self._shown = snapshot
        jobs = [partial(gate.update, snapshot.layers[i]) for gate, i in zip(self.gates, self.columns)]
        self._updates.submit([*jobs, partial(self._update_fractions, snapshot)])

    def _update_fractions(self, snapshot) -> None:
        h = snapshot.history
        x = epoch_axis(h.step, snapshot.batches_per_epoch)
        gated = np.asarray(h.gated_fraction)
        for curve, i in zip(self.fraction_curves, self.columns):
            if gated.ndim == 2 and gated.shape[0] == len(x) and i < gated.shape[1]:
                curve.setData(x, 100 * gated[:, i], connect="finite")
        if self.fraction_plot.legend is not None:  # a key means curves are drawn
            self.fraction_plot.legend.setVisible(bool(len(h.step)))
