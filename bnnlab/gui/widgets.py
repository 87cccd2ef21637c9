"""Small pieces shared by the panels: plot styling, colours, exporting, the error banner and
the event-loop stall monitor."""

from __future__ import annotations

import os
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

__all__ = [
    "TITLE_SIZE",
    "ErrorBanner",
    "Staggered",
    "StallMonitor",
    "SteadyRange",
    "configure_pyqtgraph",
    "corner_note",
    "epoch_axis",
    "export_graphics",
    "layer_color",
    "layer_specs_from_config",
    "layer_specs_from_snapshot",
    "make_brush",
    "make_pen",
    "style_plot",
]

TITLE_SIZE = "11pt"
_AXIS_FONT_PT = 9
_LEFT_AXIS_WIDTH = 62  # room for "250000" and the rotated axis title at 9 pt

# Okabe-Ito-like colours: distinguishable for most colour-blind readers and on white.
_LAYER_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                 "#7F3C8D", "#000000"]


def configure_pyqtgraph() -> None:
    """Dark text on white: closer to printed figures, and legible in screenshots."""
    pg.setConfigOptions(antialias=True, background="w", foreground="#222222")


def layer_color(i: int) -> str:
    return _LAYER_COLORS[i % len(_LAYER_COLORS)]


def make_pen(color: str, width: float = 2.0, dashed: bool = False) -> pg.QtGui.QPen:
    pen = pg.mkPen(color=color, width=width)
    if dashed:
        pen.setStyle(Qt.PenStyle.DashLine)
    return pen


def make_brush(color: str, alpha: int = 255) -> pg.QtGui.QBrush:
    c = QColor(color)
    c.setAlpha(alpha)
    return pg.mkBrush(c)


def style_plot(plot: pg.PlotItem, title: str, x_label: str, y_label: str,
               legend: bool = False) -> pg.LegendItem | None:
    """Title, axis labels, grid and readable fonts; returns the legend when asked for."""
    plot.setTitle(title, size=TITLE_SIZE)
    font = QFont()
    font.setPointSize(_AXIS_FONT_PT)
    for side, text in (("bottom", x_label), ("left", y_label)):
        axis = plot.getAxis(side)
        axis.setLabel(text, **{"font-size": f"{_AXIS_FONT_PT + 1}pt"})
        axis.setTickFont(font)
        # The finest tick level doubles the grid lines painted per frame: during training
        # that alone stretched event-loop stalls from ~30 to ~50 ms, for no legibility gain.
        axis.setStyle(maxTickLevel=1)
    # A fixed width: otherwise the axis widens when its tick labels grow (0.5 -> 25000) and
    # the whole grid of plots is laid out and repainted again.
    plot.getAxis("left").setWidth(_LEFT_AXIS_WIDTH)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setMenuEnabled(True)  # keeps pyqtgraph's own "Export..." entry on every plot
    if legend:
        leg = plot.addLegend(offset=(-8, 8), labelTextSize=f"{_AXIS_FONT_PT}pt",
                             brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#bbbbbb"))
        return leg
    return None


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


class SteadyRange:
    """An axis upper limit that grows at once but shrinks only when the data fall below
    half of it.

    Re-ranging an axis regenerates its ticks and repaints the whole plot; with autorange
    a live histogram re-ranges on every snapshot, which made the six-plot panels stall the
    event loop for ~100 ms per update.
    """

    def __init__(self, headroom: float = 1.1):
        self.headroom = headroom
        self.top: float | None = None

    def fit(self, peak: float) -> float | None:
        """The new upper limit for data reaching ``peak``, or None to keep the current one."""
        if not np.isfinite(peak) or peak <= 0:
            return None
        if self.top is None or peak > self.top or peak < 0.5 * self.top:
            self.top = float(peak) * self.headroom
            return self.top
        return None


_QUANT_TYPES = ("QuantConv2D", "QuantDense")


def layer_specs_from_config(config: dict) -> tuple[tuple[str, str, bool], ...]:
    """(name, type, binarizes its input) of each quantized layer of a model config: what
    the per-layer panels lay out before the first snapshot arrives."""
    return tuple((lc.get("name", ""), lc["type"], bool(lc.get("input_quantizer")))
                 for lc in config.get("layers", []) if lc.get("type") in _QUANT_TYPES)


def layer_specs_from_snapshot(snapshot) -> tuple[tuple[str, str, bool], ...]:
    return tuple((t.name, t.type_name, t.preact_counts is not None) for t in snapshot.layers)


def epoch_axis(steps: np.ndarray, batches_per_epoch: int) -> np.ndarray:
    """Steps as fractional epochs, so runs with different batch sizes line up."""
    return np.asarray(steps, dtype=np.float64) / max(1, batches_per_epoch)


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


class PerLayerPanel(QWidget):
    """What the per-layer live panels (latent weights, gating) share: plots laid out
    ahead of training, a caption naming the shown run, and staggered updates.

    Subclasses set ``_wanted`` (layer specs), ``_updates`` (a :class:`Staggered`) and
    ``caption`` (a QLabel), and implement ``_sync_layout``.
    """

    def set_layers(self, specs) -> None:
        """Lay the plots out for these (name, type, binary input) layers ahead of training,
        so the first snapshot only fills them in (building six plots takes a few hundred
        ms: better spent before the run than in the middle of it)."""
        self._wanted = tuple(specs)
        if self.isVisible():
            self._sync_layout()

    def flush(self) -> None:
        """Apply the latest snapshot completely now (updates are otherwise spread over
        a few event-loop turns)."""
        self._updates.flush()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._sync_layout()

    def set_caption(self, html: str) -> None:
        """Which run is shown (the panel draws one run at a time)."""
        if html != self.caption.text():
            self.caption.setText(html)


class Staggered(QObject):
    """Runs a batch of plot updates one per event-loop turn instead of all at once.

    The graphics view repaints only what changed, so updating one plot per turn splits a
    ~30 ms repaint of a six-plot grid into six short ones with the event loop free in
    between. A new batch replaces whatever is still pending: the newest data wins.
    """

    def __init__(self, interval_ms: int = 8, parent=None):
        super().__init__(parent)
        self._jobs: list = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._run_one)

    def submit(self, jobs) -> None:
        self._jobs = list(jobs)
        if self._jobs and not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run everything pending now (tests, exports)."""
        self._timer.stop()
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job()

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _run_one(self) -> None:
        if self._jobs:
            self._jobs.pop(0)()
        if self._jobs:
            self._timer.start()


class ErrorBanner(QFrame):
    """A dismissable red strip at the top of the window: errors are shown, not raised."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.setStyleSheet("#errorBanner { background: #fdecea; border: 1px solid #e0a8a0;"
                           " border-radius: 4px; } QLabel { color: #611a15; }")
        self.title = QLabel()
        bold = self.title.font()
        bold.setBold(True)
        self.title.setFont(bold)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        text = QVBoxLayout()
        text.setContentsMargins(0, 0, 0, 0)
        text.addWidget(self.title)
        text.addWidget(self.message)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addLayout(text, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_error(self, title: str, message: str) -> None:
        self.title.setText(title)
        self.message.setText(message)
        self.show()


class StallMonitor(QObject):
    """Measures how long the event loop goes without running a 10 ms timer.

    A responsive window services the timer every ~10 ms; any longer gap is time the GUI
    thread could not react (painting, a long slot, or waiting for the GIL). ``longest_gap_ms``
    is the worst gap since the last :meth:`reset`.
    """

    measured = Signal(float)  # a new longest gap, in ms

    def __init__(self, interval_ms: int = 10, parent=None):
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self.reset()

    def start(self) -> None:
        self.reset()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def reset(self) -> None:
        self._last = time.perf_counter()
        self.longest_gap_ms = 0.0
        self.ticks = 0
        self._gaps: list[float] = []

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self._gaps, q)) if self._gaps else 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000.0
        self._last = now
        self.ticks += 1
        self._gaps.append(gap)
        if gap > self.longest_gap_ms:
            self.longest_gap_ms = gap
            self.measured.emit(gap)
