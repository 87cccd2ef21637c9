"""Latent weights: where the real-valued weights behind the signs sit, and how often the
signs flip.

With weight_clip the latent weights pile up at ±1 and keep flipping; without it they
drift outwards (the x range grows) and, far from zero, updates stop changing any sign.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout

from ..views.style import corner_note, epoch_axis, make_brush, make_pen, palette_color, style_plot
from ..views.throttle import Staggered, SteadyRange
from .perlayer import PerLayerPanel, layer_specs_from_snapshot

__all__ = ["WeightsPanel"]

COLUMNS = 3
_BOUND_COLOR = "#d62728"


class _LayerHistogram:
    """One quantized layer's latent-weight histogram with the clip bounds."""

    def __init__(self, plot: pg.PlotItem, color: str, name: str, type_name: str):
        self.plot = plot
        style_plot(plot, f"<b>{name}</b> <span style='color:#666'>{type_name}</span>",
                   "latent weight w", "count")
        plot.enableAutoRange(enable=False)
        self.curve = pg.PlotDataItem(stepMode="center", fillLevel=0, pen=make_pen(color, 1.5),
                                     brush=make_brush(color, 110))
        plot.addItem(self.curve)
        self.bounds = [pg.InfiniteLine(pos=p, angle=90, movable=False) for p in (-1.0, 1.0)]
        for line in self.bounds:
            plot.addItem(line, ignoreBounds=True)
        self.note = corner_note(plot)
        self._clip_state = object()
        self._span = None
        self._y = SteadyRange()
        self._text = None

    def update(self, t) -> None:
        counts = np.asarray(t.weight_counts)
        self.curve.setData(np.asarray(t.weight_edges), counts)
        top = self._y.fit(float(counts.max()) if counts.size else 0.0)
        if top is not None:
            self.plot.setYRange(0, top, padding=0)
        span = (float(t.weight_edges[0]), float(t.weight_edges[-1]))
        if span != self._span:  # constant while clipped; grows as unclipped weights drift
            self._span = span
            self.plot.setXRange(*span, padding=0)
        clipped = t.clip is not None
        bound = t.clip if clipped else 1.0
        if self._clip_state != t.clip:
            self._clip_state = t.clip
            pen = make_pen(_BOUND_COLOR if clipped else "#888888", 2.0 if clipped else 1.2,
                           dashed=True)
            for line, sign in zip(self.bounds, (-1, 1)):
                line.setPen(pen)
                line.setValue(sign * bound)
        where = f"at ±{bound:g}" if clipped else f"|w| ≥ {bound:g} (no clip)"
        text = (f"<span style='font-size:9pt'>{where}: <b>{100 * t.frac_at_clip:.1f}%</b>"
                f"<br>max |w| = {t.weight_abs_max:.2f}</span>")
        if text != self._text:
            self._text = text
            self.note.setHtml(text)


class WeightsPanel(PerLayerPanel):
    """Per-layer latent-weight histograms and the sign-flip ratio over time."""

    title = "Latent weights"

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
        self.histograms: list[_LayerHistogram] = []
        self.flip_plot: pg.PlotItem | None = None
        self.flip_curves: list[pg.PlotDataItem] = []
        self._layout_key: tuple | None = None  # layer specs the plots are built for
        self._wanted: tuple = ()  # layer specs to build, once visible
        self._shown = None
        self._epochs = None
        self._updates = Staggered(parent=self)
        self._show_placeholder()

    def _show_placeholder(self) -> None:
        self.view.clear()
        self.histograms, self.flip_curves, self.flip_plot = [], [], None
        self.view.addLabel("Latent weights appear here for a run with binary weights, or a "
                           "model file that holds them (.npz, .h5).", color="#888", size="12pt")

    def _build(self, specs) -> None:
        self.view.clear()
        self.histograms, self.flip_curves = [], []
        self._every = self._epochs = None
        self._shown = None
        self._flip_y = SteadyRange()
        for i, (name, type_name, _) in enumerate(specs):
            plot = self.view.addPlot(row=i // COLUMNS, col=i % COLUMNS)
            self.histograms.append(_LayerHistogram(plot, palette_color(i), name, type_name))
        cell = len(specs)
        self.flip_plot = self.view.addPlot(row=cell // COLUMNS, col=cell % COLUMNS,
                                           colspan=COLUMNS - cell % COLUMNS)
        style_plot(self.flip_plot, "Sign flips between snapshots", "epoch",
                   "weights flipped (%)", legend=True)
        self._flip_note = corner_note(self.flip_plot)
        self.flip_plot.enableAutoRange(enable=False)
        self.flip_plot.legend.setVisible(False)  # until there are curves to name
        for i, (name, _, _) in enumerate(specs):
            curve = pg.PlotDataItem(pen=make_pen(palette_color(i), 2.0), name=name)
            self.flip_plot.addItem(curve)
            self.flip_curves.append(curve)

    def _sync_layout(self) -> None:
        if self._wanted != self._layout_key:
            self._layout_key = self._wanted
            if self._wanted:
                self._build(self._wanted)
            else:
                self._show_placeholder()

    def set_snapshot(self, snapshot) -> None:
        """Draw ``snapshot`` (a trainer Snapshot, or None to show no data)."""
        if snapshot is None or not snapshot.layers:
            if self._shown is not None:
                self._shown = None
                self._updates.submit([])
                for hist in self.histograms:
                    hist.curve.setData([], [])
                for curve in self.flip_curves:
                    curve.setData([], [])
            return
        self._wanted = layer_specs_from_snapshot(snapshot)
        self._sync_layout()
        if snapshot.epochs != self._epochs:
            self._epochs = snapshot.epochs
            self.flip_plot.setXRange(0, snapshot.epochs, padding=0.02)
        if snapshot is self._shown:
            return
        self._shown = snapshot
        jobs = [partial(hist.update, t) for hist, t in zip(self.histograms, snapshot.layers)]
        self._updates.submit([*jobs, partial(self._update_flips, snapshot)])

    def _update_flips(self, snapshot) -> None:
        h = snapshot.history
        x = epoch_axis(h.step, snapshot.batches_per_epoch)
        flips = 100 * np.asarray(h.flip_ratio)
        for i, curve in enumerate(self.flip_curves):
            if flips.ndim == 2 and flips.shape[0] == len(x) and i < flips.shape[1]:
                curve.setData(x, flips[:, i], connect="finite")
        if flips.size:
            top = self._flip_y.fit(float(np.nanmax(flips)) if np.isfinite(flips).any() else 0.0)
            if top is not None:
                self.flip_plot.setYRange(0, top, padding=0)
        if self.flip_plot.legend is not None:  # no curves, no key (it would cover the note)
            self.flip_plot.legend.setVisible(bool(len(h.step)))
        if not len(h.step) and self._every != 0:
            self._every = 0  # e.g. a model opened from a file
            self._flip_note.setHtml("<span style='font-size:9pt'>no training steps "
                                    "recorded:<br>flips are counted while<br>the model "
                                    "trains</span>")
        if len(h.step) >= 2:
            # Snapshots come every N steps (fewer at epoch ends): flips are counted per N steps.
            # A note, not the title: a new title re-lays out every plot of the panel.
            every = int(np.max(np.diff(h.step)))
            if every != self._every:
                self._every = every
                self._flip_note.setHtml(f"<span style='font-size:9pt'>counted over {every} "
                                        f"training steps</span>")
