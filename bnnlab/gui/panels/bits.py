"""The Bits panel: a binary model as its ``.bnn`` file stores it, run on Try it's input.

For the selected run (its final weights folded into the ``.bnn`` form) or an opened model,
a stack of blocks or a graph (version 2: blocks joined by float add, concatenate and
max-pool nodes, e.g. a residual network), in three tabs:

* **Activations · one unit**: the chosen block's input and output for the current Try-it
  input (a drawing or a test image), computed by the packed runtime: one ±1 tile per
  channel, or a strip of bits for a dense block. Clicking a unit of the output selects it
  and shades its receptive field in the input; beside it, the unit's computation step by
  step (input bits, weight bits, XNOR, popcount, ``K - 2 popcount``, pooling, threshold,
  output bit) and whether the runtime computed the same bit. In a graph, a block reads
  the signs of a float tensor (e.g. the sum of a shortcut and a block's values) and gives
  real values, which the text follows into the ``add`` nodes that read them;
* **Weight bits · thresholds**: the block's packed kernel as a bit plane (filters x taps,
  in the file's packing order) and the folded per-channel thresholds (or, for a block
  that outputs values, the folded scale and offset);
* **File bytes**: which bytes of the file hold what.

The layout and the text are in :mod:`bnnlab.app.bits`; the numbers in
:mod:`bnnlab.deploy.explain`.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...app.bits import (Mosaic, block_input, block_output, input_labels, output_labels, probe,
                         receptive_field, unit_text)
from ...deploy.explain import graph_links, kernel_bits, thresholds
from ..panel import FitPage, NotedPanel
from ..views.bitmap import BitMap
from ..views.picture import Picture

__all__ = ["BitsPanel"]

TRY_IT, TEST_IMAGE = 0, 1
WEIGHT_CAPTION = "black: bit 1 (weight −1) · white: bit 0 (+1)"


def _analyse(opened):
    """Everything about the model the panel draws, off the GUI thread."""
    mf = opened.model_file()
    blocks = []
    for i, b in enumerate(mf.blocks):
        kb = kernel_bits(mf, i) if b.kernel == "bits" else None
        th = thresholds(mf, i) if b.output == "bits" else []
        blocks.append((b, kb, th))
    links = [graph_links(mf, i) for i in range(len(mf.blocks))] if mf.is_graph else []
    opened.runtime()  # built here, not on the GUI thread
    return opened, mf, blocks, opened.bnn_layout(), links


def _epilogue_rules(b) -> list[str]:
    """Per output channel of a block that outputs values: how m becomes its value."""
    return [f"{float(sc):.6g} * m {'-' if of < 0 else '+'} {abs(float(of)):.6g}"
            for sc, of in zip(b.scale, b.offset)]


def _probe(generation, opened, x, block, unit):
    return generation, probe(opened, x, block, unit)


def _table(headers: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    t.verticalHeader().setDefaultSectionSize(22)
    t.horizontalHeader().setStretchLastSection(True)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    return t


def _column(*parts) -> QWidget:
    """A widget stacking layouts and widgets (``(widget, stretch)`` to stretch one), as
    tall as its parts' minimum heights need (:class:`~bnnlab.gui.panel.FitPage`)."""
    box = FitPage()
    col = QVBoxLayout(box)
    col.setContentsMargins(0, 0, 0, 0)
    for part in parts:
        part, stretch = part if isinstance(part, tuple) else (part, 0)
        if isinstance(part, QWidget):
            col.addWidget(part, stretch)
        else:
            col.addLayout(part, stretch)
    return box


class BitsPanel(NotedPanel):
    title = "Bits"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.block = QComboBox()
        self.block.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.block.setMinimumContentsLength(24)
        self.block.currentIndexChanged.connect(self._show_block)
        self.source = QComboBox()
        self.source.addItems(["Try it's input", "test image #"])
        self.source.currentIndexChanged.connect(self._source_changed)
        self.image = QSpinBox()
        self.image.setVisible(False)  # the test image number, when that is the input
        self.image.valueChanged.connect(self._image_changed)
        self.channel, self.row, self.col = (QSpinBox() for _ in range(3))
        for spin in (self.channel, self.row, self.col):
            spin.valueChanged.connect(self._ask)
        top = QHBoxLayout()
        top.addWidget(QLabel("block"))
        top.addWidget(self.block, 1)
        top.addSpacing(8)
        top.addWidget(QLabel("input"))
        top.addWidget(self.source)
        top.addWidget(self.image)
        self.input_label = QLabel("")
        self.input_label.setStyleSheet("color: #555;")
        self.input_label.setWordWrap(True)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_activations(), "Activations · one unit")
        self.tabs.addTab(self._build_weights(), "Weight bits · thresholds")
        self.byte_table = _table(["offset", "bytes", "holds"])
        self.tabs.addTab(self.byte_table, "File bytes")
        self.layout_table = self.byte_table

        self._frame(_column(top, self.input_label, (self.tabs, 1)))
        self._source = None
        self._opened = self._mf = None
        self._raw_x = None
        self._probe_x = None
        self._probe_label = ""
        self._generation = 0
        self._input_text = ""
        self.blocks = []
        self.links = []
        self.probe = None
        self.explanation = None
        self.show_note("Select a finished run with a binary network, or open a .bnn file "
                      "(File > Open model).")

    def _build_activations(self) -> QWidget:
        self.input_map = BitMap("block input")
        self.output_map = BitMap("block output (click a unit)")
        self.output_map.unit_clicked.connect(self.select_unit)
        for m in (self.input_map, self.output_map):
            m.setMinimumSize(200, 110)
        maps = QSplitter(Qt.Orientation.Vertical)
        maps.addWidget(self.input_map)
        maps.addWidget(self.output_map)
        maps.setChildrenCollapsible(False)
        unit = QHBoxLayout()
        unit.addWidget(QLabel("<b>Unit</b>"))
        for label, spin in (("channel", self.channel), ("row", self.row), ("column", self.col)):
            unit.addWidget(QLabel(label))
            unit.addWidget(spin)
        unit.addStretch(1)
        self.steps = QPlainTextEdit()
        self.steps.setReadOnly(True)
        self.steps.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.steps.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        right = _column(unit, self.verdict, (self.steps, 1))
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(maps)
        split.addWidget(right)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([500, 500])  # the steps need the width as much as the maps do
        return split

    def _build_weights(self) -> QWidget:
        self.plane = Picture("weight bits (rows: filters · columns: taps)", (0.0, 1.0),
                             caption=WEIGHT_CAPTION)
        self.plane.setMinimumSize(240, 150)
        self.thresholds = _table(["channel", "output from m, the (pooled) dot product"])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plane)
        split.addWidget(self.thresholds)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([600, 400])
        return split

    def _source_changed(self, *_args) -> None:
        self.image.setVisible(self.source.currentIndex() == TEST_IMAGE)
        self._ask()

    # ------------------------------------------------------------------ focus
    def show_focus(self, focus) -> None:
        self._take_probe(focus.probe)
        run = focus.run
        opened = None
        if run is not None and run.opened is not None:
            opened = run.opened
        elif run is not None and run.snapshot is not None and run.snapshot.event in ("done", "stopped"):
            opened = run.snapshot  # folded once the run has ended (weights no longer move)
        if opened is self._source:
            return
        self._source = opened
        self.blocks = []
        self._opened = None
        self.heading.setText("")
        if opened is None:
            self.show_note("Select a finished run with a binary network, or open a .bnn file "
                          "(File > Open model)." if run is None or run.opened is None else "")
            return
        prepared = focus.prepared
        if prepared is None:
            self.show_note("Waiting for the test images…")
            self._source = None
            return
        wait = focus.kernels_wait("runtime")
        if wait:
            self.show_note(f"{wait}. bnnlab compiles them in the background when it starts, "
                           "once after it is installed or updated; this page shows the model "
                           "as soon as they are ready.")
            self._source = None
            return
        ds = prepared.dataset
        self._raw_x = ds.x_test  # dataset units (images in [0, 1]), as Try it draws them
        self.image.blockSignals(True)
        self.image.setRange(0, max(0, len(ds.x_test) - 1))
        self.image.blockSignals(False)
        self._title = f"<b style='color:{run.color}'>{run.title}</b>"
        self.show_note(f"{run.title} as a .bnn file stores it: computing…")
        self._worker.submit("model", _analyse, self._as_opened(run, focus))

    def _take_probe(self, p) -> None:
        if p is None or p.x is self._probe_x:
            return
        self._probe_x, self._probe_label = p.x, p.label
        if self.source.currentIndex() == TRY_IT:
            self._ask()

    @staticmethod
    def _as_opened(run, focus):
        if run.opened is not None:
            return run.opened
        from ...app.models import OpenedModel
        from ...core.model import model_from_state

        s = run.snapshot
        ds = focus.prepared.dataset
        return OpenedModel.from_model(model_from_state(s.model_config, s.model_state), run.title,
                                      input_scale=run.input_scale,
                                      class_names=ds.class_names, dataset=ds.name)

    def _on_failed(self, key, msg: str) -> None:
        if key == "model":
            self.show_note(f"No bits to show for this model: {msg}")
        else:
            self.input_label.setText(self._input_text)
            self.verdict.setText(f"<b>Cannot compute this unit:</b> {msg}")

    def _on_result(self, key, result) -> None:
        if key == "model":
            self._show_model(*result)
        elif key == "probe":
            generation, p = result
            if generation == self._generation:
                self.input_label.setText(self._input_text)
                self._show_probe(p)

    def _show_model(self, opened, mf, blocks, spans, links) -> None:
        self._opened, self._mf, self.blocks, self.links = opened, mf, blocks, links
        self.show_content()
        binary = sum(kb is not None for _b, kb, _t in blocks)
        size = f"{sum(s.size for s in spans):,} bytes"
        if mf.is_graph:
            ops = [nd.op for nd in mf.nodes if nd.op != "block"]
            joined = ", ".join(f"{ops.count(op)} {name}" for op, name in (
                ("add", "add"), ("concatenate", "concatenate"), ("maxpool", "max pool"))
                if ops.count(op))
            self.heading.setText(
                f"{self._title} as a .bnn graph file (version 2): {len(blocks)} blocks "
                f"({binary} with binary weights) joined by {len(ops)} float nodes ({joined}), "
                f"{size}; blocks computed on the packed integer runtime, the float nodes in "
                "float32. A block reads the signs of its input tensor.")
        else:
            self.heading.setText(f"{self._title} as a .bnn file: {len(blocks)} blocks "
                                 f"({binary} with binary weights), {size}; computed on the "
                                 f"packed integer runtime.")
        self.byte_table.setRowCount(len(spans))
        for i, sp in enumerate(spans):
            for j, v in enumerate((f"{sp.offset:,}", f"{sp.size:,}", sp.what)):
                self.byte_table.setItem(i, j, QTableWidgetItem(v))
        self.byte_table.resizeColumnsToContents()
        self.block.blockSignals(True)
        self.block.clear()
        for i, (b, kb, _th) in enumerate(blocks):
            kind = "binary" if kb is not None else "float32"
            inputs = "bits" if b.input == "bits" else "raw input"
            out = "bits" if b.output == "bits" else "logits"
            if links and b.input != "raw":
                inputs = f"{'signs' if b.input == 'signs' else 'bits'} of {links[i].source}"
            out = f"{out} out"
            if links and links[i].readers:
                out = f"{'bits' if b.output == 'bits' else 'values'} → {', '.join(links[i].readers)}"
            self.block.addItem(f"{i}: {b.kind} {'x'.join(map(str, b.in_shape))} → "
                               f"{'x'.join(map(str, b.out_shape))} ({kind} weights on {inputs}; "
                               f"{out})", i)
        self.block.blockSignals(False)
        # Open on the first XNOR-popcount block (binary inputs and weights), if any.
        xnor = [i for i, (b, kb, _t) in enumerate(blocks)
                if kb is not None and b.input in ("bits", "signs")]
        self.block.setCurrentIndex(xnor[0] if xnor else 0)
        self._show_block()

    def _show_block(self, *_args) -> None:
        i = self.block.currentData()
        if i is None or not self.blocks:
            return
        b, kb, th = self.blocks[i]
        if kb is not None:
            self.plane.set_image(1.0 - kb.bits.astype(np.float32))
            self.plane.set_title(f"{kb.filters} filters × {kb.fan_in} taps (dy, dx, channel), "
                                 "in the file's order")
            self.plane.set_caption(WEIGHT_CAPTION)
        else:
            self.plane.set_image(np.full((1, 1), 0.5, np.float32))
            self.plane.set_title("float32 weights: no bits to show")
            self.plane.set_caption("")
        rules = [t.rule() for t in th] if b.output == "bits" else _epilogue_rules(b)
        self.thresholds.setRowCount(len(rules))
        for r, rule in enumerate(rules):
            self.thresholds.setItem(r, 0, QTableWidgetItem(str(r)))
            self.thresholds.setItem(r, 1, QTableWidgetItem(rule))
        self.thresholds.resizeColumnToContents(0)
        out_h, out_w, out_c = b.out_shape
        for spin, top in ((self.channel, out_c), (self.row, out_h), (self.col, out_w)):
            spin.blockSignals(True)
            spin.setRange(0, top - 1)
            spin.blockSignals(False)
        self._ask()

    # ------------------------------------------------------------------ the unit
    def select_unit(self, row: int, column: int, channel: int) -> None:
        """Explain output unit (row, column, channel) of the chosen block (a click on it)."""
        for spin, v in ((self.row, row), (self.col, column), (self.channel, channel)):
            spin.blockSignals(True)
            spin.setValue(v)
            spin.blockSignals(False)
        self._ask()

    def selected_unit(self) -> tuple[int, int, int]:
        return self.row.value(), self.col.value(), self.channel.value()

    def _image_changed(self, *_args) -> None:
        if self.source.currentIndex() != TEST_IMAGE:
            self.source.setCurrentIndex(TEST_IMAGE)  # asks
        else:
            self._ask()

    def _input(self):
        """(x, label): Try it's input when it has one that fits, else the chosen test image."""
        shape = self._opened.input_shape
        if self.source.currentIndex() == TRY_IT and self._probe_x is not None \
                and tuple(np.shape(self._probe_x)) == shape:
            return self._probe_x, f"Try it's input: {self._probe_label}"
        i = self.image.value()
        note = "" if self.source.currentIndex() == TEST_IMAGE else \
            " (Try it has no input for this model yet)"
        return self._raw_x[i], f"test image #{i}{note}"

    def _ask(self, *_args) -> None:
        i = self.block.currentData()
        if i is None or self._opened is None or self._raw_x is None:
            return
        x, label = self._input()
        self._input_text = (f"Input: {label}. The maps are what the packed runtime computes "
                            "for it; click a unit of the output.")
        # The maps stay empty (or show the previous input) until the answer comes.
        self.input_label.setText(f"{self._input_text} <i>Computing the maps…</i>")
        self._generation += 1
        self._worker.submit("probe", _probe, self._generation, self._opened, x, i,
                            self.selected_unit())

    def _show_probe(self, p) -> None:
        self.probe, self.explanation = p, p.explanation
        e, mf = p.explanation, self._mf
        i = e.block
        b = mf.blocks[i]
        inp, out = block_input(p, mf, i), block_output(p, mf, i)
        in_mosaic, out_mosaic = Mosaic.for_shape(inp.shape), Mosaic.for_shape(out.shape)
        self.input_map.set_values(inp, in_mosaic)
        self.output_map.set_values(out, out_mosaic)
        source = self.links[i].source if self.links else None
        for view, (title, caption) in ((self.input_map, input_labels(p, mf, i, source)),
                                       (self.output_map, output_labels(p, mf, i))):
            view.set_title(title)
            view.set_caption(caption)
        self.input_map.shade(receptive_field(b, e.unit))
        self.output_map.select(e.unit)
        self.input_map.select(None)
        color = "#2ca02c" if e.agrees else "#d62728"
        verdict = "the same" if e.agrees else "a different value"
        self.verdict.setText(f"Unit (row {e.unit[0]}, column {e.unit[1]}, channel {e.unit[2]}): "
                             f"by hand {e.output:+g}; the runtime computed "
                             f"<b style='color:{color}'>{verdict}</b> ({e.runtime_output:+g}).")
        self.steps.setPlainText(unit_text(e, adds=p.adds))
