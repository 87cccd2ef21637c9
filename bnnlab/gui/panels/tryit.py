"""Try the network: draw a digit (or pick a test image) and read its class probabilities,
or, for 2-D point sets, watch its decision boundary over the plane.

Inference runs on a worker thread (:class:`LatestOnly`): the GUI thread only prepares
inputs and draws results, so the pen never lags behind the mouse and snapshots arriving at
the training rate cost the window almost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ...app.stochastic import accuracy_by_passes, averaged_proba, is_stochastic
from ...core.model import model_from_state
from ..panel import FitPage
from ..views.background import LatestOnly
from ..views.bars import BarChart
from ..views.canvas import DrawingCanvas
from ..views.decision_map import DecisionMap
from ..views.digit_prep import to_mnist
from ..views.picture import Picture
from ..views.style import BNN_COLOR, TWIN_COLOR
from ..views.throttle import Throttle

__all__ = ["TryItPanel", "grid_extent"]

GRID = 100  # heatmap resolution per axis: 10^4 points, one forward pass


def grid_extent(xy: np.ndarray | None, margin: float = 0.1) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) covering the points with a margin, square like Playground."""
    if xy is None or len(xy) == 0:
        return (-6.0, 6.0, -6.0, 6.0)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre, half = (lo + hi) / 2, float(max(hi - lo)) / 2 * (1 + margin) or 1.0
    return (float(centre[0] - half), float(centre[0] + half),
            float(centre[1] - half), float(centre[1] + half))


# ---------------------------------------------------------------- worker side (no Qt)
class _Models:
    """The inference model of the newest snapshot, rebuilt only when the snapshot changes.
    Used from the worker thread only."""

    def __init__(self):
        self._snapshot = None
        self._model = None

    def get(self, snapshot):
        if snapshot is None:
            return None
        if snapshot is not self._snapshot:
            if hasattr(snapshot, "model_state"):
                self._model = model_from_state(snapshot.model_config, snapshot.model_state)
            else:  # an opened model file: it computes on its own (the runtime for a .bnn)
                self._model = _OpenedPredictor(snapshot)
            self._snapshot = snapshot
        return self._model


class _OpenedPredictor:
    """An opened model behind the engine model's ``predict_proba``: it takes the dataset's
    inputs as they are (images in [0, 1]) and runs a .bnn file on the packed runtime."""

    def __init__(self, opened):
        self.opened = opened

    def predict_proba(self, x, batch_size=None):
        return self.opened.predict_proba(x)


def _classify(models: _Models, twin_models: _Models, snapshot, twin, x: np.ndarray,
              passes: int = 1):
    model = models.get(snapshot)
    if passes > 1:
        probs = averaged_proba(model, x, passes)[0].astype(np.float64)
    else:
        probs = model.predict_proba(x)[0].astype(np.float64)
    twin_model = twin_models.get(twin)
    twin_probs = None if twin_model is None else twin_model.predict_proba(x)[0].astype(np.float64)
    return probs, twin_probs


def _accuracy_by_passes(models: _Models, snapshot, x_test, y_test):
    n = min(500, len(x_test))
    return n, accuracy_by_passes(models.get(snapshot), x_test[:n], y_test[:n], (1, 4, 16))


def _field_and_accuracy(model, grid_points, x_test, y_test):
    p = model.predict_proba(grid_points, batch_size=len(grid_points))
    field = p[:, min(1, p.shape[1] - 1)].reshape(GRID, GRID)
    acc = None
    if x_test is not None and y_test is not None and len(x_test):
        acc = float(np.mean(model.predict_proba(x_test).argmax(axis=1) == y_test))
    return field, acc


def _boundaries(models: _Models, twin_models: _Models, snapshot, twin, grid_points,
                x_test, y_test):
    field, acc = _field_and_accuracy(models.get(snapshot), grid_points, x_test, y_test)
    twin_model = twin_models.get(twin)
    twin_result = None if twin_model is None else \
        _field_and_accuracy(twin_model, grid_points, x_test, y_test)
    return field, acc, twin_result, getattr(snapshot, "step", 0)


def _tagged(generation: int, fn, args):
    # Errors travel back as data, tagged like results, so the view knows which request failed.
    try:
        return generation, fn(*args), None
    except Exception as exc:  # noqa: BLE001 - any model error must reach the view
        return generation, None, f"{type(exc).__name__}: {exc}"


def _network_name(run) -> str:
    """How the prediction text names a run's network: which network speaks, and which run
    (for an opened file: which file, and whether the packed runtime computes)."""
    kind = "Full-precision network" if run.full_precision else "Binary network"
    if run.twin_of is not None:
        kind = f"Full-precision twin of #{run.twin_of}"
    if run.opened is not None:
        where = "packed runtime" if run.opened.computes_on == "runtime" else "engine"
        return f"{kind} (#{run.number}, {run.opened.source}, {where})"
    return f"{kind} (#{run.number})"


# ---------------------------------------------------------------- the panel
class TryItPanel(QWidget):
    """Inference on the latest snapshot (and its full-precision twin, when given).

    ``set_snapshot`` may be called at the training rate: it stores the snapshot and at most
    four times a second (and only while the panel is visible) asks the worker for fresh
    results.
    """

    # The image input changed: (H, W, 1) in [0, 1], and what it is ("your drawing", ...).
    input_changed = Signal(object, str)

    def __init__(self, parent: QWidget | None = None, seed: int = 0):
        super().__init__(parent)
        self._rng = np.random.default_rng(seed)
        self._snapshot = self._twin_snapshot = None
        self._names = ("Binary network", "Full-precision twin")
        self._cleared = ""
        self._kind: str | None = None
        self._class_names: tuple[str, ...] = ()
        self._x_test = self._y_test = None
        self._x_test_given = None
        self._symmetric = False
        self._stale = False
        self._source = "drawing"
        self._input = np.zeros((28, 28), np.float32)
        self._probs: np.ndarray | None = None
        self._twin_probs: np.ndarray | None = None
        self._field = self._twin_field = None
        self._extent = (-6.0, 6.0, -6.0, 6.0)
        self._grid_points = np.zeros((0, 2), np.float32)
        self._models, self._twin_models = _Models(), _Models()
        self._asked: dict[str, int] = {}  # generation of the last request sent, per job kind
        self._answered: dict[str, int] = {}
        self._valid_from: dict[str, int] = {}  # answers to older requests are for another network
        self._worker = LatestOnly(self)
        self._worker.finished.connect(self._on_result)
        self._refresh = Throttle(self._request, 0.25, self)
        self._follow_pen = Throttle(self._predict_drawing, 1 / 30, self)
        self._build()

    title = "Try it"

    def show_focus(self, focus) -> None:
        """Try the selected run, compared with its own full-precision twin (if trained)."""
        run, prepared = focus.run, focus.prepared
        if run is None or (run.snapshot is None and run.opened is None) or prepared is None:
            self.clear("Train a run (Start), then try it here." if run is None else
                       f"{run.title}: {run.state}. Try it once the run has a snapshot.")
            return
        wait = focus.kernels_wait(run.opened.computes_on) if run.opened is not None else ""
        if wait:  # computing now would compile them a second time, here
            text = (f"{wait}. bnnlab compiles them in the background when it starts; "
                    f"{run.title} answers here as soon as they are ready.")
            self.clear(text)
            if self._kind is None:  # nothing tried yet: the page that shows is the placeholder
                self.placeholder.setText(text)
            return
        ds = prepared.dataset
        self._names = (_network_name(run), _network_name(focus.twin) if focus.twin else "")
        if run.opened is not None:  # the file's model reads the dataset's own inputs
            self.set_snapshot(run.opened, ds.kind, ds.class_names, ds.x_test, ds.y_test,
                              input_scale="unit")
        else:
            self.set_snapshot(run.snapshot, ds.kind, ds.class_names, prepared.x_test,
                              prepared.y_test)
        self.set_twin_snapshot(focus.twin.snapshot if focus.twin is not None else None)

    def clear(self, message: str) -> None:
        """Nothing to try: drop the network, its twin and their answers."""
        if self._snapshot is None and self._twin_snapshot is None and self._cleared == message:
            return
        self._cleared = message
        self._snapshot = self._twin_snapshot = None
        self._probs = self._twin_probs = self._field = self._twin_field = None
        for kind, generation in self._asked.items():
            self._valid_from[kind] = generation + 1  # answers on their way: the old network
        self.prob_chart.set_values([None, None])
        self.prediction.setText(message)
        self.boundary_label.setText(message)
        self.twin_boundary.setVisible(False)

    def heightForWidth(self, width: int) -> int:
        # Word-wrapped labels give the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height, taller than the window; -1
        # lets it fit the panel to the view (never below the minimum size).
        return -1

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.pages = QStackedWidget()
        root.addWidget(self.pages)
        self.placeholder = QLabel("Train a model (or open one) to try it here.")
        self.placeholder.setAlignment(Qt.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.pages.addWidget(self.placeholder)
        self.pages.addWidget(self._build_image_page())
        self.pages.addWidget(self._build_points_page())

    def _build_image_page(self) -> QWidget:
        page = FitPage()  # its minimum height, not its preferred one, is the panel's
        grid = QGridLayout(page)
        left = QVBoxLayout()
        title = QLabel("<b>Draw a digit</b> (left button; right button clears)")
        left.addWidget(title)
        self.canvas = DrawingCanvas()
        left.addWidget(self.canvas, 0, Qt.AlignHCenter)
        buttons = QHBoxLayout()
        self.clear_button = QPushButton("Clear")
        self.random_button = QPushButton("Random test image")
        buttons.addWidget(self.clear_button)
        buttons.addWidget(self.random_button)
        left.addLayout(buttons)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Test image #"))
        self.test_spin = QSpinBox()
        self.test_spin.setRange(0, 0)
        self.test_spin.setEnabled(False)
        pick.addWidget(self.test_spin, 1)
        left.addLayout(pick)
        self.source_label = QLabel("Input: your drawing")
        self.source_label.setWordWrap(True)
        left.addWidget(self.source_label)
        left.addStretch(1)
        grid.addLayout(left, 0, 0, 2, 1)

        self.input_view = Picture("what the network sees (28 × 28)", (0.0, 1.0),
                                  caption="0 black, 1 white")
        self.input_view.setFixedSize(250, 275)
        middle = QVBoxLayout()
        middle.addWidget(self.input_view)
        # How the drawing on the left becomes the picture above: said beside the picture,
        # which leaves the drawing's column short enough for a 1024 x 640 screen.
        how = QLabel("Like MNIST digits, a drawing is cropped, scaled to fit 20 × 20 pixels "
                     "and placed in 28 × 28 with its centre of mass in the middle.")
        how.setWordWrap(True)
        how.setStyleSheet("color: #666;")
        how.setFixedWidth(250)
        middle.addWidget(how)
        self.prediction = QLabel()
        self.prediction.setTextFormat(Qt.RichText)
        self.prediction.setWordWrap(True)
        self.prediction.setFixedWidth(250)
        self.prediction.setStyleSheet("font-size: 13pt;")
        middle.addWidget(self.prediction)
        # Stochastic activations draw new signs on every pass: one prediction is a sample.
        self.passes = QSpinBox()
        self.passes.setRange(1, 64)
        self.passes.setPrefix("average of ")
        self.passes.setSuffix(" stochastic passes")
        self.passes.setToolTip("This network binarizes activations stochastically: average the "
                               "class probabilities of K passes")
        self.passes.valueChanged.connect(lambda _k: self._ask_image())
        # Two lines broken by hand, not word-wrapped: a wrapped label would make the chart's
        # preferred height the page's minimum.
        self.passes_accuracy = QLabel()
        self.passes_accuracy.setStyleSheet("color: #444;")
        middle.addStretch(1)
        grid.addLayout(middle, 0, 1)
        self.prob_chart = BarChart("Class probabilities", "class", "probability",
                                   [("binary network", BNN_COLOR),
                                    ("full-precision twin", TWIN_COLOR)], y_max=1.05)
        self.prob_chart.setMinimumSize(280, 300)
        right = QVBoxLayout()
        right.addWidget(self.prob_chart, 1)
        # Under the bars they average (the middle column has no room left at 1024 x 640).
        for w in (self.passes, self.passes_accuracy):
            w.setVisible(False)
            right.addWidget(w, 0, Qt.AlignmentFlag.AlignLeft if w is self.passes else Qt.AlignmentFlag(0))
        grid.addLayout(right, 0, 2)
        grid.setColumnStretch(2, 1)
        grid.setRowStretch(0, 1)

        self.canvas.drawing_changed.connect(self._drawn)
        self.canvas.cleared.connect(self._drawn)
        self.clear_button.clicked.connect(self.canvas.clear)
        self.random_button.clicked.connect(self.pick_random_test_image)
        self.test_spin.valueChanged.connect(self.show_test_image)
        return page

    def _build_points_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        top = QHBoxLayout()
        self.boundary_label = QLabel()
        self.boundary_label.setTextFormat(Qt.RichText)
        self.boundary_label.setStyleSheet("font-size: 11pt;")
        self.boundary_label.setWordWrap(True)
        top.addWidget(self.boundary_label, 1)
        self.show_points = QCheckBox("Show test data")
        self.show_points.setChecked(True)
        top.addWidget(self.show_points)
        lay.addLayout(top)
        maps = QHBoxLayout()
        self.boundary = DecisionMap("Binary network")
        self.twin_boundary = DecisionMap("Full-precision twin")
        self.twin_boundary.setVisible(False)
        maps.addWidget(self.boundary)
        maps.addWidget(self.twin_boundary)
        lay.addLayout(maps, 1)
        self.show_points.toggled.connect(self._show_points)
        return page

    # ------------------------------------------------------------------ data in
    def set_snapshot(self, snapshot, kind: str, class_names: Sequence[str],
                     x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                     input_scale: str | None = None) -> None:
        """The network to try. ``kind`` is "image" or "points"; ``x_test`` as the model sees
        it (scaled). ``input_scale`` ("unit"/"symmetric") is guessed from ``x_test`` if not
        given: drawings are made in [0, 1] and mapped the same way."""
        names = tuple(str(n) for n in class_names)
        if (kind, names) != (self._kind, self._class_names) or x_test is not self._x_test_given:
            self._setup(kind, names, x_test, y_test, input_scale)
        elif snapshot is self._snapshot:
            return  # nothing new to compute
        self._snapshot = snapshot
        self._cleared = ""
        stochastic = hasattr(snapshot, "model_state") and is_stochastic(snapshot.model_config)
        self.passes.setVisible(stochastic and kind == "image")
        self.passes_accuracy.setVisible(stochastic and kind == "image")
        if stochastic and kind == "image" and self._x_test is not None and self._y_test is not None \
                and getattr(snapshot, "event", "") in ("done", "stopped", "epoch"):
            self.passes_accuracy.setText("Accuracy against K: computing…")
            self._ask("passes", _accuracy_by_passes, self._models, snapshot, self._x_test,
                      self._y_test)
        self._refresh.request()

    def set_twin_snapshot(self, snapshot) -> None:
        """The full-precision twin to compare with (None: no twin)."""
        if snapshot is not self._twin_snapshot:
            self._twin_snapshot = snapshot
            self._refresh.request()

    def _setup(self, kind, names, x_test, y_test, input_scale) -> None:
        self._kind, self._class_names = kind, names
        self._x_test_given = x_test
        self._x_test = None if x_test is None else np.asarray(x_test, np.float32)
        self._y_test = None if y_test is None else np.asarray(y_test)
        if input_scale is None:
            input_scale = "symmetric" if self._x_test is not None and self._x_test.min() < -0.01 \
                else "unit"
        self._symmetric = input_scale == "symmetric"
        self._probs = self._twin_probs = self._field = self._twin_field = None
        self._refresh.reset()
        if kind == "points":
            self.pages.setCurrentIndex(2)
            self._extent = grid_extent(self._x_test)
            x0, x1, y0, y1 = self._extent
            gx, gy = np.meshgrid(np.linspace(x0, x1, GRID), np.linspace(y0, y1, GRID))
            self._grid_points = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
            for view in (self.boundary, self.twin_boundary):
                view.set_class_names(names if len(names) >= 2 else ("class 0", "class 1"))
            self.boundary_label.setText("Computing the decision boundary…")
            self._show_points()
        else:
            self.pages.setCurrentIndex(1)
            self.prob_chart.set_categories(names)
            n = 0 if self._x_test is None else len(self._x_test)
            self.test_spin.setEnabled(n > 0)
            self.random_button.setEnabled(n > 0)
            self.test_spin.blockSignals(True)
            self.test_spin.setRange(0, max(0, n - 1))
            self.test_spin.setValue(0)
            self.test_spin.blockSignals(False)
            if n:
                self.show_test_image(0)  # something to look at before anyone draws

    # ------------------------------------------------------------------ requests
    def _ask(self, kind: str, fn, *args) -> None:
        generation = self._asked.get(kind, 0) + 1
        self._asked[kind] = generation
        self._worker.submit(kind, _tagged, generation, fn, args)

    def _request(self) -> None:
        if self._snapshot is None:
            return
        if not self.isVisible():
            self._stale = True  # hidden tabs cost nothing; caught up in showEvent
            return
        if self._kind == "points":
            self._ask("points", _boundaries, self._models, self._twin_models, self._snapshot,
                      self._twin_snapshot, self._grid_points, self._x_test, self._y_test)
        else:
            self._ask_image()

    def _ask_image(self) -> None:
        self.input_view.set_image(self._input)
        if self._snapshot is None or self._kind != "image":
            return
        self._ask("image", _classify, self._models, self._twin_models, self._snapshot,
                  self._twin_snapshot, self._model_input(self._input),
                  self.passes.value() if not self.passes.isHidden() else 1)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self._request()

    def is_idle(self) -> bool:
        """True when every request has been answered and drawn (for tests and scripts)."""
        return (not self._refresh._timer.isActive() and not self._follow_pen._timer.isActive()
                and all(self._answered.get(k) == g for k, g in self._asked.items()))

    def _on_result(self, kind, payload) -> None:
        generation, result, error = payload
        self._answered[kind] = generation
        if generation != self._asked.get(kind) or generation < self._valid_from.get(kind, 0):
            return  # a newer request is on its way
        if error is not None:
            target = self.boundary_label if kind == "points" else self.prediction
            target.setText(f"<b>Cannot run this model:</b> {error}")
            return
        if kind == "points":
            self._show_boundaries(*result)
        elif kind == "passes":
            n, acc = result
            self.passes_accuracy.setText(
                f"Accuracy on {n} test images, averaging K passes:<br>"
                + " · ".join(f"K={k}: <b>{a:.1%}</b>" for k, a in acc.items()))
        else:
            self._show_probabilities(*result)

    # ------------------------------------------------------------------ images
    def _model_input(self, image: np.ndarray) -> np.ndarray:
        x = image[None, :, :, None].astype(np.float32)
        return x * 2.0 - 1.0 if self._symmetric else x

    def _drawn(self) -> None:
        self._source = "drawing"
        self._follow_pen.request()

    def _predict_drawing(self) -> None:
        self._input = to_mnist(self.canvas.ink())
        self.source_label.setText("Input: your drawing")
        self.input_changed.emit(self._input[:, :, None].copy(), "your drawing")
        self._ask_image()

    def show_test_image(self, index: int) -> None:
        if self._x_test is None or not len(self._x_test):
            return
        index = int(np.clip(index, 0, len(self._x_test) - 1))
        image = self._x_test[index, :, :, 0]
        if self._symmetric:
            image = (image + 1.0) / 2.0
        self._source = "test"
        self._input = np.clip(image, 0.0, 1.0)
        self.canvas.set_ink(self._input)
        self.canvas.clear_on_next_stroke = True
        label = "" if self._y_test is None else \
            f" — true class <b>{self._class_names[int(self._y_test[index])]}</b>"
        self.source_label.setText(f"Input: test image #{index}{label}<br>(drawing starts a fresh canvas)")
        true = "" if self._y_test is None else \
            f" (true class {self._class_names[int(self._y_test[index])]})"
        self.input_changed.emit(self._input[:, :, None].copy(), f"test image #{index}{true}")
        self._ask_image()

    def pick_random_test_image(self) -> None:
        if self._x_test is not None and len(self._x_test):
            self.test_spin.setValue(int(self._rng.integers(len(self._x_test))))

    def _show_probabilities(self, probs: np.ndarray, twin_probs: np.ndarray | None) -> None:
        self._probs, self._twin_probs = probs, twin_probs
        self.prob_chart.set_values([probs, twin_probs])
        text = f"<span style='color:{BNN_COLOR}'>{self._names[0]}</span> says " \
               f"{self._verdict(probs)}"
        if not self.passes.isHidden() and self.passes.value() > 1:
            text += f" <span style='font-size:9pt'>(mean of {self.passes.value()} passes)</span>"
        if twin_probs is not None:
            text += f"<br><span style='color:{TWIN_COLOR}'>{self._names[1]}</span> says " \
                    f"{self._verdict(twin_probs)}"
        if self._source == "drawing" and not self._input.any():
            text = "Draw a digit (or pick a test image) to see what the network makes of it."
        self.prediction.setText(text)

    def _verdict(self, probs: np.ndarray) -> str:
        k = int(np.argmax(probs))
        name = self._class_names[k] if k < len(self._class_names) else str(k)
        return f"<b style='font-size: 20pt'>{name}</b> ({probs[k]:.0%})"

    def probabilities(self) -> np.ndarray | None:
        """Class probabilities of the binary network for the latest answered input."""
        return None if self._probs is None else self._probs.copy()

    def twin_probabilities(self) -> np.ndarray | None:
        return None if self._twin_probs is None else self._twin_probs.copy()

    def input_image(self) -> np.ndarray:
        """The 28x28 image in [0, 1] the network is shown."""
        self._follow_pen.flush()  # include the latest stroke
        return self._input.copy()

    # ------------------------------------------------------------------ points
    def _show_boundaries(self, field, acc, twin_result, step) -> None:
        self._field = field
        self.boundary.set_field(field, self._extent)
        self.boundary.set_title(self._names[0] if acc is None
                                else f"{self._names[0]} (test accuracy {acc:.1%})")
        parts = [f"<span style='color:{BNN_COLOR}'>{self._names[0]}</span>"
                 + ("" if acc is None else f": test accuracy <b>{acc:.1%}</b>")]
        self.twin_boundary.setVisible(twin_result is not None)
        self._twin_field = None
        if twin_result is not None:
            self._twin_field, tacc = twin_result
            self.twin_boundary.set_field(self._twin_field, self._extent)
            self.twin_boundary.set_title(self._names[1] if tacc is None
                                         else f"{self._names[1]} (test accuracy {tacc:.1%})")
            parts.append(f"<span style='color:{TWIN_COLOR}'>{self._names[1]}</span>"
                         + ("" if tacc is None else f": <b>{tacc:.1%}</b>"))
        positive = self._class_names[1] if len(self._class_names) > 1 else "class 1"
        self.boundary_label.setText(
            f"Colour is P({positive}), white where undecided; step {step}. " + " · ".join(parts))

    def _show_points(self, *_args) -> None:
        shown = self.show_points.isChecked()
        for view in (self.boundary, self.twin_boundary):
            view.set_points(self._x_test if shown else None, self._y_test)

    def heatmap(self) -> np.ndarray | None:
        """P(class 1) of the binary network over the grid, (GRID, GRID), row 0 at the bottom."""
        return None if self._field is None else self._field.copy()

    def twin_heatmap(self) -> np.ndarray | None:
        return None if self._twin_field is None else self._twin_field.copy()
