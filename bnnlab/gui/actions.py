"""The window's actions: one table of commands and their shortcuts, the menus and toolbar
built from it, and the file dialogs behind them.

Each shortcut is bound to exactly one action (Qt fires neither of two actions sharing a
key); ``tests/test_gui_app.py`` checks the table and the live window for duplicates.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMessageBox, QToolBar

from ..io.scenes import preset_dir, preset_names

__all__ = ["SHORTCUTS", "WindowActions"]

# name -> (menu text, shortcut or "", tip)
SHORTCUTS = {
    "start": ("Start", "Space", "Start or pause training"),
    "step": ("Step", "S", "Train exactly one batch, then pause"),
    "stop": ("Stop", "Esc", "Stop the run (it stays in the list)"),
    "reset": ("Reset", "Ctrl+R", "Forget all runs (asks first); the next start uses fresh weights"),
    "twin": ("Train full-precision twin", "Ctrl+T",
             "Train the selected run's network without binarization, to compare with it"),
    "compare_seeds": ("Compare over seeds…", "Ctrl+Shift+C",
                      "Train the current scene and a variant with several seeds; compare "
                      "mean, spread and the difference with its confidence interval"),
    "open": ("Open scene…", "Ctrl+O", ""),
    "save": ("Save scene", "Ctrl+S", ""),
    "save_as": ("Save scene as…", "Ctrl+Shift+S", ""),
    "open_workspace": ("Open workspace…", "Ctrl+Alt+O", "The scene and every run of a workspace file"),
    "save_workspace": ("Save workspace…", "Ctrl+Alt+S",
                       "The scene and every run (curves and weights) in one file"),
    "data_dir": ("Set data folder…", "", "Folder with one sub-folder per dataset (e.g. mnist/)"),
    "export_csv": ("Export metrics (CSV)…", "Ctrl+E", "Every run's curves, one row per point"),
    "export_results": ("Export results table (CSV)…", "Ctrl+Shift+E", "One row per run"),
    "export_png": ("Export current view as PNG…", "Ctrl+Shift+P", ""),
    "export_svg": ("Export current view as SVG…", "", ""),
    "export_model": ("Export model (.bnn)…", "Ctrl+B", "The selected run's weights, bit-packed"),
    "export_h5": ("Export model for Larq (.h5)…", "",
                  "The selected run as a Keras 2 / Larq model: train on in Larq, or convert "
                  "it with Larq Compute Engine"),
    "open_model": ("Open model (.bnn, .h5, .npz)…", "Ctrl+Shift+O",
                   "Open a model file as a run: summary, filters, try it, evaluate, fine-tune"),
    "sidebar": ("Experiment", "F9", "Show or hide the experiment sidebar (scene settings and runs)"),
    "shortcuts": ("Keyboard shortcuts", "F1", ""),
    "about": ("About bnnlab", "", "Version, Python, Qt, Numba, CPU features, data folders"),
    "quit": ("Quit", "Ctrl+Q", ""),
}
TAB_SHORTCUT = "Ctrl+{}"
WORKSPACE_SUFFIX = ".bnnlab.npz"  # Ctrl+1 ... shows the n-th tab


class WindowActions:
    """Builds the actions, menus and toolbar of ``window`` and runs the file dialogs."""

    def __init__(self, window):
        self.w = window
        s = window.session
        slots = {
            "start": s.toggle, "step": s.step, "stop": lambda: s.stop(), "reset": window.reset,
            "twin": s.train_twin, "compare_seeds": window.show_seed_comparison,
            "open": self.open_scene,
            "save": self.save_scene, "save_as": self.save_scene_as,
            "open_workspace": self.open_workspace, "save_workspace": self.save_workspace, "data_dir": self.choose_data_dir,
            "export_csv": self.export_metrics, "export_results": self.export_results,
            "export_png": lambda: self.export_view(".png"), "export_svg": lambda: self.export_view(".svg"),
            "export_model": self.export_model, "export_h5": self.export_h5,
            "open_model": self.open_model,
            "sidebar": None, "shortcuts": self.show_shortcuts, "about": self.show_about, "quit": window.close,
        }
        self.by_name: dict[str, QAction] = {}
        for name, (text, keys, tip) in SHORTCUTS.items():
            if name == "sidebar":
                act = window.dock.toggleViewAction()
                act.setText(text)
            else:
                act = QAction(text, window)
                act.triggered.connect(slots[name])
            if keys:
                act.setShortcut(QKeySequence(keys))
                shown = QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText)
                tip = f"{tip} ({shown})" if tip else shown
            act.setToolTip(tip or text)
            act.setStatusTip(tip or text)
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            window.addAction(act)  # shortcuts work even with the toolbar hidden
            self.by_name[name] = act
        self.allow_download = QAction("Allow downloads", window, checkable=True)
        self.allow_download.setChecked(s.allow_download)
        self.allow_download.setToolTip("Download missing datasets into the cache")
        self.allow_download.toggled.connect(lambda on: setattr(s, "allow_download", bool(on)))
        self._menus()

    def __getitem__(self, name: str) -> QAction:
        return self.by_name[name]

    def _menus(self) -> None:
        w, a = self.w, self.by_name
        bar = w.menuBar()
        f = bar.addMenu("&File")
        for n in ("open", "save", "save_as"):
            f.addAction(a[n])
        presets = f.addMenu("Presets")
        group = QActionGroup(w)
        for name in preset_names():
            p = presets.addAction(name)
            p.triggered.connect(lambda _=False, n=name: w.session.open_preset(n))
            group.addAction(p)
        f.addSeparator()
        f.addAction(a["open_workspace"])
        f.addAction(a["save_workspace"])
        f.addSeparator()
        f.addAction(a["data_dir"])
        f.addAction(self.allow_download)
        f.addSeparator()
        for n in ("export_csv", "export_results", "export_png", "export_svg"):
            f.addAction(a[n])
        f.addSeparator()
        f.addAction(a["export_model"])
        f.addAction(a["export_h5"])
        f.addAction(a["open_model"])
        f.addSeparator()
        f.addAction(a["quit"])
        t = bar.addMenu("&Training")
        for n in ("start", "step", "stop", "reset"):
            t.addAction(a[n])
        t.addSeparator()
        t.addAction(a["twin"])
        t.addAction(a["compare_seeds"])
        v = bar.addMenu("&View")
        for i in range(w.tabs.count()):
            tab = v.addAction(w.tabs.tabText(i))
            if i < 9:
                tab.setShortcut(QKeySequence(TAB_SHORTCUT.format(i + 1)))
            tab.triggered.connect(lambda _=False, k=i: w.tabs.setCurrentIndex(k))
        v.addSeparator()
        v.addAction(a["sidebar"])
        h = bar.addMenu("&Help")
        h.addAction(a["shortcuts"])
        h.addAction(a["about"])

        tb = QToolBar("Training")
        tb.setObjectName("trainingToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        tb.addAction(a["sidebar"])
        tb.addSeparator()
        for n in ("start", "step", "stop", "reset"):
            tb.addAction(a[n])
        tb.addSeparator()
        tb.addAction(a["twin"])
        tb.addAction(a["compare_seeds"])
        w.addToolBar(tb)
        w.toolbar = tb

    def sync(self, s) -> None:
        """Enable and name the actions for the session's state."""
        a = self.by_name
        running = s.busy and not s.paused and (s.active_run is None or
                                               s.active_run.state.value != "stopping")
        a["start"].setText("Pause" if running else ("Resume" if s.paused else "Start"))
        a["stop"].setEnabled(s.busy)
        a["twin"].setEnabled(not s.busy)

    # ------------------------------------------------------------------ dialogs
    def open_scene(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.w, "Open scene", str(preset_dir()),
                                              "Scenes (*.toml);;All files (*)")
        if path:
            self.w.session.open_scene(path)

    def save_scene(self) -> None:
        s = self.w.session
        if s.scene_path and os.path.abspath(os.path.dirname(s.scene_path)) != \
                os.path.abspath(preset_dir()):
            s.save_scene(s.scene_path)
        else:
            self.save_scene_as()

    def save_scene_as(self) -> None:
        name = f"{self.w.session.scene.name}.toml"
        path, _ = QFileDialog.getSaveFileName(self.w, "Save scene", name, "Scenes (*.toml)")
        if path:
            if not path.endswith(".toml"):
                path += ".toml"
            self.w.session.save_scene(path)

    def open_workspace(self) -> None:
        unsaved = self.w.session.unsaved_text()
        if unsaved and not self.w.confirm(
                "Discard unsaved work?", f"Opening a workspace replaces the runs and the "
                                         f"comparisons, and {unsaved} not saved. Discard?"):
            return
        path, _ = QFileDialog.getOpenFileName(self.w, "Open workspace", "",
                                              f"Workspaces (*{WORKSPACE_SUFFIX});;All files (*)")
        if path:
            self.w.session.open_workspace(path)

    def save_workspace(self) -> bool:
        s = self.w.session
        path = self._save_path("Save workspace", s.workspace_path or f"{s.scene.name}{WORKSPACE_SUFFIX}",
                               f"Workspaces (*{WORKSPACE_SUFFIX})")
        if not path:
            return False
        if not path.endswith(".npz"):
            path += WORKSPACE_SUFFIX
        return s.save_workspace(path)

    def choose_data_dir(self) -> None:
        start = self.w.session.data_dir or os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self.w, "Data folder (holds mnist/, …)", start)
        if path:
            self.w.session.set_data_dir(path)
            self.w.show_data_dir()

    def _save_path(self, title: str, name: str, filt: str) -> str:
        path, _ = QFileDialog.getSaveFileName(self.w, title, name, filt)
        return path

    def export_metrics(self, path: str | None = None) -> bool:
        from ..app.results import METRICS_COLUMNS, metrics_rows, write_csv

        path = path or self._save_path("Export metrics", "metrics.csv", "CSV (*.csv)")
        if not path:
            return False
        try:
            write_csv(path, METRICS_COLUMNS, metrics_rows(self.w.session.runs))
        except OSError as exc:
            self.w.banner.show_error("Cannot export the metrics", f"{path}: {exc.strerror or exc}")
            return False
        return True

    def export_results(self, path: str | None = None) -> bool:
        from ..app.results import RESULT_COLUMNS, write_csv

        path = path or self._save_path("Export results", "results.csv", "CSV (*.csv)")
        if not path:
            return False
        keys = [k for k, _ in RESULT_COLUMNS]
        try:
            write_csv(path, keys, [[r[k] for k in keys] for r in self.w.session.result_table()])
        except OSError as exc:
            self.w.banner.show_error("Cannot export the results", f"{path}: {exc.strerror or exc}")
            return False
        return True

    def export_view(self, ext: str, path: str | None = None) -> bool:
        from .views.export import export_graphics

        item = current_graphics(self.w.current_panel())
        if item is None:
            self.w.banner.show_error("Nothing to export",
                                     "This view has no plots; right-click a plot to export it.")
            return False
        title = self.w.tabs.tabText(self.w.tabs.currentIndex()).lower().replace(" ", "-")
        path = path or self._save_path("Export view", f"{title}{ext}", f"{ext[1:].upper()} (*{ext})")
        if not path:
            return False
        try:
            export_graphics(item, path)
        except (OSError, ValueError) as exc:
            self.w.banner.show_error("Export failed", str(exc))
            return False
        return True

    def export_model(self) -> None:
        """Write the selected run's current weights as a bit-packed .bnn file."""
        snap = self.w.session.latest_snapshot
        if snap is None:
            self.w.banner.show_error("Nothing to export", "Train a run first (Start), then export it.")
            return
        run = self.w.session.selected
        path = self._save_path("Export model", f"{run.scene.name}.bnn", "bnnlab model (*.bnn)")
        if not path:
            return
        if not path.lower().endswith(".bnn"):
            path += ".bnn"  # what Open model and file managers recognise it by
        try:
            size, fp = self.w.session.export_run(run, path)
        except Exception as exc:  # noqa: BLE001 - shown in the window, never a traceback
            self.w.banner.show_error("Cannot export the model", str(exc))
            return
        QMessageBox.information(self.w, "Model exported",
                                f"Wrote {path}: {size:,} bytes ({size / 1024:.2f} KiB), against "
                                f"{fp:,.0f} bytes for the same weights in float32 "
                                f"({fp / size:.1f}x smaller).")

    def export_h5(self, path: str | None = None) -> bool:
        """Write the selected run as a Keras 2 / Larq ``.h5`` model (atomically)."""
        run = self.w.session.selected
        if run is None:
            self.w.banner.show_error("Nothing to export", "Train a run first (Start), then export it.")
            return False
        try:
            self.w.session.run_model(run)  # before asking where: a reason not to export
        except ValueError as exc:
            self.w.banner.show_error("Cannot export the model for Larq", str(exc))
            return False
        path = path or self._save_path("Export model for Larq", f"{run.scene.name}.h5",
                                       "Keras/Larq model (*.h5)")
        if not path:
            return False
        if not path.lower().endswith((".h5", ".hdf5")):
            path += ".h5"
        try:
            size = self.w.session.export_run_h5(run, path)
        except ValueError as exc:  # one line naming the file and the reason
            self.w.banner.show_error("Cannot export the model for Larq", str(exc))
            return False
        self.w.statusBar().showMessage(
            f"Wrote {path}: {size:,} bytes, a Keras 2 / Larq model "
            "(import larq; tf.keras.models.load_model(path))", 15_000)
        return True

    def open_model(self) -> None:
        """Open a .bnn, Keras/Larq .h5 or checkpoint as a run every panel shows."""
        path, _ = QFileDialog.getOpenFileName(self.w, "Open model", "",
                                              "Models (*.bnn *.h5 *.hdf5 *.keras *.npz);;All files (*)")
        if path:
            self.w.open_path(path)

    def show_about(self) -> None:
        from .about import AboutDialog

        self.about_dialog = AboutDialog(self.w, data_dir=self.w.session.data_dir)
        self.about_dialog.show()

    def shortcut_rows(self) -> list[tuple[str, str]]:
        return [(text, keys) for text, keys, _tip in SHORTCUTS.values() if keys] + \
               [("Show the n-th tab", TAB_SHORTCUT.format("1…9"))]

    def show_shortcuts(self) -> None:
        text = "\n".join(f"{keys}: {text}" for text, keys in self.shortcut_rows())
        QMessageBox.information(self.w, "Keyboard shortcuts", text)


def current_graphics(panel):
    """The pyqtgraph layout of a panel, or None (for exporting)."""
    for attr in ("plots", "view"):
        g = getattr(panel, attr, None)
        if g is not None and hasattr(g, "ci"):
            return g.ci
    return None
