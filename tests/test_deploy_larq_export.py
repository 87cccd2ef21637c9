"""Writing Keras/Larq .h5 models: read back bit for bit, Larq's own configuration, clear refusals."""

import json
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from bnnlab.cli import main
from bnnlab.core.model import Sequential
from bnnlab.deploy import export_model, read_file
from bnnlab.deploy.larq_export import LarqExportError, keras_config, write_larq_h5
from bnnlab.deploy.larq_import import import_larq
from bnnlab.deploy.unfold import model_from_file
from bnnlab.experiment import build_model
from bnnlab.io.checkpoints import save_checkpoint
from bnnlab.io.scenes import load_preset

LARQ_H5 = "/work/shared/testdata/larq/larq_mnist_bnn.h5"


def _trained_like(model, seed=3):
    """Give every array awkward values: latent weights at and inside the clip bounds, batch
    statistics away from their initial 0 and 1."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("moving_variance"):
            state[k] = rng.uniform(0.1, 5.0, v.shape).astype(np.float32)
        elif k.endswith("kernel"):
            w = rng.uniform(-1.0, 1.0, v.shape).astype(np.float32)
            w.reshape(-1)[::7] = 1.0
            w.reshape(-1)[3::11] = -1.0
            w.reshape(-1)[5::13] = 0.0
            state[k] = w
        else:
            state[k] = rng.standard_normal(v.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


def _assert_same(a: Sequential, b: Sequential):
    assert a.config()["layers"] == b.config()["layers"]
    assert a.input_shape == b.input_shape
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k


def _mixed_model():
    cfg = {"name": "mixed", "input_shape": [10, 10, 1], "layers": [
        {"type": "QuantConv2D", "filters": 4, "kernel_size": 3, "padding": "same", "pad_values": 1.0,
         "input_quantizer": "approx_sign", "kernel_quantizer": {"name": "swish_sign", "beta": 3.0},
         "kernel_constraint": "weight_clip", "use_bias": True},
        {"type": "Conv2D", "filters": 3, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "BatchNorm", "momentum": 0.9, "epsilon": 1e-5},
        {"type": "Flatten"},
        {"type": "QuantDense", "units": 7, "input_quantizer": "ste_sign",
         "kernel_quantizer": {"name": "ste_sign", "clip_value": None}, "use_bias": False},
        {"type": "BatchNorm", "center": False},
        {"type": "Dense", "units": 3},
        {"type": "Activation", "activation": "softmax"},
    ]}
    return _trained_like(Sequential.from_config(cfg, seed=1))


@pytest.mark.parametrize("make", [
    lambda: _trained_like(build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)),
    _mixed_model,
], ids=["larq-mnist-bnn", "mixed"])
def test_h5_reads_back_bit_for_bit(tmp_path, make):
    model = make()
    path = tmp_path / "m.h5"
    size = write_larq_h5(model, path)
    assert size == path.stat().st_size
    back = import_larq(path)
    _assert_same(model, back)
    x = np.random.default_rng(0).uniform(0, 1, (5, *model.input_shape)).astype(np.float32)
    assert np.array_equal(model.predict_logits(x), back.predict_logits(x))


def test_h5_layout_is_what_keras_loads(tmp_path):
    model = _mixed_model()
    write_larq_h5(model, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["keras_version"] == "2.15.0" and f.attrs["backend"] == "tensorflow"
        g = f["model_weights"]
        names = _text(g.attrs["layer_names"])
        assert names == [layer.name for layer in model.layers]
        bn = g["batch_normalization"]
        # Keras loads a layer's arrays by position, in the order its variables are made
        assert _text(bn.attrs["weight_names"]) == [
            "batch_normalization/gamma:0", "batch_normalization/beta:0",
            "batch_normalization/moving_mean:0", "batch_normalization/moving_variance:0"]
        assert len(g["max_pooling2d"].attrs["weight_names"]) == 0
        conv = g["quant_conv2d/quant_conv2d/kernel:0"]
        assert conv.shape == (3, 3, 1, 4) and conv.dtype == np.float32
        cfg = json.loads(f.attrs["model_config"])
    layers = cfg["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer"
    assert layers[0]["config"]["batch_input_shape"] == [None, 10, 10, 1]
    q = layers[1]["config"]
    assert q["input_quantizer"]["class_name"] == "ApproxSign"
    assert q["kernel_quantizer"]["config"]["beta"] == 3.0 and q["pad_values"] == 1.0
    assert q["kernel_constraint"]["class_name"] == "weight_clip"
    assert layers[6]["config"]["kernel_quantizer"]["config"]["clip_value"] is None
    assert layers[4]["config"]["axis"] == [3] and layers[7]["config"]["axis"] == [1]


def _text(names):
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _strip(o):
    """Drop what Keras adds around a configuration but does not need to rebuild it."""
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items()
                if k not in ("build_config", "module", "registered_name")}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


@pytest.mark.skipif(not os.path.exists(LARQ_H5), reason="Larq test model not available")
def test_configuration_equals_the_one_larq_saved():
    with h5py.File(LARQ_H5, "r") as f:
        theirs = json.loads(f.attrs["model_config"])
    ours = keras_config(import_larq(LARQ_H5))
    assert _strip(ours) == _strip(theirs)


@pytest.mark.skipif(not os.path.exists(LARQ_H5), reason="Larq test model not available")
def test_larq_file_survives_import_and_export(tmp_path):
    model = import_larq(LARQ_H5)
    write_larq_h5(model, tmp_path / "again.h5")
    _assert_same(model, import_larq(tmp_path / "again.h5"))


@pytest.mark.parametrize("quantizer", ["stochastic_sign", "sign", "hard_tanh"])
def test_quantizer_without_larq_twin_is_refused(tmp_path, quantizer):
    model = Sequential.from_config({"input_shape": [4], "layers": [
        {"type": "QuantDense", "units": 2, "input_quantizer": quantizer,
         "kernel_quantizer": "ste_sign"}]})
    with pytest.raises(LarqExportError, match=f"quant_dense.*{quantizer}"):
        write_larq_h5(model, tmp_path / "m.h5")
    assert not any(tmp_path.iterdir())  # nothing half-written is left


def test_cli_export_h5_from_checkpoint_and_bnn(tmp_path, capsys):
    model = _trained_like(build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10))
    ckpt = tmp_path / "m.npz"
    save_checkpoint(ckpt, model, meta={"scene": "larq-mnist-bnn", "input_scale": "unit"})
    assert main(["export", str(ckpt), "--h5", str(tmp_path / "m.h5")]) == 0
    assert "Keras 2 / Larq" in capsys.readouterr().out
    _assert_same(model, import_larq(tmp_path / "m.h5"))
    # from a .bnn: the folded model, unfolded, predicts what the .bnn does
    export_model(model, tmp_path / "m.bnn")
    assert main(["export", str(tmp_path / "m.bnn"), "--h5", str(tmp_path / "b.h5"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["h5_bytes"] == (tmp_path / "b.h5").stat().st_size
    _assert_same(model_from_file(read_file(tmp_path / "m.bnn")), import_larq(tmp_path / "b.h5"))


def test_cli_export_h5_bad_suffix_exit_2(tmp_path, capsys):
    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    save_checkpoint(tmp_path / "m.npz", model)
    assert main(["export", str(tmp_path / "m.npz"), "--h5", str(tmp_path / "m.keras")]) == 2
    assert "must end in .h5" in capsys.readouterr().err
