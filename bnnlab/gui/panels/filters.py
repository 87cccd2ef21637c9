"""Duplicate binary 3x3 filters: which of the 512 patterns a layer uses, how often, and the
work a kernel that computed each distinct response once would save (BinaryNet, Sec. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ...core.filters import FilterReport, analyze_filters
from ...core.model import model_from_state
from ..views.bars import BarChart
from ..views.style import style_plot
from ..views.throttle import Throttle
from ..views.tiles import TileGrid, pattern_tiles, tile_mosaic

__all__ = ["FiltersPanel", "binary_conv_signature"]

MAX_CHANNELS = 128  # per axis of the tile grid; beyond that the grid stops being readable
TOP_SHOWN = 10
N_PATTERNS = 512
SAME_COLOR = "#f76707"  # frames tiles sharing the pointed-at pattern
INVERSE_COLOR = "#7048e8"  # frames tiles holding its inverse


def binary_conv_signature(config: dict, state: dict) -> tuple:
    """The sign bits of every binary 3x3 conv kernel: equal signatures, equal reports.

    Latent weights move at every step, but the analysis depends only on their signs,
    which change far less often; comparing these bits is much cheaper than re-analysing.
    """
    parts = []
    for lc in config.get("layers", ()):
        if lc.get("type") != "QuantConv2D" or not lc.get("kernel_quantizer"):
            continue
        kernel = state.get(f"{lc.get('name')}/kernel")
        if kernel is None or kernel.shape[:2] != (3, 3):
            continue
        parts.append((lc.get("name"), kernel.shape, np.packbits(kernel < 0).tobytes()))
    return tuple(parts)


def _ops(n: int) -> str:
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


class FiltersPanel(QWidget):
    """Per binary 3x3 conv layer: its 2-D filters as tiles, pattern counts, and savings.

    Feed it training snapshots with :meth:`set_snapshot` (cheap when the signs did not
    change; re-analysed at most twice a second, and only while the panel is visible) or
    ready-made reports with :meth:`set_reports`.
    """

    title = "Filters"

    def show_focus(self, focus) -> None:
        """The filters of the selected run's latest weights."""
        run = focus.run
        opened = run.opened if run is not None else None
        if opened is not None and opened.model is None:  # a .bnn the engine cannot build
            if self._signature != ("no engine", opened):
                self._signature, self._pending = ("no engine", opened), None
                self.set_reports([])
                try:
                    opened.require_engine("Filters")
                except ValueError as exc:
                    self.stats.setText(f"<b>Not available for this file.</b> {exc}")
            return
        if run is not None and run.snapshot is not None:
            self.set_snapshot(run.snapshot)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.reports: list[FilterReport] = []
        self._signature: tuple | None = None
        self._pending = None
        self._stale = False
        self._throttle = Throttle(self._analyze_pending, 0.5, self)
        self._build()

    def heightForWidth(self, width: int) -> int:
        # Word-wrapped labels give the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height, taller than the window; -1
        # lets it fit the panel to the view (never below the minimum size).
        return -1

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Layer:"))
        self.layer_combo = QComboBox()
        self.layer_combo.setMinimumWidth(160)
        top.addWidget(self.layer_combo)
        top.addStretch(1)
        root.addLayout(top)
        self.stats = QLabel("No binary 3×3 convolution yet: open a scene with one and train.")
        self.stats.setTextFormat(Qt.RichText)
        self.stats.setWordWrap(True)
        self.stats.setStyleSheet("font-size: 11pt;")
        root.addWidget(self.stats)

        grid = QGridLayout()
        self.tiles = TileGrid("2-D filters (white +1, black −1)", "input channel", "output channel")
        grid.addWidget(self.tiles, 0, 0, 4, 1)
        self.hover = QLabel("Point at a tile to read its pattern.")
        self.hover.setTextFormat(Qt.RichText)
        self.hover.setWordWrap(True)
        # Long hover texts must not widen the column and reflow the whole panel.
        self.hover.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        grid.addWidget(self.hover, 4, 0)

        self.sort_box = QCheckBox("Sort by count")
        self.sort_box.setChecked(True)
        grid.addWidget(self.sort_box, 0, 1, Qt.AlignRight)
        self.histogram = pg.PlotWidget()
        style_plot(self.histogram.getPlotItem(), "Uses of each of the 512 patterns",
                   "pattern id", "filters", mouse=True)
        self.histogram_bars = pg.BarGraphItem(x=np.arange(N_PATTERNS), height=np.zeros(N_PATTERNS),
                                              width=1.0, brush=pg.mkBrush("#1c7ed6"),
                                              pen=pg.mkPen(None))
        self.histogram.getPlotItem().addItem(self.histogram_bars)
        self.histogram.getPlotItem().setXRange(0, N_PATTERNS, padding=0.01)
        grid.addWidget(self.histogram, 1, 1)

        self.top_view = pg.PlotWidget()
        # The uses under each tile are bare numbers: "×12" beside "×13" ran into each other
        # under tiles ~25 px wide (a 1024 x 640 screen).
        item = style_plot(self.top_view.getPlotItem(), "Most repeated patterns, with their uses",
                          "", "", mouse=False, grid=(False, False))
        item.hideAxis("left")
        item.hideAxis("bottom")
        item.getViewBox().invertY(True)
        item.getViewBox().setAspectLocked(True)
        self.top_image = pg.ImageItem(axisOrder="row-major")
        self.top_image.setLevels((0.0, 1.0))
        item.addItem(self.top_image)
        # Counts sit right under their tiles, whatever the zoom.
        self.top_counts = []
        for _ in range(TOP_SHOWN):
            text = pg.TextItem("", color="#343a40", anchor=(0.5, 0.0))
            item.addItem(text)
            self.top_counts.append(text)
        grid.addWidget(self.top_view, 2, 1)

        self.ops_chart = BarChart("Binary MACs per inference", "", "MACs (k)",
                                  [("binary MACs", ["#868e96", "#2b8a3e"])],
                                  value_format=lambda k: _ops(int(k * 1000)))
        grid.addWidget(self.ops_chart, 3, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(2, 2)
        grid.setRowStretch(3, 3)
        root.addLayout(grid, 1)

        self.layer_combo.currentIndexChanged.connect(self._show_layer)
        self.sort_box.toggled.connect(self._show_layer)
        self.tiles.tile_hovered.connect(self._hovered)

    # ------------------------------------------------------------------ data
    def set_snapshot(self, snapshot) -> None:
        """Analyse a training snapshot's binary convs (throttled; skipped if no sign moved)."""
        if binary_conv_signature(snapshot.model_config, snapshot.model_state) == self._signature:
            self._pending = None
            return
        self._pending = snapshot
        self._throttle.request()

    def _analyze_pending(self) -> None:
        if self._pending is None:
            return
        if not self.isVisible():
            self._stale = True  # analysed when shown: hidden tabs cost nothing
            return
        snap, self._pending = self._pending, None
        model = model_from_state(snap.model_config, snap.model_state)
        self._signature = binary_conv_signature(snap.model_config, snap.model_state)
        self.set_reports(analyze_filters(model))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self._analyze_pending()

    def set_reports(self, reports: Sequence[FilterReport]) -> None:
        """Show ready-made reports (one per binary 3x3 conv layer)."""
        self.reports = list(reports)
        current = self.layer_combo.currentText()
        names = [r.layer for r in self.reports]
        self.layer_combo.blockSignals(True)
        if names != [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]:
            self.layer_combo.clear()
            self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentIndex(names.index(current))
        elif self.reports:
            # Start on the biggest layer: a first layer's single input channel shows little.
            biggest = max(range(len(self.reports)), key=lambda i: self.reports[i].total)
            self.layer_combo.setCurrentIndex(biggest)
        self.layer_combo.blockSignals(False)
        self._show_layer()

    def current_report(self) -> FilterReport | None:
        i = self.layer_combo.currentIndex()
        return self.reports[i] if 0 <= i < len(self.reports) else None

    # ------------------------------------------------------------------ drawing
    def _show_layer(self, *_args) -> None:
        r = self.current_report()
        if r is None:
            self.stats.setText("This model has no binary 3×3 convolution: nothing to analyse.")
            self.tiles.set_tiles(np.ones((0, 0, 3, 3), np.float32))
            self.tiles.set_highlight([])
            self.histogram_bars.setOpts(height=np.zeros(N_PATTERNS))
            self.top_image.clear()
            for text in self.top_counts:
                text.setText("")
            return
        self.stats.setText(self.stats_text(r))
        rows, cols = min(r.in_channels, MAX_CHANNELS), min(r.out_channels, MAX_CHANNELS)
        self.tiles.set_tiles(pattern_tiles(r.patterns[:rows, :cols]))
        self.tiles.set_highlight([])
        clipped = "" if (rows, cols) == (r.in_channels, r.out_channels) else \
            f" (first {rows} × {cols})"
        self.tiles.set_title(f"{r.total} filters{clipped}: white +1, black −1")

        counts = np.asarray(r.counts)
        hist = self.histogram.getPlotItem()
        if self.sort_box.isChecked():
            heights = np.sort(counts)[::-1]
            hist.setLabel("bottom", "patterns, most used first")
            hist.setXRange(0, max(8, int(np.count_nonzero(counts)) + 1), padding=0.02)
        else:
            heights = counts
            hist.setLabel("bottom", "pattern id (bit i set: tap i is −1)")
            hist.setXRange(0, N_PATTERNS, padding=0.01)
        self.histogram_bars.setOpts(x=np.arange(N_PATTERNS) + 0.5, height=heights)
        top_count = max(1, int(heights.max()))
        hist.setYRange(0, top_count * 1.08, padding=0)
        # Counts are whole numbers: no 0.5 ticks when they are small.
        hist.getAxis("left").setTickSpacing(*((1, 1) if top_count <= 8 else (None, None)))
        hist.setTitle(f"Uses of each pattern ({r.unique} of 512 used)", size="10pt")

        top = [(int(p), int(c)) for p, c in r.top[:TOP_SHOWN]]
        if top:
            tiles = pattern_tiles(np.array([[p for p, _ in top]]))
            self.top_image.setImage(tile_mosaic(tiles), autoLevels=False, levels=(0.0, 1.0))
            self.top_view.getPlotItem().getViewBox().setRange(
                xRange=(0, 4 * len(top) + 1), yRange=(0, 7), padding=0.02)
        for i, text in enumerate(self.top_counts):
            text.setText(f"{top[i][1]}" if i < len(top) else "")
            text.setPos(1 + 4 * i + 1.5, 4.6)
        self.ops_chart.set_categories(["all", "distinct"])
        self.ops_chart.set_values([[r.ops_total / 1000, r.ops_dedup / 1000]])
        self.ops_chart.getPlotItem().setTitle(f"{r.saving:.0%} of MACs saved", size="10pt")

    @staticmethod
    def stats_text(r: FilterReport) -> str:
        frac = r.unique / r.total if r.total else 0.0
        return (
            f"<b>{r.layer}</b>: <b>{r.unique}</b> distinct 2-D filters out of <b>{r.total}</b> "
            f"({frac:.0%}) · <b>{r.unique_up_to_sign}</b> up to sign (a filter and its inverse "
            f"merged; at most 256) · computing each distinct (input channel, pattern up to sign) "
            f"response once: {_ops(r.ops_dedup)} instead of {_ops(r.ops_total)} binary MACs, "
            f"<b>{r.saving:.0%} less work</b>")

    def _hovered(self, row: int, col: int) -> None:
        r = self.current_report()
        if r is None or row < 0:
            self.hover.setText("Point at a tile to read its pattern.")
            self.tiles.set_highlight([])
            return
        pid = int(r.patterns[row, col])
        inverse = (N_PATTERNS - 1) ^ pid
        self.hover.setText(
            f"input channel {row} → output channel {col}: pattern #{pid}, used "
            f"{int(r.counts[pid])}× in this layer "
            f"(<span style='color:{SAME_COLOR}'>framed</span>); its inverse #{inverse} "
            f"{int(r.counts[inverse])}× (<span style='color:{INVERSE_COLOR}'>framed</span>)")
        self.tiles.set_highlight([(r.patterns == pid, SAME_COLOR),
                                  (r.patterns == inverse, INVERSE_COLOR)])
