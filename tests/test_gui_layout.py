"""What a new user sees before training: nothing clipped, nothing that looks like data."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from bnnlab.app.session import Session
from bnnlab.gui.main_window import MainWindow

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot):
    w = MainWindow(Session(warm_up=False))
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


@pytest.mark.parametrize("preset", ["bireal-mnist", "binarynet-mlp"])
def test_a_long_scene_description_is_shown_whole_in_the_sidebar(window, qtbot, preset):
    # Switching from quickstart to a preset with a long description used to leave the
    # label at a height measured for another width: its first and last lines were cut.
    window.dock.show()  # hidden at start on a narrow screen (the offscreen one is)
    qtbot.wait(50)
    window.session.open_preset(preset)
    qtbot.wait(50)
    label = window.form.description
    assert label.text() == window.session.scene.description
    assert label.width() > 100
    assert label.height() >= label.heightForWidth(label.width())
    assert window.dock.width() < 400  # the sidebar keeps its width


def test_before_any_run_the_dashboard_shows_no_counts_and_no_empty_legends(window, qtbot):
    window.tabs.setCurrentIndex(0)
    window._push_current_tab()
    dash = window.page("Training").panel
    assert dash.epoch_bar.text() == "epoch –" and dash.batch_bar.text() == "batch –"
    assert not dash.loss_legend.isVisible() and not dash.acc_legend.isVisible()
    s = window.session
    s.update_scene(epochs=1, limit_train=128, limit_test=32)
    s.start()
    qtbot.waitUntil(lambda: (window._refresh(), not s.busy)[1], timeout=120_000)
    window._push_current_tab()
    assert dash.loss_legend.isVisible() and dash.acc_legend.isVisible()
    assert dash.epoch_bar.text() == "epoch 1 / 1"
