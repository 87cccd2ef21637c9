"""Importing the Larq-trained MNIST model: Larq's own predictions, its summary, and clear errors."""

import json
import os
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from bnnlab.cli import main
from bnnlab.app.opening import open_any
from bnnlab.deploy import read_file
from bnnlab.deploy.check import compare_with_engine
from bnnlab.deploy.fold import fold_model
from bnnlab.deploy.larq_import import LarqImportError, import_larq
from bnnlab.deploy.runtime import Runtime, raw_from_unit

LARQ = "/work/shared/testdata/larq"
H5 = f"{LARQ}/larq_mnist_bnn.h5"
MNIST = "/work/shared/data"
KIB_13_19 = int(13.19 * 1024)  # Larq's summary figure for this network, in bytes

pytestmark = pytest.mark.skipif(not os.path.exists(H5), reason="Larq test model not available")


@pytest.fixture(scope="module")
def model():
    return import_larq(H5)


@pytest.fixture(scope="module")
def larq():
    z = np.load(f"{LARQ}/predictions.npz")
    return {k: z[k] for k in z.files}


def test_same_predictions_as_larq(model, larq):
    x = (larq["images"].astype(np.float32) / np.float32(255))[..., None]
    engine = model.predict_logits(x).argmax(1)
    assert int((engine == larq["argmax"]).sum()) == 500
    np.testing.assert_allclose(model.predict_proba(x), larq["probs"], atol=1e-5)
    mf = fold_model(model)
    runtime = Runtime(mf).predict(larq["images"][..., None])
    assert int((runtime == larq["argmax"]).sum()) == 500


@pytest.mark.skipif(not os.path.exists(f"{MNIST}/mnist"), reason="MNIST files not available")
def test_accuracy_matches_larq_on_the_whole_test_set(model):
    from bnnlab.data import load_dataset

    ds = load_dataset("mnist", MNIST, download=False)
    with open(f"{LARQ}/ACCURACY") as f:
        expected = float(f.read())
    _, acc = model.evaluate(ds.x_test, ds.y_test)
    assert abs(acc - expected) <= 0.001
    rt = Runtime(fold_model(model))
    raw = raw_from_unit(ds.x_test, "uint8")
    cmp = compare_with_engine(model, rt, ds.x_test, raw, batch_size=1000)
    assert cmp.same >= 9990 and all(d.margin < 1e-4 for d in cmp.disagreements)
    assert abs(float(np.mean(rt.predict(raw) == ds.y_test)) - expected) <= 0.001


def test_summary_matches_larq(capsys):
    assert main(["summary", H5, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params_1bit"] == 93088 and d["params_32bit"] == 468
    assert round(d["memory_kib"], 2) == 13.19 and round(d["float32_kib"], 2) == 365.45
    assert d["macs_1bit"] == 2599552 and d["macs_32bit"] == 194688


def test_filters_work_on_h5_and_bnn(capsys, tmp_path):
    assert main(["filters", H5, "--json"]) == 0
    from_h5 = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in from_h5] == ["quant_conv2d", "quant_conv2d_1", "quant_conv2d_2"]
    bnn = tmp_path / "larq.bnn"
    assert main(["import", H5, "--out", str(bnn), "--dataset", "mnist"]) == 0
    capsys.readouterr()
    assert main(["filters", str(bnn), "--json"]) == 0
    from_bnn = json.loads(capsys.readouterr().out)
    assert [r["unique"] for r in from_bnn] == [r["unique"] for r in from_h5]


def test_bnn_of_the_larq_network_is_within_13_19_kib(tmp_path, capsys):
    bnn = tmp_path / "larq.bnn"
    assert main(["import", H5, "--out", str(bnn), "--dataset", "mnist", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    size = bnn.stat().st_size
    assert row["bnn_bytes"] == size <= KIB_13_19
    mf = read_file(bnn)
    assert mf.class_names == tuple("0123456789") and mf.input.scale == np.float32(1 / 255)
    info = open_any(bnn).describe()
    assert info["float32_bytes"] == 93556 * 4


def _edit_config(tmp_path, edit):
    path = tmp_path / "edited.h5"
    shutil.copy(H5, path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return path


def test_unsupported_layer_is_named(tmp_path):
    def add_dropout(cfg):
        cfg["config"]["layers"].insert(3, {"class_name": "Dropout",
                                           "config": {"name": "dropout_7", "rate": 0.2}})
    with pytest.raises(LarqImportError, match="dropout_7.*Dropout.*not supported.*QuantConv2D"):
        import_larq(_edit_config(tmp_path, add_dropout))


def test_unsupported_quantizer_is_named(tmp_path):
    def dorefa(cfg):
        cfg["config"]["layers"][4]["config"]["input_quantizer"] = {
            "class_name": "DoReFaQuantizer", "config": {"k_bit": 2}}
    with pytest.raises(LarqImportError, match="quant_conv2d_1.*DoReFaQuantizer"):
        import_larq(_edit_config(tmp_path, dorefa))


def test_functional_and_weights_only_files_are_refused(tmp_path):
    def functional(cfg):
        cfg["class_name"] = "Functional"  # a Functional model lists its input and output
    with pytest.raises(LarqImportError, match="input_layers must name exactly one layer"):
        import_larq(_edit_config(tmp_path, functional))

    def subclassed(cfg):
        cfg["class_name"] = "MyModel"
    with pytest.raises(LarqImportError, match="only Sequential and Functional models"):
        import_larq(_edit_config(tmp_path, subclassed))
    with pytest.raises(LarqImportError, match="weights-only"):
        import_larq(f"{LARQ}/larq_mnist_bnn.weights.h5")


def test_wrong_weight_shape_is_reported(tmp_path):
    def wider(cfg):
        cfg["config"]["layers"][1]["config"]["filters"] = 16
    with pytest.raises(LarqImportError, match="quant_conv2d.*shape"):
        import_larq(_edit_config(tmp_path, wider))


def test_cli_import_error_exit_2(tmp_path, capsys):
    def add_dropout(cfg):
        cfg["config"]["layers"].insert(2, {"class_name": "Dropout", "config": {"name": "drop"}})
    assert main(["summary", str(_edit_config(tmp_path, add_dropout))]) == 2
    err = capsys.readouterr().err
    assert "drop" in err and "Dropout" in err and len(err.strip().splitlines()) == 1
