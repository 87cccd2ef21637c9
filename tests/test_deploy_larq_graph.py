"""Functional (graph) Keras/Larq models: import, export, and clear refusals."""

import json
import os
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from bnnlab.core.model import Sequential
from bnnlab.deploy.fold import ExportError, fold_model
from bnnlab.deploy.larq_export import keras_config, write_larq_h5
from bnnlab.deploy.larq_import import LarqImportError, import_larq
from bnnlab.experiment import build_model
from bnnlab.io.scenes import load_preset

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
H5 = os.path.join(HERE, "larq_functional.h5")  # written by make_larq_functional.py


def test_larq_functional_model_predicts_as_larq():
    model = import_larq(H5)
    z = np.load(os.path.join(HERE, "larq_functional.npz"))
    assert model.is_graph
    names = [layer.name for layer in model.layers]
    assert model.input_names(names.index("add1")) == ("bn1", "stem_bn")
    assert model.input_names(names.index("cat")) == ("add2", "short2")
    assert model.input_names(0) == ("input",)
    np.testing.assert_allclose(model.predict_proba(z["images"]), z["probs"], atol=1e-5)


def test_graph_model_round_trips_through_h5_bit_for_bit(tmp_path):
    model = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    rng = np.random.default_rng(0)
    for _, p in model.params():  # weights other than the initial ones
        p.value[...] = rng.uniform(-1, 1, p.value.shape)
    x = rng.random((8, 28, 28, 1)).astype(np.float32)
    model.forward(x, training=True)  # moves the batch-norm statistics
    cfg = keras_config(model)
    assert cfg["class_name"] == "Functional"
    add2 = next(lc for lc in cfg["config"]["layers"] if lc["name"] == "add2")
    assert add2["inbound_nodes"] == [[["bn2", 0, 0, {}], ["short2_twice", 0, 0, {}]]]
    write_larq_h5(model, tmp_path / "m.h5")
    back = import_larq(tmp_path / "m.h5")
    assert back.config()["layers"] == model.config()["layers"]
    np.testing.assert_array_equal(back.predict_logits(x), model.predict_logits(x))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


def _rewrite(tmp_path, change):
    path = tmp_path / "bad.h5"
    shutil.copy(H5, path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        change(cfg["config"])
        f.attrs["model_config"] = json.dumps(cfg)
    return path


def _layer(body, name):
    return next(lc for lc in body["layers"] if lc["name"] == name)


@pytest.mark.parametrize("change,message", [
    (lambda b: _layer(b, "conv1")["inbound_nodes"].append([["stem_bn", 0, 0, {}]]),
     "called exactly once"),
    (lambda b: b.update(output_layers=[["softmax", 0, 0], ["bn1", 0, 0]]),
     "output_layers must name exactly one layer"),
    (lambda b: _layer(b, "add1")["inbound_nodes"][0].__setitem__(1, ["nope", 0, 0, {}]),
     "unknown input 'nope'"),
    (lambda b: _layer(b, "add1")["inbound_nodes"][0].__setitem__(1, ["conv2", 0, 0, {}]),
     "cycle"),
    (lambda b: _layer(b, "cat")["config"].update(axis=1), "only the channel axis"),
    (lambda b: _layer(b, "add2")["inbound_nodes"][0].__setitem__(1, ["stem_bn", 0, 0, {}]),
     "Add needs inputs of one shape"),
])
def test_bad_functional_models_are_refused_with_the_reason(tmp_path, change, message):
    path = _rewrite(tmp_path, change)
    with pytest.raises(LarqImportError) as err:
        import_larq(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_graph_the_bnn_format_cannot_hold_is_refused_with_the_layer():
    model = Sequential.from_config({"input_shape": [4], "layers": [
        {"type": "QuantDense", "units": 4, "kernel_quantizer": "ste_sign", "name": "a"},
        {"type": "Add", "inputs": ["a", "input"], "name": "join"},
        {"type": "QuantDense", "units": 2, "input_quantizer": "ste_sign",
         "kernel_quantizer": "ste_sign"}]})
    with pytest.raises(ExportError, match="layer join \\(Add\\).*not the raw input"):
        fold_model(model)
