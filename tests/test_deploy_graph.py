"""Graph models in the .bnn format (version 2): folding, reading, the runtime against the
NumPy oracle, and the files of version 1 still read."""

import dataclasses
import os
import struct
import zlib

import numpy as np
import pytest

from bnnlab.core.model import Sequential
from bnnlab.deploy.fold import fold_model
from bnnlab.deploy.format import (GRAPH_VERSION, VERSION, ModelFileError, Node, decode, encode,
                                  read_file, validate)
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime, raw_from_unit
from bnnlab.deploy.unfold import model_from_file
from bnnlab.experiment import build_model
from bnnlab.io.scenes import load_preset

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
BIN = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "use_bias": False}


def _randomize(model, rng):
    for layer in model.layers:
        if layer.type_name == "BatchNorm":
            c = layer.channels
            layer.moving_mean[...] = rng.normal(0, 2, c)
            layer.moving_variance[...] = rng.uniform(0.3, 3, c)
            if layer.gamma is not None:
                layer.gamma.value[...] = rng.uniform(-1.5, 1.5, c)  # negative scales too
            if layer.beta is not None:
                layer.beta.value[...] = rng.normal(0, 1, c)
    return model


def _residual(h, w, c, f, pad_values, seed, concat=False):
    """stem (real input) + BN, a binary conv + BN around an identity shortcut, a pooled
    shortcut, optionally channels concatenated, a binary dense head."""
    layers = [
        {"type": "QuantConv2D", "filters": f, "kernel_size": 3, "padding": "same",
         "kernel_quantizer": "ste_sign", "use_bias": False, "name": "stem"},
        {"type": "BatchNorm", "name": "bn0"},
        {"type": "QuantConv2D", "filters": f, "kernel_size": 3, "padding": "same",
         "pad_values": pad_values, "name": "c1", **BIN},
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "Add", "inputs": ["bn1", "bn0"], "name": "add1"},
        {"type": "QuantConv2D", "filters": f, "kernel_size": 3, "padding": "same",
         "pad_values": pad_values, "name": "c2", **BIN},
        {"type": "MaxPool2D", "pool_size": 2, "name": "p2"},
        {"type": "BatchNorm", "name": "bn2"},
        {"type": "MaxPool2D", "pool_size": 2, "inputs": ["add1"], "name": "s2"},
        {"type": "Add", "inputs": ["bn2", "s2"], "name": "add2"},
    ]
    if concat:
        layers.append({"type": "Concatenate", "inputs": ["add2", "s2"], "name": "cat"})
    layers += [{"type": "Flatten"}, {"type": "QuantDense", "units": 3, **BIN},
               {"type": "BatchNorm"}]
    model = Sequential.from_config({"input_shape": [h, w, c], "layers": layers}, seed=seed)
    return _randomize(model, np.random.default_rng(seed))


@pytest.mark.parametrize("h,w,c,f,pad_values,concat", [
    (9, 7, 1, 5, 1.0, False),    # K = 9 and 45: far from a multiple of 64
    (6, 6, 3, 70, 0.0, True),    # 70 channels: two words per pixel; zero padding
    (5, 8, 2, 64, -1.0, False),  # exactly one word
])
def test_runtime_equals_the_oracle_and_the_engine_on_graphs(h, w, c, f, pad_values, concat):
    model = _residual(h, w, c, f, pad_values, seed=h * w + f, concat=concat)
    mf = decode(encode(fold_model(model)))
    assert mf.is_graph and encode(mf)[8:10] == GRAPH_VERSION.to_bytes(2, "little")
    assert [n.op for n in mf.nodes].count("add") == 2
    rng = np.random.default_rng(f)
    raw = rng.integers(0, 256, (9, h, w, c)).astype(np.uint8)
    rt = Runtime(mf)
    for batch in (raw, raw[:1]):
        np.testing.assert_array_equal(rt.logits(batch, threads=1), reference_logits(mf, batch))
    np.testing.assert_array_equal(rt.logits(raw, threads=2), reference_logits(mf, raw))
    engine = model.predict_logits(raw.astype(np.float32) / np.float32(255))
    # the real-valued stem sums pixels in another order; only near-ties may part
    assert (engine.argmax(1) == rt.predict(raw)).mean() >= 0.8
    np.testing.assert_allclose(rt.logits(raw), engine, rtol=1e-3, atol=1e-2 * np.abs(engine).max())


def test_bireal_preset_folds_runs_and_unfolds():
    model = _randomize(build_model(load_preset("bireal-mnist"), (28, 28, 1), 10),
                       np.random.default_rng(1))
    mf = fold_model(model)
    assert [n.op for n in mf.nodes] == ["block", "block", "add", "block", "maxpool",
                                        "concatenate", "add", "block", "add", "maxpool", "block"]
    assert [b.input for b in mf.blocks] == ["raw", "signs", "signs", "signs", "signs"]
    x = np.random.default_rng(2).random((5, 28, 28, 1)).astype(np.float32)
    raw = raw_from_unit(x, "uint8")
    np.testing.assert_array_equal(Runtime(mf).logits(raw), reference_logits(mf, raw))
    # back to an engine model that computes what the runtime computes
    engine = model_from_file(mf)
    assert engine.is_graph and [ly.type_name for ly in engine.layers].count("Add") == 3
    unit = raw.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(engine.predict_logits(unit).argmax(1), Runtime(mf).predict(raw))
    np.testing.assert_allclose(engine.predict_logits(unit), Runtime(mf).logits(raw),
                               rtol=1e-5, atol=1e-4)


def test_stacks_are_still_written_as_version_1_and_old_files_read():
    stack = fold_model(build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10))
    assert not stack.is_graph and encode(stack)[8:10] == VERSION.to_bytes(2, "little")
    # a file written by the version 1 writer, with the logits its oracle gave then
    old = read_file(os.path.join(HERE, "v1_small.bnn"))
    z = np.load(os.path.join(HERE, "v1_small.npz"))
    assert not old.is_graph and old.metadata["name"] == "v1-fixture"
    np.testing.assert_array_equal(reference_logits(old, z["raw"]), z["logits"])
    np.testing.assert_array_equal(Runtime(old).logits(z["raw"]), z["logits"])
    with open(os.path.join(HERE, "v1_small.bnn"), "rb") as f:
        assert encode(old) == f.read()


def _graph_file():
    return fold_model(_residual(6, 6, 1, 4, 1.0, seed=3))


@pytest.mark.parametrize("nodes,message", [
    (lambda ns: [ns[0], Node("block", (2,), 1), *ns[2:]], "not the input \\(0\\) or an earlier"),
    (lambda ns: [*ns[:2], Node("add", (2,)), *ns[3:]], "joins at least two"),
    (lambda ns: [*ns[:2], Node("add", (2, 0)), *ns[3:]], "float tensors only"),
    (lambda ns: [*ns[:-1], Node("block", (5,), ns[-1].block)], "node 6's output is not read"),
    (lambda ns: [*ns[:4], Node("maxpool", (4,), pool=(9, 1)), *ns[5:]], "does not fit"),
])
def test_malformed_graphs_are_refused(nodes, message):
    mf = _graph_file()
    bad = dataclasses.replace(mf, nodes=tuple(nodes(list(mf.nodes))))
    with pytest.raises(ModelFileError, match=message):
        validate(bad)


def test_graph_files_are_checked_when_read():
    data = bytearray(encode(_graph_file()))
    with pytest.raises(ModelFileError, match="truncated"):
        decode(bytes(data[:-30]) + b"\0\0\0\0")  # shortened: the checksum fails first
    for cut in (40, 80, 200):
        short = bytes(data[:cut])
        short = short[:12] + struct.pack("<I", len(short) + 4) + short[16:]
        with pytest.raises(ModelFileError):
            decode(short + struct.pack("<I", zlib.crc32(short)))
