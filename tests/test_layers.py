"""Layer gradients: finite differences on float parts, STE definitions on binary parts."""

import numpy as np
import pytest

from bnnlab.core.kernels import conv, xnor
from bnnlab.core.layers import (Activation, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D,
                                QuantConv2D, QuantDense, layer_from_config)
from bnnlab.core.model import Sequential, softmax_cross_entropy


def _numeric_grad(f, x, eps=1e-3, n=12, rng=None):
    """Central differences of scalar f at a few random coordinates of x.

    eps is small so that a step rarely crosses a ReLU or max-pool kink.
    """
    rng = rng or np.random.default_rng(0)
    idx = [tuple(rng.integers(0, s) for s in x.shape) for _ in range(n)]
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        out.append((fp - fm) / (2 * eps))
    return idx, np.array(out)


def _check_float_layer(layer, in_shape, rng, tol=2e-2):
    model = Sequential([layer], in_shape)
    layer.need_input_grad = True
    x = rng.standard_normal((3, *in_shape)).astype(np.float32)
    y_weights = rng.standard_normal((3, *layer.output_shape)).astype(np.float32)

    def loss():
        return float(np.sum(layer.forward(x, training=True).astype(np.float64) * y_weights))

    layer.forward(x, training=True)
    dx = layer.backward(y_weights.copy())
    idx, num = _numeric_grad(loss, x, rng=rng)
    np.testing.assert_allclose([dx[i] for i in idx], num, rtol=tol, atol=tol)
    for p in layer.params():
        layer.forward(x, training=True)
        layer.backward(y_weights.copy())
        analytic = p.grad.copy()
        idx, num = _numeric_grad(loss, p.value, rng=rng)
        np.testing.assert_allclose([analytic[i] for i in idx], num, rtol=tol, atol=tol)
    return model


@pytest.mark.parametrize("make,in_shape", [
    (lambda: Conv2D(4, 3, activation="relu"), (6, 5, 2)),
    (lambda: Conv2D(3, 3, padding="same", strides=2), (7, 6, 3)),
    (lambda: Conv2D(5, 3), (5, 5, 20)),  # im2col + BLAS path (K >= 64)
    (lambda: Dense(4, activation="relu"), (7,)),
    (lambda: BatchNorm(), (3, 3, 4)),
    (lambda: BatchNorm(center=False), (6,)),
    (lambda: MaxPool2D(2), (5, 4, 3)),
    (lambda: Flatten(), (2, 3, 2)),
    (lambda: Activation("relu"), (9,)),
])
def test_float_layers_match_finite_differences(make, in_shape):
    _check_float_layer(make(), in_shape, np.random.default_rng(hash(in_shape) % 1000))


def test_quant_dense_forward_is_packed_binary_dot_and_backward_is_ste():
    rng = np.random.default_rng(0)
    layer = QuantDense(5, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)
    Sequential([Flatten(), layer], (70,))
    layer.need_input_grad = True
    layer.kernel.value[...] = rng.uniform(-1.5, 1.5, layer.kernel.value.shape)
    x = rng.uniform(-2, 2, (4, 70)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert layer.binary
    np.testing.assert_array_equal(y, xnor.binary_dot_ref(x, layer.kernel.value))
    dz = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dz)
    wq = np.where(layer.kernel.value >= 0, 1.0, -1.0)
    xq = np.where(x >= 0, 1.0, -1.0)
    np.testing.assert_allclose(dx, (dz @ wq.T) * (np.abs(x) <= 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.kernel.grad, (xq.T @ dz) * (np.abs(layer.kernel.value) <= 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding,pad_values,stride", [("valid", 0.0, 1), ("same", 0.0, 1),
                                                       ("same", 1.0, 1), ("same", -1.0, 2)])
def test_quant_conv_forward_and_ste_backward(padding, pad_values, stride):
    rng = np.random.default_rng(1)
    layer = QuantConv2D(6, 3, strides=stride, padding=padding, pad_values=pad_values,
                        input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    Sequential([layer], (7, 9, 5))
    layer.need_input_grad = True
    x = rng.uniform(-2, 2, (2, 7, 9, 5)).astype(np.float32)
    y = layer.forward(x, training=True)
    xq = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    wq = np.where(layer.kernel.value >= 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_allclose(y, conv.conv2d_ref(xq, wq, stride, padding, pad_values), atol=1e-4)
    dz = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dz)
    cols = conv.im2col_ref(xq, 3, 3, stride, padding, pad_values).astype(np.float64)
    dw = (cols.T @ dz.reshape(-1, 6)).reshape(wq.shape)
    np.testing.assert_allclose(layer.kernel.grad, dw * (np.abs(layer.kernel.value) <= 1), rtol=1e-4, atol=1e-3)
    # d/dxq of sum(conv(xq) * dz) by finite differences of the float reference, then the gate
    gx = np.zeros_like(xq, dtype=np.float64)
    base = np.sum(conv.conv2d_ref(xq, wq, stride, padding, pad_values) * dz)
    for i in [(0, 0, 0, 0), (1, 3, 4, 2), (0, 6, 8, 4), (1, 0, 8, 1)]:
        xp = xq.copy()
        xp[i] += 1.0
        gx[i] = np.sum(conv.conv2d_ref(xp, wq, stride, padding, pad_values) * dz) - base
        assert dx[i] == pytest.approx(gx[i] * (abs(x[i]) <= 1), abs=1e-3)


def test_first_layer_float_input_binary_kernel():
    rng = np.random.default_rng(2)
    layer = QuantConv2D(8, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)
    Sequential([layer], (6, 6, 1))
    assert not layer.binary and layer.kernel_binary
    x = rng.random((2, 6, 6, 1)).astype(np.float32)
    wq = np.where(layer.kernel.value >= 0, 1.0, -1.0)
    np.testing.assert_allclose(layer.forward(x, training=True), conv.conv2d_ref(x, wq), atol=1e-5)
    assert layer.backward(np.ones((2, 4, 4, 8), np.float32)) is None  # first layer: no dx


def test_model_loss_gradient_matches_finite_differences_on_float_model():
    rng = np.random.default_rng(3)
    model = Sequential([Conv2D(3, 3), MaxPool2D(2), BatchNorm(), Flatten(), Dense(4), BatchNorm(),
                        Activation("softmax")], (6, 6, 2))
    x = rng.standard_normal((4, 6, 6, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 3])

    def loss():
        return softmax_cross_entropy(model.forward(x, training=True), y)[0]

    _, g = softmax_cross_entropy(model.forward(x, training=True), y)
    model.backward(g)
    for name, p in model.params():
        analytic = p.grad.copy()
        idx, num = _numeric_grad(loss, p.value, eps=1e-3, n=6)
        np.testing.assert_allclose([analytic[i] for i in idx], num, rtol=5e-2, atol=2e-3, err_msg=name)


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="unknown layer type 'Conv3D'"):
        layer_from_config({"type": "Conv3D"})
    with pytest.raises(ValueError, match="padding"):
        QuantConv2D(3, padding="full")
    with pytest.raises(ValueError, match="unknown binarizer"):
        QuantDense(3, input_quantizer="sgn")
    with pytest.raises(ValueError, match="kernel_constraint"):
        QuantDense(3, kernel_constraint="clip")
    with pytest.raises(ValueError, match="Flatten"):
        Sequential([QuantDense(3)], (4, 4, 1))
    with pytest.raises(ValueError, match="softmax is only allowed on the last layer"):
        Sequential([Dense(3, activation="softmax"), Dense(2)], (4,))
    with pytest.raises(ValueError, match="expects input"):
        Sequential([Dense(3)], (4,)).forward(np.zeros((2, 5), np.float32))


def test_keras_layer_names_and_config_roundtrip():
    m = Sequential([QuantConv2D(4, 3, kernel_quantizer="ste_sign"), MaxPool2D(), BatchNorm(),
                    QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
                    Flatten(), QuantDense(3), Dense(2)], (10, 10, 1))
    assert [la.name for la in m.layers] == ["quant_conv2d", "max_pooling2d", "batch_normalization",
                                            "quant_conv2d_1", "flatten", "quant_dense", "dense"]
    m2 = Sequential.from_config(m.config())
    m2.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 10, 10, 1)).astype(np.float32)
    np.testing.assert_array_equal(m.forward(x), m2.forward(x))


@pytest.mark.parametrize("shape, unbiased", [((5, 3, 2, 4), True), ((7, 4), False),
                                             ((1, 1, 1, 4), True)])
def test_batchnorm_running_variance_follows_keras_2(shape, unbiased):
    # Keras 2 sends image batches through TensorFlow's fused batch norm, whose running
    # variance takes the unbiased batch variance (n / (n - 1), n = N*H*W; a single value
    # is not corrected); 2-D batches keep the biased one. Normalization uses the biased one.
    rng = np.random.default_rng(11)
    bn = BatchNorm(momentum=0.75)
    bn.build(shape[1:], rng)
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    y = bn.forward(x, training=True)
    flat = x.reshape(-1, shape[-1]).astype(np.float64)
    n = flat.shape[0]
    ddof = 1 if unbiased and n > 1 else 0
    np.testing.assert_allclose(bn.moving_mean, 0.25 * flat.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance, 0.75 + 0.25 * flat.var(axis=0, ddof=ddof),
                               rtol=1e-5)
    xhat = (flat - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + bn.epsilon)
    np.testing.assert_allclose(y.reshape(-1, shape[-1]), xhat, rtol=1e-4, atol=1e-4)
