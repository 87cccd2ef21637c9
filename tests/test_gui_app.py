"""The application shell: window, scenes through the controls, errors, threads, exports."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from bnnlab.gui.controller import Controller, binarizer_choice, binarizer_spec, label_runs
from bnnlab.gui.main_window import MainWindow
from bnnlab.io.scenes import load_preset, load_scene

pytestmark = pytest.mark.gui

WAIT_MS = 60_000  # generous: a slow CI machine, never a timing assertion


@pytest.fixture
def window(qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    w = MainWindow(Controller())
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _small(window, epochs=1, limit=512):
    window.controller.update_scene(limit_train=limit, limit_test=200, epochs=epochs)


# --------------------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("choice", [
    ("deterministic", "ste_sign", True), ("deterministic", "ste_sign", False),
    ("stochastic", "ste_sign", True), ("stochastic", "ste_sign", False),
    ("deterministic", "approx_sign", True), ("deterministic", "swish_sign", False),
])
def test_binarizer_controls_round_trip(choice):
    assert binarizer_choice(binarizer_spec(*choice)) == choice


def test_run_labels_name_what_differs():
    base = load_preset("quickstart")
    stoch = base.copy()
    stoch.activation_binarizer = "stochastic_sign"
    noclip = base.copy()
    noclip.weight_clip = False
    labels = label_runs([base, stoch, noclip, base.full_precision_twin(), base.copy()])
    assert labels == ["quickstart", "act=stochastic_sign", "clip off", "full precision",
                      "same settings"]


# --------------------------------------------------------------------------- the window

def test_window_opens_on_quickstart(window, qtbot):
    assert window.controller.scene.name == "quickstart"
    assert window.form.preset.currentData() == "quickstart"
    assert "quickstart" in window.windowTitle()
    assert window.tabs.count() >= 3
    assert window.width() <= 1280
    # warm-up runs in the background and ends in "ready"
    qtbot.waitUntil(lambda: window.controller.kernels_ready.is_set(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.controller.state == "ready", timeout=WAIT_MS)


def test_start_pause_stop_change_state(window, qtbot):
    c = window.controller
    _small(window, epochs=50)
    window.act_start.trigger()
    assert c.busy and window.act_start.text() == "Pause"
    assert not window.form.isEnabled()  # settings are locked while a run is live
    qtbot.waitUntil(lambda: c.latest_snapshot is not None, timeout=WAIT_MS)
    window.act_start.trigger()  # Space: pause
    assert c.state == "paused" and window.act_start.text() == "Resume"
    window.act_start.trigger()  # resume
    assert c.state == "training"
    window.act_stop.trigger()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    assert c.state == "stopped"
    assert c.runs[0].status == "stopped"
    assert window.form.isEnabled()
    assert window.act_start.text() == "Start"


def test_shortcuts_are_shown(window):
    assert "Space" in window.act_start.toolTip()
    assert "S" in window.act_step.toolTip() and "Right" in window.act_step.toolTip()
    assert "Esc" in window.act_stop.toolTip()


def test_scene_round_trips_through_the_controls(window, qtbot, tmp_path):
    form, c = window.form, window.controller
    form.activations.mode.setCurrentIndex(form.activations.mode.findData("stochastic"))
    assert c.scene.activation_binarizer == "stochastic_sign"
    form.clip.setChecked(False)
    assert c.scene.weight_clip is False
    form.lr.setValue(0.005)
    form.epochs.setValue(7)
    path = tmp_path / "mine.toml"
    assert c.save_scene(path)
    saved = load_scene(path)
    assert saved.activation_binarizer == "stochastic_sign" and saved.epochs == 7

    c.open_preset("toy-xor")
    assert form.activations.mode.currentData() == "deterministic"
    assert form.clip.isChecked() and form.epochs.value() != 7

    assert c.open_scene(path)
    assert form.activations.mode.currentData() == "stochastic"
    assert not form.activations.ste.isEnabled()  # stochastic_sign has one estimator
    assert not form.clip.isChecked()
    assert form.lr.value() == pytest.approx(0.005)
    assert form.epochs.value() == 7
    assert str(path) in window.windowTitle()


def test_gating_off_round_trips(window, tmp_path):
    form, c = window.form, window.controller
    form.activations.gate.setChecked(False)
    assert binarizer_choice(c.scene.activation_binarizer) == ("deterministic", "ste_sign", False)
    c.save_scene(tmp_path / "g.toml")
    c.open_preset("quickstart")
    assert form.activations.gate.isChecked()
    c.open_scene(tmp_path / "g.toml")
    assert not form.activations.gate.isChecked()


def test_invalid_scene_shows_an_error(window, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[training]\nepochs = -3\n")
    assert not window.controller.open_scene(bad)
    assert window.banner.isVisible()
    assert "epochs" in window.banner.message.text()
    assert window.controller.scene.name == "quickstart"  # the old scene stays
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [ not toml")
    assert not window.controller.open_scene(broken)
    assert "not valid TOML" in window.banner.message.text()


def test_invalid_setting_is_refused(window):
    c = window.controller
    assert not c.update_scene(batch_size=0)
    assert c.scene.batch_size == 64
    assert window.banner.isVisible()


def test_missing_dataset_shows_an_error(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    c = window.controller
    c.set_data_dir(tmp_path / "empty")
    c.allow_download = False
    assert c.update_scene(dataset="mnist")
    c.start()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    assert c.state == "error"
    assert window.banner.isVisible()
    assert "not found" in window.banner.message.text()
    assert "mnist" in window.banner.message.text().lower()
    assert c.runs[-1].status == "error"


def test_closing_during_training_leaves_no_thread(qtbot, monkeypatch, tmp_path):
    before = threading.active_count()
    w = MainWindow(Controller())
    qtbot.addWidget(w)
    w.show()
    c = w.controller
    c.update_scene(epochs=50, limit_train=1024, limit_test=100)
    c.start()
    qtbot.waitUntil(lambda: c.latest_snapshot is not None, timeout=WAIT_MS)
    thread = c._thread
    assert thread is not None and thread.isRunning()
    w.close()
    assert not thread.isRunning()
    assert not c.busy
    assert threading.active_count() == before


def test_stall_monitor_measures_the_event_loop(window, qtbot):
    mon = window.stall_monitor
    mon.start()
    qtbot.waitUntil(lambda: mon.ticks >= 5, timeout=WAIT_MS)
    assert mon.longest_gap_ms > 0
    mon.stop()


def test_exports(window, qtbot, tmp_path):
    c = window.controller
    _small(window, limit=256)
    c.start()
    qtbot.waitUntil(lambda: not c.busy, timeout=WAIT_MS)
    assert c.export_metrics(tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("run,label,kind,step,epoch,loss")
    assert any(",epoch," in line for line in lines[1:])
    from bnnlab.gui.widgets import export_graphics

    for name in ("loss.png", "loss.svg"):
        export_graphics(window.dashboard.loss_plot, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.gui
def test_model_report_of_an_exported_file(tmp_path):
    from bnnlab.deploy import export_model
    from bnnlab.experiment import build_model
    from bnnlab.gui.main_window import model_report
    from bnnlab.io.scenes import load_preset

    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    path = tmp_path / "m.bnn"
    size = export_model(model, path)
    text = model_report(str(path))
    assert f"{size:,} bytes" in text and "Ratio of MACs that are binarized" in text
    assert "unique 3x3 patterns" in text
