"""Batch norm on (M, C) float32 matrices: training forward and backward, and the
per-channel ``x * a + b`` of inference, with the NumPy twin of training mode.

Column statistics of an (M, C) matrix, accumulated in float64 per chunk of rows: the
row loop is outside, the channel loop inside, so it vectorizes over channels. The
statistics are shifted by the first row and summed in one pass: with float64 sums of
(x - x[0]) and its square the variance keeps full float32 accuracy unless the spread is
some 1e-5 of the distance to x[0], and the data is read once instead of twice.

Sums over the rows are split into :data:`~.threads.REDUCE_PARTS` partial sums added in
a fixed order, so the bits do not depend on the thread count. ``threads`` in the
wrappers: see :func:`~.threads.chunks`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT, JIT_FLOAT, JIT_PAR

__all__ = ["bn_forward_train", "bn_backward_train", "scale_shift", "batchnorm_train_ref"]


@nb.njit(**JIT_FLOAT)
def _col_sums(xs, shift, s):
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            d = np.float64(xs[i, cc]) - shift[cc]
            s[0, cc] += d
            s[1, cc] += d * d


@nb.njit(**JIT_FLOAT)
def _col_sums_parts(x2, shift, s, p0, p1):
    # Partial sum p (of s.shape[0]) covers the p-th block of rows.
    m = x2.shape[0]
    per = (m + s.shape[0] - 1) // s.shape[0]
    for p in range(p0, p1):
        _col_sums(x2[min(m, p * per):min(m, p * per + per)], shift, s[p])


@nb.njit(**JIT_PAR)
def _col_sums_par(x2, shift, s, nch):
    # Only the prange loop here: in a parallel function, array expressions (even `s[:] =
    # 0` or `.sum()`) become parallel regions of their own.
    nparts = s.shape[0]
    for ch in nb.prange(nch):
        _col_sums_parts(x2, shift, s, ch * nparts // nch, (ch + 1) * nparts // nch)


# xhat = (x - mean) * inv is recomputed where it is needed (here and in backward) with
# the same float32 operations, rather than stored: that saves writing and reading back a
# full-size array in every step.


@nb.njit(**JIT_FLOAT)
def _bn_normalize_rows(xs, mean, inv, scale, offset, ys):
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            ys[i, cc] = ((xs[i, cc] - mean[cc]) * inv[cc]) * scale[cc] + offset[cc]


@nb.njit(**JIT_PAR)
def _bn_normalize_par(x2, mean, inv, scale, offset, y, nch):
    m = x2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _bn_normalize_rows(x2[i0:i1], mean, inv, scale, offset, y[i0:i1])


@nb.njit(**JIT)
def _scale_shift_rows(xs, a, b, ys):
    # No fastmath: x * a and + b each round to float32, never fused into one FMA, so
    # inference matches the folded thresholds of the exported model.
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            ys[i, cc] = xs[i, cc] * a[cc] + b[cc]


@nb.njit(parallel=True, **JIT)
def _scale_shift_par(x2, a, b, y, nch):
    m = x2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _scale_shift_rows(x2[i0:i1], a, b, y[i0:i1])


def scale_shift(x2: np.ndarray, a: np.ndarray, b: np.ndarray, threads=None) -> np.ndarray:
    """Per-channel ``x * a + b`` of an (M, C) float32 array (inference batch norm)."""
    x2 = np.ascontiguousarray(x2, dtype=np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    y = np.empty_like(x2)
    nch = _threads.chunks(x2.shape[0], x2.size, threads)
    if nch == 1:
        _scale_shift_rows(x2, a, b, y)
    else:
        _scale_shift_par(x2, a, b, y, nch)
    return y


@nb.njit(**JIT_FLOAT)
def _col_dot_sums(a, xs, mean, inv, s):
    # Column sums of a and of a * xhat, xhat = (xs - mean) * inv.
    for i in range(a.shape[0]):
        for cc in range(a.shape[1]):
            v = np.float64(a[i, cc])
            s[0, cc] += v
            s[1, cc] += v * ((xs[i, cc] - mean[cc]) * inv[cc])


@nb.njit(**JIT_FLOAT)
def _col_dot_sums_parts(dy2, x2, mean, inv, s, p0, p1):
    m = dy2.shape[0]
    per = (m + s.shape[0] - 1) // s.shape[0]
    for p in range(p0, p1):
        i0 = min(m, p * per)
        i1 = min(m, i0 + per)
        _col_dot_sums(dy2[i0:i1], x2[i0:i1], mean, inv, s[p])


@nb.njit(**JIT_PAR)
def _col_dot_sums_par(dy2, x2, mean, inv, s, nch):
    nparts = s.shape[0]
    for ch in nb.prange(nch):
        _col_dot_sums_parts(dy2, x2, mean, inv, s, ch * nparts // nch, (ch + 1) * nparts // nch)


@nb.njit(**JIT)
def _bn_dx_rows(dys, xs, mean, g, md, mdx, inv, os_):
    # In the textbook order, so that e.g. a batch of one gives zero up to rounding.
    for i in range(dys.shape[0]):
        for cc in range(dys.shape[1]):
            xh = (xs[i, cc] - mean[cc]) * inv[cc]
            os_[i, cc] = (dys[i, cc] * g[cc] - md[cc] - xh * mdx[cc]) * inv[cc]


@nb.njit(parallel=True, **JIT)
def _bn_dx_par(dy2, x2, mean, g, md, mdx, inv, out, nch):
    m = dy2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _bn_dx_rows(dy2[i0:i1], x2[i0:i1], mean, g, md, mdx, inv, out[i0:i1])


@nb.njit(**JIT_FLOAT)
def _bn_train_forward(x2, scale, offset, eps, nparts, nch, y, mean, var, mean32, inv):
    # One call for the whole training-mode forward: statistics (shifted by row 0, in
    # float64, as `nparts` partial sums), then y. mean32 and inv are the float32 values
    # that define xhat.
    m, c = x2.shape
    shift = np.empty(c, np.float64)
    for cc in range(c):
        shift[cc] = x2[0, cc]
    s = np.zeros((nparts, 2, c), np.float64)
    if nch == 1:
        _col_sums_parts(x2, shift, s, 0, nparts)
    else:
        _col_sums_par(x2, shift, s, nch)
    for cc in range(c):
        s0 = 0.0
        s1 = 0.0
        for ch in range(nparts):
            s0 += s[ch, 0, cc]
            s1 += s[ch, 1, cc]
        d = s0 / m
        mean[cc] = shift[cc] + d
        var[cc] = max(s1 / m - d * d, 0.0)
        mean32[cc] = np.float32(mean[cc])
        inv[cc] = np.float32(1) / np.sqrt(np.float32(var[cc]) + eps)
    if nch == 1:
        _bn_normalize_rows(x2, mean32, inv, scale, offset, y)
    else:
        _bn_normalize_par(x2, mean32, inv, scale, offset, y, nch)


def bn_forward_train(x2, scale, offset, eps, threads=None):
    """Batch-norm training forward of x2 (M, C) float32 with per-column scale and offset.

    Returns (y, mean, var, mean32, inv): y = xhat * scale + offset with xhat = (x2 -
    mean32) * inv (float32); mean and biased var are float64 (sums shifted by the first
    row); mean32 is mean as float32 and inv = 1 / sqrt(var + eps) in float32.
    """
    m, c = x2.shape
    y = np.empty((m, c), np.float32)
    mean = np.empty(c, np.float64)
    var = np.empty(c, np.float64)
    mean32 = np.empty(c, np.float32)
    inv = np.empty(c, np.float32)
    nparts = _threads.reduce_parts(m)
    _bn_train_forward(x2, scale, offset, np.float32(eps), nparts,
                      min(nparts, _threads.chunks(m, x2.size, threads)), y, mean, var, mean32, inv)
    return y, mean, var, mean32, inv


@nb.njit(**JIT_FLOAT)
def _bn_train_backward(dy2, x2, mean32, inv, gamma, nparts, nch, dx, sums):
    # dx = (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma*xhat)) * inv; sums receives
    # sum(dy) and sum(dy * xhat), accumulated in float64 as `nparts` partial sums.
    m, c = dy2.shape
    s = np.zeros((nparts, 2, c), np.float64)
    if nch == 1:
        _col_dot_sums_parts(dy2, x2, mean32, inv, s, 0, nparts)
    else:
        _col_dot_sums_par(dy2, x2, mean32, inv, s, nch)
    md = np.empty(c, np.float32)
    mdx = np.empty(c, np.float32)
    for cc in range(c):
        sdy = 0.0
        sdyx = 0.0
        for ch in range(nparts):
            sdy += s[ch, 0, cc]
            sdyx += s[ch, 1, cc]
        sums[0, cc] = sdy
        sums[1, cc] = sdyx
        md[cc] = np.float64(gamma[cc]) * sdy / m
        mdx[cc] = np.float64(gamma[cc]) * sdyx / m
    if nch == 1:
        _bn_dx_rows(dy2, x2, mean32, gamma, md, mdx, inv, dx)
    else:
        _bn_dx_par(dy2, x2, mean32, gamma, md, mdx, inv, dx, nch)


def bn_backward_train(dy2, x2, mean32, inv, gamma, threads=None):
    """Batch-norm training backward from the forward's input and statistics.

    Returns (dx, sum(dy), sum(dy * xhat)); xhat = (x2 - mean32) * inv as in forward.
    """
    m, c = dy2.shape
    dx = np.empty((m, c), np.float32)
    sums = np.empty((2, c), np.float64)
    nparts = _threads.reduce_parts(m)
    _bn_train_backward(dy2, x2, mean32, inv, gamma, nparts,
                       min(nparts, _threads.chunks(m, dy2.size, threads)), dx, sums)
    return dx, sums[0], sums[1]


# --------------------------------------------------------------------------- twins


def batchnorm_train_ref(x2, gamma, beta, eps, dy2):
    """Training-mode batch norm of (M, C), float64: (y, xhat, mean, var, dx, dgamma, dbeta)."""
    x2 = x2.astype(np.float64)
    mean = x2.mean(axis=0)
    var = x2.var(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x2 - mean) * inv
    y = xhat * gamma + beta
    dy2 = dy2.astype(np.float64)
    dxhat = dy2 * gamma
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * inv
    return y, xhat, mean, var, dx, (dy2 * xhat).sum(axis=0), dy2.sum(axis=0)
