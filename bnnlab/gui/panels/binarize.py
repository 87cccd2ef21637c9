"""The binarization explorer: what each binarizer does to one number, and to a whole image.

Everything here is computed from closed-form curves and pre-drawn uniforms, so every slider
redraws at once: moving x or N re-thresholds the same uniforms (the picture changes smoothly
instead of flickering), and "resample" draws new ones.
"""

from __future__ import annotations

import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.binarizers import binarizer_names, get_binarizer, hard_sigmoid
from ..views.picture import Picture
from ..views.slider import ValueSlider
from ..views.style import make_plot, palette_color

__all__ = ["BinarizationPanel"]

X_LIMIT = 2.5
MAX_DRAWS = 2000
MAX_SAMPLES = 256


def _sign(z: np.ndarray) -> np.ndarray:
    return np.where(z >= 0, np.float32(1), np.float32(-1))


class BinarizationPanel(QWidget):
    """Binarizer curves with a movable input x, stochastic draws, and a binarized image."""

    # Emitted from the loader thread; Qt queues it to the GUI thread.
    _default_images_loaded = Signal(object, object, str)

    def __init__(self, parent: QWidget | None = None, seed: int = 0):
        super().__init__(parent)
        self._rng = np.random.default_rng(seed)
        self._binarizers = {name: get_binarizer(name) for name in binarizer_names()}
        self._stochastic = get_binarizer("stochastic_sign")
        self._grid = np.linspace(-X_LIMIT, X_LIMIT, 1001, dtype=np.float32)
        self._curves = {name: b.curves(self._grid) for name, b in self._binarizers.items()}
        self._draw_u = self._rng.random(MAX_DRAWS, dtype=np.float32)
        self._images: np.ndarray | None = None
        self._image_labels: np.ndarray | None = None
        self._index = 0
        self._pixel_u = np.zeros((MAX_SAMPLES, 1, 1), np.float32)
        self._loading = False
        self._syncing = False
        self._build()
        self._default_images_loaded.connect(self._on_default_images)
        self._restyle_curves()
        self._update_point()
        self._update_image()

    title = "Binarizers"

    def show_focus(self, focus) -> None:
        """Binarize the selected run's test images (the built-in digits until a run loads)."""
        prepared = focus.prepared
        if prepared is not None and prepared is not getattr(self, "_prepared", None):
            self._prepared = prepared
            ds = prepared.dataset
            if ds.kind == "image":
                self.set_images(ds.x_test[:64], ds.y_test[:64])

    def heightForWidth(self, width: int) -> int:
        # Word-wrapped labels give the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height, taller than the window; -1
        # lets it fit the panel to the view (never below the minimum size).
        return -1

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Binarizer:"))
        self.combo = QComboBox()
        for name, b in self._binarizers.items():
            self.combo.addItem(name, name)
            doc = " ".join((type(b).__doc__ or "").strip().split("\n\n")[0].split())
            self.combo.setItemData(self.combo.count() - 1, f"{b.label()}: {doc}", Qt.ToolTipRole)
        self.combo.setCurrentIndex(list(self._binarizers).index("ste_sign"))
        controls.addWidget(self.combo)
        self.overlay = QCheckBox("Overlay all binarizers")
        self.overlay.setToolTip("Draw every registered binarizer, the chosen one thicker")
        controls.addWidget(self.overlay)
        self.x_slider = ValueSlider("Input x", -X_LIMIT, X_LIMIT, 0.01, 0.3, fmt="{:+.2f}",
                                    tooltip="The pre-activation fed to the binarizer; drag the "
                                            "dashed line in a plot to move it too")
        controls.addWidget(self.x_slider, 3)
        self.n_slider = ValueSlider("Draws N", 1, MAX_DRAWS, 1, 200, fmt="{:.0f}", log=True,
                                    tooltip="How many stochastic draws to average (log scale)")
        controls.addWidget(self.n_slider, 2)
        self.redraw_button = QPushButton("New draws")
        self.redraw_button.setToolTip("Draw N fresh random numbers")
        controls.addWidget(self.redraw_button)
        root.addLayout(controls)

        plots = QHBoxLayout()
        self.forward_plot = make_plot("Forward: output", "input x", "output", mouse=False)
        self.prob_plot = make_plot("P(output = +1)", "input x", "P(+1)", mouse=False)
        self.grad_plot = make_plot("Backward: gradient", "input x", "d output / d x",
                                   mouse=False)
        self.draws_plot = make_plot("Stochastic draws", "draw index", "value", mouse=False)
        for p in (self.forward_plot, self.prob_plot, self.grad_plot, self.draws_plot):
            p.setMinimumHeight(215)
            plots.addWidget(p)
        root.addLayout(plots, 5)
        # With every binarizer overlaid, one colour key for all plots reads better than
        # six-line legends covering each plot; the plots' own legends name the chosen one.
        self.color_key = QLabel()
        self.color_key.setTextFormat(Qt.RichText)
        self.color_key.setVisible(False)
        root.addWidget(self.color_key)

        self.readout = QLabel()
        self.readout.setTextFormat(Qt.RichText)
        self.readout.setWordWrap(True)
        self.readout.setStyleSheet("font-size: 11pt;")
        root.addWidget(self.readout)

        self._build_curve_items()
        self._build_draw_items()

        box = QGroupBox("On a real image: every pixel binarized at once")
        grid = QGridLayout(box)
        self.k_slider = ValueSlider("Samples K", 1, MAX_SAMPLES, 1, 16, fmt="{:.0f}", log=True,
                                    tooltip="How many stochastic binarizations to average (log scale)")
        self.scale_slider = ValueSlider("Scale", 0.0, 4.0, 0.05, 1.0,
                                        tooltip="Multiplies the centred pixel before binarizing")
        self.offset_slider = ValueSlider("Offset", -2.0, 2.0, 0.05, 0.0, fmt="{:+.2f}",
                                         tooltip="Added before binarizing: a threshold shift")
        self.resample_button = QPushButton("Resample")
        self.resample_button.setToolTip("Draw new random numbers for the stochastic images")
        self.another_button = QPushButton("Another image")
        grid.addWidget(self.k_slider, 0, 0)
        grid.addWidget(self.scale_slider, 0, 1)
        grid.addWidget(self.offset_slider, 0, 2)
        grid.addWidget(self.resample_button, 0, 3)
        grid.addWidget(self.another_button, 0, 4)
        self.formula = QLabel()
        self.formula.setTextFormat(Qt.RichText)
        self.formula.setWordWrap(True)
        grid.addWidget(self.formula, 1, 0, 1, 5)
        pictures = QHBoxLayout()
        self.original_view = Picture("pixels p", (0.0, 1.0), caption="0 black, 1 white")
        self.sign_view = Picture("sign(z)", (-1.0, 1.0), caption="-1 black, +1 white")
        self.sample_view = Picture("one random sample", (-1.0, 1.0),
                                   caption="+1 with probability σ(z)")
        self.mean_view = Picture("mean of K samples", (-1.0, 1.0), caption="-1 black, +1 white")
        self.expected_view = Picture("expected: clip(z, −1, 1)", (-1.0, 1.0),
                                     caption="the limit as K grows")
        for v in (self.original_view, self.sign_view, self.sample_view, self.mean_view,
                  self.expected_view):
            v.setMinimumSize(130, 150)
            v.setMaximumHeight(250)  # the curves above deserve the height more
            pictures.addWidget(v)
        grid.addLayout(pictures, 2, 0, 1, 5)
        grid.setRowStretch(2, 1)
        root.addWidget(box, 3)

        self.combo.currentIndexChanged.connect(self._restyle_curves)
        self.overlay.toggled.connect(self._restyle_curves)
        self.x_slider.value_changed.connect(self._update_point)
        self.n_slider.value_changed.connect(self._update_point)
        self.redraw_button.clicked.connect(self._new_draws)
        for s in (self.k_slider, self.scale_slider, self.offset_slider):
            s.value_changed.connect(self._update_image)
        self.resample_button.clicked.connect(self.resample)
        self.another_button.clicked.connect(self.next_image)

    def _build_curve_items(self) -> None:
        self._legends = {}
        self._items = {}
        self._x_lines = []
        # Each legend sits in the corner its curves leave empty.
        for key, plot, yr, corner in (("forward", self.forward_plot, (-1.6, 1.6), (-5, -5)),
                                      ("p_plus", self.prob_plot, (-0.05, 1.05), (-5, -5)),
                                      ("grad", self.grad_plot, (-0.1, 2.2), (-5, 5))):
            item = plot.getPlotItem()
            item.setXRange(-X_LIMIT, X_LIMIT, padding=0)
            item.setYRange(*yr, padding=0)
            self._legends[key] = item.addLegend(offset=corner, labelTextSize="8pt", verSpacing=-6)
            self._items[key] = {}
            for i, name in enumerate(self._binarizers):
                curve = pg.PlotDataItem(self._grid, self._curves[name][key])
                item.addItem(curve)
                self._items[key][name] = curve
            line = pg.InfiniteLine(angle=90, movable=True,
                                   pen=pg.mkPen("#888", width=1, style=Qt.DashLine),
                                   hoverPen=pg.mkPen("#888", width=3))
            line.setToolTip("drag to move x")
            item.addItem(line)
            line.sigPositionChanged.connect(self._line_dragged)
            self._x_lines.append(line)
        self.gate_region = pg.LinearRegionItem(values=(-1, 1), movable=False,
                                               brush=pg.mkBrush(46, 160, 67, 50),
                                               pen=pg.mkPen(None))
        self.gate_region.setZValue(-10)
        self.grad_plot.getPlotItem().addItem(self.gate_region)
        marker = {"symbol": "o", "size": 11, "pen": pg.mkPen("k", width=1.5)}
        self.forward_marker = pg.ScatterPlotItem(**marker, brush=pg.mkBrush("#ffd43b"))
        self.prob_marker = pg.ScatterPlotItem(**marker, brush=pg.mkBrush("#ffd43b"))
        self.grad_marker = pg.ScatterPlotItem(**marker, brush=pg.mkBrush("#ffd43b"))
        self.forward_plot.getPlotItem().addItem(self.forward_marker)
        self.prob_plot.getPlotItem().addItem(self.prob_marker)
        self.grad_plot.getPlotItem().addItem(self.grad_marker)

    def _build_draw_items(self) -> None:
        item = self.draws_plot.getPlotItem()
        # A one-row legend in the room below -1 stays off the draws.
        item.setYRange(-1.75, 1.15, padding=0)
        item.getAxis("left").setTicks([[(v, f"{v:g}") for v in (-1, -0.5, 0, 0.5, 1)]])
        legend = item.addLegend(offset=(-5, -3), labelTextSize="8pt", horSpacing=8)
        legend.setColumnCount(3)
        self.draw_points = pg.ScatterPlotItem(size=4, pen=pg.mkPen(None),
                                              brush=pg.mkBrush(120, 120, 120, 110),
                                              name="draws")
        self.running_mean = pg.PlotDataItem(pen=pg.mkPen("#d9480f", width=2.5),
                                            name="mean")
        self.target_curve = pg.PlotDataItem(pen=pg.mkPen("#1c7ed6", width=2, style=Qt.DashLine),
                                            name="clip(x, −1, 1)")
        for it in (self.draw_points, self.running_mean, self.target_curve):
            item.addItem(it)

    # ---------------------------------------------------------------- the curves
    def selected_binarizer(self) -> str:
        return self.combo.currentData()

    def _restyle_curves(self, *_args) -> None:
        chosen = self.selected_binarizer()
        everything = self.overlay.isChecked()
        for key, curves in self._items.items():
            legend = self._legends[key]
            legend.clear()
            for i, (name, curve) in enumerate(curves.items()):
                shown = everything or name == chosen
                curve.setVisible(shown)
                color = palette_color(i)
                if name == chosen:
                    curve.setPen(pg.mkPen(color, width=3.5))
                    curve.setZValue(5)
                else:
                    c = pg.mkColor(color)
                    c.setAlpha(170)
                    curve.setPen(pg.mkPen(c, width=1.6))
                    curve.setZValue(0)
                if name == chosen:
                    legend.addItem(curve, name)
        self.color_key.setVisible(everything)
        self.color_key.setText("Overlaid: " + " &nbsp; ".join(
            f"<span style='color:{palette_color(i)}'>━━ <b>{name}</b></span>" if name == chosen
            else f"<span style='color:{palette_color(i)}'>━━ {name}</span>"
            for i, name in enumerate(self._binarizers)))
        window = self._binarizers[chosen].gate_window()
        if window is None:
            self.gate_region.setVisible(False)
        else:
            self.gate_region.setRegion(window)
            self.gate_region.setVisible(window[1] > window[0])
        top = max(float(self._curves[n]["grad"].max()) for n, c in self._items["grad"].items()
                  if c.isVisible())
        self.grad_plot.getPlotItem().setYRange(-0.1, max(1.2, top * 1.1), padding=0)
        self.grad_plot.getPlotItem().setTitle(self._gradient_title(chosen, window), size="10pt")
        stochastic = self._binarizers[chosen].stochastic
        self.forward_plot.getPlotItem().setTitle(
            "Forward: mean output" if stochastic else "Forward: output",
            size="10pt")
        self._update_point()

    @staticmethod
    def _gradient_title(name: str, window) -> str:
        if window is None:
            return "Gradient (passes everywhere)"
        if window[1] <= window[0]:
            return "Gradient of sign: 0"
        return f"Gradient (passes |x| ≤ {window[1]:g})"

    # ------------------------------------------------------------ one input x
    def x_value(self) -> float:
        return self.x_slider.value()

    def draw_values(self) -> np.ndarray:
        """The N current stochastic draws (±1) of ``stochastic_sign`` at x."""
        n = int(self.n_slider.value())
        p = float(hard_sigmoid(np.float32(self.x_value())))
        return np.where(self._draw_u[:n] < p, np.float32(1), np.float32(-1))

    def draw_mean(self) -> float:
        return float(self.draw_values().mean())

    def _line_dragged(self, line) -> None:
        if not self._syncing:
            self.x_slider.set_value(float(np.clip(line.value(), -X_LIMIT, X_LIMIT)))

    def _new_draws(self) -> None:
        self._draw_u = self._rng.random(MAX_DRAWS, dtype=np.float32)
        self._update_point()

    def _update_point(self, *_args) -> None:
        x = self.x_value()
        b = self._binarizers[self.selected_binarizer()]
        xa = np.array([x], np.float32)
        out = float(b.expected(xa)[0] if b.stochastic else b.forward(xa)[0])
        p = float(b.probability(xa)[0])
        g = float(b.grad(xa)[0])
        self._syncing = True
        try:
            for line in self._x_lines:
                line.setValue(x)
        finally:
            self._syncing = False
        self.forward_marker.setData([x], [out])
        self.prob_marker.setData([x], [p])
        self.grad_marker.setData([x], [g])

        draws = self.draw_values()
        n = draws.size
        idx = np.arange(1, n + 1, dtype=np.float32)
        mean = np.cumsum(draws) / idx
        target = float(np.clip(x, -1.0, 1.0))
        self.draw_points.setData(idx, draws)
        self.running_mean.setData(idx, mean)
        self.target_curve.setData([0.0, float(n)], [target, target])
        item = self.draws_plot.getPlotItem()
        item.setXRange(0, max(n, 2), padding=0.02)
        item.setTitle(f"{n} draws at x = {x:+.2f}", size="10pt")

        if b.stochastic:
            value = f"{b.name}(x) = <b>+1 with probability {p:.2f}</b>, mean {out:+.2f}"
        elif b.binary:
            value = f"{b.name}(x) = <b>{out:+.0f}</b>"
        else:
            value = f"{b.name}(x) = <b>{out:+.2f}</b>"
        gate = "passes" if g != 0 else "gated off"
        sp = float(hard_sigmoid(np.float32(x)))
        self.readout.setText(
            f"x = <b>{x:+.2f}</b> &nbsp;→&nbsp; {value} &nbsp;·&nbsp; "
            f"P(+1) = {p:.2f} &nbsp;·&nbsp; STE gradient = {g:.2f} ({gate})"
            f"<br>stochastic_sign: P(+1) = σ(x) = clip((x+1)/2, 0, 1) = {sp:.2f}; "
            f"mean of N = {n} draws = <b>{mean[-1]:+.3f}</b>, "
            f"converging to clip(x, −1, 1) = <b>{target:+.3f}</b>")

    # ------------------------------------------------------------ on an image
    def set_images(self, x: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Images to binarize: float32 ``(N, H, W, 1)`` (or ``(N, H, W)``) in [0, 1]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 4:
            x = x[..., 0]
        if x.ndim != 3 or len(x) == 0:
            raise ValueError(f"set_images needs (N, H, W, 1) images, got shape {x.shape}")
        self._images = x
        self._image_labels = None if labels is None else np.asarray(labels)
        self._index = 0
        self.resample()

    def resample(self) -> None:
        shape = (MAX_SAMPLES, 1, 1) if self._images is None else (MAX_SAMPLES, *self._images.shape[1:])
        self._pixel_u = self._rng.random(shape, dtype=np.float32)
        self._update_image()

    def next_image(self) -> None:
        if self._images is None:
            return
        if len(self._images) > 1:
            step = int(self._rng.integers(1, len(self._images)))
            self._index = (self._index + step) % len(self._images)
        self.resample()

    def binarized_input(self) -> np.ndarray | None:
        """z = scale * (2p - 1) + offset for the current image: what gets binarized."""
        if self._images is None:
            return None
        p = self._images[self._index]
        return self.scale_slider.value() * (2.0 * p - 1.0) + self.offset_slider.value()

    def image_mean(self) -> np.ndarray | None:
        """Mean of the K stochastic samples of the current image."""
        z = self.binarized_input()
        if z is None:
            return None
        k = int(self.k_slider.value())
        prob = hard_sigmoid(z)
        return 2.0 * (self._pixel_u[:k] < prob).mean(axis=0, dtype=np.float32) - 1.0

    def _update_image(self, *_args) -> None:
        scale, offset = self.scale_slider.value(), self.offset_slider.value()
        self.formula.setText(
            f"Binarized value per pixel: <b>z = scale · (2p − 1) + offset = {scale:.2f} · (2p − 1) "
            f"{'+' if offset >= 0 else '−'} {abs(offset):.2f}</b> &nbsp; (p in [0, 1], so z runs "
            f"from {offset - scale:+.2f} for black to {offset + scale:+.2f} for white)")
        z = self.binarized_input()
        if z is None:
            return
        k = int(self.k_slider.value())
        p = self._images[self._index]
        prob = hard_sigmoid(z)
        mean = self.image_mean()
        expected = np.clip(z, -1.0, 1.0)
        label = "" if self._image_labels is None else f", a {self._image_labels[self._index]}"
        self.original_view.set_title(f"pixels p (#{self._index}{label})")
        self.original_view.set_image(p)
        self.sign_view.set_image(_sign(z))
        self.sample_view.set_image(np.where(self._pixel_u[0] < prob, 1.0, -1.0))
        self.mean_view.set_image(mean)
        err = float(np.abs(mean - expected).mean())
        self.mean_view.set_title(f"mean of K={k} (err {err:.2f})")
        self.expected_view.set_image(expected)

    # ------------------------------------------------------ default images
    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._images is None and not self._loading:
            self._loading = True
            self.original_view.set_title("loading digits…")
            threading.Thread(target=self._load_default_images, daemon=True).start()

    def _load_default_images(self) -> None:
        from ...data import DatasetError, load_dataset

        try:
            ds = load_dataset("digits", limit_train=64, limit_test=1)
            result = (ds.x_train, ds.y_train, "")
        except DatasetError as exc:
            result = (None, None, str(exc))
        try:
            self._default_images_loaded.emit(*result)
        except RuntimeError:
            pass  # the panel was closed while loading

    def _on_default_images(self, x, labels, error: str) -> None:
        self._loading = False
        if self._images is not None:
            return  # set_images came first
        if x is None:
            self.original_view.set_title(f"no images: {error}")
            return
        self.set_images(x, labels)
