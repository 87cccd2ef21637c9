"""open_any tells files apart by content then suffix; OpenedModel works the same on every kind."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from bnnlab.app.models import IncompatibleModel, NoLatentWeights, OpenedModel
from bnnlab.app.opening import OpenError, open_any, sniff
from bnnlab.cli import main
from bnnlab.data import load_dataset
from bnnlab.deploy import export_model
from bnnlab.deploy.fold import input_spec_for
from bnnlab.deploy.runtime import Runtime, raw_from_unit
from bnnlab.experiment import build_model
from bnnlab.io.checkpoints import save_checkpoint
from bnnlab.io.scenes import Scene, load_preset, preset_dir

LARQ = "/work/shared/testdata/larq"
H5 = f"{LARQ}/larq_mnist_bnn.h5"
needs_larq = pytest.mark.skipif(not os.path.exists(H5), reason="Larq test model not available")

# A small binary CNN on the built-in digits with 'same' padding, pools and batch norms.
LAYERS = [
    {"type": "QuantConv2D", "filters": 8, "kernel_size": 3, "kernel_quantizer": "ste_sign",
     "kernel_constraint": "weight_clip", "use_bias": False},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "BatchNorm", "scale": False},
    {"type": "QuantConv2D", "filters": 16, "kernel_size": 3, "padding": "same", "pad_values": -1.0,
     "input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "kernel_constraint": "weight_clip"},
    {"type": "BatchNorm"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "QuantDense", "units": 10, "input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign",
     "use_bias": False},
    {"type": "BatchNorm", "scale": False},
    {"type": "Activation", "activation": "softmax"},
]


def small_scene(**kw) -> Scene:
    return Scene(name="small", seed=3, dataset="digits", layers=LAYERS, limit_train=200,
                 limit_test=120, epochs=1, batch_size=50, **kw)


def _perturb(model, seed=0):
    """Random batch-norm statistics, so the folded thresholds are not all alike."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 3, v.shape).astype(np.float32)
        elif k.endswith("moving_variance"):
            state[k] = rng.uniform(0.5, 4, v.shape).astype(np.float32)
        elif k.endswith("beta"):
            state[k] = rng.normal(0, 1, v.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: path} of a checkpoint, the .bnn exported from it and a scene."""
    d = tmp_path_factory.mktemp("models")
    scene = small_scene()
    model = _perturb(build_model(scene, (28, 28, 1), 10))
    ckpt, bnn, toml = d / "m.npz", d / "m.bnn", d / "s.toml"
    save_checkpoint(ckpt, model, meta={"scene": "small", "dataset": "digits", "seed": 3,
                                       "input_scale": "unit"})
    names = load_dataset("digits", seed=3, limit_train=1, limit_test=1).class_names
    export_model(model, bnn, input_spec_for((28, 28, 1)), names,
                 {"name": "small", "dataset": "digits", "seed": "3"})
    shutil.copy(preset_dir() / "quickstart.toml", toml)
    return {"checkpoint": ckpt, "bnn": bnn, "scene": toml}


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", seed=3, limit_test=120)
    return ds.x_test, ds.y_test


# --------------------------------------------------------------------------- open_any


def test_each_kind_by_content(files):
    assert sniff(files["bnn"]) == "bnn"
    assert sniff(files["checkpoint"]) == "checkpoint"
    assert sniff(files["scene"]) == "scene"
    assert isinstance(open_any(files["scene"]), Scene)
    for kind in ("bnn", "checkpoint"):
        opened = open_any(files[kind])
        assert isinstance(opened, OpenedModel) and opened.kind == kind
        assert opened.input_shape == (28, 28, 1) and opened.num_classes == 10
        assert opened.dataset == "digits" and opened.seed == 3
        assert opened.class_names == tuple("0123456789")


def test_content_wins_over_a_wrong_suffix(files, tmp_path):
    for kind, new in (("bnn", "x.h5"), ("checkpoint", "x.bnn"), ("scene", "x.txt"),
                      ("checkpoint", "noext")):
        p = tmp_path / new
        shutil.copy(files[kind], p)
        assert sniff(p) == kind
    assert open_any(tmp_path / "x.h5").kind == "bnn"
    assert open_any(tmp_path / "noext").kind == "checkpoint"


@needs_larq
def test_hdf5_by_content_whatever_its_suffix(tmp_path, capsys):
    for name in ("m.hdf5", "m.keras", "m.weird"):
        shutil.copy(H5, tmp_path / name)
        assert sniff(tmp_path / name) == "keras"
    # `bnnlab summary m.hdf5` used to read the file as TOML
    assert main(["summary", str(tmp_path / "m.hdf5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_1bit"] == 93088


@pytest.mark.parametrize("name,content,match", [
    ("missing.bnn", None, "no such file"),
    ("empty.bnn", b"", "truncated"),
    ("junk.bnn", b"hello", "bad magic"),
    ("junk.npz", b"\x01\x02\x03", "not a readable bnnlab checkpoint"),
    ("blob.bin", b"\x00\x01\x02binary", "binary data of unknown type"),
    ("empty", b"", "an empty file of unknown type"),
    ("bad.toml", b"name = [\n", "not valid TOML"),
])
def test_errors_name_the_file(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(OpenError, match=match) as info:
        open_any(p)
    assert str(info.value).startswith(str(p))


def test_truncated_bnn_reports_the_truncation(files, tmp_path):
    p = tmp_path / "cut.bnn"
    p.write_bytes(files["bnn"].read_bytes()[:100])
    assert sniff(p) == "bnn"
    with pytest.raises(OpenError, match=r"cut\.bnn: truncated"):
        open_any(p)


def test_zip_archives_other_than_checkpoints(tmp_path):
    k3 = tmp_path / "m.keras"
    with zipfile.ZipFile(k3, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"")
    with pytest.raises(OpenError, match="Keras 3 .keras archive"):
        open_any(k3)
    other = tmp_path / "a.npz"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(OpenError, match=r"a\.npz: not a bnnlab checkpoint"):
        open_any(other)


def test_folder_and_want(files, tmp_path):
    with pytest.raises(OpenError, match="is a folder"):
        open_any(tmp_path)
    with pytest.raises(OpenError, match="a scene, not a model file"):
        open_any(files["scene"], want="model")
    with pytest.raises(OpenError, match="a .bnn model, not a scene"):
        open_any(files["bnn"], want="scene")


def test_cli_uses_the_same_dispatch(files, tmp_path, capsys):
    p = tmp_path / "renamed.h5"
    shutil.copy(files["bnn"], p)
    assert main(["summary", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_1bit"] > 0
    assert main(["filters", str(files["checkpoint"]), "--json"]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "none.hdf5")]) == 2
    assert "none.hdf5: no such file" in capsys.readouterr().err


# --------------------------------------------------------------------------- OpenedModel


def test_bnn_predicts_on_the_runtime_like_bnnlab_run(files, digits, capsys):
    opened = open_any(files["bnn"])
    x, y = digits
    assert opened.computes_on == "runtime"
    rt = Runtime(opened.bnn)
    np.testing.assert_array_equal(opened.predict(x), rt.predict(raw_from_unit(x, "uint8")))
    probs = opened.predict_proba(x[:5])
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    ev = opened.evaluate("digits", limit=120)
    assert main(["run", str(files["bnn"]), "--data", "digits", "--limit", "120", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == ev.accuracy


def test_checkpoint_predicts_on_the_engine(files, digits):
    opened = open_any(files["checkpoint"])
    x, _ = digits
    assert opened.computes_on == "engine"
    np.testing.assert_array_equal(opened.logits(x), opened.model.predict_logits(x))
    # the exported file and its checkpoint agree on every image (binary after the first layer)
    np.testing.assert_array_equal(opened.predict(x), open_any(files["bnn"]).predict(x))


def test_summary_filters_and_report(files):
    for kind in ("bnn", "checkpoint"):
        opened = open_any(files[kind])
        prof = opened.profile()
        assert prof.params_1bit == 8 * 9 + 8 * 16 * 9 + 6 * 6 * 16 * 10
        assert f"{prof.params_1bit:,}" in opened.summary_text().replace(" ", "") or \
            str(prof.params_1bit) in opened.summary_text()
        assert [r.layer for r in opened.filters()] == [q.name for q in opened.model.quant_layers[:2]]
        info = opened.describe()
        assert info["kind"] == kind and info["bnn_bytes"] and len(info["blocks"]) == 3
        json.dumps(info)
        assert str(files[kind]) in opened.report()


def test_latent_weights_only_where_the_file_has_them(files):
    ck = open_any(files["checkpoint"])
    layers = ck.latent_weights()
    assert [ly.name for ly in layers] == [q.name for q in ck.model.quant_layers]
    np.testing.assert_array_equal(layers[1].values, ck.model.quant_layers[1].kernel.value.reshape(-1))
    assert layers[0].clip == 1.0 and 0 <= layers[0].frac_at_clip <= 1
    counts, edges = layers[1].histogram(40)
    assert counts.sum() == layers[1].values.size and edges[0] <= -1.25
    bnn = open_any(files["bnn"])
    assert not bnn.has_latent_weights
    with pytest.raises(NoLatentWeights, match="m.bnn"):
        bnn.latent_weights()


def test_evaluate_progress_confusion_and_stop(files):
    opened = open_any(files["checkpoint"])
    seen = []
    ev = opened.evaluate(limit=100, batch_size=32, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(32, 100), (64, 100), (96, 100), (100, 100)]
    assert ev.complete and ev.n == 100 and ev.dataset == "digits"
    assert ev.confusion.shape == (10, 10) and ev.confusion.sum() == 100
    assert ev.accuracy == np.trace(ev.confusion) / 100
    np.testing.assert_array_equal(np.bincount(ev.labels, minlength=10), ev.confusion.sum(axis=1))
    calls = []
    part = opened.evaluate(limit=100, batch_size=32, should_stop=lambda: len(calls) >= 2,
                           progress=lambda d, t: calls.append(d))
    assert not part.complete and part.n == 64 and part.confusion.sum() == 64


def test_shape_mismatch_is_named(files):
    opened = open_any(files["bnn"])
    with pytest.raises(IncompatibleModel, match=r"m\.bnn reads inputs of shape \(28, 28, 1\), "
                                                r"dataset 'xor' has \(2,\)"):
        opened.evaluate("xor")
    with pytest.raises(IncompatibleModel, match="the input has"):
        opened.predict(np.zeros((1, 2), np.float32))
    ck = open_any(files["checkpoint"])
    with pytest.raises(IncompatibleModel, match="scene 'toy-xor'"):
        ck.fine_tune(load_preset("toy-xor"))


def test_fine_tune_trains_a_copy(files):
    opened = open_any(files["checkpoint"])
    before = {k: v.copy() for k, v in opened.model.state_dict().items()}
    scene = small_scene(input_scale="symmetric", learning_rate=0.05)
    ft = opened.fine_tune(scene, telemetry=False)
    assert ft.scene.input_scale == "unit"  # as the model was trained, whatever the scene says
    assert ft.model is not opened.model and ft.trainer.model is ft.model
    snap = next(iter(ft.trainer))  # the first snapshot: after the first batches
    assert snap.step >= 1
    after = opened.model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    moved = ft.model.state_dict()
    assert any(not np.array_equal(before[k], moved[k]) for k in before)
    with pytest.raises(NoLatentWeights, match="fine-tune from the .npz or .h5"):
        open_any(files["bnn"]).fine_tune(scene)


@needs_larq
def test_larq_model_opened(tmp_path):
    opened = open_any(H5)
    assert opened.kind == "keras" and opened.has_latent_weights and opened.is_binary
    z = np.load(f"{LARQ}/predictions.npz")
    x = (z["images"].astype(np.float32) / np.float32(255))[..., None]
    assert int((opened.predict(x) == z["argmax"]).sum()) == 500
    assert int((opened.runtime().predict(opened.raw_inputs(x)) == z["argmax"]).sum()) == 500
    assert opened.profile().memory_kib == pytest.approx(13.19, abs=0.005)
    assert [ly.values.size for ly in opened.latent_weights()] == [288, 18432, 36864, 36864, 640]


def test_run_folds_a_checkpoint_like_its_exported_file(files, capsys):
    rows = []
    for kind in ("bnn", "checkpoint"):
        assert main(["run", str(files[kind]), "--data", "digits", "--limit", "120", "--json"]) == 0
        rows.append(json.loads(capsys.readouterr().out))
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and rows[0]["images"] == 120


def test_bits_view_of_an_opened_model(files, digits):
    x = digits[0][7]
    for kind in ("bnn", "checkpoint"):
        opened = open_any(files[kind])
        spans = opened.bnn_layout()
        assert spans[-1].end == files["bnn"].stat().st_size or kind == "checkpoint"
        maps = opened.activation_maps(x)
        assert [m.values.shape for m in maps] == [(13, 13, 8), (6, 6, 16), (10,)]
        e = opened.explain_unit(x, 1, (2, 3, 5))
        assert e.agrees and e.kind == "xnor" and len(e.windows) == 4
        assert e.output == maps[1].values[2, 3, 5]


def test_a_model_in_memory_has_the_same_interface(files, digits):
    from bnnlab.io.checkpoints import load_checkpoint

    model, _ = load_checkpoint(files["checkpoint"])
    run = OpenedModel.from_model(model, "run 2", class_names=tuple("0123456789"),
                                 dataset="digits", seed=3)
    assert run.kind == "run" and run.label() == "run 2" and run.has_latent_weights
    x, _ = digits
    np.testing.assert_array_equal(run.predict(x), open_any(files["checkpoint"]).predict(x))
    info = run.describe()
    assert info["file_bytes"] is None and info["bnn_bytes"] > 0
    assert run.explain_unit(x[0], 2, (0, 0, 4)).agrees
    assert run.incompatibility(load_preset("quickstart")) is None
    assert "dataset 'xor'" in run.incompatibility(load_preset("toy-xor"))
    assert run.evaluate(limit=50).n == 50


def test_session_names_a_model_opened_as_a_scene(files):
    from bnnlab.app.session import Session

    session = Session(warm_up=False)
    errors = []
    session.listen("error", lambda title, message: errors.append(message))
    assert session.open_scene(files["bnn"]) is False
    assert errors == [f"{files['bnn']}: a .bnn model, not a scene (.toml)"]
    assert session.open_scene(files["scene"]) is True
    session.shutdown()


def test_results_row_of_an_opened_model_takes_its_evaluation(files):
    # An opened model has no epochs and was not trained here: its row used to show no
    # validation accuracy after Evaluate and the time it took to open as training time.
    import time

    from bnnlab.app.results import result_rows
    from bnnlab.app.session import Session

    session = Session(warm_up=False)
    session.open_model(files["checkpoint"])
    end = time.monotonic() + 120
    while (not session.runs or session.runs[-1].prepared is None) and time.monotonic() < end:
        session.poll()
        time.sleep(0.02)
    run = session.runs[-1]
    (row,) = result_rows([run])
    assert row["val_accuracy"] is None and row["seconds"] is None and row["epochs"] == 0
    dataset = run.opened.dataset or run.scene.dataset
    session.evaluate(run, dataset)
    while (run.evaluation is None or session.evaluating) and time.monotonic() < end:
        session.poll()
        time.sleep(0.02)
    (row,) = result_rows([run])
    assert run.evaluation.complete and row["val_accuracy"] == pytest.approx(run.evaluation.accuracy)
    session.shutdown()
