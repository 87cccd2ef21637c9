"""Binary 3x3 filters drawn as black/white tiles in a grid, separated by thin grey gaps."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from .style import GRID_GAP_VALUE, style_plot

__all__ = ["TileGrid", "pattern_tiles", "tile_mosaic"]


def pattern_tiles(pattern_ids: np.ndarray) -> np.ndarray:
    """±1 tiles ``(..., 3, 3)`` for 9-bit pattern ids (bit i set: tap i, row-major, is -1)."""
    ids = np.asarray(pattern_ids, dtype=np.int64)
    bits = (ids[..., None] >> np.arange(9)) & 1
    return (1 - 2 * bits).reshape(*ids.shape, 3, 3).astype(np.float32)


def tile_mosaic(tiles: np.ndarray, gap: int = 1, gap_value: float = GRID_GAP_VALUE) -> np.ndarray:
    """Lay ``(rows, cols, h, w)`` tiles of ±1 into one image in [0, 1] (-1 black, +1 white)."""
    r, c, h, w = tiles.shape
    out = np.full((r * (h + gap) + gap, c * (w + gap) + gap), gap_value, np.float32)
    cells = out[gap:, gap:].reshape(r, h + gap, c, w + gap)
    cells[:, :h, :, :w] = (tiles.transpose(0, 2, 1, 3) + 1.0) * 0.5
    return out


def _channel_ticks(n: int, size: int, gap: int) -> list[tuple[float, str]]:
    step = max(1, int(np.ceil(n / 16)))
    if step > 1:
        step = int(5 * np.ceil(step / 5)) if step > 3 else step
    return [(gap + i * (size + gap) + size / 2, str(i)) for i in range(0, n, step)]


class TileGrid(pg.PlotWidget):
    """A grid of binary filters: row = one index (e.g. input channel), column = another.

    Pan and zoom with the mouse to read large layers. ``tile_hovered(row, col)`` reports the
    tile under the pointer, (-1, -1) when it leaves the grid.
    """

    tile_hovered = Signal(int, int)

    def __init__(self, title: str, row_label: str, col_label: str, *, tile: int = 3,
                 gap: int = 1, parent=None):
        super().__init__(parent=parent)
        self._item = style_plot(self.getPlotItem(), title, col_label, row_label, grid=(False, False))
        vb = self._item.getViewBox()
        vb.invertY(True)
        vb.setAspectLocked(True)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setLevels((0.0, 1.0))
        self._item.addItem(self.image_item)
        self.highlight_item = pg.ImageItem(axisOrder="row-major")
        self._item.addItem(self.highlight_item)
        self._tile, self._gap = tile, gap
        self._shape = (0, 0)
        self.scene().sigMouseMoved.connect(self._mouse_moved)

    def set_tiles(self, tiles: np.ndarray) -> None:
        """``tiles``: ``(rows, cols, tile, tile)`` of ±1."""
        image = tile_mosaic(tiles, self._gap)
        self.image_item.setImage(image, autoLevels=False, levels=(0.0, 1.0))
        shape = tiles.shape[:2]
        if shape != self._shape:
            self._shape = shape
            self._item.getAxis("left").setTicks([_channel_ticks(shape[0], self._tile, self._gap)])
            self._item.getAxis("bottom").setTicks([_channel_ticks(shape[1], self._tile, self._gap)])
            self._item.getViewBox().setRange(xRange=(0, image.shape[1]), yRange=(0, image.shape[0]),
                                             padding=0.02)

    def set_title(self, title: str) -> None:
        self._item.setTitle(title, size="10pt")

    def set_highlight(self, masks: list[tuple[np.ndarray, str]]) -> None:
        """Frame tiles in colour: ``masks`` is a list of ((rows, cols) bool, colour)."""
        step = self._tile + self._gap
        rows, cols = self._shape
        overlay = np.zeros((rows * step + self._gap, cols * step + self._gap, 4), np.uint8)
        ring = [(dy, dx) for dy in range(step + 1) for dx in range(step + 1)
                if dy in (0, step) or dx in (0, step)]
        for mask, color in masks:
            r, c = np.nonzero(mask[:rows, :cols])
            rgba = pg.mkColor(color).getRgb()
            for dy, dx in ring:
                overlay[r * step + dy, c * step + dx] = rgba
        self.highlight_item.setImage(overlay, autoLevels=False, levels=(0, 255))

    def _mouse_moved(self, pos) -> None:
        if not self._shape[0]:
            return
        p = self._item.getViewBox().mapSceneToView(pos)
        step = self._tile + self._gap
        col, row = int((p.x() - self._gap) // step), int((p.y() - self._gap) // step)
        if 0 <= row < self._shape[0] and 0 <= col < self._shape[1]:
            self.tile_hovered.emit(row, col)
        else:
            self.tile_hovered.emit(-1, -1)
