"""Evaluate the selected run's model (trained or opened from a file) on a dataset's test
set: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...data import DatasetError, dataset_info, dataset_names

__all__ = ["EvaluatePanel"]


def fitting_datasets(input_shape, num_classes: int) -> list[str]:
    """Registered datasets whose inputs and class count suit a model."""
    names = []
    for name in dataset_names():
        try:
            info = dataset_info(name)
        except DatasetError:
            continue
        if tuple(info.input_shape) == tuple(input_shape) and len(info.class_names) == num_classes:
            names.append(name)
    return names


class EvaluatePanel(QWidget):
    """Choose a dataset, evaluate, read the accuracy and the confusion matrix."""

    title = "Evaluate"
    evaluate_requested = Signal(str)  # dataset name
    cancel_requested = Signal()
    fine_tune_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.heading = QLabel("Select a run or open a model (File > Open model).")
        self.heading.setWordWrap(True)
        self.dataset = QComboBox()
        self.dataset.setToolTip("Only datasets with the model's input shape and class count")
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(
            lambda: self.evaluate_requested.emit(self.dataset.currentData() or ""))
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.cancel_requested)
        self.tune = QPushButton("Continue training…")
        self.tune.setToolTip("Fine-tune this model file with the scene's training settings "
                             "(dataset, optimizer, learning rate, epochs), as a new run")
        self.tune.clicked.connect(self.fine_tune_requested)
        # What an evaluation waits for while the start-up warm-up compiles the kernels.
        self.wait_note = QLabel()
        self.wait_note.setWordWrap(True)
        self.wait_note.setStyleSheet("color: #8a5a00;")
        self.wait_note.setVisible(False)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.matrix = QTableWidget(0, 0)
        self.matrix.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.matrix.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.matrix.setToolTip("Rows: true class · columns: predicted class · last column: "
                               "accuracy of the row's class")
        row = QHBoxLayout()
        row.addWidget(QLabel("dataset"))
        row.addWidget(self.dataset, 1)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel)
        row.addStretch(1)
        row.addWidget(self.tune)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.heading)
        layout.addLayout(row)
        layout.addWidget(self.wait_note)
        layout.addWidget(self.result)
        self.matrix_title = QLabel("<b>Confusion matrix</b> (rows: true class, columns: "
                                   "predicted)")
        layout.addWidget(self.matrix_title)
        layout.addWidget(self.matrix, 1)
        layout.addStretch(0)  # takes the room while the matrix is hidden
        self._run_key = None
        self._shown = None
        self.busy = False
        self.show_evaluation(None)

    def show_focus(self, focus) -> None:
        run = focus.run
        self.busy = focus.evaluating
        shape = None
        if run is not None and run.opened is not None:
            shape = (run.opened.input_shape, run.opened.num_classes, run.opened.dataset)
        elif run is not None and run.snapshot is not None:
            cfg = run.snapshot.model_config
            ds = focus.prepared.dataset if focus.prepared is not None else None
            shape = (tuple(cfg["input_shape"]), len(ds.class_names) if ds else None,
                     ds.name if ds else None)
        key = (None if run is None else run.number, shape)
        if key != self._run_key:
            self._run_key = key
            self._fill_datasets(shape)
        if run is None:
            self.heading.setText("Select a run or open a model (File > Open model).")
        else:
            where = ("the packed integer runtime" if run.opened is not None
                     and run.opened.computes_on == "runtime" else "the engine")
            what = run.opened.path if run.opened is not None else "its latest weights"
            self.heading.setText(f"<b style='color:{run.color}'>{run.title}</b>: {what}, "
                                 f"computed on {where}.")
        self._show_wait(focus)
        can = run is not None and shape is not None and self.dataset.count() > 0
        self.run_button.setEnabled(can and not self.busy)
        self.cancel.setEnabled(self.busy)
        self.tune.setVisible(run is not None and run.opened is not None)
        self.tune.setEnabled(run is not None and run.opened is not None
                             and run.opened.has_latent_weights)
        if run is not None and run.opened is not None and not run.opened.has_latent_weights:
            self.tune.setToolTip("A .bnn file keeps only the signs of the weights: fine-tune "
                                 "from the .npz or .h5 it came from")
        evaluation = run.evaluation if run is not None else None
        if evaluation is not self._shown:
            self._shown = evaluation
            self.show_evaluation(evaluation)

    def _show_wait(self, focus) -> None:
        run, on = focus.run, focus.evaluation_waits_on
        if on:
            text = focus.kernels_wait(on) + ": the evaluation starts as soon as they are ready."
        elif run is not None and run.opened is not None and focus.kernels_wait(run.opened.computes_on):
            text = (focus.kernels_wait(run.opened.computes_on) + " (bnnlab compiles them in the "
                    "background when it starts): an evaluation started now begins once they "
                    "are ready.")
        else:
            text = ""
        self.wait_note.setText(text)
        self.wait_note.setVisible(bool(text))

    def _fill_datasets(self, shape) -> None:
        self.dataset.clear()
        if shape is None or shape[1] is None:
            return
        names = fitting_datasets(shape[0], shape[1])
        if shape[2] in names:  # the model's own dataset first
            names.remove(shape[2])
            names.insert(0, shape[2])
        for name in names:
            self.dataset.addItem(name, name)

    def show_evaluation(self, e) -> None:
        self.matrix_title.setVisible(e is not None)
        self.matrix.setVisible(e is not None)
        if e is None:
            self.result.setText(
                "<span style='color:#555'>Evaluate runs every test image of the chosen dataset "
                "through the model, off the window's thread, with a Cancel button; the "
                "accuracy, each class's accuracy and the confusion matrix then show here."
                "</span>")
            self.matrix.setRowCount(0)
            self.matrix.setColumnCount(0)
            return
        done = "" if e.complete else f" (cancelled after {e.n:,} of {e.total:,} images)"
        self.result.setText(f"<span style='font-size:15pt'><b>{e.accuracy:.2%}</b></span> "
                            f"accuracy on {e.n:,} test images of <b>{e.dataset}</b>{done}, "
                            f"computed on the {e.computed_on} in {e.seconds:.1f} s.")
        c = e.confusion
        k = len(e.class_names)
        self.matrix.setRowCount(k)
        self.matrix.setColumnCount(k + 1)
        self.matrix.setHorizontalHeaderLabels([*e.class_names, "class acc."])
        self.matrix.setVerticalHeaderLabels(list(e.class_names))
        per = e.per_class_accuracy
        top = max(1, int(c.max()))
        for i in range(k):
            for j in range(k):
                cell = QTableWidgetItem(f"{int(c[i, j]):,}")
                cell.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                shade = int(255 - 150 * c[i, j] / top)
                cell.setBackground(QColor(shade, shade, 255) if i == j else
                                   QColor(255, shade, shade) if c[i, j] else QColor("white"))
                self.matrix.setItem(i, j, cell)
            acc = QTableWidgetItem("–" if np.isnan(per[i]) else f"{per[i]:.1%}")
            acc.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            self.matrix.setItem(i, k, acc)
