"""Graph models: layers that name their inputs, Add/Concatenate joining branches."""

import numpy as np
import pytest

from bnnlab.core.layers import layer_from_config
from bnnlab.core.model import Sequential, softmax_cross_entropy
from bnnlab.core.optimizers import make_optimizer
from bnnlab.core.summary import format_summary, profile_model
from bnnlab.experiment import build_model
from bnnlab.io.scenes import SceneError, load_preset, load_scene, save_scene
from test_layers import _numeric_grad  # central differences at random coordinates

BIN = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}


def _residual_layers(quant=True):
    """stem conv + BN, then a binary conv + BN with an identity shortcut around it."""
    q = dict(BIN) if quant else {"input_quantizer": "hard_tanh"}
    conv = "QuantConv2D" if quant else "Conv2D"
    if not quant:
        q = {}
    return [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "name": "stem"},
        {"type": "BatchNorm", "name": "bn0"},
        {"type": conv, "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False,
         "name": "conv1", **q},
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "Add", "inputs": ["bn1", "bn0"], "name": "add"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 3},
    ]


def test_float_graph_gradients_match_central_differences():
    rng = np.random.default_rng(5)
    model = Sequential.from_config({"input_shape": [5, 5, 2], "layers": _residual_layers(False)})
    assert model.is_graph and model.sources[4] == (3, 1)
    x = rng.standard_normal((3, 5, 5, 2)).astype(np.float32)
    y = np.array([0, 1, 2])

    def loss():
        return softmax_cross_entropy(model.forward(x, training=True), y)[0]

    _, g = softmax_cross_entropy(model.forward(x, training=True), y)
    model.backward(g)
    for name, p in model.params():
        analytic = p.grad.copy()
        idx, num = _numeric_grad(loss, p.value, n=6, rng=rng)
        np.testing.assert_allclose([analytic[i] for i in idx], num, rtol=5e-2, atol=2e-3,
                                   err_msg=name)


def test_binary_graph_gradient_is_the_sum_at_the_fan_out():
    """bn0's output feeds the binary conv and the shortcut: its gradient is the shortcut's
    gradient plus the straight-through gradient back through bn1 and conv1."""
    rng = np.random.default_rng(6)
    model = Sequential.from_config({"input_shape": [6, 6, 3], "layers": _residual_layers(True)})
    names = [layer.name for layer in model.layers]
    bn0, conv1, bn1, add = (model.layers[names.index(n)] for n in ("bn0", "conv1", "bn1", "add"))
    assert conv1.binary and conv1.need_input_grad
    x = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    _, g = softmax_cross_entropy(model.forward(x, training=True), labels)
    model.backward(g)
    got = {n: p.grad.copy() for n, p in model.params()}
    # the same chain by hand, each layer's own backward, the fan-out summed explicitly
    d = g
    for layer in reversed(model.layers[names.index("add") + 1:]):
        d = layer.backward(d)
    through_conv = conv1.backward(bn1.backward(d))
    np.testing.assert_allclose(got["conv1/kernel"], conv1.kernel.grad, rtol=1e-6)
    d_bn0 = d + through_conv
    assert not np.allclose(through_conv, 0)  # the straight-through path carries gradient
    bn0.backward(d_bn0)
    np.testing.assert_allclose(got["bn0/gamma"], bn0.gamma.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bn0/beta"], bn0.beta.grad, rtol=1e-5, atol=1e-6)
    # and the smooth parameters behind the binary conv agree with central differences
    def loss():
        return softmax_cross_entropy(model.forward(x, training=True), labels)[0]

    for key, p in (("bn1/gamma", bn1.gamma), ("bn1/beta", bn1.beta)):
        idx, num = _numeric_grad(loss, p.value, n=4, rng=rng)
        np.testing.assert_allclose([got[key][i] for i in idx], num, rtol=5e-2, atol=2e-3,
                                   err_msg=key)
    assert add.output_shape == (6, 6, 4)


def _train(model, x, y, steps=3):
    opt = make_optimizer("adam", learning_rate=1e-2)
    params = [p for _, p in model.params()]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        _, g = softmax_cross_entropy(model.forward(x, training=True, rng=rng), y)
        model.backward(g)
        opt.step(params)
    return model.state_dict()


def test_explicit_inputs_on_a_stack_are_bit_identical():
    scene = load_preset("larq-mnist-bnn")
    layers = scene.resolved_layers()
    named = [dict(lc, name=f"l{i}") for i, lc in enumerate(layers)]
    explicit = [dict(lc, inputs=["input" if i == 0 else f"l{i - 1}"]) for i, lc in enumerate(named)]
    a = Sequential.from_config({"input_shape": [28, 28, 1], "layers": named}, seed=3)
    b = Sequential.from_config({"input_shape": [28, 28, 1], "layers": explicit}, seed=3)
    assert not a.is_graph and not b.is_graph
    assert a.config() == Sequential.from_config(b.config(), seed=3).config()
    rng = np.random.default_rng(1)
    x = rng.random((16, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    sa, sb = _train(a, x, y), _train(b, x, y)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_listed_order_may_differ_from_run_order_and_config_round_trips():
    layers = _residual_layers(True)
    # the shortcut branch listed after the add: it still runs first
    shuffled = [layers[0], layers[1], dict(layers[4]), dict(layers[2], inputs=["bn0"]),
                dict(layers[3], inputs=["conv1"]), dict(layers[5], inputs=["add"]), layers[6]]
    m = Sequential.from_config({"input_shape": [6, 6, 3], "layers": shuffled})
    assert [ly.name for ly in m.layers][:5] == ["stem", "bn0", "conv1", "bn1", "add"]
    again = Sequential.from_config(m.config())
    assert again.config() == m.config() and again.sources == m.sources


def test_concatenate_joins_channels_and_splits_the_gradient():
    m = Sequential.from_config({"input_shape": [4, 4, 2], "layers": [
        {"type": "Conv2D", "filters": 3, "name": "a", "padding": "same"},
        {"type": "Conv2D", "filters": 5, "name": "b", "inputs": ["input"], "padding": "same"},
        {"type": "Concatenate", "inputs": ["a", "b"]},
        {"type": "Flatten"}, {"type": "Dense", "units": 2}]})
    assert m.layers[2].output_shape == (4, 4, 8)
    x = np.random.default_rng(2).standard_normal((2, 4, 4, 2)).astype(np.float32)
    out = m.forward(x, training=True)
    _, g = softmax_cross_entropy(out, np.array([0, 1]))
    m.backward(g)
    assert np.abs(m.layers[0].kernel.grad).sum() > 0 and np.abs(m.layers[1].kernel.grad).sum() > 0


def test_summary_counts_add_as_free_and_shows_connections():
    model = Sequential.from_config({"input_shape": [6, 6, 3], "layers": _residual_layers(True)})
    prof = profile_model(model)
    add = prof.layers[4]
    assert (add.params_1bit, add.params_32bit, add.macs_1bit, add.macs_32bit) == (0, 0, 0, 0)
    assert add.inputs == ("bn1", "bn0") and prof.layers[0].inputs == ("input",)
    text = format_summary(prof)
    assert "Connected to" in text and "bn1, bn0" in text
    stack = Sequential.from_config({"input_shape": [4], "layers": [{"type": "Dense", "units": 2}]})
    assert "Connected to" not in format_summary(profile_model(stack))


def _scene_file(tmp_path, layers, name="g.toml"):
    scene = load_preset("larq-mnist-bnn")
    scene.layers = layers
    path = tmp_path / name
    # written by hand so that invalid wiring reaches the reader
    from bnnlab.io.scenes import scene_to_toml
    path.write_text(scene_to_toml(scene))
    return path


@pytest.mark.parametrize("change,message", [
    (lambda ls: ls[4].update(inputs=["bn1", "nope"]), "unknown input 'nope'"),
    (lambda ls: ls[2].update(inputs=["bn1"]), "cycle"),
    (lambda ls: ls[4].update(inputs=["bn1"]), "needs inputs naming at least two"),
    (lambda ls: ls[3].update(name="input"), "reserved"),
    (lambda ls: ls[4].update(inputs=["bn1", "stem"]) or ls[2].update(inputs=["stem"]),
     "bn0 is not used"),
])
def test_malformed_graphs_name_the_scene_file(tmp_path, change, message):
    layers = _residual_layers(True)
    layers[-1]["units"] = 10
    change(layers)
    path = _scene_file(tmp_path, layers)
    with pytest.raises(SceneError) as err:
        load_scene(path)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def test_shape_mismatch_at_add_names_the_scene_file(tmp_path):
    layers = _residual_layers(True)
    layers[-1]["units"] = 10
    layers[2]["filters"] = 8  # conv1 now gives 8 channels, the shortcut 4
    path = _scene_file(tmp_path, layers)
    scene = load_scene(path)
    with pytest.raises(SceneError) as err:
        build_model(scene, (28, 28, 1), 10)
    text = str(err.value)
    assert str(path) in text and "layer add: Add needs inputs of one shape" in text
    assert "\n" not in text


def test_graph_scene_round_trips_through_toml(tmp_path):
    layers = _residual_layers(True)
    layers[-1]["units"] = 10
    path = _scene_file(tmp_path, layers)
    scene = load_scene(path)
    save_scene(scene, tmp_path / "again.toml")
    assert load_scene(tmp_path / "again.toml") == scene
    assert scene.layers[4]["inputs"] == ["bn1", "bn0"]
    model = build_model(scene, (28, 28, 1), 10)
    assert model.is_graph


def test_merge_layer_rejects_a_single_input_config():
    with pytest.raises(ValueError, match="inputs must be a non-empty list"):
        layer_from_config({"type": "Add", "inputs": []})


def test_graph_model_checkpoint_round_trip(tmp_path):
    from bnnlab.io.checkpoints import load_checkpoint, save_checkpoint

    model = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    x = np.random.default_rng(4).random((4, 28, 28, 1)).astype(np.float32)
    model.forward(x, training=True)
    save_checkpoint(tmp_path / "m.npz", model)
    back, _ = load_checkpoint(tmp_path / "m.npz")
    assert back.is_graph and back.sources == model.sources
    np.testing.assert_array_equal(back.predict_logits(x), model.predict_logits(x))
