"""The application shell: window, scenes through the controls, errors, threads, exports."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtGui import QAction, QKeySequence

from bnnlab.app.describe import binarizer_choice
from bnnlab.app.runs import RunState
from bnnlab.app.session import Session
from bnnlab.gui.actions import SHORTCUTS
from bnnlab.gui.main_window import PAGES, MainWindow
from bnnlab.io.scenes import load_scene

pytestmark = pytest.mark.gui

WAIT_MS = 120_000  # generous: a slow CI machine, never a timing assertion


@pytest.fixture
def window(qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    w = MainWindow(Session())
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"  # closing never waits on a dialog
    w.show()
    yield w
    w.close()


def _small(window, epochs=1, limit=512):
    window.session.update_scene(limit_train=limit, limit_test=200, epochs=epochs)


def _idle(window, qtbot):
    qtbot.waitUntil(lambda: (window._refresh(), not window.session.busy)[1], timeout=WAIT_MS)
    window._refresh()


# --------------------------------------------------------------------------- the window

def test_window_opens_on_quickstart(window, qtbot):
    s = window.session
    assert s.scene.name == "quickstart"
    assert window.form.preset.currentData() == "quickstart"
    assert "quickstart" in window.windowTitle()
    assert window.tabs.count() == len(PAGES)
    assert window.width() <= 1280
    # warm-up runs in the background and ends in "ready"
    qtbot.waitUntil(lambda: (window._refresh(), s.kernels_ready.is_set())[1], timeout=WAIT_MS)
    qtbot.waitUntil(lambda: (window._refresh(), s.status_text() == "ready")[1], timeout=WAIT_MS)


def test_every_panel_follows_the_protocol_and_renders(window, qtbot):
    for i, page in enumerate(window.pages):
        window.tabs.setCurrentIndex(i)
        window._push_current_tab()
        assert page.panel is not None, page.title
        assert page.panel.title == page.title
        assert not page.error.isVisible(), page.title


def test_a_failing_panel_shows_its_error(window, qtbot, monkeypatch):
    page = window.page("Model summary")
    panel = page.ensure_panel()

    def broken(focus):
        raise RuntimeError("boom in the summary")

    monkeypatch.setattr(panel, "show_focus", broken)
    seen = []
    monkeypatch.setattr("sys.excepthook", lambda *exc: seen.append(exc[1]))
    window.tabs.setCurrentWidget(page)
    window._push_current_tab()
    assert page.error.isVisible()
    assert "boom in the summary" in page.error.message.text()
    assert "Model summary" in page.error.title.text()
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError)  # reported, not swallowed


def test_shortcut_table_has_no_duplicates(window):
    keys = [k for _, k, _ in SHORTCUTS.values() if k]
    assert len(keys) == len(set(keys))
    bound = []
    for action in window.findChildren(QAction):
        bound += [s.toString() for s in action.shortcuts() if not s.isEmpty()]
    assert len(bound) == len(set(bound)), sorted(k for k in bound if bound.count(k) > 1)
    assert QKeySequence("Ctrl+E").toString() in bound  # export metrics, once
    assert "Space" in window.actions_["start"].toolTip()
    assert "Esc" in window.actions_["stop"].toolTip()


def test_start_pause_stop_change_state(window, qtbot):
    s, a = window.session, window.actions_
    _small(window, epochs=50)
    a["start"].trigger()
    assert s.busy and a["start"].text() == "Pause"
    assert not window.form.isEnabled()  # settings are locked while a run is live
    qtbot.waitUntil(lambda: (window._refresh(), s.latest_snapshot is not None)[1], timeout=WAIT_MS)
    a["start"].trigger()  # Space: pause
    assert s.state is RunState.PAUSED and a["start"].text() == "Resume"
    a["start"].trigger()  # resume
    assert s.state is RunState.TRAINING
    a["stop"].trigger()
    _idle(window, qtbot)
    assert s.runs[0].state is RunState.STOPPED
    assert window.form.isEnabled()
    assert a["start"].text() == "Start"


def test_scene_round_trips_through_the_controls(window, qtbot, tmp_path):
    form, s = window.form, window.session
    form.activations.mode.setCurrentIndex(form.activations.mode.findData("stochastic"))
    assert s.scene.activation_binarizer == "stochastic_sign"
    form.clip.setChecked(False)
    assert s.scene.weight_clip is False
    form.lr.setValue(0.005)
    form.epochs.setValue(7)
    path = tmp_path / "mine.toml"
    assert s.save_scene(path)
    saved = load_scene(path)
    assert saved.activation_binarizer == "stochastic_sign" and saved.epochs == 7

    s.open_preset("toy-xor")
    assert form.activations.mode.currentData() == "deterministic"
    assert form.clip.isChecked() and form.epochs.value() != 7

    assert s.open_scene(path)
    assert form.activations.mode.currentData() == "stochastic"
    assert not form.activations.ste.isEnabled()  # stochastic_sign has one estimator
    assert not form.clip.isChecked()
    assert form.lr.value() == pytest.approx(0.005)
    assert form.epochs.value() == 7
    assert str(path) in window.windowTitle()


def test_gating_off_round_trips(window, tmp_path):
    form, s = window.form, window.session
    form.activations.gate.setChecked(False)
    assert binarizer_choice(s.scene.activation_binarizer) == ("deterministic", "ste_sign", False)
    s.save_scene(tmp_path / "g.toml")
    s.open_preset("quickstart")
    assert form.activations.gate.isChecked()
    s.open_scene(tmp_path / "g.toml")
    assert not form.activations.gate.isChecked()


def test_invalid_scene_shows_an_error(window, tmp_path):
    s = window.session
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[training]\nepochs = -3\n")
    assert not s.open_scene(bad)
    assert window.banner.isVisible()
    assert "epochs" in window.banner.message.text()
    assert s.scene.name == "quickstart"  # the old scene stays
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [ not toml")
    assert not s.open_scene(broken)
    assert "not valid TOML" in window.banner.message.text()


def test_invalid_setting_is_refused(window):
    s = window.session
    batch = s.scene.batch_size
    assert not s.update_scene(batch_size=0)
    assert s.scene.batch_size == batch
    assert window.banner.isVisible()


def test_missing_dataset_shows_an_error(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    s = window.session
    s.set_data_dir(tmp_path / "empty")
    s.allow_download = False
    assert s.update_scene(dataset="mnist")
    s.start()
    _idle(window, qtbot)
    assert s.runs[-1].state is RunState.ERROR
    assert window.banner.isVisible()
    assert "not found" in window.banner.message.text()
    assert "mnist" in window.banner.message.text().lower()
    assert "error" in window.state_label.text()


def test_closing_during_training_leaves_no_thread(qtbot):
    w = MainWindow(Session(warm_up=False))
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"  # closing never waits on a dialog
    w.show()
    s = w.session
    s.update_scene(epochs=50, limit_train=1024, limit_test=100)
    s.start()
    qtbot.waitUntil(lambda: (w._refresh(), s.latest_snapshot is not None)[1], timeout=WAIT_MS)
    job = s._job
    assert job is not None and job.alive
    w.close()
    assert not job.alive
    assert not s.busy
    assert not any(t.name.startswith("bnnlab-run") for t in threading.enumerate())


def test_reset_asks_before_discarding_runs(window, qtbot):
    s = window.session
    s.open_preset("toy-xor")
    s.update_scene(epochs=1)
    s.start()
    _idle(window, qtbot)
    asked = []
    window.confirm = lambda title, question: asked.append(question) or False
    window.actions_["reset"].trigger()
    assert asked and len(s.runs) == 1  # refused: the run stays
    window.confirm = lambda title, question: True
    window.actions_["reset"].trigger()
    window._refresh()
    assert s.runs == []
    assert window.panel("Training").curves == {}


def test_default_size_fits_the_screen(window):
    avail = window.screen().availableGeometry()
    assert window.frameGeometry().width() <= avail.width()
    assert window.height() <= avail.height()


def test_stall_monitor_measures_the_event_loop(window, qtbot):
    # Block the GUI thread for a known time: the monitor must see a gap at least that long
    # (a lower bound only: a busy machine can only make the gap longer).
    import time

    from PySide6.QtCore import QTimer

    mon = window.stall_monitor
    mon.start()
    qtbot.waitUntil(lambda: mon.ticks >= 5, timeout=WAIT_MS)
    blocked = []
    QTimer.singleShot(0, lambda: (time.sleep(0.4), blocked.append(mon.ticks)))
    qtbot.waitUntil(lambda: bool(blocked) and mon.ticks >= blocked[0] + 2, timeout=WAIT_MS)
    assert mon.longest_gap_ms >= 400
    mon.reset()
    assert mon.longest_gap_ms == 0 and mon.ticks == 0
    mon.stop()


def test_exports(window, qtbot, tmp_path):
    s = window.session
    _small(window, limit=256)
    s.start()
    _idle(window, qtbot)
    assert window.actions_.export_metrics(str(tmp_path / "m.csv"))
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("run,label,kind,step,epoch,loss")
    assert any(",epoch," in line for line in lines[1:])
    assert window.actions_.export_results(str(tmp_path / "r.csv"))
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("run,scene,differs,seed") and len(rows) == 2
    window.tabs.setCurrentWidget(window.page("Training"))
    for name in ("loss.png", "loss.svg"):
        assert window.actions_.export_view(name[-4:], str(tmp_path / name))
        assert (tmp_path / name).stat().st_size > 1000


def test_closing_with_unsaved_runs_asks_and_saves(qtbot, tmp_path, monkeypatch):
    w = MainWindow(Session(warm_up=False))
    qtbot.addWidget(w)
    w.show()
    s = w.session
    s.update_scene(epochs=1, limit_train=256, limit_test=64)
    s.start()
    _idle(w, qtbot)
    asked = []
    w.ask_unsaved = lambda what: asked.append(what) or "cancel"
    w.close()
    assert asked == ["1 trained run"] and w.isVisible()  # cancelled: still open
    path = tmp_path / "mine.bnnlab.npz"
    monkeypatch.setattr("bnnlab.gui.actions.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(path), ""))
    w.ask_unsaved = lambda what: "save"
    w.close()
    assert not w.isVisible() and path.exists()
    reopened = Session(warm_up=False)
    assert reopened.open_workspace(path) and len(reopened.runs) == 1
    reopened.shutdown()


def test_file_menu_exports_the_selected_run_for_larq(window, qtbot, tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    import os

    import numpy as np

    from bnnlab.core.model import model_from_state
    from bnnlab.deploy.larq_import import import_larq

    s = window.session
    _small(window, limit=256)
    s.start()
    _idle(window, qtbot)
    run = s.selected
    path = tmp_path / "run.h5"
    monkeypatch.setattr("bnnlab.gui.actions.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(path), ""))
    action = window.actions_["export_h5"]
    assert action in window.menuBar().actions()[0].menu().actions()
    action.trigger()
    assert not window.banner.isVisible(), window.banner.message.text()
    assert [n for n in os.listdir(tmp_path) if n != "cache"] == ["run.h5"]  # no temporary file
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert "Wrote" in window.statusBar().currentMessage()
    want = model_from_state(run.snapshot.model_config, run.snapshot.model_state)
    back = import_larq(path)
    assert back.config()["layers"] == want.config()["layers"]
    a, b = want.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    # A folder that cannot be written: one line in the banner naming it, nothing written.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores the mode: a missing folder instead
        locked = tmp_path / "missing"
    assert not window.actions_.export_h5(str(locked / "m.h5"))
    assert window.banner.isVisible() and str(locked) in window.banner.message.text()
    assert "\n" not in window.banner.message.text()
    assert not (locked / "m.h5").exists()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_pages_fit_a_small_window(window, qtbot):
    """At 1024x640 the Training page shrinks its plots to the window instead of pushing
    their axes below the fold (word-wrapped labels once made the page its preferred height)."""
    window.dock.hide()
    window.resize(1008, 592)
    for title in ("Training", "Compare seeds"):
        page = window.page(title)
        window.tabs.setCurrentWidget(page)
        window._push_current_tab()
        qtbot.wait(50)
        panel, view = page.panel, page.scroll.viewport()
        assert panel.height() <= view.height(), (title, panel.height(), view.height())
        assert panel.width() <= view.width()
    # A window smaller than a page's minimum scrolls rather than clipping it.
    window.resize(640, 400)
    qtbot.wait(50)
    page = window.page("Compare seeds")
    assert page.panel.height() >= page.panel.minimumSizeHint().height()
