"""A decision boundary as TensorFlow Playground draws it: P(class 1) as a pale heatmap
over the plane, with the data points on top in saturated class colours."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF

from .style import CLASS_COLORS, style_plot

__all__ = ["DecisionMap", "probability_colormap"]


def _pale(hex_color: str, amount: float) -> tuple[int, int, int]:
    c = pg.mkColor(hex_color)
    return tuple(round(255 - amount * (255 - v)) for v in (c.red(), c.green(), c.blue()))


def probability_colormap() -> pg.ColorMap:
    """Class-0 orange at 0, white at 0.5 (undecided), class-1 blue at 1, pale enough for
    the points on top to stand out."""
    return pg.ColorMap([0.0, 0.5, 1.0],
                       [_pale(CLASS_COLORS[0], 0.45), (255, 255, 255), _pale(CLASS_COLORS[1], 0.45)])


class DecisionMap(pg.PlotWidget):
    """``set_field(prob, extent)`` paints the probabilities; ``set_points`` the data."""

    def __init__(self, title: str, class_names=("class 0", "class 1"), parent=None):
        super().__init__(parent=parent)
        self._item = style_plot(self.getPlotItem(), title, "x₁", "x₂", grid=(False, False))
        self._item.getViewBox().setAspectLocked(True)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setColorMap(probability_colormap())
        self.image_item.setLevels((0.0, 1.0))
        self._item.addItem(self.image_item)
        self.colorbar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=probability_colormap(),
                                        interactive=False, width=14,
                                        label=f"P({class_names[1]})")
        self.colorbar.setImageItem(self.image_item, insert_in=self._item)
        self.points = pg.ScatterPlotItem(size=7, pen=pg.mkPen("w", width=1.0))
        self._item.addItem(self.points)
        legend = self._item.addLegend(offset=(5, 5), labelTextSize="8pt",
                                      brush=pg.mkBrush(255, 255, 255, 190))
        self._samples = []
        for color, name in zip(CLASS_COLORS, class_names):
            sample = pg.ScatterPlotItem(size=8, pen=pg.mkPen("w", width=0.8), brush=pg.mkBrush(color))
            legend.addItem(sample, str(name))
            self._samples.append(sample)
        self._legend = legend
        self._extent: tuple[float, float, float, float] | None = None

    def set_title(self, title: str) -> None:
        self._item.setTitle(title, size="10pt")

    def set_class_names(self, class_names) -> None:
        self.colorbar.getAxis("left").setLabel(f"P({class_names[1]})")
        self._legend.clear()
        for sample, name in zip(self._samples, class_names):
            self._legend.addItem(sample, str(name))

    def set_field(self, prob: np.ndarray, extent: tuple[float, float, float, float]) -> None:
        """``prob``: (ny, nx) P(class 1) on a grid whose row 0 is the bottom (y = extent[2]);
        ``extent``: (x_min, x_max, y_min, y_max)."""
        self.image_item.setImage(np.asarray(prob, np.float32), autoLevels=False, levels=(0.0, 1.0))
        if extent != self._extent:
            self._extent = extent
            x0, x1, y0, y1 = extent
            self.image_item.setRect(QRectF(x0, y0, x1 - x0, y1 - y0))
            self._item.getViewBox().setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0)

    def set_points(self, xy: np.ndarray | None, labels: np.ndarray | None) -> None:
        if xy is None or len(xy) == 0:
            self.points.clear()
            return
        brushes = [pg.mkBrush(c) for c in CLASS_COLORS]
        if labels is None:
            self.points.setData(x=xy[:, 0], y=xy[:, 1], brush=pg.mkBrush("#868e96"))
            return
        labels = np.asarray(labels, int)
        self.points.setData(x=xy[:, 0], y=xy[:, 1],
                            brush=[brushes[min(int(k), len(brushes) - 1)] for k in labels])

    def field(self) -> np.ndarray | None:
        return self.image_item.image
