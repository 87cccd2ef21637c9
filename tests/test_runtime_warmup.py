"""The ``.bnn`` runtime's kernels are compiled (or loaded) at start-up, off the GUI thread,
like the engine's: the Bits page's first visit no longer waits for the compiler, and says
what it waits for while they are not ready."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Every compiled function of the runtime and of the engine kernels it calls, with how
# many versions it holds: a call that compiles (or loads) a new one grows a count.
_COUNTS = textwrap.dedent("""
    import importlib, pkgutil
    import numba
    import bnnlab.core.kernels as K
    from bnnlab.deploy import runtime_chain, runtime_kernels

    def counts():
        mods = [runtime_chain, runtime_kernels] + [
            importlib.import_module(f"bnnlab.core.kernels.{m.name}")
            for m in pkgutil.iter_modules(K.__path__)]
        out = {}
        for mod in mods:
            for name, f in vars(mod).items():
                if isinstance(f, numba.core.registry.CPUDispatcher):
                    out[f"{f.__module__}.{name}"] = len(f.signatures)
        return out
""")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _COUNTS + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_apps_warm_up_loads_the_runtime_kernels_off_its_thread():
    out = _run("""
        import threading, time
        from bnnlab.app.session import Session

        s = Session()
        main = threading.get_ident()
        end = time.monotonic() + 800
        while s._warm is not None and time.monotonic() < end:
            s.poll()
            time.sleep(0.02)
        s.poll()
        c = counts()
        print(s.kernels_ready.is_set(), s.runtime_ready.is_set(),
              c["bnnlab.deploy.runtime_chain.run_chain"] > 0,
              c["bnnlab.deploy.runtime_kernels._conv_c1_pm1"] > 0,
              c["bnnlab.deploy.runtime_kernels._conv_bits"] > 0)
    """)
    assert out.split() == ["True"] * 5, out


def test_the_warm_up_covers_what_bits_try_it_and_evaluate_run():
    # After the app's warm-up (the engine's kernels, then the runtime's), the Bits
    # page's probe, one-image logits and batches on models the app folds compile nothing
    # more.
    out = _run("""
        import numpy as np
        from bnnlab.app.bits import probe
        from bnnlab.app.models import OpenedModel
        from bnnlab.data import dataset_info
        from bnnlab.deploy.warmup import warm_up_runtime
        from bnnlab.experiment import build_model
        from bnnlab.io.scenes import load_preset
        from bnnlab.core.kernels import warm_up

        warm_up()  # the engine's kernels (Try it computes a run on the engine)
        warm_up_runtime()
        before = counts()
        for name in ("larq-mnist-bnn", "quickstart", "binarynet-mlp", "bireal-mnist",
                     "toy-moons"):
            scene = load_preset(name)
            info = dataset_info(scene.dataset)
            model = build_model(scene, info.input_shape, len(info.class_names))
            opened = OpenedModel.from_model(model, name, input_scale=scene.input_scale)
            x = np.random.default_rng(0).random((5, *info.input_shape)).astype(np.float32)
            rt = opened.runtime()
            last = len(rt.model_file.blocks) - 1
            for block in range(last + 1):
                probe(opened, x[0], block, (0, 0, 0))
            opened.predict_proba(x[:1])
            rt.logits(opened.raw_inputs(x), threads=2)
        after = counts()
        print(sorted(k for k in after if after[k] != before[k]))
    """)
    assert out.strip() == "[]", out


def test_the_runtime_warm_up_child_runs_its_share():
    from bnnlab.deploy import warmup

    parts = len(warmup._steps())
    proc = subprocess.run([sys.executable, "-m", "bnnlab.deploy.warmup", "2", str(parts)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["done"]


def test_the_runtime_warm_up_uses_the_packaged_presets(tmp_path, monkeypatch):
    from bnnlab.deploy.warmup import warm_up_runtime

    monkeypatch.setenv("BNNLAB_SCENES_DIR", str(tmp_path))  # a folder of one's own, empty
    seen = []
    warm_up_runtime(lambda i, n: seen.append((i, n)))
    assert seen and seen[-1][0] == seen[-1][1]


def _window_before_the_runtime_kernels(qtbot, tmp_path):
    """A window with a .bnn opened while the start-up warm-up still compiles the runtime's
    kernels (3 of 9 steps done)."""
    from bnnlab.app.session import Session
    from bnnlab.gui.main_window import MainWindow

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_app_engineless import _files

    normal, _ = _files(tmp_path)
    s = Session(warm_up=False)
    s.runtime_ready.clear()
    s.runtime_progress = (3, 9)
    w = MainWindow(s)
    qtbot.addWidget(w)
    w.ask_unsaved = lambda what: "discard"
    w.show()
    w.open_path(str(normal))
    qtbot.waitUntil(lambda: (w._refresh(), bool(s.runs) and s.runs[0].prepared is not None)[1],
                    timeout=120_000)
    return w, s


@pytest.mark.gui
def test_bits_page_says_it_waits_for_the_runtime_kernels(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    w, s = _window_before_the_runtime_kernels(qtbot, tmp_path)
    page = w.page("Bits")
    w.tabs.setCurrentWidget(page)
    w._push_current_tab()
    bits = page.panel
    text = bits.note.text()
    assert bits.pages.currentIndex() == 0 and "runtime's kernels" in text and "3 of 9" in text
    assert bits._worker.idle() and not bits.blocks  # nothing runs on the runtime meanwhile
    s.runtime_ready.set()
    s.version += 1
    qtbot.waitUntil(lambda: (w._push_current_tab(), bits._worker.idle()
                             and bits.explanation is not None)[1], timeout=120_000)
    assert bits.pages.currentIndex() == 1 and bits.explanation.agrees
    np.testing.assert_array_equal(bits.probe.raw.shape, (28, 28, 1))
    w.close()


@pytest.mark.gui
def test_try_it_waits_for_the_runtime_kernels_and_says_so(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    w, s = _window_before_the_runtime_kernels(qtbot, tmp_path)
    page = w.page("Try it")
    w.tabs.setCurrentWidget(page)
    w._push_current_tab()
    tryit = page.panel
    qtbot.wait(300)
    shown = tryit.pages.currentWidget()
    assert shown in (tryit.placeholder, tryit.pages.widget(1))
    text = (tryit.placeholder if shown is tryit.placeholder else tryit.prediction).text()
    assert "runtime's kernels" in text and "3 of 9" in text
    assert tryit._models._snapshot is None  # the runtime was never asked to compute
    s.runtime_ready.set()
    s.version += 1
    qtbot.waitUntil(lambda: (w._push_current_tab(), tryit._probs is not None)[1], timeout=120_000)
    assert "says" in tryit.prediction.text()
    w.close()


@pytest.mark.gui
def test_evaluate_waits_for_the_runtime_kernels_and_says_so(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    w, s = _window_before_the_runtime_kernels(qtbot, tmp_path)
    page = w.page("Evaluate")
    w.tabs.setCurrentWidget(page)
    w._push_current_tab()
    ev = page.panel
    assert ev.wait_note.isVisible() and "3 of 9" in ev.wait_note.text()
    ev.run_button.click()
    qtbot.waitUntil(lambda: (w._refresh(), s.evaluation_waits_on == "runtime")[1], timeout=10_000)
    w._push_current_tab()
    assert "starts as soon as they are ready" in ev.wait_note.text()
    qtbot.wait(300)
    w._refresh()
    assert s.runs[0].evaluation is None and s.evaluating
    s.runtime_ready.set()
    qtbot.waitUntil(lambda: (w._refresh(), s.runs[0].evaluation is not None)[1], timeout=120_000)
    w._push_current_tab()
    assert not ev.wait_note.isVisible()
    w.close()


@pytest.mark.gui
def test_cancelling_an_evaluation_that_waits_for_its_kernels_ends_it(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    w, s = _window_before_the_runtime_kernels(qtbot, tmp_path)
    s.evaluate(s.runs[0], "digits")
    qtbot.waitUntil(lambda: (w._refresh(), s.evaluation_waits_on == "runtime")[1], timeout=10_000)
    s.cancel_evaluation()
    qtbot.waitUntil(lambda: (w._refresh(), not s.evaluating)[1], timeout=10_000)
    assert s.runs[0].evaluation is None
    s.runtime_ready.set()
    w.close()
