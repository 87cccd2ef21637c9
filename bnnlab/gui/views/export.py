"""Saving a plot or a whole panel of plots as PNG or SVG."""

from __future__ import annotations

import os

from PySide6.QtGui import QColor

__all__ = ["export_graphics"]


def export_graphics(item, path: str | os.PathLike) -> None:
    """Save a pyqtgraph scene item (a plot or a whole layout) as PNG or SVG by extension."""
    from pyqtgraph import exporters  # loaded on demand: only export needs it

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".svg":
        _export_svg(item, path)
        return
    if ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        exporter = exporters.ImageExporter(item)
        width = int(item.boundingRect().width())
        if width > 0:
            # Twice the screen size keeps text crisp when the figure goes into a document.
            exporter.parameters()["width"] = 2 * width
    else:
        raise ValueError(f"cannot export to {path!r}: use .png or .svg")
    exporter.export(path)


def _export_svg(item, path: str) -> None:
    # pyqtgraph 0.14's SVGExporter fails on the path data recent Qt writes (seen with
    # PySide6 6.11 and 6.12; pyqtgraph issue #3485), so the scene goes through QSvgGenerator.
    from PySide6.QtCore import QRectF, QSize
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    scene = item.scene()
    if scene is None:
        raise ValueError("cannot export an item that is not shown")
    source = item.sceneBoundingRect()
    gen = QSvgGenerator()
    gen.setFileName(path)
    gen.setSize(QSize(int(source.width()), int(source.height())))
    gen.setViewBox(QRectF(0, 0, source.width(), source.height()))
    gen.setTitle("bnnlab plot")
    painter = QPainter()
    if not painter.begin(gen):
        raise OSError(f"cannot write {path}")
    try:
        painter.fillRect(QRectF(0, 0, source.width(), source.height()), QColor("white"))
        scene.render(painter, QRectF(0, 0, source.width(), source.height()), source)
    finally:
        painter.end()
