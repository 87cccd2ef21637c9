"""Folding batch norm + sign into thresholds: the runtime against the NumPy oracle and the engine.

The random models here have batch norms with negative and zero scales, max pools on
either side of them, biases, 'same' padding with every pad value, and real-valued first
layers of every kind, so each direction and constant case of the threshold is exercised.
"""

import numpy as np
import pytest

from bnnlab.core.layers import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    QuantConv2D,
    QuantDense,
)
from bnnlab.core.model import Sequential
from bnnlab.deploy.check import compare_with_engine
from bnnlab.deploy.fold import ExportError, fold_model, input_spec_for
from bnnlab.deploy.format import MODE_GE, MODE_LE, MODE_MINUS, MODE_PLUS, decode, encode
from bnnlab.deploy.reference import reference_trace
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.unfold import model_from_file

BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def randomize(model, seed, zero_scale=True, bias=True):
    """Batch-norm statistics and biases that put thresholds anywhere, with signs of both kinds."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            c = layer.channels
            layer.moving_mean[:] = rng.normal(0, 4, c)
            layer.moving_variance[:] = rng.uniform(0.2, 30, c)
            if layer.beta is not None:
                layer.beta.value[:] = rng.normal(0, 2, c)
            if layer.gamma is not None:
                g = rng.normal(0, 1, c)
                if zero_scale:
                    g[:2] = 0.0
                layer.gamma.value[:] = g
        elif bias and getattr(layer, "bias", None) is not None:
            layer.bias.value[:] = rng.normal(0, 2, layer.bias.value.shape)
    return model


def conv_net(pool_first=True, pad=0.0, seed=0):
    head = [MaxPool2D(2), BatchNorm()] if pool_first else [BatchNorm(), MaxPool2D(2)]
    layers = [QuantConv2D(9, 3, kernel_quantizer="ste_sign", use_bias=False), *head,
              QuantConv2D(70, 3, padding="same", pad_values=pad, use_bias=True, **BIN),
              BatchNorm(), MaxPool2D(2), BatchNorm(),
              QuantConv2D(12, 2, strides=2, padding="same", pad_values=-1.0, use_bias=False, **BIN),
              BatchNorm(), Flatten(), QuantDense(20, **BIN), BatchNorm(), BatchNorm(),
              QuantDense(6, use_bias=True, **BIN), BatchNorm(), Activation("softmax")]
    return randomize(Sequential(layers, (14, 13, 1), seed=seed), seed)


def images(n, shape=(14, 13, 1), seed=0):
    raw = np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)
    return raw, raw.astype(np.float32) / np.float32(255)


def check_all(model, mf, raw, x):
    """Runtime == NumPy oracle bit for bit; engine agrees up to counted first-layer ties."""
    mf = decode(encode(mf))
    rt = Runtime(mf)
    for got, want in zip(rt.trace(raw), reference_trace(mf, raw)):
        if got.dtype == np.float32:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(got, want.astype(np.int8))
    cmp = compare_with_engine(model, rt, x, raw)
    # Binary-input blocks are exact: only the first block may differ, and only at ties.
    assert all(b == 0 for b in cmp.first_block_bits[1:]), cmp
    assert cmp.max_margin[0] < 1e-4, cmp
    rebuilt = model_from_file(mf).predict_logits(x)
    return rt, cmp, rebuilt


@pytest.mark.parametrize("pool_first", [True, False])
@pytest.mark.parametrize("pad", [0.0, 1.0, -1.0])
def test_conv_net_all_directions(pool_first, pad):
    model = conv_net(pool_first, pad, seed=int(pool_first) * 7 + int(pad) + 3)
    mf = fold_model(model)
    modes = np.concatenate([b.modes for b in mf.blocks[:-1]])
    assert {MODE_GE, MODE_LE, MODE_PLUS, MODE_MINUS} <= set(modes.tolist())
    raw, x = images(300)
    rt, cmp, rebuilt = check_all(model, mf, raw, x)
    assert cmp.same == len(raw) - len(cmp.disagreements)
    assert len(cmp.disagreements) <= 1
    np.testing.assert_array_equal(rebuilt.argmax(1), rt.predict(raw))


def test_negative_scale_before_pool_negates_the_weights():
    model = conv_net(pool_first=False, seed=11)
    bn = model.layers[1]
    a, _ = bn.scale_offset()
    mf = fold_model(model)
    w_model = np.where(model.layers[0].kernel.value >= 0, 1, -1).reshape(9, 9).T  # (F, K)
    flipped = np.all(mf.blocks[0].signs() == -w_model, axis=1)
    assert np.array_equal(flipped, a < 0)


def test_pool_then_negative_scale_flips_direction_not_weights():
    model = conv_net(pool_first=True, seed=5)
    bn = model.layers[2]
    bn.moving_mean[:] = np.linspace(-1, 1, 9)  # thresholds inside the reachable range
    bn.moving_variance[:] = 1.0
    bn.beta.value[:] = 0.0
    a, _ = bn.scale_offset()
    mf = fold_model(model)
    b0 = mf.blocks[0]
    w_model = np.where(model.layers[0].kernel.value >= 0, 1, -1).reshape(9, 9).T
    np.testing.assert_array_equal(b0.signs(), w_model)
    const = [MODE_PLUS, MODE_MINUS]  # a threshold beyond the reachable range is constant too
    assert np.all(np.isin(b0.modes[a > 0], [MODE_GE, *const]))
    assert np.all(np.isin(b0.modes[a < 0], [MODE_LE, *const]))
    assert np.all(np.isin(b0.modes[a == 0], const))
    assert {MODE_GE, MODE_LE} <= set(b0.modes.tolist())


def test_threshold_reproduces_engine_float32_exactly():
    """For a binary dense layer the sign of the engine's float32 batch norm equals the
    threshold's verdict on every reachable accumulator value, ties included."""
    model = Sequential([Dense(40, use_bias=False), BatchNorm(), QuantDense(30, **BIN), BatchNorm(),
                        QuantDense(3, **BIN)], (5,))
    randomize(model, 4)
    bn = model.layers[3]
    # Put half the channels exactly on an integer tie: a * (m + bias) + b == 0 at m = 3.
    model.layers[2].bias.value[:15] = 0.0
    bn.gamma.value[:15] = 1.0
    bn.moving_variance[:15] = 1.0 - bn.epsilon
    bn.moving_mean[:15] = 3.0
    bn.beta.value[:15] = 0.0
    mf = fold_model(model)
    b1 = mf.blocks[1]
    a, b = bn.scale_offset()
    m = np.arange(-40, 41, dtype=np.float32)[:, None]
    z = m + model.layers[2].bias.value  # the layer's epilogue: z += bias, in float32
    engine_plus = (z * a + b).astype(np.float32) >= 0
    t = b1.thresholds[None, :].astype(np.float32)
    mode = b1.modes[None, :]
    folded = np.where(mode == MODE_GE, m >= t, np.where(mode == MODE_LE, m <= t, mode == MODE_PLUS))
    np.testing.assert_array_equal(folded, engine_plus)


def test_float_first_layer_and_points_input():
    model = Sequential([Dense(16), BatchNorm(scale=False), QuantDense(16, **BIN), BatchNorm(),
                        QuantDense(2, **BIN), BatchNorm(), Activation("softmax")], (2,))
    randomize(model, 9)
    mf = fold_model(model)
    assert mf.input.encoding == "float32" and mf.blocks[0].acc == "float32"
    assert mf.blocks[0].kernel == "float32"
    x = np.random.default_rng(0).normal(0, 2, (2000, 2)).astype(np.float32)
    _, cmp, _ = check_all(model, mf, x, x)
    assert cmp.same >= len(x) - 1


def test_integer_first_layer_symmetric_input():
    """Pixels in [-1, 1]: the raw offset folds into the thresholds; valid padding stays integer."""
    layers = [QuantConv2D(8, 3, kernel_quantizer="ste_sign", use_bias=False), BatchNorm(),
              Flatten(), QuantDense(4, **BIN), BatchNorm()]
    model = randomize(Sequential(layers, (8, 8, 1), seed=2), 2)
    spec = input_spec_for((8, 8, 1), "symmetric")
    mf = fold_model(model, spec)
    assert mf.blocks[0].acc == "int32"
    raw, x01 = images(400, (8, 8, 1), seed=3)
    x = (x01 * 2.0 - 1.0).astype(np.float32)
    check_all(model, mf, raw, x)


def test_symmetric_input_with_zero_padding_falls_back_to_float():
    layers = [QuantConv2D(8, 3, padding="same", kernel_quantizer="ste_sign", use_bias=False),
              BatchNorm(), Flatten(), QuantDense(4, **BIN), BatchNorm()]
    model = randomize(Sequential(layers, (6, 6, 1), seed=1), 1)
    mf = fold_model(model, input_spec_for((6, 6, 1), "symmetric"))
    assert mf.blocks[0].acc == "float32" and mf.blocks[0].pad_value == 0
    raw, x01 = images(300, (6, 6, 1), seed=4)
    check_all(model, mf, raw, (x01 * 2.0 - 1.0).astype(np.float32))


def test_float_kernel_first_conv_with_pool_and_relu_free_bias():
    layers = [Conv2D(5, 3, padding="same", use_bias=True), BatchNorm(), MaxPool2D(2), Flatten(),
              QuantDense(7, **BIN), BatchNorm()]
    model = randomize(Sequential(layers, (6, 6, 2), seed=3), 3)
    mf = fold_model(model)
    assert mf.blocks[0].kernel == "float32" and mf.blocks[0].acc == "float32"
    raw, x = images(300, (6, 6, 2), seed=5)
    check_all(model, mf, raw, x)


def test_single_block_model():
    model = randomize(Sequential([Flatten(), QuantDense(3, kernel_quantizer="ste_sign"), BatchNorm()],
                                 (4, 4, 1)), 0)
    mf = fold_model(model)
    assert len(mf.blocks) == 1 and mf.blocks[0].output == "logits"
    raw, x = images(200, (4, 4, 1))
    check_all(model, mf, raw, x)


@pytest.mark.parametrize("layers,match", [
    ([Flatten(), QuantDense(4, kernel_quantizer="ste_sign"), Activation("relu"),
      QuantDense(2, **BIN)], "activation 'relu'"),
    ([Flatten(), QuantDense(4, kernel_quantizer="ste_sign"), BatchNorm(), QuantDense(2)],
     "quant_dense_1.*not binarized"),
    ([Flatten(), QuantDense(4, kernel_quantizer="ste_sign"), BatchNorm(),
      QuantDense(2, input_quantizer="stochastic_sign", kernel_quantizer="ste_sign")], "random"),
    ([BatchNorm(), Flatten(), QuantDense(2, kernel_quantizer="ste_sign")],
     "batch_normalization.*before the first"),
    ([QuantConv2D(2, 3, kernel_quantizer="ste_sign"), Flatten(), BatchNorm(),
      QuantDense(2, **BIN)], "after Flatten"),
    ([Flatten(), QuantDense(4, input_quantizer="ste_sign", kernel_quantizer="ste_sign")],
     "first layer binarizes"),
])
def test_unsupported_models_name_the_layer(layers, match):
    model = Sequential(layers, (5, 5, 1))
    with pytest.raises(ExportError, match=match):
        fold_model(model)


@pytest.mark.parametrize("kernel, padding, pad, pool, filters, shape", [
    ((3, 3), "valid", 0.0, True, 9, (14, 13, 1)),
    ((3, 3), "same", 0.0, True, 40, (12, 15, 1)),
    ((3, 3), "same", 0.0, False, 70, (9, 8, 1)),
    ((5, 3), "valid", 0.0, True, 17, (13, 11, 1)),
    ((1, 3), "same", 0.0, False, 16, (6, 10, 1)),
    ((3, 3), "valid", 0.0, True, 1, (4, 4, 1)),
])
def test_one_channel_first_block_shares_row_sums(kernel, padding, pad, pool, filters, shape):
    """The first block's int16 row-sum kernel (one channel, ±1 weights three taps wide)
    against the NumPy oracle, for every filter-count, padding and pooling case it takes.
    (Padding with ±1 on [0, 1] pixels makes the block accumulate in float32 instead.)"""
    layers = [QuantConv2D(filters, kernel, kernel_quantizer="ste_sign", padding=padding,
                          pad_values=pad, use_bias=False)]
    layers += [MaxPool2D(2), BatchNorm()] if pool else [BatchNorm()]
    layers += [Flatten(), QuantDense(5, **BIN), BatchNorm()]
    model = randomize(Sequential(layers, shape, seed=filters), filters)
    mf = decode(encode(fold_model(model)))
    rt = Runtime(mf)
    assert rt._blocks[0].c1_pm1 and rt._chain.starts_with_pixels
    modes = set(mf.blocks[0].modes.tolist())
    assert {MODE_GE, MODE_LE} <= modes if filters > 2 else modes <= {MODE_PLUS, MODE_MINUS}
    for n in (1, 7):
        raw, _ = images(n, shape, seed=n)
        for got, want in zip(rt.trace(raw), reference_trace(mf, raw)):
            np.testing.assert_array_equal(got, want if got.dtype == np.float32 else want.astype(np.int8))
        # The same block inside the one-call chain, which pads the pixels itself.
        np.testing.assert_array_equal(rt.logits(raw, threads=1), want)
