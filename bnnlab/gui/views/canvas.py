"""A square canvas to draw a digit on with the mouse: white soft ink on black, like MNIST."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from .digit_prep import area_resize, paint_segment

__all__ = ["DrawingCanvas"]


class DrawingCanvas(QWidget):
    """Holds a ``(size, size)`` float32 ink image in [0, 1], painted with a soft round brush.

    ``drawing_changed`` fires after every stroke segment (while the mouse moves), so a
    prediction can follow the pen; ``cleared`` when the canvas is wiped.
    """

    drawing_changed = Signal()
    cleared = Signal()

    def __init__(self, size: int = 280, brush_radius: float = 13.0, parent=None):
        super().__init__(parent)
        self._ink = np.zeros((size, size), np.float32)
        self._pixels = np.zeros((size, size), np.uint8)
        self._radius = float(brush_radius)
        self._last: tuple[float, float] | None = None
        self._drawing = False
        # Set while the canvas shows a picture rather than a drawing: the next stroke
        # starts on a clean canvas instead of scribbling over the picture.
        self.clear_on_next_stroke = False
        self.hint = "Draw a digit here"
        self.setFixedSize(size, size)
        self.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Fixed)
        self.setCursor(Qt.CrossCursor)
        self.setToolTip("Hold the left mouse button and draw; the network sees a 28×28 copy")

    # -- data
    def ink(self) -> np.ndarray:
        return self._ink.copy()

    def is_empty(self) -> bool:
        return not self._ink.any()

    def clear(self) -> None:
        self.clear_on_next_stroke = False
        self._ink[...] = 0.0
        self._refresh()
        self.cleared.emit()

    def set_ink(self, image: np.ndarray) -> None:
        """Show an image in [0, 1] of any size (scaled to the canvas), e.g. a test digit."""
        image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        self._ink[...] = area_resize(image, self._ink.shape) if image.shape != self._ink.shape else image
        self._refresh()

    def _refresh(self) -> None:
        self._pixels[...] = np.round(self._ink * 255.0)
        self.update()

    # -- mouse
    def _stroke_to(self, pos: QPointF) -> None:
        p = (float(pos.x()), float(pos.y()))
        paint_segment(self._ink, self._last or p, p, self._radius)
        self._last = p
        self._refresh()
        self.drawing_changed.emit()

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.LeftButton:
            if self.clear_on_next_stroke:
                self.clear_on_next_stroke = False
                self._ink[...] = 0.0
            self._drawing = True
            self._last = None
            self._stroke_to(event.position())
        elif event.button() == Qt.RightButton:
            self.clear()

    def mouseMoveEvent(self, event) -> None:
        # Track the pressed state ourselves: synthetic test moves carry no button state.
        if self._drawing:
            self._stroke_to(event.position())

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.LeftButton:
            self._drawing = False
            self._last = None

    # -- painting
    def paintEvent(self, event) -> None:
        h, w = self._pixels.shape
        image = QImage(self._pixels.data, w, h, w, QImage.Format_Grayscale8)
        painter = QPainter(self)
        painter.drawImage(QRectF(0, 0, self.width(), self.height()), image)
        painter.setPen(QPen(QColor("#868e96"), 1))
        painter.drawRect(0, 0, self.width() - 1, self.height() - 1)
        if self.is_empty() and self.hint:
            painter.setPen(QColor("#adb5bd"))
            painter.drawText(self.rect(), Qt.AlignCenter, self.hint)
        painter.end()
