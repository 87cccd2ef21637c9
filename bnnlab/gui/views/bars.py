"""A categorical bar chart: grouped or stacked series, named categories, optional value labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg

from .style import style_plot

__all__ = ["BarChart"]


LABEL_PX = 20  # height of a value label above a bar, with a margin
GAP_PX = 3  # between two neighbouring labels, or a label and the next bar


class BarChart(pg.PlotWidget):
    """Bars for a few named series over named categories.

    ``series`` is a list of (label, colour), where colour may also be a list with one
    colour per category (e.g. the binary network orange, its twin blue). Series are drawn side by side, or on top of each
    other with ``stacked=True``. ``value_format`` turns each value into the text written
    above its bar (None: no labels). ``y_max`` fixes the top of the axis (e.g. 1 for
    probabilities); otherwise the axis follows the data.
    """

    def __init__(self, title: str, x_label: str, y_label: str,
                 series: Sequence[tuple[str, str]], *, stacked: bool = False,
                 value_format: Callable[[float], str] | None = None,
                 y_max: float | None = None, legend: bool = True, parent=None):
        super().__init__(parent=parent)
        item = style_plot(self.getPlotItem(), title, x_label, y_label, mouse=False,
                          grid=(False, True))
        self._stacked = stacked
        self._format = value_format
        self._y_max = y_max
        self._categories: list[str] = []
        self._values = np.zeros((len(series), 0))
        self._visible = [True] * len(series)
        self._legend = item.addLegend(offset=(-10, 10)) if legend and len(series) > 1 else None
        self._in_legend: set[int] = set()
        self._bars = []
        self._names = [label for label, _ in series]
        self._colors: list[list[str]] = []
        for label, color in series:
            colors = [color] if isinstance(color, str) else list(color)
            self._colors.append(colors)
            bar = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(colors[0]),
                                  pen=pg.mkPen(None), name=label)
            item.addItem(bar)
            self._bars.append(bar)
        self._labels: list[list[pg.TextItem]] = [[] for _ in series]
        self._top = 0.0  # the tallest bar
        self._label_px = LABEL_PX  # room the value labels take above the bars
        self._bar_width = 0.8  # of one bar, in categories
        item.getViewBox().sigResized.connect(lambda *_: (self._place_labels(), self._fit_y()))

    def set_value_format(self, value_format: Callable[[float], str] | None) -> None:
        self._format = value_format
        self._redraw()

    # -- data
    def set_categories(self, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        if names == self._categories:
            return
        self._categories = names
        self.getPlotItem().getAxis("bottom").setTicks([list(enumerate(names))])
        item = self.getPlotItem()
        for row in self._labels:
            for t in row:
                item.removeItem(t)
            row.clear()
        if self._format is not None:
            for s, row in enumerate(self._labels):
                for _ in names:
                    t = pg.TextItem("", color="#555", anchor=(0.5, 1.0))
                    item.addItem(t)
                    row.append(t)
        self._values = np.full((len(self._bars), len(names)), np.nan)
        self.getPlotItem().setXRange(-0.6, len(names) - 0.4, padding=0)

    def set_values(self, values: Sequence[Sequence[float] | None]) -> None:
        """One sequence per series (None hides that series), each as long as the categories."""
        n = len(self._categories)
        for s, v in enumerate(values):
            self._visible[s] = v is not None
            self._values[s] = np.nan if v is None else np.asarray(v, float)[:n]
        self._redraw()

    def values(self) -> np.ndarray:
        """The plotted values, (series, categories); NaN for hidden series."""
        return self._values.copy()

    # -- drawing
    def _sync_legend(self, shown: list[int]) -> None:
        # A hidden series leaves the legend (pyqtgraph would keep it with an eye icon).
        if self._legend is None or set(shown) == self._in_legend:
            return
        self._legend.clear()
        for s in shown:
            self._legend.addItem(self._bars[s], self._names[s])
        self._in_legend = set(shown)

    def _redraw(self) -> None:
        shown = [s for s in range(len(self._bars)) if self._visible[s]]
        self._sync_legend(shown)
        n = len(self._categories)
        x = np.arange(n, dtype=float)
        width = 0.8 if self._stacked else 0.8 / max(1, len(shown))
        bottom = np.zeros(n)
        top = 0.0
        # A label in a stacked segment thinner than this would spill over its neighbours.
        too_thin = 0.08 * float(np.max(np.nansum(self._values[shown], axis=0), initial=0.0))
        for s, bar in enumerate(self._bars):
            if s not in shown:
                bar.setVisible(False)
                for t in self._labels[s]:
                    t.setVisible(False)
                continue
            h = np.nan_to_num(self._values[s])
            if self._stacked:
                xs, y0 = x, bottom.copy()
                bottom = bottom + h
            else:
                k = shown.index(s)
                xs, y0 = x - 0.4 + width * (k + 0.5), np.zeros(n)
            colors = self._colors[s]
            brushes = [pg.mkBrush(colors[i % len(colors)]) for i in range(n)]
            bar.setOpts(x=xs, height=h, y0=y0, width=width, brushes=brushes)
            bar.setVisible(True)
            top = max(top, float(np.max(y0 + h, initial=0.0)))
            for t, xi, yi, v in zip(self._labels[s], xs, y0 + h, h):
                t.setText(self._format(float(v)) if self._format else "")
                # Stacked labels go inside their segment, grouped ones above the bar.
                t.setPos(float(xi), float(yi - v / 2) if self._stacked else float(yi))
                if self._stacked:
                    t.setAnchor((0.5, 0.5))
                    t.setVisible(bool(v > too_thin))
        self._top = top
        self._bar_width = width
        self._place_labels()
        self._fit_y()

    def _place_labels(self) -> None:
        """Grouped bars' labels: level above their bar when they fit its width, upright
        when only their height does, hidden when neither would (side by side, a label wider
        than its bar covered the next bar and its label)."""
        if self._stacked or self._format is None:
            return
        shown = [s for s in range(len(self._bars)) if self._visible[s]]
        labels = [t for s in shown for t in self._labels[s]]
        vb = self.getPlotItem().getViewBox()
        (x0, x1), _ = vb.viewRange()
        bar_px = vb.width() * self._bar_width / max(x1 - x0, 1e-9)
        sizes = [t.textItem.boundingRect() for t in labels]
        # The text item's box has a margin of a few pixels on each side: measure the ink.
        margin = 2 * labels[0].textItem.document().documentMargin() if labels else 0.0
        wide = max((r.width() - margin for r in sizes), default=0.0)
        tall = max((r.height() - margin for r in sizes), default=0.0)
        if wide + GAP_PX <= bar_px:
            angle, anchor, visible, room = 0, (0.5, 1.0), True, LABEL_PX
        elif tall + GAP_PX <= bar_px:
            angle, anchor, visible, room = 90, (0.0, 0.5), True, wide + margin + GAP_PX
        else:
            angle, anchor, visible, room = 0, (0.5, 1.0), False, 0.0
        for t in labels:
            if t.angle != angle:
                t.setAngle(angle)
            t.setAnchor(anchor)
            t.setVisible(visible)
        self._label_px = room

    def _fit_y(self) -> None:
        """The y range: the data, a legend's head-room, and above the tallest bar room for
        its value label, in pixels (a fraction of the range was too little in a short
        chart: the label was cut by the top)."""
        top = self._top
        if self._y_max is not None or top <= 0:
            y_max = self._y_max if self._y_max is not None else 1.0
        else:
            head = 1.7 if self._legend is not None else 1.18
            height = self.getPlotItem().getViewBox().height()
            if self._format is not None and not self._stacked and height > 0:
                # The label must fit between the bar and the top.
                head = max(head, 1.0 / (1.0 - min(0.6, self._label_px / height)))
            y_max = top * head
        self.getPlotItem().setYRange(0, y_max, padding=0)
