"""The main window: assembles the panels around the controller and wires them together.

It holds no training logic. A ~30 Hz timer pulls the controller's latest state into the
visible panel, so training speed and drawing speed never hold each other up.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QFontDatabase, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QScrollArea,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from ..io.scenes import preset_dir, preset_names
from .controller import Controller
from .panels.gating import GatingPanel
from .panels.training import Dashboard, ExperimentForm, RunList
from .panels.weights import WeightsPanel
from .widgets import (
    ErrorBanner,
    StallMonitor,
    configure_pyqtgraph,
    export_graphics,
    layer_specs_from_config,
)

__all__ = ["MainWindow"]

FRAME_MS = 33
# Panels of many plots cost ~25 ms a repaint; redrawing them at most 4 times a second
# leaves the event loop free most of the time while training.
HEAVY_PANEL_PERIOD = 0.25
# Panels written alongside this window; imported defensively so one failing panel does not
# take the window down with it.
_EXTERNAL_PANELS = [
    ("binarize", "BinarizationPanel", "Binarizers"),
    ("filters", "FiltersPanel", "Filters"),
    ("summary", "SummaryPanel", "Model summary"),
    ("tryit", "TryItPanel", "Try it"),
]


def _load_panel(module: str, cls: str) -> tuple[QWidget, bool]:
    try:
        mod = importlib.import_module(f"{__package__}.panels.{module}")
        return getattr(mod, cls)(), True
    # Any failure, not only ImportError: a panel with a bug becomes a note, not a dead window.
    except Exception as exc:  # noqa: BLE001
        note = QLabel(f"The {cls} panel is not available yet.\n\n"
                      f"{type(exc).__name__}: {exc}")
        note.setAlignment(Qt.AlignmentFlag.AlignCenter)
        note.setWordWrap(True)
        note.setStyleSheet("color: #777; font-size: 11pt;")
        return note, False


class MainWindow(QMainWindow):
    def __init__(self, controller: Controller | None = None, *, measure_stall: bool = False):
        super().__init__()
        configure_pyqtgraph()
        self.controller = controller if controller is not None else Controller()
        self.setWindowTitle("bnnlab")
        self.resize(1280, 800)

        self.dashboard = Dashboard()
        self.weights = WeightsPanel()
        self.gating = GatingPanel()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.dashboard, "Training")
        self.tabs.addTab(self.weights, "Latent weights")
        self.tabs.addTab(self.gating, "Gradient gating")
        self.external: dict[str, QWidget] = {}
        self._pages: dict[QWidget, QWidget] = {}  # tab page -> the panel inside it
        self._lazy: dict[QWidget, tuple[str, str]] = {}  # tab pages whose panel is not built
        for module, cls, title in _EXTERNAL_PANELS:
            # A scroll area keeps a panel's minimum size from widening the whole window
            # beyond 1280 px; the panel scrolls instead.
            page = QScrollArea()
            page.setFrameShape(QScrollArea.Shape.NoFrame)
            page.setWidgetResizable(True)
            self._lazy[page] = (module, cls)
            self.tabs.addTab(page, title)
        self._broken: set[str] = set()
        self._prepared = None  # the data and model the lazily built panels start from
        self._model_configs = None

        self.banner = ErrorBanner()
        central = QWidget()
        col = QVBoxLayout(central)
        col.setContentsMargins(4, 4, 4, 0)
        col.setSpacing(4)
        col.addWidget(self.banner)
        col.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.form = ExperimentForm()
        self.run_list = RunList()
        side = QWidget()
        side_col = QVBoxLayout(side)
        side_col.setContentsMargins(6, 6, 6, 6)
        side_col.addWidget(self.form)
        runs_title = QLabel("<b>Runs</b> (overlaid in the plots)")
        side_col.addWidget(runs_title)
        side_col.addWidget(self.run_list, 1)
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.dock = QDockWidget("Experiment")
        self.dock.setObjectName("experimentDock")
        self.dock.setWidget(scroll)
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                              | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.dock.setMinimumWidth(290)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.dock)

        self._make_actions()
        self._make_menus()
        self._make_status_bar()
        self._connect()

        self.stall_monitor = StallMonitor(parent=self)
        if measure_stall or os.environ.get("BNNLAB_MEASURE_STALL"):
            self.stall_monitor.start()

        self._drawn_version = -1
        self._tab_dirty = True
        self._last_push = 0.0
        self._last_panel = None
        self.timer = QTimer(self)
        self.timer.setInterval(FRAME_MS)
        self.timer.timeout.connect(self._refresh)
        self.timer.start()
        self._show_scene(self.controller.scene)
        self._on_state(self.controller.state)
        if self.controller.preview_config is not None:
            self._on_model(*self.controller.preview_config)

    # ------------------------------------------------------------------ construction
    def _action(self, text: str, slot, shortcuts=(), tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcuts:
            act.setShortcuts([QKeySequence(s) for s in shortcuts])
            keys = " or ".join(QKeySequence(s).toString(QKeySequence.SequenceFormat.NativeText)
                               for s in shortcuts)
            tip = f"{tip} ({keys})" if tip else keys
        act.setToolTip(tip or text)
        act.setStatusTip(tip or text)
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.triggered.connect(slot)
        self.addAction(act)  # shortcuts work even with the toolbar hidden
        return act

    def _make_actions(self) -> None:
        c = self.controller
        self.act_start = self._action("Start", c.toggle, ["Space"], "Start or pause training")
        self.act_step = self._action("Step", c.step, ["S", "Right"],
                                     "Train exactly one batch, then pause")
        self.act_stop = self._action("Stop", lambda: c.stop(), ["Esc", "Ctrl+."],
                                     "Stop the run (it stays in the list)")
        self.act_reset = self._action("Reset", c.reset, [],
                                      "Stop and forget all runs; the next start uses fresh weights")
        self.act_twin = self._action("Train full-precision twin", c.train_twin, ["Ctrl+T"],
                                     "Train the same network without binarization, to compare")
        self.act_open = self._action("Open scene…", self._open_scene, [QKeySequence.StandardKey.Open])
        self.act_save = self._action("Save scene", self._save_scene, [QKeySequence.StandardKey.Save])
        self.act_save_as = self._action("Save scene as…", self._save_scene_as,
                                        [QKeySequence.StandardKey.SaveAs])
        self.act_data_dir = self._action("Set data folder…", self._choose_data_dir, [],
                                         "Folder with one sub-folder per dataset (e.g. mnist/)")
        self.act_download = QAction("Allow downloads", self, checkable=True)
        self.act_download.setChecked(c.allow_download)
        self.act_download.setToolTip("Download missing datasets into the cache")
        self.act_download.toggled.connect(lambda on: setattr(c, "allow_download", bool(on)))
        self.act_export_csv = self._action("Export metrics (CSV)…", self._export_metrics, ["Ctrl+E"])
        self.act_export_png = self._action("Export current view as PNG…",
                                           lambda: self._export_view(".png"), ["Ctrl+Shift+P"])
        self.act_export_svg = self._action("Export current view as SVG…",
                                           lambda: self._export_view(".svg"), ["Ctrl+Shift+S"])
        self.act_export_model = self._action("Export model (.bnn)…", self._export_model, ["Ctrl+E"])
        self.act_open_model = self._action("Open model (.bnn, .h5, .npz)…", self._open_model,
                                           ["Ctrl+Shift+O"])
        self.act_quit = self._action("Quit", self.close, [QKeySequence.StandardKey.Quit])

    def _export_model(self) -> None:
        """Write the selected run's current weights as a bit-packed .bnn file."""
        snap = self.controller.latest_snapshot
        if snap is None:
            self.banner.show_error("Nothing to export", "Train a run first (Start), then export it.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export model", "model.bnn", "bnnlab model (*.bnn)")
        if not path:
            return
        try:
            from ..core.model import model_from_state
            from ..core.summary import profile_model
            from ..deploy import export_model

            model = model_from_state(snap.model_config, snap.model_state)
            size = export_model(model, path)
            fp = profile_model(model).float32_kib * 1024
        except Exception as exc:  # shown in the window, never a traceback in a terminal
            self.banner.show_error("Cannot export the model", str(exc))
            return
        QMessageBox.information(self, "Model exported",
                                f"Wrote {path}: {size:,} bytes ({size / 1024:.2f} KiB), against "
                                f"{fp:,.0f} bytes for the same weights in float32 "
                                f"({fp / size:.1f}x smaller).")

    def _open_model(self) -> None:
        """Inspect a .bnn, Larq .h5 or checkpoint: sizes, summary and duplicate filters."""
        path, _ = QFileDialog.getOpenFileName(self, "Open model", "",
                                              "Models (*.bnn *.h5 *.hdf5 *.npz)")
        if not path:
            return
        try:
            text = model_report(path)
        except Exception as exc:
            self.banner.show_error("Cannot open the model", str(exc))
            return
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Model: {os.path.basename(path)}")
        view = QPlainTextEdit(text)
        view.setReadOnly(True)
        view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        box = QVBoxLayout(dialog)
        box.addWidget(view)
        dialog.resize(1000, 600)
        dialog.show()

    def _make_menus(self) -> None:
        bar = self.menuBar()
        f = bar.addMenu("&File")
        for a in (self.act_open, self.act_save, self.act_save_as):
            f.addAction(a)
        presets = f.addMenu("Presets")
        group = QActionGroup(self)
        for name in preset_names():
            a = presets.addAction(name)
            a.triggered.connect(lambda _=False, n=name: self.controller.open_preset(n))
            group.addAction(a)
        f.addSeparator()
        f.addAction(self.act_data_dir)
        f.addAction(self.act_download)
        f.addSeparator()
        for a in (self.act_export_csv, self.act_export_png, self.act_export_svg):
            f.addAction(a)
        f.addSeparator()
        f.addAction(self.act_export_model)
        f.addAction(self.act_open_model)
        f.addSeparator()
        f.addAction(self.act_quit)
        t = bar.addMenu("&Training")
        for a in (self.act_start, self.act_step, self.act_stop, self.act_reset):
            t.addAction(a)
        t.addSeparator()
        t.addAction(self.act_twin)
        v = bar.addMenu("&View")
        for i in range(self.tabs.count()):
            a = v.addAction(self.tabs.tabText(i))
            a.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            a.triggered.connect(lambda _=False, k=i: self.tabs.setCurrentIndex(k))
        v.addAction(self.dock.toggleViewAction())
        h = bar.addMenu("&Help")
        h.addAction("Keyboard shortcuts", self._show_shortcuts)
        h.addAction("About bnnlab", self._show_about)

        tb = QToolBar("Training")
        tb.setObjectName("trainingToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_start, self.act_step, self.act_stop, self.act_reset):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.act_twin)
        self.addToolBar(tb)
        self.toolbar = tb

    def _make_status_bar(self) -> None:
        sb = self.statusBar()
        self.state_label = QLabel()
        self.state_label.setMinimumWidth(260)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(240)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.ips_label = QLabel()
        self.ips_label.setMinimumWidth(120)
        self.data_label = QLabel()
        self.data_label.setStyleSheet("color: #666;")
        sb.addWidget(self.state_label)
        sb.addWidget(self.progress)
        sb.addPermanentWidget(self.data_label)
        sb.addPermanentWidget(self.ips_label)
        self._show_data_dir()

    def _connect(self) -> None:
        c = self.controller
        c.scene_changed.connect(self._show_scene)
        c.state_changed.connect(self._on_state)
        c.progress_changed.connect(self._on_progress)
        c.error_raised.connect(self.banner.show_error)
        c.data_ready.connect(self._on_data)
        c.model_built.connect(self._on_model)
        self.form.edited.connect(lambda changes: c.update_scene(**changes))
        self.form.preset_chosen.connect(c.open_preset)
        self.run_list.run_selected.connect(lambda n: c.select_run(c.run_by_number(n)))
        self.run_list.visibility_changed.connect(
            lambda n, on: c.set_run_visible(c.run_by_number(n), on))
        self.run_list.remove_requested.connect(lambda n: c.remove_run(c.run_by_number(n)))
        self.run_list.twin_requested.connect(c.train_twin)
        self.tabs.currentChanged.connect(self._mark_tab_dirty)

    # ------------------------------------------------------------------ controller -> views
    def _show_scene(self, scene) -> None:
        c = self.controller
        preset = None
        if c.scene_path is None and scene.name in preset_names():
            preset = scene.name
        elif c.scene_path is not None and os.path.dirname(os.path.abspath(c.scene_path)) == \
                os.path.abspath(preset_dir()):
            preset = os.path.splitext(os.path.basename(c.scene_path))[0]
        self.form.show_scene(scene, preset)
        where = c.scene_path or "preset"
        self.setWindowTitle(f"bnnlab — {scene.name} ({where})")

    def _on_state(self, state: str) -> None:
        c = self.controller
        self.form.setEnabled(not c.busy)
        running = c.busy and not c.paused and state not in ("stopping",)
        self.act_start.setText("Pause" if running else ("Resume" if c.paused else "Start"))
        self.act_stop.setEnabled(c.busy)
        self.act_twin.setEnabled(not c.busy)
        self.run_list.twin.setEnabled(not c.busy)
        for a in (self.act_open, self.act_data_dir):
            a.setEnabled(True)
        if state == "error":
            self.state_label.setText("<b style='color:#b00020'>error</b> — see the message above")
        else:
            self.state_label.setText(c.status_text())
        self._drawn_version = -1  # redraw the status text with the new state

    def _on_progress(self, what: str, done: int, total: int) -> None:
        if total == 0:
            self.progress.hide()
            return
        self.progress.show()
        if total < 0:  # size unknown: a busy indicator
            self.progress.setRange(0, 0)
            self.progress.setFormat(f"{what} {done / 1e6:.1f} MB")
        elif what == "downloading":
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
            self.progress.setFormat(f"{what} {done / 1e6:.1f} / {total / 1e6:.1f} MB")
        else:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"{what} %v/%m")

    def _ensure_panel(self, page: QWidget) -> None:
        """Build a tab's panel the first time it is shown: the window opens without
        waiting for panels nobody has looked at yet."""
        spec = self._lazy.pop(page, None)
        if spec is None:
            return
        module, cls = spec
        widget, ok = _load_panel(module, cls)
        page.setWidget(widget)
        self._pages[page] = widget
        if not ok:
            return
        self.external[module] = widget
        if self._prepared is not None and module == "binarize":
            self._on_data(self._prepared)
        if self._model_configs is not None and module == "summary":
            self._on_model(*self._model_configs)

    def _on_data(self, prepared) -> None:
        self._prepared = prepared
        panel = self.external.get("binarize")
        ds = prepared.dataset
        if panel is not None and ds.kind == "image":
            self._call_panel("binarize", panel.set_images, ds.x_test[:64], ds.y_test[:64])
        self._tab_dirty = True

    def _on_model(self, config, fp_config) -> None:
        self._model_configs = (config, fp_config)
        specs = layer_specs_from_config(config)
        self.weights.set_layers(specs)
        self.gating.set_layers(specs)
        panel = self.external.get("summary")
        if panel is not None:
            self._call_panel("summary", panel.set_model_config, config, fp_config)

    def _call_panel(self, name: str, method, *args) -> None:
        if name in self._broken:
            return
        try:
            method(*args)
        except Exception as exc:  # noqa: BLE001 - one panel's bug must not stop the others
            # Report once and stop feeding that panel, instead of an error every frame.
            self._broken.add(name)
            traceback.print_exc()
            self.banner.show_error(f"The {name} panel failed",
                                   f"{type(exc).__name__}: {exc}\nThe other panels keep working.")

    def _mark_tab_dirty(self, *_args) -> None:
        self._ensure_panel(self.tabs.currentWidget())
        self._tab_dirty = True
        self._refresh()

    def _refresh(self) -> None:
        c = self.controller
        if c.version != self._drawn_version:
            self._drawn_version = c.version
            views = c.run_views()
            self.run_list.set_runs(views)
            snap = c.latest_snapshot
            self.ips_label.setText(f"{snap.images_per_second:,.0f} images/s"
                                   if snap is not None and c.busy else "")
            if c.state != "error":
                self.state_label.setText(c.status_text())
            self._tab_dirty = True
        if self._tab_dirty:
            panel = self.current_panel()
            now = time.monotonic()
            if panel is not self.dashboard and panel is not self._last_panel:
                self._last_push = 0.0  # a newly shown panel draws at once
            if panel is self.dashboard or now - self._last_push >= HEAVY_PANEL_PERIOD:
                self._tab_dirty = False
                self._last_push = now
                self._last_panel = panel
                self._push_current_tab()

    def current_panel(self) -> QWidget:
        page = self.tabs.currentWidget()
        return self._pages.get(page, page)

    def _push_current_tab(self) -> None:
        c = self.controller
        w = self.current_panel()
        snap = c.latest_snapshot
        if w is self.dashboard:
            self.dashboard.set_runs(c.run_views())
        elif w is self.weights or w is self.gating:
            run = c.selected
            w.set_caption("" if run is None else
                          f"Run <b style='color:{run.color}'>{run.title}</b> ({run.status}) · "
                          f"select another run in the list on the left to compare")
            w.set_snapshot(snap)
        elif w is self.external.get("filters") and snap is not None:
            self._call_panel("filters", w.set_snapshot, snap)
        elif w is self.external.get("tryit") and snap is not None:
            run = c.selected
            prepared = run.prepared if run is not None else None
            if prepared is not None:
                ds = prepared.dataset
                self._call_panel("tryit", w.set_snapshot, snap, ds.kind, ds.class_names,
                                 prepared.x_test, prepared.y_test)
                twin = c.twin_run()
                if twin is not None and twin is not run:
                    self._call_panel("tryit", w.set_twin_snapshot, twin.snapshot)

    # ------------------------------------------------------------------ file actions
    def _open_scene(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open scene", str(preset_dir()),
                                              "Scenes (*.toml);;All files (*)")
        if path:
            self.controller.open_scene(path)

    def _save_scene(self) -> None:
        c = self.controller
        if c.scene_path and os.path.abspath(os.path.dirname(c.scene_path)) != \
                os.path.abspath(preset_dir()):
            c.save_scene(c.scene_path)
        else:
            self._save_scene_as()

    def _save_scene_as(self) -> None:
        name = f"{self.controller.scene.name}.toml"
        path, _ = QFileDialog.getSaveFileName(self, "Save scene", name, "Scenes (*.toml)")
        if path:
            if not path.endswith(".toml"):
                path += ".toml"
            self.controller.save_scene(path)

    def _choose_data_dir(self) -> None:
        start = self.controller.data_dir or os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self, "Data folder (holds mnist/, …)", start)
        if path:
            self.controller.set_data_dir(path)
            self._show_data_dir()

    def _show_data_dir(self) -> None:
        d = self.controller.data_dir
        self.data_label.setText(f"data: {d}" if d else "data: default locations")
        self.data_label.setToolTip("File > Set data folder… (default: $BNNLAB_DATA_DIR)")

    def _export_metrics(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv", "CSV (*.csv)")
        if path:
            self.controller.export_metrics(path)

    def current_graphics(self):
        """The pyqtgraph layout of the visible panel, or None (for exporting)."""
        w = self.current_panel()
        for attr in ("plots", "view"):
            g = getattr(w, attr, None)
            if g is not None and hasattr(g, "ci"):
                return g.ci
        return None

    def _export_view(self, ext: str) -> None:
        item = self.current_graphics()
        if item is None:
            self.banner.show_error("Nothing to export",
                                   "This view has no plots; right-click a plot to export it.")
            return
        title = self.tabs.tabText(self.tabs.currentIndex()).lower().replace(" ", "-")
        path, _ = QFileDialog.getSaveFileName(self, "Export view", f"{title}{ext}",
                                              f"{ext[1:].upper()} (*{ext})")
        if path:
            try:
                export_graphics(item, path)
            except (OSError, ValueError) as exc:
                self.banner.show_error("Export failed", str(exc))

    def _show_about(self) -> None:
        from .about import AboutDialog

        self.about_dialog = AboutDialog(self, data_dir=self.controller.data_dir)
        self.about_dialog.show()

    def _show_shortcuts(self) -> None:
        rows = [(a.text(), a.shortcuts()) for a in
                (self.act_start, self.act_step, self.act_stop, self.act_twin, self.act_open,
                 self.act_save, self.act_export_csv)]
        text = "\n".join(f"{name}: {' or '.join(k.toString() for k in keys)}" for name, keys in rows)
        QMessageBox.information(self, "Keyboard shortcuts", text)

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event) -> None:
        self.timer.stop()
        self.stall_monitor.stop()
        # Joining a thread can take a moment (a batch, or kernel compilation at start-up):
        # the window goes away first instead of looking frozen.
        self.hide()
        self.controller.shutdown()
        super().closeEvent(event)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For scripts: process events until no run is live (True) or the timeout passes."""
        from PySide6.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.controller.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        return not self.controller.busy


def model_report(path: str) -> str:
    """Plain-text report of a model file: sizes, the Larq-style summary, duplicate filters."""
    from ..core.filters import analyze_filters
    from ..core.summary import format_summary, profile_model
    from ..deploy import describe_file, open_model

    info = describe_file(path)
    model = open_model(path)
    lines = [f"{path}",
             f".bnn size: {info['bnn_bytes']:,} bytes; float-32 equivalent: "
             f"{info['float32_bytes']:,} bytes ({info['float32_bytes'] / max(info['bnn_bytes'], 1):.1f}x larger)",
             "", format_summary(profile_model(model)), ""]
    for r in analyze_filters(model):
        lines.append(f"{r.layer}: {r.unique} unique 3x3 patterns of {r.total} filters "
                     f"({r.unique_up_to_sign} up to sign); reuse would save {100 * r.saving:.1f}% of the work")
    return "\n".join(lines)
