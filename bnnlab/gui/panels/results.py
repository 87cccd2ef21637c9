"""The results table: one row per run, sortable by any column, exportable as CSV."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...app.results import RESULT_COLUMNS

__all__ = ["ResultsPanel"]

_PERCENT = {"accuracy", "val_accuracy"}


class _Cell(QTableWidgetItem):
    """A cell that sorts by its value (numbers as numbers, blanks last), not its text."""

    def __init__(self, text: str, key):
        super().__init__(text)
        self.key = key

    def __lt__(self, other) -> bool:
        a, b = self.key, getattr(other, "key", None)
        if a is None or b is None:  # blanks last, whichever way the column is sorted
            if a is None and b is None:
                return False
            table = self.tableWidget()
            descending = table is not None and table.horizontalHeader().sortIndicatorOrder() \
                == Qt.SortOrder.DescendingOrder
            return a is None if descending else b is None
        if isinstance(a, str) or isinstance(b, str):
            return str(a) < str(b)
        return a < b


def _text(key: str, v) -> str:
    if v is None:
        return "–"
    if key in _PERCENT:
        return f"{100 * v:.2f}%"
    if key == "loss" or key == "val_loss":
        return f"{v:.4f}"
    if key == "seconds":
        return f"{v:.1f}"
    if key == "parameters":
        return f"{v:,}"
    return str(v)


class ResultsPanel(QWidget):
    """Every run in a table: scene, what differs, seed, final figures, time, parameters."""

    title = "Results"
    export_requested = Signal()
    compare_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table = QTableWidget(0, len(RESULT_COLUMNS))
        self.table.setHorizontalHeaderLabels([h for _, h in RESULT_COLUMNS])
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # runs in order, at first
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.note = QLabel("Final figures of every run: loss and accuracy of the last finished "
                           "epoch on the training data, validation on the test set; rows C1, C2… "
                           "are the trainings of comparisons over seeds. Click a heading to sort.")
        self.note.setWordWrap(True)
        self.export = QPushButton("Export CSV…")
        self.export.setToolTip("File > Export results table (CSV)")
        self.export.clicked.connect(self.export_requested)
        self.compare = QPushButton("Compare over seeds…")
        self.compare.setToolTip("Train the current scene and a variant with several seeds; "
                                "every training becomes a row here")
        self.compare.clicked.connect(self.compare_requested)
        top = QHBoxLayout()
        top.addWidget(self.note, 1)
        top.addWidget(self.compare)
        top.addWidget(self.export)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        self._key = None
        self.rows: list[dict] = []

    def show_focus(self, focus) -> None:
        if focus.results != self._key:
            self._key = focus.results
            self.set_rows(list(focus.results))

    def set_rows(self, rows: list[dict]) -> None:
        self.rows = rows
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)  # rows would move while being filled
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, (key, _) in enumerate(RESULT_COLUMNS):
                cell = _Cell(_text(key, row[key]), row[key])
                if key == "differs" and row[key]:
                    cell.setToolTip(row[key])  # the column may be too narrow for it
                if key not in ("scene", "differs", "state"):
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, cell)
        self.table.setSortingEnabled(sorting)
        self.export.setEnabled(bool(rows))

    def column(self, key: str) -> list[str]:
        """The cells of one column as shown, top to bottom (for tests)."""
        j = [k for k, _ in RESULT_COLUMNS].index(key)
        return [self.table.item(i, j).text() for i in range(self.table.rowCount())]
