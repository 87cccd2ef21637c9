"""A titled, fixed-scale image: a 2-D array shown as pixels, row 0 at the top."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

__all__ = ["Picture", "image_plot", "set_caption"]


def image_plot(widget: pg.PlotWidget, title: str):
    """Make ``widget``'s plot a still picture: a title, no axes, buttons, menu or mouse
    pan/zoom, row 0 at the top and square pixels. Returns its plot item."""
    item = widget.getPlotItem()
    item.setTitle(title, size="10pt")
    item.hideAxis("left")
    item.hideAxis("bottom")
    item.setMouseEnabled(x=False, y=False)
    item.hideButtons()
    item.setMenuEnabled(False)
    vb = item.getViewBox()
    vb.invertY(True)
    vb.setAspectLocked(True)
    return item


def set_caption(item, caption: str) -> None:
    """Write ``caption`` under a still picture's plot ``item`` (what its grey levels mean):
    the bottom axis's label, without the axis."""
    item.setLabel("bottom", caption)
    item.showAxis("bottom")
    axis = item.getAxis("bottom")
    axis.setStyle(showValues=False)
    axis.setPen(pg.mkPen(None))


class Picture(pg.PlotWidget):
    """Shows a 2-D array with fixed grey levels (``levels[0]`` black, ``levels[1]`` white).

    Fixed levels matter here: auto-levelling would make a faint image look as strong as a
    saturated one, hiding exactly what the explorer is meant to show.
    """

    def __init__(self, title: str, levels: tuple[float, float] = (0.0, 1.0), *,
                 colormap: str | None = None, caption: str = "", parent=None):
        super().__init__(parent=parent)
        item = image_plot(self, title)
        if caption:
            set_caption(item, caption)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setLevels(levels)
        if colormap is not None:
            self.image_item.setColorMap(pg.colormap.get(colormap))
        item.addItem(self.image_item)
        self._levels = levels
        self._shape: tuple[int, ...] | None = None

    def set_title(self, title: str) -> None:
        self.getPlotItem().setTitle(title, size="10pt")

    def set_caption(self, caption: str) -> None:
        """The line under the image (what its grey levels mean)."""
        set_caption(self.getPlotItem(), caption)

    def set_image(self, image: np.ndarray) -> None:
        image = np.asarray(image, dtype=np.float32)
        self.image_item.setImage(image, autoLevels=False, levels=self._levels)
        if image.shape != self._shape:
            self._shape = image.shape
            self.getPlotItem().getViewBox().setRange(
                xRange=(0, image.shape[1]), yRange=(0, image.shape[0]), padding=0.02)

    def image(self) -> np.ndarray | None:
        return self.image_item.image
