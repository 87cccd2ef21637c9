"""The fast paths of the training step against their slow NumPy twins.

Every kernel runs both as one serial call and split into uneven parallel chunks (the
``paths`` fixture), on awkward shapes: batch 1, odd sizes, channel counts that are not
multiples of 8, K not a multiple of 64, 'same' padding with pad values 0 and ±1,
stride 2. Integers must match exactly, floats to 1e-5 relative (of the largest value).
"""

import importlib
import io
import json
import os
import pkgutil
import subprocess
import sys

import numba as nb
import numpy as np
import pytest

from bnnlab.core import kernels as K
from bnnlab.core.kernels import batchnorm, conv, float_gemm, optimizer, packing, pooling, sign, threads, xnor
from bnnlab.core.layers import BatchNorm, Conv2D, MaxPool2D, QuantConv2D, QuantDense
from bnnlab.core.shapes import conv_output_size


@pytest.fixture(params=["serial", "parallel"])
def paths(request, monkeypatch):
    """Force every wrapper onto its serial kernel, or onto three parallel chunks."""
    if request.param == "serial":
        monkeypatch.setattr(threads, "chunks", lambda items, work, nt=None: 1)
    else:
        monkeypatch.setattr(threads, "chunks",
                            lambda items, work, nt=None: max(1, min(int(items), 3)))
    return request.param


def close(got, ref, rtol=1e-5, scale=None):
    """|got - ref| <= rtol * (|ref| + max|ref|), or max of ``scale`` when it is given."""
    ref = np.asarray(ref, np.float64)
    if scale is None:
        scale = ref
    scale = max(float(np.abs(scale).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 32), (4, 63), (1, 3, 3, 64), (5, 65),
                                   (2, 130)])
def test_sign_pack_matches_sign_and_pack_rows(shape, paths):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(3, flat.size)] = [0.0, -0.0, np.nan][: min(3, flat.size)]
    xq, bits = K.sign_pack(x)
    ref_q, ref_bits = sign.sign_pack_ref(x)
    np.testing.assert_array_equal(xq, ref_q)
    np.testing.assert_array_equal(bits, ref_bits)


@pytest.mark.parametrize("k,n", [(1, 1), (3, 7), (63, 5), (64, 16), (65, 17), (576, 64),
                                 (130, 3)])
def test_signs_differ_finds_every_changed_sign(k, n):
    rng = np.random.default_rng(k * 100 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    flat = w.reshape(-1)
    flat[: min(5, flat.size)] = [0.0, -0.0, np.nan, -np.inf, np.inf][: min(5, flat.size)]
    bt = sign.sign_bits_columns_ref(w)
    # what the layers pack for a plain sign: sign_pack of the transposed kernel
    np.testing.assert_array_equal(bt, K.sign_pack(np.ascontiguousarray(w.T))[1].T)
    assert not sign.signs_differ(w, bt)
    assert not sign.signs_differ(w * 2.5, bt)  # magnitudes are not signs
    assert not sign.signs_differ(w[:, ::-1], np.ascontiguousarray(bt[:, ::-1]))
    for at in {0, flat.size // 2, flat.size - 1}:
        for v in (-1.0, 1.0, np.nan, -0.0):
            w2 = w.copy()
            w2.reshape(-1)[at] = v
            want = not np.array_equal(sign.sign_bits_columns_ref(w2), bt)
            assert sign.signs_differ(w2, bt) == want
            if v == -1.0 and w.reshape(-1)[at] >= 0:
                assert want  # a flipped sign is always seen
    assert sign.signs_differ(w[:, : n - 1], bt)  # another shape


@pytest.mark.parametrize("case", [
    # n, h, w, c, kh, kw, stride, padding
    (1, 5, 5, 1, 3, 3, 1, "valid"),
    (2, 7, 6, 3, 3, 3, 2, "same"),
    (3, 13, 13, 32, 3, 3, 1, "valid"),
    (1, 9, 11, 65, 3, 3, 2, "same"),
    (5, 5, 5, 64, 3, 3, 1, "valid"),
])
@pytest.mark.parametrize("pad_bit", [0, 1])
def test_pack_patches_parallel_matches_im2col(case, pad_bit, paths):
    n, h, w, c, kh, kw, s, padding = case
    rng = np.random.default_rng(h * w + c)
    x = sign.sign_ref(rng.standard_normal((n, h, w, c)))
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    _, pix = K.sign_pack(x)
    got = K.pack_patches_parallel(pix, n, h, w, c, kh, kw, s, pt, pl, ho, wo, pad_bit)
    cols = conv.im2col_ref(x, kh, kw, s, padding, pad_value=-1.0 if pad_bit else 1.0)
    np.testing.assert_array_equal(got, packing.pack_rows_ref(cols))


# --------------------------------------------------------------------------- XNOR GEMM


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (2, 64, 16), (7, 65, 17), (33, 288, 64), (64, 576, 10),
                                   (129, 100, 33), (5, 2000, 16), (3, 2500, 20),
                                   (515, 70, 19), (5, 8257, 33), (1, 16447, 16)])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
@pytest.mark.parametrize("parallel", [False, True])
def test_xnor_gemm_simd_matches_integer_dot(m, k, n, dtype, parallel):
    # k = 2000 and 2500 pass 31 words, where the byte counters are folded mid-row; k =
    # 8257 and 16447 pass one and two blocks of K (xnor.KB_WORDS words); m = 515 passes
    # two blocks of rows (xnor.MB_ROWS) and ends on an odd row.
    assert 8257 > 64 * xnor.KB_WORDS and 515 > 2 * xnor.MB_ROWS
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    abits = packing.pack_rows_ref(a)
    bt = np.ascontiguousarray(packing.pack_rows_ref(b.T).T)
    out = np.full((m, n), 7, dtype)
    K.xnor_gemm(abits, bt, k, out=out, parallel=parallel)
    np.testing.assert_array_equal(out, xnor.binary_dot_ref(a, b))


def test_xnor_gemm_rejects_other_output_types():
    with pytest.raises(ValueError, match="int32 or float32"):
        K.xnor_gemm(np.zeros((2, 1), np.uint64), np.zeros((1, 3), np.uint64), 5,
                    out=np.zeros((2, 3), np.int64))


# --------------------------------------------------------------------------- float GEMM


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (4, 16, 16), (13, 33, 17), (64, 576, 64),
                                   (64, 64, 576), (7, 300, 40)])
@pytest.mark.parametrize("trans_a", [False, True])
def test_matmul_matches_float64_product(m, k, n, trans_a, paths):
    rng = np.random.default_rng(m * k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    lhs = np.ascontiguousarray(a.T) if trans_a else a
    got = K.matmul(lhs, b, trans_a=trans_a)
    close(got, float_gemm.matmul_ref(lhs, b, trans_a=trans_a))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 3, 5, 7), (129,)])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_adam_update_matches_its_numpy_twin_bit_for_bit(shape, clip):
    rng = np.random.default_rng(len(shape))
    fast = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    fast[3] = np.abs(fast[3])  # v >= 0
    slow = [a.copy() for a in fast]
    for _ in range(3):
        g = rng.standard_normal(shape).astype(np.float32)
        K.adam_update(fast[0], g, fast[2], fast[3], 0.9, 0.999, 1e-2, 1e-7, clip)
        optimizer.adam_update_ref(slow[0], g, slow[2], slow[3], 0.9, 0.999, 1e-2, 1e-7, clip)
    for f, s in zip(fast, slow):
        np.testing.assert_array_equal(f, s)


def test_matmul_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="inner sizes"):
        K.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


# --------------------------------------------------------------------------- convolution

CONV_CASES = [
    # n, h, w, c, f, kh, kw, stride, padding
    (1, 5, 5, 1, 16, 3, 3, 1, "valid"),
    (2, 7, 6, 3, 5, 3, 3, 2, "same"),
    (1, 13, 13, 32, 64, 3, 3, 1, "valid"),
    (3, 9, 11, 65, 33, 3, 3, 2, "same"),
    (2, 8, 8, 64, 16, 3, 3, 1, "same"),
    (1, 6, 7, 13, 17, 2, 3, 2, "valid"),
    (4, 5, 5, 64, 64, 3, 3, 1, "valid"),
    (2, 4, 4, 5, 3, 1, 1, 1, "valid"),
    # 8 partial sums of 5 images; the dense dx product takes them 3 + 2 at a time
    (40, 12, 12, 16, 8, 3, 3, 1, "same"),
]


def _conv_case(case, seed, density):
    n, h, w, c, f, kh, kw, s, padding = case
    rng = np.random.default_rng(seed + h * w + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wk = rng.standard_normal((kh, kw, c, f)).astype(np.float32)
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    dz = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
    dz[rng.random(dz.shape) >= density] = 0.0
    return x, wk, dz, s, pt, pl


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
def test_conv_forward_direct_matches_reference(case, pad_value, paths):
    x, wk, dz, s, pt, pl = _conv_case(case, 0, 1.0)
    out = np.empty(dz.shape, np.float32)
    K.conv_forward_direct(x, wk, s, pt, pl, pad_value, out)
    close(out, conv.conv2d_ref(x, wk, s, case[-1], pad_value))


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("method", ["sparse", "dense", "auto"])
@pytest.mark.parametrize("density", [0.25, 1.0])
def test_conv_backward_matches_dense_reference(case, method, density, paths):
    x, wk, dz, s, pt, pl = _conv_case(case, 1, density)
    wt = np.ascontiguousarray(wk.transpose(3, 0, 1, 2))
    dw_ref, dx_ref = conv.conv_backward_ref(x, wk, dz, s, pt, pl)
    dwt = np.full(wt.shape, np.nan, np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    K.conv_backward(x, wt, dz, s, pt, pl, True, dwt, dx, method=method)
    close(dwt.transpose(1, 2, 3, 0), dw_ref)
    close(dx, dx_ref)


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[-1] == "same"])
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_conv_backward_with_signed_padding(case, pad_value, method, paths):
    # ±1 padding is a constant input: it adds to dw, and dx stays inside the image.
    x, wk, dz, s, pt, pl = _conv_case(case, 2, 0.3)
    wt = np.ascontiguousarray(wk.transpose(3, 0, 1, 2))
    dw_ref, dx_ref = conv.conv_backward_ref(x, wk, dz, s, pt, pl, pad_value)
    dwt = np.empty_like(wt)
    dx = np.empty_like(x)
    K.conv_backward(x, wt, dz, s, pt, pl, True, dwt, dx, pad_value=pad_value, method=method)
    close(dwt.transpose(1, 2, 3, 0), dw_ref)
    close(dx, dx_ref)


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[2], CONV_CASES[6]])
@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_conv_backward_fused_ste_gate(case, method, paths):
    x, wk, dz, s, pt, pl = _conv_case(case, 4, 0.3)
    wt = np.ascontiguousarray(wk.transpose(3, 0, 1, 2))
    gate = (1.5 * np.random.default_rng(9).standard_normal(x.shape)).astype(np.float32)
    dwt = np.empty_like(wt)
    dx = np.empty_like(x)
    K.conv_backward(x, wt, dz, s, pt, pl, True, dwt, dx, method=method, gate=gate, clip=0.8)
    dw_ref, dx_ref = conv.conv_backward_ref(x, wk, dz, s, pt, pl)
    close(dwt.transpose(1, 2, 3, 0), dw_ref)
    close(dx, sign.ste_gate_ref(gate, dx_ref, 0.8), scale=dx_ref)


def test_conv_backward_weight_gradient_only(paths):
    x, wk, dz, s, pt, pl = _conv_case(CONV_CASES[2], 3, 0.25)
    wt = np.ascontiguousarray(wk.transpose(3, 0, 1, 2))
    dwt = np.empty_like(wt)
    K.conv_backward(x, wt, dz, s, pt, pl, False, dwt, None)
    close(dwt.transpose(1, 2, 3, 0), conv.conv_backward_ref(x, wk, dz, s, pt, pl)[0])


def test_conv_backward_rejects_unknown_method():
    x, wk, dz, s, pt, pl = _conv_case(CONV_CASES[0], 0, 1.0)
    wt = np.ascontiguousarray(wk.transpose(3, 0, 1, 2))
    with pytest.raises(ValueError, match="method"):
        K.conv_backward(x, wt, dz, s, pt, pl, False, np.empty_like(wt), None, method="fft")


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("shape,p,s", [((1, 4, 4, 1), 2, 2), ((2, 26, 26, 32), 2, 2),
                                       ((3, 11, 11, 7), 2, 2), ((1, 9, 7, 3), 3, 2),
                                       ((2, 9, 10, 5), 3, 3), ((1, 5, 5, 9), 2, 1)])
def test_maxpool_matches_reference(shape, p, s, paths):
    rng = np.random.default_rng(sum(shape) + p)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = 5.0  # a tie: the first tap wins
    ho, wo = (shape[1] - p) // s + 1, (shape[2] - p) // s + 1
    out = np.empty((shape[0], ho, wo, shape[3]), np.float32)
    arg = np.empty(out.shape, np.int32)
    K.maxpool_forward(x, p, s, out, arg)
    ref, ref_arg = pooling.maxpool_ref(x, p, s)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    # Inference keeps no winning taps and pools the same.
    out2 = np.full_like(out, np.nan)
    K.maxpool_forward(x, p, s, out2)
    np.testing.assert_array_equal(out2, ref)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.full(shape, np.nan, np.float32)  # every element must be written
    K.maxpool_backward(dy, arg, p, s, dx)
    close(dx, pooling.maxpool_backward_ref(dy, arg, p, s, shape))


# --------------------------------------------------------------------------- elementwise


@pytest.mark.parametrize("size", [1, 7, 1000, 40001])
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_ste_gate_matches_reference(size, clip, paths):
    rng = np.random.default_rng(size)
    x = (2 * rng.standard_normal(size)).astype(np.float32)
    x[0] = clip  # the bound itself passes
    dy = rng.standard_normal(size).astype(np.float32)
    np.testing.assert_array_equal(K.ste_gate(x, dy, clip), sign.ste_gate_ref(x, dy, clip))


@pytest.mark.parametrize("m,c", [(1, 3), (7, 5), (64, 10), (10816, 32), (576, 64)])
def test_batchnorm_kernels_match_reference(m, c, paths):
    rng = np.random.default_rng(m + c)
    x2 = (rng.standard_normal((m, c)) * 4 + 30).astype(np.float32)  # far from zero
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    dy2 = rng.standard_normal((m, c)).astype(np.float32)
    y_r, xhat_r, mean_r, var_r, dx_r, dg_r, db_r = batchnorm.batchnorm_train_ref(x2, gamma, beta, 1e-3, dy2)
    y, mean, var, mean32, inv = K.bn_forward_train(x2, gamma, beta, 1e-3)
    close(mean, mean_r, 1e-9)
    close(var, var_r, 1e-7)
    close((x2 - mean32) * inv, xhat_r)
    close(y, y_r)
    dx, db, dg = K.bn_backward_train(dy2, x2, mean32, inv, gamma)
    # dx is a difference of terms of size dy * gamma * inv (it is 0 for a batch of one),
    # so its rounding error is relative to those.
    close(dx, dx_r, 2e-5, scale=dy2 * gamma * inv)
    close(db, db_r)
    close(dg, dg_r)


# --------------------------------------------------------------------------- layers


def _ste_oracle_conv(layer, x, dz):
    """Forward and STE gradients of a binary QuantConv2D from the reference twins."""
    w = layer.kernel.value
    kh, kw = layer.kernel_size
    xq, wq = sign.sign_ref(x), sign.sign_ref(w)
    z = conv.conv2d_ref(xq, wq, layer.strides, layer.padding, layer.pad_values)
    dwq, dxq = conv.conv_backward_ref(xq, wq, dz, layer.strides, layer._pt, layer._pl,
                                   layer.pad_values)
    return z, sign.ste_gate_ref(w, dwq, 1.0), sign.ste_gate_ref(x, dxq, 1.0)


@pytest.mark.parametrize("padding,pad_values,stride", [("valid", 0.0, 1), ("same", 0.0, 1),
                                                       ("same", 1.0, 2), ("same", -1.0, 1),
                                                       ("same", 0.0, 2)])
@pytest.mark.parametrize("c,f", [(3, 5), (32, 16)])
def test_quant_conv_fast_path_matches_ste_oracle(padding, pad_values, stride, c, f, paths):
    rng = np.random.default_rng(c + f + stride)
    layer = QuantConv2D(f, 3, strides=stride, padding=padding, pad_values=pad_values,
                        input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)
    layer.build((7, 9, c), rng)
    x = (1.5 * rng.standard_normal((2, 7, 9, c))).astype(np.float32)
    z = layer.forward(x, training=True)
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dz[rng.random(dz.shape) < 0.7] = 0.0
    dx = layer.backward(dz)
    z_ref, dw_ref, dx_ref = _ste_oracle_conv(layer, x, dz)
    np.testing.assert_array_equal(z, z_ref)  # ±1 products: exact integers
    close(layer.kernel.grad, dw_ref)
    close(dx, dx_ref)


def test_quant_dense_fast_path_matches_ste_oracle(paths):
    rng = np.random.default_rng(5)
    layer = QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)
    layer.build((77,), rng)
    x = (1.5 * rng.standard_normal((3, 77))).astype(np.float32)
    z = layer.forward(x, training=True)
    w = layer.kernel.value
    np.testing.assert_array_equal(z, sign.sign_ref(x) @ sign.sign_ref(w))
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dx = layer.backward(dz)
    close(layer.kernel.grad, sign.ste_gate_ref(w, sign.sign_ref(x).T.astype(np.float64) @ dz, 1.0))
    close(dx, sign.ste_gate_ref(x, dz.astype(np.float64) @ sign.sign_ref(w).T, 1.0))


def _finite_difference_check(layer, in_shape, rng, n=10, eps=1e-2, tol=2e-2):
    # Float32 throughout; only the scalar loss is summed in float64.
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    weights = rng.standard_normal((2, *layer.output_shape)).astype(np.float32)

    def loss():
        return float(np.sum(layer.forward(x, training=True).astype(np.float64) * weights))

    for target in [x] + [p.value for p in layer.params()]:
        layer.forward(x, training=True)
        dx = layer.backward(weights.copy())
        grads = {id(x): dx, **{id(p.value): p.grad.copy() for p in layer.params()}}
        analytic = grads[id(target)]
        for _ in range(n):
            i = tuple(rng.integers(0, s) for s in target.shape)
            old = target[i]
            target[i] = old + eps
            fp = loss()
            target[i] = old - eps
            fm = loss()
            target[i] = old
            np.testing.assert_allclose(analytic[i], (fp - fm) / (2 * eps), rtol=tol, atol=tol)


@pytest.mark.parametrize("make,in_shape", [
    (lambda: Conv2D(4, 3, padding="same", strides=2, pad_values=-1.0), (7, 6, 3)),
    (lambda: Conv2D(4, 3, padding="same", pad_values=1.0), (5, 5, 2)),
    (lambda: Conv2D(3, 2, padding="valid", strides=2), (7, 7, 20)),
    (lambda: BatchNorm(), (3, 3, 5)),
])
def test_float_layers_match_finite_differences(make, in_shape, paths):
    layer = make()
    layer.build(in_shape, np.random.default_rng(0))
    layer.need_input_grad = True
    _finite_difference_check(layer, in_shape, np.random.default_rng(1))


def test_batchnorm_layer_matches_reference():
    rng = np.random.default_rng(2)
    bn = BatchNorm(momentum=0.9)
    bn.build((4, 4, 6), rng)
    bn.gamma.value[:] = rng.uniform(0.5, 2, 6)
    bn.beta.value[:] = rng.standard_normal(6)
    x = (rng.standard_normal((3, 4, 4, 6)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = bn.forward(x, training=True)
    dx = bn.backward(dy)
    y_r, _, mean_r, var_r, dx_r, dg_r, db_r = batchnorm.batchnorm_train_ref(
        x.reshape(-1, 6), bn.gamma.value, bn.beta.value, bn.epsilon, dy.reshape(-1, 6))
    close(y.reshape(-1, 6), y_r)
    close(dx.reshape(-1, 6), dx_r, 2e-5)
    close(bn.gamma.grad, dg_r)
    close(bn.beta.grad, db_r)
    close(bn.moving_mean, 0.1 * mean_r)
    close(bn.moving_variance, 0.9 + 0.1 * var_r * 48 / 47)  # 4-D: unbiased, as Keras 2


def test_maxpool_layer_overwrites_its_gradient():
    rng = np.random.default_rng(3)
    layer = MaxPool2D(2)
    layer.build((5, 7, 3), rng)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    out = layer.forward(x, training=True)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    close(layer.backward(dy), pooling.maxpool_backward_ref(dy, layer._arg, 2, 2, x.shape))


# --------------------------------------------------------------------------- caching


def test_every_cached_kernel_was_saved_to_the_cache():
    # A parallel function that reaches a ctypes pointer (e.g. nb.get_num_threads()) or a
    # closure cannot be cached: Numba only warns, and every process compiles it again.
    K.warm_up()
    unsaved = []
    modules = [importlib.import_module(f"bnnlab.core.kernels.{m.name}")
               for m in pkgutil.iter_modules(K.__path__)]
    assert len(modules) >= 8
    for mod in modules:
        for name in dir(mod):
            f = getattr(mod, name)
            if not isinstance(f, nb.core.registry.CPUDispatcher) or not f.signatures:
                continue
            if not f.targetoptions.get("cache") or f.targetoptions.get("inline") == "always":
                continue
            if not os.path.exists(f._cache._cache_file._index_path):
                unsaved.append(f"{mod.__name__}.{name}")
    assert not unsaved, f"not in Numba's cache: {unsaved}"


def _module_globals():
    """Every plain value bound in a kernel module (not functions, classes, modules)."""
    out = {}
    for m in pkgutil.iter_modules(K.__path__):
        mod = importlib.import_module(f"bnnlab.core.kernels.{m.name}")
        for name, v in vars(mod).items():
            if isinstance(v, (int, float, str, bool, tuple, type(None))):
                out[f"{m.name}.{name}"] = v
            elif isinstance(v, threads.ContentionSampler):
                out[f"{m.name}.{name}"] = id(v)
    return out


def test_warm_up_changes_no_module_global(monkeypatch):
    before = _module_globals()
    env = dict(os.environ)
    K.warm_up()
    assert _module_globals() == before
    assert dict(os.environ) == env


def test_importing_the_kernels_tunes_nothing_until_an_entry_point_asks(tmp_path):
    code = ("import os, json; import bnnlab.core.kernels as K; from bnnlab.core.kernels import threads; "
            "a = (os.environ.get('GOMP_SPINCOUNT'), threads.contention is None); "
            "done = K.tune_process(); "
            "b = (os.environ.get('GOMP_SPINCOUNT'), threads.contention is None); "
            "print(json.dumps([a, b, done]))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "BNNLAB_KEEP_MALLOC")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == [None, True]
    assert after == [threads.GOMP_SPINCOUNT, False]
    assert done["contention_sampling"] is True
    assert done["malloc"] is sys.platform.startswith("linux")


class _Load:
    def __init__(self, busy):
        self.busy = busy

    def check(self):
        return self.busy


def test_contention_makes_kernels_serial(monkeypatch):
    monkeypatch.setattr(threads, "contention", _Load(True))
    assert threads.chunks(64, 1 << 30) == 1
    assert threads.chunks(64, 1 << 30, 2) == 2  # an explicit request wins
    monkeypatch.setattr(threads, "contention", _Load(False))
    assert threads.chunks(64, 1 << 30) == min(64, nb.get_num_threads())
    assert threads.chunks(64, 10) == 1  # too little work to split
    assert threads.chunks(64, 10, 3) == 3
    assert threads.chunks(2, 1 << 30, 3) == 2  # never more chunks than items
    monkeypatch.setattr(threads, "contention", None)  # not sampling: threads by size only
    assert threads.chunks(64, 1 << 30) == min(64, nb.get_num_threads())


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")
def test_contention_sampler_reads_the_machine():
    # The machine's busy time includes this process's own: spinning here must raise it by at
    # least what we spun. (No upper bound here: a hypervisor's steal time is accounted in
    # lumps; the next test checks which columns count, on known numbers.)
    probe = threads.ContentionSampler()
    t0, busy0, ours0 = probe._sample()
    while os.times().user + os.times().system - ours0 < 0.3:
        pass
    t1, busy1, ours1 = probe._sample()
    tick = 2.0 / probe._hz
    assert ours1 - ours0 >= 0.3
    assert busy1 - busy0 >= (ours1 - ours0) - tick
    assert t1 > t0


def test_contention_is_others_cpu_time_over_the_threshold(monkeypatch):
    # /proc/stat columns: user nice system idle iowait irq softirq steal; hz = 100.
    clock = {"t": 100.0, "busy": [1000, 0, 0, 0, 0, 0, 0, 0], "idle": 5000, "ours": 1.0}

    def fake_open(path, mode="r"):
        assert path == "/proc/stat"
        b = clock["busy"]
        line = f"cpu  {b[0]} {b[1]} {b[2]} {clock['idle']} 0 {b[5]} {b[6]} {b[7]} 0 0\n"
        return io.BytesIO(line.encode())

    monkeypatch.setattr(threads, "open", fake_open, raising=False)
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.os, "times", lambda: os.times_result((clock["ours"], 0, 0, 0, 0)))
    probe = threads.ContentionSampler()
    probe._hz = 100
    assert probe.check() is False  # first sample: nothing to compare yet

    def advance(seconds, busy_ticks, ours, idle_ticks=1000, column=0):
        clock["t"] += seconds
        clock["busy"][column] += busy_ticks
        clock["idle"] += idle_ticks  # idle time never counts, however large
        clock["ours"] += ours
        return probe.check()

    assert advance(0.1, 500, 0.0) is False  # within the 0.25 s period: no new sample
    clock["busy"][0] -= 500
    assert advance(0.9, 150, 0.9) is True  # others: 1.5 - 0.9 = 0.6 cores > 0.5
    assert advance(1.0, 130, 0.9) is False  # others: 0.4 cores
    assert advance(1.0, 160, 0.0, column=7) is True  # hypervisor steal counts as others
    assert advance(1.0, 100, 0.95, idle_ticks=10**6) is False


def test_keep_serial_keeps_kernels_of_that_thread_on_one_thread():
    import threading

    from bnnlab.core.kernels import threads as T

    big = 1 << 30
    seen = {}

    def helper():
        T.keep_serial()
        seen["default"] = T.chunks(100, big)
        seen["asked"] = T.chunks(100, big, threads=2)

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen == {"default": 1, "asked": 2}  # a call that asks for threads still gets them
    if not T.contended() and T.nb.get_num_threads() > 1:
        assert T.chunks(100, big) > 1  # other threads are not affected


def test_the_windows_background_workers_keep_kernels_serial(qtbot):
    from bnnlab.core.kernels import threads as T
    from bnnlab.gui.views.background import LatestOnly

    worker = LatestOnly()
    got = []
    worker.finished.connect(lambda key, result: got.append(result))
    worker.submit("k", lambda: T.chunks(100, 1 << 30))
    qtbot.waitUntil(lambda: bool(got), timeout=30_000)
    worker.close()
    assert got == [1]
