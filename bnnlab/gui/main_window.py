"""The main window: the session's view. Tabs of panels, the sidebar, menus and status bar.

It holds no training logic. A ~30 Hz timer applies the jobs' events to the session and
pulls its newest state into the visible panel, so training speed and drawing speed never
hold each other up.
"""

from __future__ import annotations

import importlib
import os
import time

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..app.runs import RunState
from ..app.session import Session
from ..io.scenes import preset_dir, preset_names
from .actions import WindowActions
from .panel import FitScrollArea, PanelPage
from .panels.training import ExperimentForm, RunList
from .views.banner import ErrorBanner
from .views.collector import MainThreadCollector
from .views.stall import StallMonitor
from .views.style import configure_pyqtgraph
from .views.throttle import Throttle

__all__ = ["MainWindow", "PAGES"]

FRAME_MS = 33
# Panels of many plots cost ~25 ms a repaint; redrawing them at most 4 times a second
# leaves the event loop free most of the time while training.
HEAVY_PANEL_PERIOD = 0.25
DEFAULT_SIZE = (1280, 800)
NARROW_SCREEN = 1200  # px: below this the sidebar starts hidden
SIDEBAR_WIDTH = 270  # px at start (the dock can be dragged wider)


# (tab title, module in gui/panels, class, heavy): panels are imported and built the first
# time their tab is shown, so the window opens without waiting for them.
PAGES = [
    ("Training", "training", "Dashboard", False),
    ("Latent weights", "weights", "WeightsPanel", True),
    ("Gradient gating", "gating", "GatingPanel", True),
    ("Shortcuts", "shortcuts", "ShortcutsPanel", True),
    ("Binarizers", "binarize", "BinarizationPanel", True),
    ("Filters", "filters", "FiltersPanel", True),
    ("Model summary", "summary", "SummaryPanel", True),
    ("Try it", "tryit", "TryItPanel", True),
    ("Evaluate", "evaluate", "EvaluatePanel", True),
    ("Bits", "bits", "BitsPanel", True),
    ("Results", "results", "ResultsPanel", True),
    ("Compare seeds", "seeds", "SeedsPanel", True),
]


def _panel_factory(module: str, cls: str):
    def build():
        return getattr(importlib.import_module(f"{__package__}.panels.{module}"), cls)()
    return build


class _Settings(FitScrollArea):
    """The sidebar's settings: as wide as :data:`SIDEBAR_WIDTH` at start (its widget, fitted
    to the view, would otherwise ask for the width it was last given) and as tall as they
    are, so that the runs below them get the rest of the sidebar; on a short screen the
    settings scroll and the runs stay in view."""

    def sizeHint(self) -> QSize:
        height = self.needed_height(self.maximumViewportSize().width()) + 2 * self.frameWidth()
        form = self.widget().minimumSizeHint().width() if self.widget() is not None else 0
        # Wide enough for the settings beside a vertical scroll bar: none is cut off.
        return QSize(max(SIDEBAR_WIDTH - 12, form + self.verticalScrollBar().sizeHint().width()),
                     height)

    def fit(self) -> None:
        super().fit()
        self.updateGeometry()  # the settings' height changes with the scene's description


class MainWindow(QMainWindow):
    def __init__(self, session: Session | None = None, *, measure_stall: bool = False):
        super().__init__()
        configure_pyqtgraph()
        # Qt objects in reference cycles are freed on this thread, never on a job's.
        self.collector = MainThreadCollector(self)
        self.collector.start()
        self.session = session if session is not None else Session()
        self.setWindowTitle("bnnlab")
        self.setMinimumSize(640, 400)
        self.setAcceptDrops(True)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        # Twelve tabs fit beside the sidebar at 1280 px in a slightly smaller font (the
        # scroll buttons remain for narrower windows).
        font = self.tabs.tabBar().font()
        font.setPointSizeF(font.pointSizeF() * 0.9)
        self.tabs.tabBar().setFont(font)
        self.pages: list[PanelPage] = []
        for title, module, cls, heavy in PAGES:
            factory = {"ResultsPanel": self._make_results, "EvaluatePanel": self._make_evaluate,
                       "SeedsPanel": self._make_seeds, "TryItPanel": self._make_tryit}.get(
                cls, _panel_factory(module, cls))
            page = PanelPage(title, factory, heavy=heavy)
            self.pages.append(page)
            self.tabs.addTab(page, title)

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
        # Fitted to the width, so that a long word-wrapped scene description gets the
        # height it needs there (a plain scroll area sized it for another width: its first
        # and last lines were cut off).
        self.settings = _Settings()
        self.settings.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.settings.setFrameShape(QFrame.Shape.NoFrame)
        self.settings.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.settings.setWidget(self.form)
        side = QWidget()
        side_col = QVBoxLayout(side)
        side_col.setContentsMargins(6, 6, 6, 6)
        side_col.addWidget(self.settings)
        side_col.addWidget(QLabel("<b>Runs</b> (overlaid in the plots)"))
        side_col.addWidget(self.run_list, 1)
        self.dock = QDockWidget("Experiment")
        self.dock.setObjectName("experimentDock")
        self.dock.setWidget(side)
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                              | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                              | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.dock.setMinimumWidth(250)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.dock)

        self.actions_ = WindowActions(self)
        self._make_status_bar()
        self._connect()

        self.stall_monitor = StallMonitor(parent=self)
        if measure_stall or os.environ.get("BNNLAB_MEASURE_STALL"):
            self.stall_monitor.start()

        self._drawn_version = -1
        self._tab_dirty = True
        self._heavy = Throttle(self._push_current_tab, HEAVY_PANEL_PERIOD, self)
        self.timer = QTimer(self)
        self.timer.setInterval(FRAME_MS)
        self.timer.timeout.connect(self._refresh)
        self.timer.start()
        self._fit_to_screen()
        self._show_scene(self.session.scene)
        self._on_state()

    def _make_results(self):
        panel = _panel_factory("results", "ResultsPanel")()
        panel.export_requested.connect(lambda: self.actions_.export_results())
        panel.compare_requested.connect(self.show_seed_comparison)
        return panel

    def _make_seeds(self):
        s = self.session
        panel = _panel_factory("seeds", "SeedsPanel")()
        panel.compare_requested.connect(
            lambda name, seeds, epochs: s.compare_seeds([name], seeds, epochs or None))
        panel.cancel_requested.connect(s.cancel_comparison)
        panel.set_scene(s.scene)
        return panel

    def show_seed_comparison(self) -> None:
        """Show the Compare seeds page (its controls start a comparison)."""
        self.tabs.setCurrentWidget(self.page("Compare seeds"))

    def _make_evaluate(self):
        s = self.session
        panel = _panel_factory("evaluate", "EvaluatePanel")()
        panel.evaluate_requested.connect(lambda name: s.selected and s.evaluate(s.selected, name))
        panel.cancel_requested.connect(s.cancel_evaluation)
        panel.fine_tune_requested.connect(lambda: s.selected and s.fine_tune(s.selected))
        return panel

    def _make_tryit(self):
        panel = _panel_factory("tryit", "TryItPanel")()
        panel.input_changed.connect(self.session.set_probe)  # what the Bits panel explains
        return panel

    # ------------------------------------------------------------------ files dropped on the window
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and all(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
        event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """Open a scene (.toml) or a model file (.bnn, .h5, .npz), told apart by content."""
        from ..app.opening import OpenError, sniff

        try:
            kind = sniff(path)
        except OpenError as exc:
            self.banner.show_error("Cannot open the file", str(exc))
            return
        if kind == "scene":
            self.session.open_scene(path)
        else:
            self.session.open_model(path)

    def _fit_to_screen(self) -> None:
        """The default size, shrunk to the screen the window opens on (frame included)."""
        w, h = DEFAULT_SIZE
        screen = self.screen()
        if screen is not None:
            avail = screen.availableGeometry()
            # Window decorations are not known before the window is shown: keep a margin.
            w, h = min(w, avail.width() - 16), min(h, avail.height() - 48)
            if avail.width() < NARROW_SCREEN:
                # The plots need the width more than the settings do: the sidebar starts
                # hidden, one click (or F9) away on the toolbar.
                self.dock.hide()
        self.resize(max(w, self.minimumWidth()), max(h, self.minimumHeight()))

    # ------------------------------------------------------------------ construction
    def _make_status_bar(self) -> None:
        sb = self.statusBar()
        self.state_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(240)
        self.progress.setMinimumWidth(200)  # its text ("compiling kernels 3/40") stays on one line
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.ips_label = QLabel()
        self.data_label = QLabel()
        self.data_label.setStyleSheet("color: #666;")
        sb.addWidget(self.state_label, 1)
        sb.addWidget(self.progress)
        sb.addPermanentWidget(self.data_label)
        sb.addPermanentWidget(self.ips_label)
        self.show_data_dir()

    def _connect(self) -> None:
        s = self.session
        s.listen("scene_changed", self._show_scene)
        s.listen("state_changed", self._on_state)
        s.listen("progress", self._on_progress)
        s.listen("error", self.banner.show_error)
        self.form.edited.connect(lambda changes: s.update_scene(**changes))
        self.form.preset_chosen.connect(s.open_preset)
        self.run_list.run_selected.connect(lambda n: s.select_run(s.run_by_number(n)))
        self.run_list.visibility_changed.connect(
            lambda n, on: s.set_run_visible(s.run_by_number(n), on))
        self.run_list.remove_requested.connect(lambda n: s.remove_run(s.run_by_number(n)))
        self.run_list.twin_requested.connect(s.train_twin)
        self.tabs.currentChanged.connect(self._on_tab)

    # ------------------------------------------------------------------ session -> views
    def _show_scene(self, scene) -> None:
        s = self.session
        preset = None
        if s.scene_path is None and scene.name in preset_names():
            preset = scene.name
        elif s.scene_path is not None and os.path.dirname(os.path.abspath(s.scene_path)) == \
                os.path.abspath(preset_dir()):
            preset = os.path.splitext(os.path.basename(s.scene_path))[0]
        self.form.show_scene(scene, preset)
        seeds = next((p for p in getattr(self, "pages", ()) if p.title == "Compare seeds"), None)
        if seeds is not None and seeds.panel is not None:
            seeds.panel.set_scene(scene)
        where = s.scene_path or "preset"
        self.setWindowTitle(f"bnnlab — {scene.name} ({where})")

    def _on_state(self) -> None:
        s = self.session
        self.form.setEnabled(not s.busy)
        self.actions_.sync(s)
        self.run_list.twin.setEnabled(not s.busy)
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

    def _on_tab(self, *_args) -> None:
        self._tab_dirty = True
        self._heavy.reset()  # a newly shown panel draws at once
        self._refresh()

    def _refresh(self) -> None:
        s = self.session
        s.poll()
        if s.version != self._drawn_version:
            self._drawn_version = s.version
            self.run_list.set_runs(s.run_views())
            run = s.active_run
            snap = run.snapshot if run is not None else None
            self.ips_label.setText(f"{snap.images_per_second:,.0f} images/s"
                                   if snap is not None and run.state is RunState.TRAINING else "")
            error = s.runs and s.runs[-1].state is RunState.ERROR and not s.busy
            self.state_label.setText("<b style='color:#b00020'>error</b> — see the message above"
                                     if error else s.status_text())
            self._tab_dirty = True
        if self._tab_dirty:
            self._tab_dirty = False
            if self.current_page().heavy:
                self._heavy.request()
            else:
                self._push_current_tab()

    def current_page(self) -> PanelPage:
        return self.tabs.currentWidget()

    def current_panel(self) -> QWidget | None:
        return self.current_page().ensure_panel()

    def page(self, title: str) -> PanelPage:
        return next(p for p in self.pages if p.title == title)

    def panel(self, title: str):
        """The panel of the tab called ``title``, built if it was not."""
        return self.page(title).ensure_panel()

    def _push_current_tab(self) -> None:
        self.current_page().show_focus(self.session.focus())

    def show_data_dir(self) -> None:
        d = self.session.data_dir
        self.data_label.setText(f"data: {d}" if d else "data: default locations")
        self.data_label.setToolTip("File > Set data folder… (default: $BNNLAB_DATA_DIR)")

    def confirm(self, title: str, question: str) -> bool:
        """Ask a yes/no question (tests replace this method)."""
        answer = QMessageBox.question(self, title, question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def reset(self) -> None:
        """Forget every run, after asking when there are trained runs to lose."""
        s = self.session
        trained = [r for r in s.runs if r.snapshot is not None]
        if trained and not self.confirm(
                "Discard runs?", f"Reset forgets {len(trained)} trained run(s) and their curves. "
                                 "Discard them?"):
            return
        s.reset()

    # ------------------------------------------------------------------ closing
    def ask_unsaved(self, what: str) -> str:
        """"save", "discard" or "cancel" for closing with ``what`` unsaved (e.g. "2 trained
        runs"; tests replace it)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved work",
                          f"{what[0].upper()}{what[1:]} not saved in a workspace. Save "
                          "before closing?", parent=self)
        save = box.addButton("Save…", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return {save: "save", discard: "discard"}.get(box.clickedButton(), "cancel")

    def closeEvent(self, event) -> None:
        unsaved = self.session.unsaved_text()
        if unsaved:
            answer = self.ask_unsaved(unsaved)
            if answer == "cancel" or (answer == "save" and not self.actions_.save_workspace()):
                event.ignore()
                return
        self.timer.stop()
        self.stall_monitor.stop()
        # Joining a run takes at most a batch; a kernel compilation still running at
        # start-up is not waited for (its thread does not keep the process alive).
        self.hide()
        self.session.shutdown()
        self.collector.stop()
        super().closeEvent(event)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For scripts: process events until no run is live (True) or the timeout passes."""
        from PySide6.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.session.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        return not self.session.busy
