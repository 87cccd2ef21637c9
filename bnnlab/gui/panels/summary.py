"""The model summary: Larq-style per-layer tables for the binary network and its
full-precision twin, and charts of what binarization buys (memory, energy, 1-bit MACs)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.model import Sequential
from ...core.layer_types import QUANT_KEYS, float_twin
from ...core.summary import ModelProfile, format_summary, profile_model
from ..views.bars import BarChart
from ..views.style import BNN_COLOR, TWIN_COLOR

__all__ = ["SummaryPanel", "full_precision_config"]


_COLUMNS = ("Layer", "Input\nbits", "Output", "1-bit\nparams", "32-bit\nparams", "Memory\n(KiB)",
            "1-bit\nMACs", "32-bit\nMACs")


def full_precision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same network with every quantized layer made full precision.

    Layer names are dropped so the twin's layers get their own Keras-style names
    (``conv2d`` rather than ``quant_conv2d``), except in a graph, whose layers name
    their inputs.
    """
    graph = any("inputs" in lc for lc in config["layers"])
    layers = []
    for lc in config["layers"]:
        lc = {k: v for k, v in lc.items() if k not in QUANT_KEYS and (graph or k != "name")}
        lc["type"] = float_twin(lc.get("type"))
        layers.append(lc)
    name = config.get("name", "model")
    return {**config, "name": f"{name} (full precision)", "layers": layers}


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _energy_unit(pj: float) -> tuple[float, str]:
    for div, unit in ((1e6, "µJ"), (1e3, "nJ")):
        if pj >= div:
            return div, unit
    return 1.0, "pJ"


def _mac_unit(n: float) -> tuple[float, str]:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return div, unit
    return 1.0, ""


class SummaryPanel(QWidget):
    """Parameters, memory, MACs and energy of a model and its full-precision twin."""

    title = "Model summary"

    def show_focus(self, focus) -> None:
        """The selected run's model (the scene's before any run) and its twin."""
        opened = focus.run.opened if focus.run is not None else None
        if opened is not None and opened.model is None:  # counted from the .bnn's blocks
            key = (opened,)
            if key != getattr(self, "_focus_key", None):
                self._focus_key = key
                self.set_profiles(opened.profile(), opened.twin_profile())
            return
        key = (focus.model_config, focus.fp_config)
        if key != getattr(self, "_focus_key", None):
            self._focus_key = key
            self.set_model_config(*key)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.profile: ModelProfile | None = None
        self.twin_profile: ModelProfile | None = None
        root = QVBoxLayout(self)

        self.headline = QLabel("Open a scene to see its model summary.")
        self.headline.setTextFormat(Qt.RichText)
        self.headline.setWordWrap(True)
        self.headline.setStyleSheet("font-size: 11pt;")
        root.addWidget(self.headline)

        self.tabs = QTabWidget()
        tables = QSplitter(Qt.Horizontal)
        self.table, self.table_title, box = self._make_table("Binary network")
        tables.addWidget(box)
        self.twin_table, self.twin_title, twin_box = self._make_table("Full-precision twin")
        tables.addWidget(twin_box)
        tables.setStretchFactor(0, 4)
        tables.setStretchFactor(1, 3)
        self.tabs.addTab(tables, "Tables")
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        mono = QFontDatabase.systemFont(QFontDatabase.FixedFont)
        mono.setPointSize(9)
        self.text.setFont(mono)
        self.tabs.addTab(self.text, "Larq-style text (copyable)")
        root.addWidget(self.tabs, 3)

        charts = QHBoxLayout()
        self.memory_chart = BarChart("Parameter memory", "", "memory (KiB)",
                                     [("memory", [BNN_COLOR, TWIN_COLOR])],
                                     value_format=lambda v: f"{v:,.2f} KiB")
        self.energy_chart = BarChart("Energy per inference (45 nm)", "", "energy",
                                     [("energy", [BNN_COLOR, TWIN_COLOR])],
                                     value_format=lambda v: f"{v:,.1f}")
        self.macs_chart = BarChart("Multiply-accumulates per inference", "", "MACs",
                                   [("1-bit MACs (XNOR-popcount)", "#f59f00"),
                                    ("32-bit MACs (float)", "#5c7cfa")],
                                   stacked=True, value_format=lambda v: f"{v:,.3g}")
        for c in (self.memory_chart, self.energy_chart, self.macs_chart):
            c.setMinimumHeight(210)
            charts.addWidget(c)
        root.addLayout(charts, 2)

    def heightForWidth(self, width: int) -> int:
        # Word-wrapped labels give the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height, taller than the window; -1
        # lets it fit the panel to the view (never below the minimum size).
        return -1

    def _make_table(self, title: str):
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        label = QLabel(f"<b>{title}</b>")
        lay.addWidget(label)
        table = QTableWidget(0, len(_COLUMNS))
        table.setHorizontalHeaderLabels(list(_COLUMNS))
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectRows)
        table.setAlternatingRowColors(True)
        font = table.font()
        font.setPointSize(9)
        table.setFont(font)
        table.verticalHeader().setDefaultSectionSize(20)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        lay.addWidget(table)
        return table, label, box

    # ------------------------------------------------------------------ data
    def set_model_config(self, config: dict[str, Any] | None,
                         fp_config: dict[str, Any] | None = None) -> None:
        """Profile ``config`` (a ``Sequential.config()`` dict) and its full-precision twin.

        Without ``fp_config`` the twin is derived by dropping the quantizers.
        """
        if config is None:
            self.profile = self.twin_profile = None
            self.headline.setText("Open a scene to see its model summary.")
            for t in (self.table, self.twin_table):
                t.setRowCount(0)
            self.text.clear()
            return
        if fp_config is None:
            fp_config = full_precision_config(config)
        try:
            profile = profile_model(Sequential.from_config(config))
            twin = profile_model(Sequential.from_config(fp_config))
        except (KeyError, ValueError, TypeError) as exc:
            self.profile = self.twin_profile = None
            self.headline.setText(f"<b>Cannot summarize this model:</b> {exc}")
            return
        self.set_profiles(profile, twin)

    def set_profiles(self, profile: ModelProfile, twin: ModelProfile) -> None:
        """Show a model's summary and its full-precision twin's."""
        self.profile, self.twin_profile = profile, twin
        self._fill_table(self.table, self.profile, binary=True)
        self._fill_table(self.twin_table, self.twin_profile, binary=False)
        self.table_title.setText(f"<b>Binary network</b> — {self.profile.name}")
        self.twin_title.setText(f"<b>Full-precision twin</b> — {self.twin_profile.name}")
        self.text.setPlainText(format_summary(self.profile) + "\n\n"
                               + format_summary(self.twin_profile))
        self._fill_charts()

    def total_memory_text(self) -> str:
        return "" if self.profile is None else f"{self.profile.memory_kib:.2f} KiB"

    def _fill_table(self, table: QTableWidget, p: ModelProfile, binary: bool) -> None:
        rows = [
            (lp.name,
             "-" if lp.input_precision is None else str(lp.input_precision),
             " × ".join(str(s) for s in lp.output_shape),
             _count(lp.params_1bit), _count(lp.params_32bit), f"{lp.memory_kib:.2f}",
             _count(lp.macs_1bit), _count(lp.macs_32bit))
            for lp in p.layers
        ]
        rows.append(("Total", "", "", _count(p.params_1bit), _count(p.params_32bit),
                     f"{p.memory_kib:.2f}", _count(p.macs_1bit), _count(p.macs_32bit)))
        table.setRowCount(len(rows))
        bold = QFont(table.font())
        bold.setBold(True)
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                item.setTextAlignment((Qt.AlignLeft if c == 0 else Qt.AlignRight) | Qt.AlignVCenter)
                if r == len(rows) - 1:
                    item.setFont(bold)
                table.setItem(r, c, item)
        # The twin has no binary parameters or MACs: hide the columns that would be all zero.
        for c in (3, 6):
            table.setColumnHidden(c, not binary)

    def _fill_charts(self) -> None:
        p, t = self.profile, self.twin_profile
        names = ["binary network", "full-precision twin"]
        self.memory_chart.set_categories(names)
        self.memory_chart.set_values([[p.memory_kib, t.memory_kib]])
        div, unit = _energy_unit(max(p.energy_pj, t.energy_pj))
        self.energy_chart.set_categories(names)
        self.energy_chart.getPlotItem().setLabel("left", f"energy ({unit})")
        self.energy_chart.set_value_format(lambda v: f"{v:,.2f} {unit}")
        self.energy_chart.set_values([[p.energy_pj / div, t.energy_pj / div]])
        mdiv, munit = _mac_unit(max(p.macs, t.macs))
        self.macs_chart.set_categories(names)
        self.macs_chart.getPlotItem().setLabel("left", f"MACs ({munit})" if munit else "MACs")
        self.macs_chart.set_values([[p.macs_1bit / mdiv, t.macs_1bit / mdiv],
                                    [p.macs_32bit / mdiv, t.macs_32bit / mdiv]])
        smaller = t.memory_kib / p.memory_kib if p.memory_kib else float("nan")
        cheaper = t.energy_pj / p.energy_pj if p.energy_pj else float("nan")
        self.headline.setText(
            f"<b>Memory:</b> {p.memory_kib:.2f} KiB for the binary network vs "
            f"{t.memory_kib:.2f} KiB for its full-precision twin: <b>{smaller:.1f}× smaller</b> "
            f"(Larq's compression ratio {p.compression_ratio:.3f}: this size over the float-32 "
            f"equivalent). &nbsp;<b>MACs binarized:</b> {p.binarized_mac_ratio:.1%} of "
            f"{p.macs:,}. &nbsp;<b>Arithmetic energy:</b> {p.energy_pj / div:,.2f} {unit} vs "
            f"{t.energy_pj / div:,.2f} {unit} (<b>{cheaper:.1f}× less</b>; memory traffic, "
            f"which costs more, not included).")

