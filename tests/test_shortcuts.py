"""Shortcuts of residual models: which Add inputs are shortcuts, the model with them cut,
and the per-layer gradient norms with and without them (bnnlab.core.shortcuts)."""

import numpy as np
import pytest

from bnnlab.core.model import Sequential, softmax_cross_entropy
from bnnlab.core.shortcuts import (NoShortcuts, compare_shortcuts, find_shortcuts,
                                   gradient_norms, without_shortcuts)
from bnnlab.experiment import build_model
from bnnlab.io.scenes import load_preset


def _tiny(seed=3):
    """input (5,) -> d0 -> d1 -> add(d1, d0) -> d2 (3 logits): d0 is carried around d1."""
    cfg = {"name": "tiny", "input_shape": [5], "layers": [
        {"type": "Dense", "name": "d0", "units": 4, "use_bias": False},
        {"type": "Dense", "name": "d1", "units": 4, "use_bias": False},
        {"type": "Add", "name": "add", "inputs": ["d1", "d0"]},
        {"type": "Dense", "name": "d2", "units": 3, "use_bias": False},
    ]}
    return Sequential.from_config(cfg, seed=seed)


def _batch(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


def _weights(model):
    return [np.asarray(layer.kernel.value, np.float64) for layer in model.quant_layers]


def _by_hand(model, x, y, shortcut: bool):
    """(|dL/dW0|, |dL/dW1|, |dL/dW2|, |dL/d d0|, |dL/d add|) for the tiny graph."""
    w0, w1, w2 = _weights(model)
    x = x.astype(np.float64)
    h0 = x @ w0
    h = h0 @ w1 + (h0 if shortcut else 0.0)
    _, g = softmax_cross_entropy((h @ w2).astype(np.float32), y)
    g = g.astype(np.float64)
    dh = g @ w2.T
    dh0 = dh @ w1.T + (dh if shortcut else 0.0)
    norm = np.linalg.norm
    return norm(x.T @ dh0), norm(h0.T @ dh), norm(h.T @ g), norm(dh0), norm(dh)


def test_shortcuts_of_a_tiny_graph_and_of_bireal():
    model = _tiny()
    (s,) = find_shortcuts(model)
    assert (s.add, s.cut, s.kept, s.origins) == ("add", ("d0",), ("d1",), ("d0",))
    cut = without_shortcuts(model)
    assert [(lc["name"], lc["inputs"]) for lc in cut["layers"]] == [
        ("d0", ["input"]), ("d1", ["d0"]), ("d2", ["d1"])]
    bireal = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    found = [(s.add, s.cut, s.kept) for s in find_shortcuts(bireal)]
    assert found == [("add1", ("stem_bn",), ("bn1",)), ("add2", ("short2_twice",), ("bn2",)),
                     ("add3", ("add2",), ("bn3",))]
    plain = Sequential.from_config(without_shortcuts(bireal))
    assert not plain.is_graph
    assert [q.name for q in plain.quant_layers] == [q.name for q in bireal.quant_layers]
    assert "short2" not in [layer.name for layer in plain.layers]  # fed only a shortcut


def test_a_stack_has_no_shortcuts():
    model = build_model(load_preset("quickstart"), (28, 28, 1), 10)
    assert find_shortcuts(model) == []
    with pytest.raises(NoShortcuts):
        without_shortcuts(model)
    x = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(NoShortcuts):
        compare_shortcuts(model, x, np.zeros(4, np.int64))


@pytest.mark.parametrize("shortcut", [True, False])
def test_gradient_norms_match_the_tiny_graph_by_hand(shortcut):
    model = _tiny()
    x, y = _batch()
    m = model if shortcut else Sequential.from_config(without_shortcuts(model))
    m.load_state_dict(model.state_dict())
    grads, losses = gradient_norms(m, [(x, y)])
    w0, w1, w2, in1, in2 = _by_hand(model, x, y, shortcut)
    assert [g.name for g in grads] == ["d0", "d1", "d2"]
    assert grads[0].input is None  # d0 reads the data
    np.testing.assert_allclose([g.weight[0] for g in grads], [w0, w1, w2], rtol=1e-5)
    np.testing.assert_allclose([grads[1].input[0], grads[2].input[0]], [in1, in2], rtol=1e-5)
    assert len(losses) == 1


def test_latent_weight_gradient_norms_agree_with_finite_differences():
    model = _tiny()
    x, y = _batch(1)
    (g0, g1, g2), _ = gradient_norms(model, [(x, y)])
    eps = 1e-3
    for layer, got in zip(model.quant_layers, (g0, g1, g2)):
        w = layer.kernel.value
        fd = np.zeros(w.shape)
        for idx in np.ndindex(w.shape):
            keep = w[idx]
            w[idx] = keep + eps
            up, _ = softmax_cross_entropy(model.forward(x), y)
            w[idx] = keep - eps
            down, _ = softmax_cross_entropy(model.forward(x), y)
            w[idx] = keep
            fd[idx] = (up - down) / (2 * eps)
        assert got.weight[0] == pytest.approx(np.linalg.norm(fd), rel=2e-2)


def test_compare_shortcuts_uses_the_same_weights_and_batches_and_leaves_the_model_alone():
    model = _tiny()
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    effect = compare_shortcuts(model, x, y, batches=2, batch_size=8, seed=4)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    order = np.random.default_rng(4).permutation(40)
    for b in range(2):
        idx = order[8 * b:8 * (b + 1)]
        for gs, shortcut in ((effect.with_shortcuts, True), (effect.without_shortcuts, False)):
            w0, w1, w2, in1, _ = _by_hand(model, x[idx], y[idx], shortcut)
            np.testing.assert_allclose([g.weight[b] for g in gs], [w0, w1, w2], rtol=1e-5)
            assert gs[1].input[b] == pytest.approx(in1, rel=1e-5)
    d = effect.as_dict()
    assert d["shortcuts"] == [{"add": "add", "cut": ["d0"], "kept": ["d1"], "origins": ["d0"]}]
    assert d["with_shortcuts"][1]["weight_grad_norm"] == pytest.approx(
        np.mean(effect.with_shortcuts[1].weight))


def test_the_noshortcut_preset_is_bireal_with_its_shortcuts_cut():
    from bnnlab.app.seeds import default_variant, variant_choices

    bireal = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    plain = build_model(load_preset("bireal-mnist-noshortcut"), (28, 28, 1), 10)
    cut = Sequential.from_config(without_shortcuts(bireal))
    assert plain.config()["layers"] == cut.config()["layers"]
    state = bireal.state_dict()
    for k, v in plain.state_dict().items():  # same seed: the same initial weights
        np.testing.assert_array_equal(v, state[k])
    scene = load_preset("bireal-mnist")
    assert default_variant(scene, variant_choices(scene)) == "bireal-mnist-noshortcut"


def test_cli_prints_the_same_figures_and_refuses_a_stack(tmp_path, capsys):
    import json

    from bnnlab.cli import main
    from bnnlab.data import load_dataset
    from bnnlab.io.checkpoints import save_checkpoint

    cfg = {"name": "tiny-xor", "input_shape": [2], "layers": [
        {"type": "Dense", "name": "d0", "units": 4, "use_bias": False},
        {"type": "QuantDense", "name": "d1", "units": 4, "use_bias": False,
         "input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"},
        {"type": "Add", "name": "add", "inputs": ["d1", "d0"]},
        {"type": "Dense", "name": "d2", "units": 2}]}
    model = Sequential.from_config(cfg, seed=1)
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, model, {"dataset": "xor", "seed": 0})
    assert main(["shortcuts", str(path), "--json", "--batches", "3", "--batch-size", "16"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ds = load_dataset("xor", seed=0, splits=("train",))
    ds_test = load_dataset("xor", seed=0, splits=("test",))
    want = compare_shortcuts(model, ds.x_train, ds.y_train, batches=3, batch_size=16, seed=0)
    assert doc["dataset"] == "xor" and doc["shortcuts"][0]["cut"] == ["d0"]
    assert [d["weight_grad_norm"] for d in doc["without_shortcuts"]] == pytest.approx(
        [g.weight_mean for g in want.without_shortcuts])
    for extra, x, y in ((["--split", "test"], ds_test.x_test, ds_test.y_test),
                        (["--limit-train", "32"], ds.x_train[:32], ds.y_train[:32])):
        assert main(["shortcuts", str(path), "--json", "--batches", "2", *extra]) == 0
        doc = json.loads(capsys.readouterr().out)
        want = compare_shortcuts(model, x, y, batches=2, batch_size=64, seed=0)
        assert [d["weight_grad_norm"] for d in doc["with_shortcuts"]] == pytest.approx(
            [g.weight_mean for g in want.with_shortcuts])
    assert doc["split"] == "train"
    assert main(["shortcuts", str(path), "--batches", "1"]) == 0
    text = capsys.readouterr().out
    assert "add keeps d1, loses d0" in text and "d1" in text
    stack = tmp_path / "stack.npz"
    save_checkpoint(stack, Sequential.from_config(
        {"name": "s", "input_shape": [2], "layers": [{"type": "Dense", "units": 2}]}),
        {"dataset": "xor"})
    assert main(["shortcuts", str(stack)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no shortcut" in err and len(err.splitlines()) == 1


def test_cli_refuses_a_plain_stack_before_loading_any_data(tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    import bnnlab.data
    from bnnlab.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    from test_app_engineless import _files

    normal_bnn, _ = _files(tmp_path)  # a .bnn stack of blocks

    def no_loading(*args, **kwargs):
        raise AssertionError("the dataset was loaded before refusing")

    monkeypatch.setattr(bnnlab.data, "load_dataset", no_loading)
    for target in ("larq-mnist-bnn", "quickstart", str(normal_bnn)):
        assert main(["shortcuts", target, "--data-dir", str(tmp_path / "none")]) == 2, target
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "has no shortcut" in err and target in err and "bireal-mnist" in err
