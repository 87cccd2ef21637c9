"""The Bits panel: a binary model as its ``.bnn`` file stores it, and one output unit
computed step by step on a test image.

For the selected run (its latest weights folded into the ``.bnn`` form) or an opened
model: each block's packed weights as a bit plane (filters x taps, in the file's packing
order), the folded per-channel thresholds, which bytes of the file hold what, and for a
chosen output unit: the input bits, weight bits, XNOR, popcount, ``K - 2 popcount``,
pooling, the threshold and the output bit, next to the bit the runtime computed.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...deploy.explain import explain_unit, file_layout, kernel_bits, thresholds
from ..views.background import LatestOnly
from ..views.picture import Picture

__all__ = ["BitsPanel", "unit_text"]


def _bits(a) -> str:
    return "".join("1" if v else "0" for v in np.asarray(a).ravel())


def unit_text(e) -> str:
    """The step-by-step computation of one output unit, as plain text."""
    c, y, x = e.unit
    lines = [f"block {e.block}, output channel {c} at row {y}, column {x} ({e.kind} inputs)"]
    for w in e.windows:
        lines.append(f"window at {w.position}: K = {w.k} taps")
        if w.input_bits is not None:
            lines += [f"  input bits   {_bits(w.input_bits)}",
                      f"  weight bits  {_bits(w.weight_bits)}",
                      f"  XNOR         {_bits(w.xnor)}   (1 = signs agree)",
                      f"  popcount of disagreements d = {w.popcount}",
                      f"  dot = K - 2d = {w.k} - 2*{w.popcount} = {w.dot:g}"]
        else:
            lines.append(f"  dot = sum(inputs * weights) = {w.dot:g}")
    if len(e.windows) > 1:
        lines.append(f"max pool: m = {e.m:g}")
    lines += [f"threshold: {e.rule}  ->  output {e.output:+g}",
              f"runtime computed {e.runtime_output:+g}: "
              + ("the same" if e.agrees else "DIFFERENT")]
    return "\n".join(lines)


def _analyse(opened, x):
    """Everything the panel draws, off the GUI thread."""
    mf = opened.model_file()
    blocks = []
    for i, b in enumerate(mf.blocks):
        kb = kernel_bits(mf, i) if b.kernel == "bits" else None
        th = thresholds(mf, i) if b.output == "bits" else []
        blocks.append((b, kb, th))
    return blocks, opened.bnn_layout(), opened.runtime(), opened.raw_inputs(x[None])[0]


class BitsPanel(QWidget):
    title = "Bits"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.heading = QLabel("Select a run with a binary network, or open a .bnn file.")
        self.heading.setWordWrap(True)
        self.block = QComboBox()
        self.block.currentIndexChanged.connect(self._show_block)
        self.plane = Picture("weight bits (rows: filters · columns: taps)", (0.0, 1.0),
                             caption="black: bit 1 (weight −1) · white: bit 0 (+1)")
        self.plane.setMinimumSize(280, 180)
        self.thresholds = QTableWidget(0, 2)
        self.thresholds.setHorizontalHeaderLabels(["channel", "output bit"])
        self.thresholds.verticalHeader().setVisible(False)
        self.thresholds.horizontalHeader().setStretchLastSection(True)
        self.layout_table = QTableWidget(0, 3)
        self.layout_table.setHorizontalHeaderLabels(["offset", "bytes", "holds"])
        self.layout_table.verticalHeader().setVisible(False)
        self.layout_table.horizontalHeader().setStretchLastSection(True)
        self.channel, self.row, self.col, self.image = (QSpinBox() for _ in range(4))
        for spin in (self.channel, self.row, self.col, self.image):
            spin.valueChanged.connect(self._explain)
        self.steps = QPlainTextEdit()
        self.steps.setReadOnly(True)
        self.steps.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.steps.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        unit = QHBoxLayout()
        for label, spin in (("test image", self.image), ("channel", self.channel),
                            ("row", self.row), ("column", self.col)):
            unit.addWidget(QLabel(label))
            unit.addWidget(spin)
        unit.addStretch(1)
        grid = QGridLayout()
        grid.addWidget(self.plane, 0, 0)
        grid.addWidget(self.thresholds, 0, 1)
        grid.addWidget(QLabel("<b>The .bnn file, byte by byte</b>"), 1, 0)
        grid.addWidget(QLabel("<b>One output unit, step by step</b>"), 1, 1)
        grid.addWidget(self.layout_table, 2, 0)
        right = QVBoxLayout()
        right.addLayout(unit)
        right.addWidget(self.steps, 1)
        grid.addLayout(right, 2, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(0, 1)
        grid.setRowStretch(2, 1)
        top = QHBoxLayout()
        top.addWidget(QLabel("block"))
        top.addWidget(self.block, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.heading)
        layout.addLayout(top)
        layout.addLayout(grid, 1)
        self._worker = LatestOnly(self)
        self._worker.finished.connect(self._on_result)
        self._worker.failed.connect(lambda key, msg: self.heading.setText(
            f"<b>This model has no .bnn form:</b> {msg}"))
        self._source = None
        self._x_test = None
        self.blocks = []
        self._runtime = self._raw = None
        self.explanation = None

    # ------------------------------------------------------------------ focus
    def show_focus(self, focus) -> None:
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
        if opened is None:
            self.heading.setText("Select a finished run with a binary network, or open a "
                                 ".bnn file (File > Open model).")
            return
        prepared = focus.prepared
        if prepared is None:
            self.heading.setText("Waiting for the test images…")
            self._source = None
            return
        ds = prepared.dataset
        self._x_test = ds.x_test if run.opened is not None else prepared.x_test
        self._raw_x = ds.x_test
        self.image.setRange(0, max(0, len(ds.x_test) - 1))
        self.heading.setText(f"<b style='color:{run.color}'>{run.title}</b> as a .bnn file "
                             "stores it: computing…")
        self._title = run.title
        self._worker.submit("model", _analyse, self._as_opened(run, focus), ds.x_test[0])

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

    def _on_result(self, key, result) -> None:
        if key == "model":
            self.blocks, spans, self._runtime, self._raw = result
            self._opened_inputs = None
            self.heading.setText(f"<b>{self._title}</b>: {len(self.blocks)} blocks, "
                                 f"{sum(s.size for s in spans):,} bytes as a .bnn file.")
            self.layout_table.setRowCount(len(spans))
            for i, sp in enumerate(spans):
                for j, v in enumerate((f"{sp.offset:,}", f"{sp.size:,}", sp.what)):
                    self.layout_table.setItem(i, j, QTableWidgetItem(v))
            self.block.blockSignals(True)
            self.block.clear()
            for i, (b, kb, _th) in enumerate(self.blocks):
                kind = "binary" if kb is not None else "float32"
                self.block.addItem(f"{i}: {b.kind} {b.in_shape} -> {b.out_channels} "
                                   f"({kind} weights, {b.fan_in} inputs each)", i)
            self.block.blockSignals(False)
            # Open on the first XNOR-popcount block (binary inputs and weights), if any.
            xnor = [i for i, (b, kb, _t) in enumerate(self.blocks) if kb and b.input == "bits"]
            self.block.setCurrentIndex(xnor[0] if xnor else 0)
            self._show_block()
        elif key == "unit":
            self.explanation = result
            self.steps.setPlainText(unit_text(result))

    def _show_block(self, *_args) -> None:
        i = self.block.currentData()
        if i is None or not self.blocks:
            return
        b, kb, th = self.blocks[i]
        if kb is not None:
            self.plane.set_image(1.0 - kb.bits.astype(np.float32))
            self.plane.set_title(f"{kb.filters} filters × {kb.fan_in} taps (dy, dx, channel), "
                                 "stored in this order")
        else:
            self.plane.set_image(np.zeros((1, 1), np.float32))
            self.plane.set_title("float32 weights (no bits to show)")
        self.thresholds.setRowCount(len(th))
        for r, t in enumerate(th):
            self.thresholds.setItem(r, 0, QTableWidgetItem(str(t.channel)))
            self.thresholds.setItem(r, 1, QTableWidgetItem(t.rule()))
        out_h, out_w = _out_hw(b)
        self.channel.setRange(0, b.out_channels - 1)
        self.row.setRange(0, out_h - 1)
        self.col.setRange(0, out_w - 1)
        self._explain()

    def _explain(self, *_args) -> None:
        i = self.block.currentData()
        if i is None or self._runtime is None:
            return
        from ...deploy.runtime import raw_from_unit

        spec = self._runtime.model_file.input
        x = self._raw_x[self.image.value()][None]
        raw = raw_from_unit(x, spec.encoding)[0] if x.ndim == 4 else x[0]
        unit = (self.channel.value(), self.row.value(), self.col.value())
        self._worker.submit("unit", explain_unit, self._runtime, raw, i, unit)


def _out_hw(b) -> tuple[int, int]:
    if b.kind != "conv2d":
        return 1, 1
    h, w, _ = b.in_shape
    kh, kw = b.kernel_size
    top, bottom, left, right = b.pads
    oh = (h + top + bottom - kh) // b.stride + 1
    ow = (w + left + right - kw) // b.stride + 1
    if b.pool != (0, 0):
        size, stride = b.pool
        oh, ow = (oh - size) // stride + 1, (ow - size) // stride + 1
    return oh, ow
