"""The application layer without Qt: runs, their states, twins, result rows and CSV."""

import csv
import subprocess
import sys

import pytest

from bnnlab.app.describe import binarizer_choice, binarizer_spec, label_runs
from bnnlab.app.results import RESULT_COLUMNS, metrics_rows, result_rows, write_csv
from bnnlab.app.runs import RunState
from bnnlab.app.session import Session
from bnnlab.io.scenes import load_preset

WAIT_S = 240


@pytest.fixture
def session():
    s = Session(warm_up=False)
    s.update_scene(limit_train=256, limit_test=128, epochs=1, batch_size=64)
    errors = []
    s.listen("error", lambda title, message: errors.append((title, message)))
    s.errors = errors
    yield s
    s.shutdown()


def test_app_layer_does_not_load_qt():
    code = ("import sys; from bnnlab.app.session import Session; s = Session(warm_up=False); "
            "s.update_scene(limit_train=128, limit_test=64, epochs=1); s.start(); "
            "assert s.wait_idle(240), 'run did not end'; "
            "assert s.runs[0].state.value == 'finished', s.runs[0].state; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')]; "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


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


def test_model_report_of_an_exported_file(tmp_path):
    from bnnlab.app.reports import model_report
    from bnnlab.deploy import export_model
    from bnnlab.experiment import build_model

    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    path = tmp_path / "m.bnn"
    size = export_model(model, path)
    text = model_report(str(path))
    assert f"{size:,} bytes" in text and "Ratio of MACs that are binarized" in text
    assert "unique 3x3 patterns" in text


def test_a_run_goes_through_its_states_to_finished(session):
    seen = []
    session.listen("state_changed", lambda: seen.append(session.state))
    session.start()
    run = session.runs[0]
    assert run.state in (RunState.LOADING_DATA, RunState.BUILDING_MODEL)
    assert session.wait_idle(WAIT_S)
    assert run.state is RunState.FINISHED
    assert RunState.TRAINING in seen
    assert run.snapshot is not None and run.snapshot.event == "done"
    assert run.parameters and run.parameters > 0
    assert not session.busy and session.errors == []


def test_pause_step_and_stop(session):
    session.start(paused=True)
    run = session.runs[0]
    session.step()
    while run.snapshot is None:
        session.wait_idle(0.05)
    assert run.snapshot.step == 1
    assert run.state is RunState.PAUSED and session.paused
    session.step()
    while run.snapshot.step < 2:
        session.wait_idle(0.05)
    assert run.snapshot.step == 2
    session.stop(wait=True)
    assert run.state is RunState.STOPPED and not session.busy


def test_twin_is_tied_to_the_selected_run_and_cleared_on_reset(session):
    session.start()
    assert session.wait_idle(WAIT_S)
    binary = session.runs[0]
    assert session.twin_of(binary) is None
    session.train_twin()
    assert session.wait_idle(WAIT_S)
    twin = session.runs[1]
    assert twin.full_precision and twin.twin_of == binary.number
    assert session.selected is binary  # stays selected, to be compared with its twin
    assert session.twin_of(binary) is twin
    # A second binary run has no twin of its own: the first run's twin is not its twin.
    session.update_scene(seed=3)
    session.start()
    assert session.wait_idle(WAIT_S)
    assert session.twin_of(session.runs[2]) is None
    session.reset()
    assert session.runs == [] and session.twin_of(binary) is None and session.selected is None


def test_selecting_a_run_shows_its_settings(session):
    session.start()
    assert session.wait_idle(WAIT_S)
    first = session.runs[0]
    session.update_scene(learning_rate=0.05)
    session.start()
    assert session.wait_idle(WAIT_S)
    assert session.scene.learning_rate == 0.05
    session.select_run(first)
    assert session.scene.learning_rate == first.scene.learning_rate


def test_result_rows_and_csv(session, tmp_path):
    session.start()
    assert session.wait_idle(WAIT_S)
    session.update_scene(seed=7)
    session.start()
    assert session.wait_idle(WAIT_S)
    rows = result_rows(session.runs)
    assert [r["run"] for r in rows] == [1, 2]
    assert rows[0]["differs"] == "" and rows[1]["differs"] == "seed=7"
    assert rows[1]["seed"] == 7 and rows[1]["epochs"] == 1
    h = session.runs[1].snapshot.history
    assert rows[1]["val_accuracy"] == pytest.approx(float(h.val_accuracy[-1]))
    assert rows[1]["state"] == "finished"
    path = tmp_path / "results.csv"
    keys = [k for k, _ in RESULT_COLUMNS]
    write_csv(path, keys, [[r[k] for k in keys] for r in rows])
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert read[1]["seed"] == "7" and float(read[1]["val_accuracy"]) == pytest.approx(rows[1]["val_accuracy"], rel=1e-5)
    m = metrics_rows(session.runs)
    assert {r[2] for r in m} == {"train", "epoch"}


def test_bad_dataset_is_an_error_state(session, tmp_path, monkeypatch):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    session.allow_download = False
    session.set_data_dir(tmp_path)
    session.update_scene(dataset="mnist", layers=load_preset("larq-mnist-bnn").layers)
    session.start()
    assert session.wait_idle(WAIT_S)
    assert session.runs[-1].state is RunState.ERROR
    assert session.errors and "mnist" in session.errors[-1][1]


def test_a_diverged_run_is_an_error_state_that_says_so(session):
    # No NaN here: the loss sits far above where it started, at chance accuracy.
    session.update_scene(learning_rate=1e9, epochs=2)
    session.start()
    assert session.wait_idle(WAIT_S)
    assert session.runs[-1].state is RunState.ERROR
    title, message = session.errors[-1]
    assert title == "Training diverged" and "starting value" in message


def _until(session, cond, timeout=WAIT_S):
    import time

    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        session.wait_idle(0.05)
        time.sleep(0.01)
    return cond()


@pytest.fixture
def exported_bnn(session, tmp_path):
    """A short quickstart run, exported from the session as a .bnn file and saved as a
    checkpoint."""
    from bnnlab.core.model import model_from_state
    from bnnlab.io.checkpoints import save_checkpoint

    session.start()
    assert session.wait_idle(WAIT_S)
    run = session.runs[0]
    bnn = tmp_path / "m.bnn"
    size, fp = session.export_run(run, bnn)
    assert 0 < size < fp
    model = model_from_state(run.snapshot.model_config, run.snapshot.model_state)
    npz = tmp_path / "m.npz"
    save_checkpoint(npz, model, {"dataset": "digits", "seed": run.scene.seed,
                                 "input_scale": run.scene.input_scale})
    session.reset()
    return npz, bnn, model, run


def test_an_opened_model_is_a_run_with_test_data_evaluation_and_fine_tuning(session, exported_bnn):
    npz, bnn, model, trained = exported_bnn
    session.open_model(bnn)
    assert _until(session, lambda: session.runs and session.runs[0].prepared is not None)
    run = session.runs[0]
    assert run.state is RunState.OPENED and run.opened.computes_on == "runtime"
    assert run.title == f"#{run.number} opened: m.bnn" and session.selected is run
    assert run.snapshot.layers == ()  # a .bnn file has no latent weights to show
    assert run.prepared.dataset.name == "digits"
    session.evaluate(run, "digits")
    assert _until(session, lambda: run.evaluation is not None)
    e = run.evaluation
    assert e.computed_on == "runtime" and e.confusion.sum() == e.n
    # fine-tuning needs latent weights: the checkpoint has them
    # the packed runtime agrees with the engine on the run's own weights
    import numpy as np

    x = run.prepared.x_test[:32]
    engine = model.predict_proba(x if trained.scene.input_scale == "unit" else 2 * x - 1)
    assert np.mean(run.opened.predict(x) == engine.argmax(1)) >= 0.9
    session.open_model(npz)
    assert _until(session, lambda: len(session.runs) == 2)
    opened = session.runs[1]
    assert len(opened.snapshot.layers) == len(model.quant_layers)
    session.fine_tune(opened)
    assert session.wait_idle(WAIT_S)
    tuned = session.runs[2]
    assert tuned.state is RunState.FINISHED and tuned.snapshot.event == "done"
    assert tuned.model_config["layers"] == opened.model_config["layers"]
    session.fine_tune(run)  # the .bnn: refused with the reason
    assert session.wait_idle(WAIT_S)
    assert session.runs[-1].state is RunState.ERROR
    assert "latent weights" in session.errors[-1][1]


def test_an_opened_bnn_file_exports_to_larq_and_predicts_the_same(session, exported_bnn, tmp_path):
    pytest.importorskip("h5py")
    import numpy as np

    from bnnlab.deploy.larq_import import import_larq

    _npz, bnn, _model, _trained = exported_bnn
    session.open_model(bnn)
    assert _until(session, lambda: session.runs and session.runs[0].prepared is not None)
    run = session.runs[0]
    path = tmp_path / "from-bnn.h5"
    assert session.export_run_h5(run, path) == path.stat().st_size
    back = import_larq(path)  # the kernels' signs and the folded batch norms
    x = run.prepared.x_test
    assert np.array_equal(back.predict_proba(x).argmax(1), run.opened.predict(x))
    with pytest.raises(ValueError, match="folder .* does not exist"):
        session.export_run_h5(run, tmp_path / "nowhere" / "m.h5")


def test_opening_a_bad_file_is_an_error(session, tmp_path):
    bad = tmp_path / "x.bnn"
    bad.write_bytes(b"not a model at all")
    session.open_model(bad)
    assert _until(session, lambda: bool(session.errors))
    assert str(bad) in session.errors[-1][1] and session.runs == []


def test_a_trained_run_is_evaluated_like_an_opened_model(session):
    session.start()
    assert session.wait_idle(WAIT_S)
    run = session.runs[0]
    session.evaluate(run, "digits", limit=128)
    assert _until(session, lambda: run.evaluation is not None and not session.evaluating)
    e = run.evaluation
    assert e.n == 128 and e.computed_on == "engine"  # the scene's limit_test
    # the same images the run validated on, the same weights: the same accuracy
    assert e.accuracy == pytest.approx(float(run.snapshot.history.val_accuracy[-1]), abs=1e-9)


def test_workspace_round_trip_is_bit_for_bit(session, tmp_path):
    import numpy as np

    from bnnlab.app.workspace import WorkspaceError, load_workspace

    session.start()
    assert session.wait_idle(WAIT_S)
    session.train_twin()
    assert session.wait_idle(WAIT_S)
    session.update_scene(learning_rate=0.003)
    assert len(session.unsaved_runs) == 2
    path = tmp_path / "w.bnnlab.npz"
    assert session.save_workspace(path)
    assert session.unsaved_runs == []

    again = Session(warm_up=False)
    try:
        assert again.open_workspace(path)
        assert again.scene.learning_rate == 0.003
        assert [r.title for r in again.runs] == [r.title for r in session.runs]
        for a, b in zip(session.runs, again.runs):
            assert (b.number, b.color, b.state, b.twin_of, b.parameters) == \
                   (a.number, a.color, a.state, a.twin_of, a.parameters)
            sa, sb = a.snapshot, b.snapshot
            assert sorted(sa.model_state) == sorted(sb.model_state)
            for key in sa.model_state:
                x, y = sa.model_state[key], sb.model_state[key]
                assert x.dtype == y.dtype and x.shape == y.shape
                assert x.tobytes() == y.tobytes()  # bit for bit
            for name in ("step", "loss", "val_accuracy", "epoch", "epoch_loss", "flip_ratio"):
                assert np.array_equal(getattr(sa.history, name), getattr(sb.history, name),
                                      equal_nan=True)
            assert (sb.step, sb.epoch, sb.event, sb.val_accuracy) == \
                   (sa.step, sa.epoch, sa.event, sa.val_accuracy)
            assert len(sb.layers) == len(sa.layers)
            for ta, tb in zip(sa.layers, sb.layers):
                assert np.array_equal(ta.weight_counts, tb.weight_counts)
                assert ta.frac_at_clip == tb.frac_at_clip and ta.gate_window == tb.gate_window
        assert again.twin_of(again.runs[0]) is again.runs[1]
        assert again.unsaved_runs == []
        # a new run continues the numbering
        again.start()
        assert again.wait_idle(WAIT_S)
        assert again.runs[-1].number == 3
    finally:
        again.shutdown()

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(WorkspaceError, match="not a bnnlab workspace"):
        load_workspace(bad)
    assert not session.open_workspace(tmp_path / "missing.npz")
    assert "no such file" in session.errors[-1][1]


def test_averaging_stochastic_passes():
    import numpy as np

    from bnnlab.app.stochastic import accuracy_by_passes, averaged_proba, is_stochastic
    from bnnlab.core.model import softmax
    from bnnlab.experiment import build_model, make_trainer, prepare_data

    scene = load_preset("ablation-stochastic")
    scene.limit_train, scene.limit_test = 512, 200
    data = prepare_data(scene)
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    assert is_stochastic(model.config()) and not is_stochastic(load_preset_config("quickstart"))
    make_trainer(scene, model, data, epochs=1, telemetry=False).run()
    x, y = data.x_test[:64], data.y_test[:64]
    # the K-pass average is the mean of K passes drawn from [seed, i], computed directly
    direct = np.mean([softmax(model.forward(x, rng=np.random.default_rng([5, i])).astype(np.float64))
                      for i in range(3)], axis=0)
    assert np.allclose(averaged_proba(model, x, 3, seed=5), direct, atol=1e-6)
    # one pass is one sample: two seeds disagree somewhere
    assert not np.array_equal(averaged_proba(model, x, 1, seed=0), averaged_proba(model, x, 1, seed=1))
    acc = accuracy_by_passes(model, x, y, ks=(1, 4), seed=5)
    assert acc[4] == pytest.approx(float(np.mean(averaged_proba(model, x, 4, seed=5).argmax(1) == y)))
    assert set(acc) == {1, 4}


def load_preset_config(name):
    from bnnlab.data import dataset_info
    from bnnlab.experiment import build_model

    scene = load_preset(name)
    info = dataset_info(scene.dataset)
    return build_model(scene, info.input_shape, len(info.class_names)).config()
