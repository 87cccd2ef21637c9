"""A horizontal slider over real values, with its name and current value beside it."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QWidget

__all__ = ["ValueSlider", "log_steps"]


def log_steps(minimum: float, maximum: float, count: int = 160) -> np.ndarray:
    """Whole numbers from ``minimum`` to ``maximum``, spaced evenly on a log scale: every
    small number is there (1, 2, 3, …), larger ones thin out."""
    values = np.unique(np.round(np.geomspace(minimum, maximum, count)))
    return values.astype(np.float64)


class ValueSlider(QWidget):
    """``value = minimum + step * k`` for integer slider positions ``k``; with ``log=True``
    the positions run over :func:`log_steps` instead (counts from 1 to thousands).

    ``value_changed(float)`` fires on every move (including keyboard and programmatic
    changes), so views redraw while the handle is dragged, not on release.
    """

    value_changed = Signal(float)

    def __init__(self, name: str, minimum: float, maximum: float, step: float, value: float, *,
                 fmt: str = "{:.2f}", tooltip: str = "", log: bool = False, parent=None):
        super().__init__(parent)
        self._min, self._step, self._fmt = float(minimum), float(step), fmt
        self._table = log_steps(minimum, maximum) if log else None
        self.slider = QSlider(Qt.Horizontal)
        top = len(self._table) - 1 if log else round((maximum - minimum) / step)
        self.slider.setRange(0, top)
        self.slider.setValue(self._to_int(value))
        self.slider.setMinimumWidth(70)
        self._name = QLabel(name)
        self._value = QLabel()
        self._value.setMinimumWidth(48)
        self._value.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        if tooltip:
            for w in (self, self.slider, self._name):
                w.setToolTip(tooltip)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self._name)
        row.addWidget(self.slider, 1)
        row.addWidget(self._value)
        self.slider.valueChanged.connect(self._moved)
        self._show_value()

    def _to_int(self, v: float) -> int:
        if self._table is not None:
            return int(np.argmin(np.abs(np.log(self._table) - np.log(max(float(v), 1e-12)))))
        return round((float(v) - self._min) / self._step)

    def value(self) -> float:
        if self._table is not None:
            return float(self._table[self.slider.value()])
        return self._min + self._step * self.slider.value()

    def set_value(self, v: float) -> None:
        self.slider.setValue(self._to_int(v))

    def _show_value(self) -> None:
        self._value.setText(self._fmt.format(self.value()))

    def _moved(self, _k: int) -> None:
        self._show_value()
        self.value_changed.emit(self.value())
