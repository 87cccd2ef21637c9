"""The look of every plot: one palette, one way to style a plot, pens and brushes.

Dark text on white, closer to printed figures and legible in screenshots. The palette is
the runs' palette (:data:`bnnlab.app.runs.RUN_COLORS`): layers, series and runs draw from
the same distinguishable colours. Two meanings keep fixed colours everywhere: the binary
network and its full-precision twin, and the two classes of the 2-D data sets.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont

from ...app.runs import RUN_COLORS

__all__ = [
    "BNN_COLOR",
    "CLASS_COLORS",
    "GRID_GAP_VALUE",
    "PALETTE",
    "TITLE_SIZE",
    "TWIN_COLOR",
    "configure_pyqtgraph",
    "corner_note",
    "epoch_axis",
    "make_brush",
    "make_pen",
    "make_plot",
    "palette_color",
    "style_plot",
]

PALETTE = tuple(RUN_COLORS)

# The binary network and its full-precision twin keep the same colours in every chart.
BNN_COLOR = "#d9480f"
TWIN_COLOR = "#1c7ed6"

# TensorFlow Playground's two classes: orange for the negative class, blue for the positive.
CLASS_COLORS = ("#f59322", "#0877bd")

# Grey between black/white filter tiles, so that neither a -1 nor a +1 tile merges with it.
GRID_GAP_VALUE = 0.5

TITLE_SIZE = "10pt"
_AXIS_FONT_PT = 9
_LEFT_AXIS_WIDTH = 62  # room for "250000" and the rotated axis title at 9 pt


def configure_pyqtgraph() -> None:
    pg.setConfigOptions(antialias=True, background="w", foreground="#222222")


def palette_color(i: int) -> str:
    """The i-th colour of the palette (layers, series), cycling."""
    return PALETTE[i % len(PALETTE)]


def make_pen(color: str, width: float = 2.0, dashed: bool = False) -> pg.QtGui.QPen:
    pen = pg.mkPen(color=color, width=width)
    if dashed:
        pen.setStyle(Qt.PenStyle.DashLine)
    return pen


def make_brush(color: str, alpha: int = 255) -> pg.QtGui.QBrush:
    c = QColor(color)
    c.setAlpha(alpha)
    return pg.mkBrush(c)


def style_plot(item: pg.PlotItem, title: str, x_label: str, y_label: str, *,
               legend: bool = False, x_units: str | None = None, y_units: str | None = None,
               mouse: bool = True, grid: tuple[bool, bool] = (True, True),
               fixed_axis: bool = True) -> pg.PlotItem:
    """Title, axis labels, a faint grid and readable fonts on a PlotItem (returned).

    ``legend`` adds a legend (``item.legend``); ``mouse=False`` pins the view, for plots
    whose range is meaningful and fixed; ``fixed_axis`` keeps the left axis one width, so a
    live plot is not laid out again when its tick labels grow (0.5 -> 25000).
    """
    item.setTitle(title, size=TITLE_SIZE)
    font = QFont()
    font.setPointSize(_AXIS_FONT_PT)
    for side, text, units in (("bottom", x_label, x_units), ("left", y_label, y_units)):
        axis = item.getAxis(side)
        axis.setLabel(text, units=units, **{"font-size": f"{_AXIS_FONT_PT + 1}pt"})
        axis.setTickFont(font)
        # The finest tick level doubles the grid lines painted per frame, for no legibility gain.
        axis.setStyle(maxTickLevel=1)
    if fixed_axis:
        item.getAxis("left").setWidth(_LEFT_AXIS_WIDTH)
    item.showGrid(x=grid[0], y=grid[1], alpha=0.2)
    if mouse:
        item.setMenuEnabled(True)  # keeps pyqtgraph's own "Export..." entry on the plot
    else:
        item.setMouseEnabled(x=False, y=False)
        item.hideButtons()
    if legend:
        item.addLegend(offset=(-8, 8), labelTextSize=f"{_AXIS_FONT_PT}pt",
                       brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#bbbbbb"))
    return item


def make_plot(title: str, x_label: str, y_label: str, *, parent=None, **options) -> pg.PlotWidget:
    """A PlotWidget styled by :func:`style_plot` (same options), ready for items."""
    plot = pg.PlotWidget(parent=parent)
    style_plot(plot.getPlotItem(), title, x_label, y_label, fixed_axis=False, **options)
    return plot


def corner_note(plot: pg.PlotItem, html: str = "") -> pg.TextItem:
    """A text pinned to the top-left corner of a plot's data area.

    Numbers that change every snapshot go here rather than into the title: a title that
    changes width re-lays out the whole grid of plots, which costs a full repaint.
    """
    note = pg.TextItem(html=html, anchor=(0, 0), fill=pg.mkBrush(255, 255, 255, 200))
    note.setParentItem(plot.getViewBox())
    note.setPos(4, 2)
    note.setZValue(20)
    return note


def epoch_axis(steps: np.ndarray, batches_per_epoch: int) -> np.ndarray:
    """Steps as fractional epochs, so runs with different batch sizes line up."""
    return np.asarray(steps, dtype=np.float64) / max(1, batches_per_epoch)
