"""Every Numba kernel against its slow NumPy twin, on random and awkward shapes."""

import numpy as np
import pytest

from bnnlab.core import kernels as K
from bnnlab.core.kernels import conv, packing, pooling, xnor
from bnnlab.core.shapes import conv_output_size

KS = [1, 7, 63, 64, 65, 127, 128, 129, 288, 576, 1000]


@pytest.mark.parametrize("k", KS)
def test_pack_rows_matches_numpy_packbits(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[0, : min(k, 3)] = 0.0  # zero maps to +1, i.e. bit 0
    out = np.empty((5, K.words_for(k)), np.uint64)
    K.pack_rows(x, out)
    np.testing.assert_array_equal(out, packing.pack_rows_ref(x))
    np.testing.assert_array_equal(packing.unpack_rows_ref(out, k), np.where(x >= 0, 1, -1))


def test_bit_convention_lsb_first_one_means_minus_one():
    x = np.ones((1, 70), np.float32)
    x[0, 0] = -1
    x[0, 65] = -1
    out = np.empty((1, 2), np.uint64)
    K.pack_rows(x, out)
    assert out[0, 0] == 1 and out[0, 1] == 2


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 64, 3), (7, 65, 5), (33, 288, 64), (64, 576, 10),
                                   (513, 100, 17), (600, 129, 70)])
@pytest.mark.parametrize("parallel", [False, True])
def test_xnor_gemm_equals_integer_dot(m, k, n, parallel):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    abits = packing.pack_rows_ref(a)
    bbits = packing.pack_rows_ref(b.T)
    got = K.xnor_gemm(abits, np.ascontiguousarray(bbits.T), k, parallel=parallel)
    np.testing.assert_array_equal(got, xnor.binary_dot_ref(a, b))
    np.testing.assert_array_equal(got, xnor.xnor_gemm_ref(abits, bbits, k))
    np.testing.assert_array_equal(K.pack_weights(np.where(b >= 0, 1.0, -1.0).astype(np.float32)),
                                  np.ascontiguousarray(bbits.T))


def test_xnor_gemm_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="packed widths"):
        K.xnor_gemm(np.zeros((2, 2), np.uint64), np.zeros((3, 4), np.uint64), 100)


CONV_CASES = [
    # n, h, w, c, kh, kw, stride, padding
    (1, 5, 5, 1, 3, 3, 1, "valid"),
    (2, 7, 6, 3, 3, 3, 1, "same"),
    (1, 13, 13, 32, 3, 3, 1, "valid"),
    (3, 9, 11, 65, 3, 3, 2, "same"),
    (2, 8, 8, 64, 3, 3, 1, "same"),
    (1, 6, 7, 130, 2, 3, 2, "valid"),
    (1, 4, 4, 5, 1, 1, 1, "valid"),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("pad_bit", [0, 1])
def test_pack_conv_input_matches_im2col(case, pad_bit):
    n, h, w, c, kh, kw, s, padding = case
    rng = np.random.default_rng(h * w + c)
    x = np.where(rng.standard_normal((n, h, w, c)) >= 0, 1.0, -1.0).astype(np.float32)
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    got = K.pack_conv_input(x, kh, kw, s, (pt, pl), (ho, wo), pad_bit)
    cols = conv.im2col_ref(x, kh, kw, s, padding, pad_value=-1.0 if pad_bit else 1.0)
    np.testing.assert_array_equal(got, packing.pack_rows_ref(cols))


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_and_col2im(case):
    n, h, w, c, kh, kw, s, padding = case
    rng = np.random.default_rng(1 + h * w + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    cols = np.empty((n * ho * wo, kh * kw * c), np.float32)
    K.im2col(x, kh, kw, s, pt, pl, ho, wo, np.float32(0.5), cols)
    np.testing.assert_array_equal(cols, conv.im2col_ref(x, kh, kw, s, padding, 0.5))
    # col2im is the adjoint of im2col (with zero padding): <im2col(x), g> == <x, col2im(g)>
    g = rng.standard_normal(cols.shape).astype(np.float32)
    back = np.empty_like(x)
    K.col2im(g, n, h, w, c, kh, kw, s, pt, pl, ho, wo, back)
    K.im2col(x, kh, kw, s, pt, pl, ho, wo, np.float32(0.0), cols)
    np.testing.assert_allclose(np.sum(cols.astype(np.float64) * g), np.sum(x.astype(np.float64) * back),
                               rtol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_direct_matches_reference(case):
    n, h, w, c, kh, kw, s, padding = case
    rng = np.random.default_rng(2 + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((kh, kw, c, 6)).astype(np.float32)
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    out = np.empty((n, ho, wo, 6), np.float32)
    K.conv_forward_direct(x, wt, s, pt, pl, 0.0, out)
    np.testing.assert_allclose(out, conv.conv2d_ref(x, wt, s, padding), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_backward_matches_dense_products(case):
    n, h, w, c, kh, kw, s, padding = case
    rng = np.random.default_rng(3 + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wk = rng.standard_normal((kh, kw, c, 5)).astype(np.float32)
    ho, pt = conv_output_size(h, kh, s, padding)
    wo, pl = conv_output_size(w, kw, s, padding)
    dz = rng.standard_normal((n, ho, wo, 5)).astype(np.float32)
    dz[rng.random(dz.shape) < 0.6] = 0.0  # sparse, as after max pooling
    dwt = np.empty((5, kh, kw, c), np.float32)
    dx = np.empty_like(x)
    K.conv_backward(x, np.ascontiguousarray(wk.transpose(3, 0, 1, 2)), dz, s, pt, pl, True, dwt, dx)
    cols = conv.im2col_ref(x, kh, kw, s, padding, 0.0).astype(np.float64)
    dz2 = dz.reshape(-1, 5).astype(np.float64)
    dw_ref = (cols.T @ dz2).reshape(kh, kw, c, 5)
    np.testing.assert_allclose(dwt.transpose(1, 2, 3, 0), dw_ref, rtol=1e-4, atol=1e-4)
    # dx by the adjoint identity: <conv(x'), dz> is linear in x' with gradient dx
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    lhs = np.sum(conv.conv2d_ref(x2, wk, s, padding) * dz)
    np.testing.assert_allclose(lhs, np.sum(x2.astype(np.float64) * dx), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape,p,s", [((1, 4, 4, 1), 2, 2), ((2, 26, 26, 32), 2, 2),
                                       ((3, 11, 11, 7), 2, 2), ((1, 9, 7, 3), 3, 2)])
def test_maxpool_forward_backward(shape, p, s):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    ho, wo = (shape[1] - p) // s + 1, (shape[2] - p) // s + 1
    out = np.empty((shape[0], ho, wo, shape[3]), np.float32)
    arg = np.empty(out.shape, np.int32)
    K.maxpool_forward(x, p, s, out, arg)
    ref, ref_arg = pooling.maxpool_ref(x, p, s)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.empty_like(x)
    K.maxpool_backward(dy, arg, p, s, dx)
    # Gradient of sum(maxpool(x) * dy): each dy lands on its window's argmax.
    dx_ref = np.zeros_like(x)
    for i in np.ndindex(out.shape):
        t = arg[i]
        dx_ref[i[0], i[1] * s + t // p, i[2] * s + t % p, i[3]] += dy[i]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6)


def test_warm_up_reports_progress():
    seen = []
    K.warm_up(lambda i, n: seen.append((i, n)))
    assert seen and seen[-1][0] == seen[-1][1]


def test_warm_up_child_compiles_its_share_and_reports_each_kernel():
    import subprocess
    import sys

    from bnnlab.core.kernels import warmup

    parts = len(warmup._steps())  # share 1 of that many: exactly one kernel
    proc = subprocess.run([sys.executable, "-m", "bnnlab.core.kernels.warmup", "1", str(parts)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["done"]


def test_compile_in_children_stops_them_when_cancelled():
    from bnnlab.core.kernels import warmup

    assert warmup.compile_in_children(processes=2, cancelled=lambda: True) is False
    assert not warmup._children  # killed and reaped, none left running


def test_prepare_kernels_uses_children_only_on_a_cold_cache(monkeypatch):
    import time

    from bnnlab.core.kernels import warmup

    calls = []
    monkeypatch.setattr(warmup, "compile_in_children", lambda *a, **k: calls.append(1) or True)
    for delay, expect in ((0.0, False), (warmup.CACHED_SECONDS + 0.2, True)):
        calls.clear()
        steps = [lambda: time.sleep(delay), lambda: None, lambda: None]
        monkeypatch.setattr(warmup, "_steps", lambda steps=steps: steps)
        seen = []
        assert warmup.prepare_kernels(lambda d, n: seen.append((d, n))) is expect
        assert bool(calls) is expect
        assert seen[-1] == (4, 4)
