"""A clickable activation mosaic: one block's ±1 output (or input) drawn as tiles, with the
selected unit framed and a receptive field shaded. The layout lives in
:class:`bnnlab.app.bits.Mosaic`; this view only draws it and reports clicks."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import QGraphicsRectItem

from ...app.bits import Mosaic
from .picture import image_plot, set_caption

__all__ = ["BitMap"]

SELECTED = "#d62728"
OUTLINE = "#888888"
GAP = (176, 196, 222, 255)  # light steel blue between tiles
FIELD = (255, 127, 14, 110)  # translucent orange over the receptive field


def _rectangle(item, color: str, width: int) -> QGraphicsRectItem:
    """A hidden rectangle outline of ``width`` screen pixels, added to plot ``item``."""
    rect = QGraphicsRectItem()
    pen = pg.mkPen(color, width=width)
    pen.setCosmetic(True)
    rect.setPen(pen)
    rect.setVisible(False)
    item.addItem(rect)
    return rect


class BitMap(pg.PlotWidget):
    """``set_values(values, mosaic)`` draws (H, W, C) values in [-1, 1] (-1 black, +1 white);
    a left click on a unit emits ``unit_clicked(row, column, channel)``."""

    unit_clicked = Signal(int, int, int)

    def __init__(self, title: str = "", parent=None):
        super().__init__(parent=parent)
        item = image_plot(self, title)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        item.addItem(self.image_item)
        # The gaps between tiles in a colour no value takes (their grey would read as 0
        # in a map of real values, which is drawn grey at 0).
        self.gap_item = pg.ImageItem(axisOrder="row-major")
        item.addItem(self.gap_item)
        self.field_item = pg.ImageItem(axisOrder="row-major")
        item.addItem(self.field_item)
        self.frame = _rectangle(item, SELECTED, 2)  # the selected unit
        # A thin outline around the whole map: a white cell at its edge (a +1 bit, the
        # largest logit) would otherwise vanish into the white background.
        self.outline = _rectangle(item, OUTLINE, 1)
        self.mosaic: Mosaic | None = None
        self.scene().sigMouseClicked.connect(self._clicked)

    def set_title(self, title: str) -> None:
        self.getPlotItem().setTitle(title, size="10pt")

    def set_caption(self, caption: str) -> None:
        """The line under the map: what its grey levels mean."""
        set_caption(self.getPlotItem(), caption)

    def set_values(self, values: np.ndarray, mosaic: Mosaic) -> None:
        image = mosaic.image(np.clip(values, -1.0, 1.0))
        self.image_item.setImage(image, autoLevels=False, levels=(0.0, 1.0))
        if mosaic != self.mosaic:
            self.mosaic = mosaic
            gaps = np.zeros((*mosaic.size, 4), np.uint8)
            gaps[mosaic.gaps()] = GAP
            self.gap_item.setImage(gaps, autoLevels=False, levels=(0, 255))
            self.field_item.clear()
            self.frame.setVisible(False)
            h, w = mosaic.size
            self.outline.setRect(QRectF(0, 0, w, h))
            self.outline.setVisible(True)
            self.getPlotItem().getViewBox().setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def select(self, unit: tuple[int, int, int] | None) -> None:
        """Frame one unit (None: no frame)."""
        if unit is None or self.mosaic is None:
            self.frame.setVisible(False)
            return
        r, c = self.mosaic.cell(*unit)
        self.frame.setRect(QRectF(c, r, 1, 1))
        self.frame.setVisible(True)

    def shade(self, positions: list[tuple[int, int]]) -> None:
        """Shade (row, column) positions in every channel's tile (a receptive field)."""
        if self.mosaic is None:
            return
        overlay = np.zeros((*self.mosaic.size, 4), np.uint8)
        for ch in range(self.mosaic.shape[2]):
            for y, x in positions:
                overlay[self.mosaic.cell(y, x, ch)] = FIELD
        self.field_item.setImage(overlay, autoLevels=False, levels=(0, 255))

    def view_point(self, row: int, column: int, channel: int):
        """The scene position of a unit's centre (for tests that click on it)."""
        r, c = self.mosaic.cell(row, column, channel)
        return self.getPlotItem().getViewBox().mapViewToScene(pg.Point(c + 0.5, r + 0.5))

    def _clicked(self, event) -> None:
        if self.mosaic is None or event.button() != Qt.MouseButton.LeftButton:
            return
        p = self.getPlotItem().getViewBox().mapSceneToView(event.scenePos())
        unit = self.mosaic.unit_at(p.y(), p.x())
        if unit is not None:
            event.accept()
            self.unit_clicked.emit(*unit)
