"""Colours and plot scaffolding shared by the explorer's views.

Colours are picked to read on both a light and a dark pyqtgraph background, since the
application shell decides the theme.
"""

from __future__ import annotations

import pyqtgraph as pg

__all__ = [
    "BNN_COLOR",
    "CLASS_COLORS",
    "GRID_GAP_VALUE",
    "SERIES_COLORS",
    "TWIN_COLOR",
    "make_plot",
    "series_color",
    "style_plot",
]

# The binary network and its full-precision twin keep the same colours in every chart.
BNN_COLOR = "#d9480f"
TWIN_COLOR = "#1c7ed6"

# TensorFlow Playground's two classes: orange for the negative class, blue for the positive.
CLASS_COLORS = ("#f59322", "#0877bd")

SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
)

# Grey between black/white filter tiles, so that neither a -1 nor a +1 tile merges with it.
GRID_GAP_VALUE = 0.5


def series_color(i: int) -> str:
    return SERIES_COLORS[i % len(SERIES_COLORS)]


def make_plot(title: str, x_label: str, y_label: str, *, x_units: str | None = None,
              y_units: str | None = None, parent=None, mouse: bool = True) -> pg.PlotWidget:
    """A PlotWidget with its title and axis labels set, ready for items.

    ``mouse=False`` pins the view, for plots whose range is meaningful and fixed.
    """
    plot = pg.PlotWidget(parent=parent)
    style_plot(plot.getPlotItem(), title, x_label, y_label, x_units=x_units, y_units=y_units,
               mouse=mouse)
    return plot


def style_plot(item: pg.PlotItem, title: str, x_label: str, y_label: str, *,
               x_units: str | None = None, y_units: str | None = None, mouse: bool = True,
               grid: tuple[bool, bool] = (True, True)) -> pg.PlotItem:
    """Title, axis labels and a faint grid on an existing PlotItem."""
    item.setTitle(title, size="10pt")
    item.setLabel("bottom", x_label, units=x_units)
    item.setLabel("left", y_label, units=y_units)
    item.showGrid(x=grid[0], y=grid[1], alpha=0.15)
    if not mouse:
        item.setMouseEnabled(x=False, y=False)
        item.hideButtons()
    return item
