"""Max pooling ('valid' windows) forward with the winning tap, and its backward, with
their NumPy twins. ``threads`` in the wrappers: see :func:`~.threads.chunks`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT_FLOAT, JIT_PAR

__all__ = ["maxpool_forward", "maxpool_backward", "maxpool_ref", "maxpool_backward_ref"]


@nb.njit(**JIT_FLOAT)
def _maxpool_forward_rows(x2, q0, q1, h, w, p, s, ho, wo, out2, arg2):
    # Output rows q = (image, oy) in [q0, q1); x2/out2/arg2 are (pixels, C). A 2x2 window
    # reads its four taps in one channel loop, so the loop is entered once per pixel.
    # An empty arg2 (inference) keeps no winning taps: less memory to write.
    c = x2.shape[1]
    keep = arg2.shape[0] > 0
    for q in range(q0, q1):
        img = q // ho
        oy = q - img * ho
        for ox in range(wo):
            r = q * wo + ox
            b0 = (img * h + oy * s) * w + ox * s
            if p == 2:
                b1 = b0 + 1
                b2 = b0 + w
                b3 = b2 + 1
                for cc in range(c):
                    m = x2[b0, cc]
                    a = np.int32(0)
                    v = x2[b1, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(1) if t else a
                    v = x2[b2, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(2) if t else a
                    v = x2[b3, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(3) if t else a
                    out2[r, cc] = m
                    if keep:
                        arg2[r, cc] = a
            else:
                for cc in range(c):
                    out2[r, cc] = x2[b0, cc]
                    if keep:
                        arg2[r, cc] = 0
                for k in range(1, p * p):
                    src = b0 + (k // p) * w + k % p
                    kk = np.int32(k)
                    for cc in range(c):
                        v = x2[src, cc]
                        t = v > out2[r, cc]
                        out2[r, cc] = v if t else out2[r, cc]
                        if keep:
                            arg2[r, cc] = kk if t else arg2[r, cc]


@nb.njit(**JIT_PAR)
def _maxpool_forward_par(x2, n, h, w, p, s, ho, wo, out2, arg2, nch):
    rows = n * ho
    per = (rows + nch - 1) // nch
    for ch in nb.prange(nch):
        _maxpool_forward_rows(x2, min(rows, ch * per), min(rows, ch * per + per), h, w, p, s,
                              ho, wo, out2, arg2)


def maxpool_forward(x, p, s, out, arg=None, threads=None):
    """Max pooling, 'valid': x (N, H, W, C) float32 -> out (N, Ho, Wo, C) float32.

    arg (N, Ho, Wo, C) int32 receives the winning tap ``dy * p + dx``; ties go to the
    first tap in row-major order. Without arg (inference) no taps are kept.
    """
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    arg2 = np.empty((0, c), np.int32) if arg is None else arg.reshape(n * ho * wo, c)
    args = (x.reshape(n * h * w, c), n, h, w, p, s, ho, wo, out.reshape(n * ho * wo, c), arg2)
    nch = _threads.chunks(n * ho, x.size, threads)
    if nch == 1:
        _maxpool_forward_rows(args[0], 0, n * ho, *args[2:])
    else:
        _maxpool_forward_par(*args, nch)
    return out


@nb.njit(**JIT_FLOAT)
def _maxpool_backward_images(dy2, arg2, i0, i1, h, w, p, s, ho, wo, dx2):
    c = dy2.shape[1]
    if s == p:
        # The windows tile the input, so each input element is written exactly once (its
        # gradient or zero): no zeroing pass and no read-modify-write.
        for img in range(i0, i1):
            for oy in range(ho):
                for pr in range(p):
                    row = (img * h + oy * p + pr) * w
                    for ox in range(wo):
                        r = (img * ho + oy) * wo + ox
                        for pc in range(p):
                            t = np.int32(pr * p + pc)
                            b = row + ox * p + pc
                            for cc in range(c):
                                g = dy2[r, cc]
                                dx2[b, cc] = g if arg2[r, cc] == t else np.float32(0)
                    for b in range(row + wo * p, row + w):
                        for cc in range(c):
                            dx2[b, cc] = 0
            for b in range((img * h + ho * p) * w, (img + 1) * h * w):
                for cc in range(c):
                    dx2[b, cc] = 0
    else:
        for b in range(i0 * h * w, i1 * h * w):
            for cc in range(c):
                dx2[b, cc] = 0
        for img in range(i0, i1):
            for oy in range(ho):
                for ox in range(wo):
                    r = (img * ho + oy) * wo + ox
                    base = (img * h + oy * s) * w + ox * s
                    for cc in range(c):
                        t = arg2[r, cc]
                        dx2[base + (t // p) * w + t % p, cc] += dy2[r, cc]


@nb.njit(**JIT_PAR)
def _maxpool_backward_par(dy2, arg2, n, h, w, p, s, ho, wo, dx2, nch):
    per = (n + nch - 1) // nch
    for ch in nb.prange(nch):
        _maxpool_backward_images(dy2, arg2, min(n, ch * per), min(n, ch * per + per), h, w, p,
                                 s, ho, wo, dx2)


def maxpool_backward(dy, arg, p, s, dx, threads=None):
    """Route each pooled gradient to its winning input; dx (N, H, W, C) is overwritten."""
    n, ho, wo, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    dy2, arg2, dx2 = dy.reshape(n * ho * wo, c), arg.reshape(n * ho * wo, c), dx.reshape(-1, c)
    nch = _threads.chunks(n, dx.size, threads)
    if nch == 1:
        _maxpool_backward_images(dy2, arg2, 0, n, h, w, p, s, ho, wo, dx2)
    else:
        _maxpool_backward_par(dy2, arg2, n, h, w, p, s, ho, wo, dx2, nch)
    return dx


# --------------------------------------------------------------------------- twins


def maxpool_ref(x, p, s):
    """(pooled, winning tap dy * p + dx) of a 'valid' p x p max pooling with stride s."""
    n, h, w, c = x.shape
    ho, wo = (h - p) // s + 1, (w - p) // s + 1
    win = np.stack(
        [x[:, dy:dy + s * ho:s, dx:dx + s * wo:s, :] for dy in range(p) for dx in range(p)],
        axis=-1,
    )
    return win.max(axis=-1), win.argmax(axis=-1).astype(np.int8)


def maxpool_backward_ref(dy, arg, p, s, input_shape):
    """Each pooled gradient added to its window's winning input (zero elsewhere)."""
    dx = np.zeros(input_shape, np.float64)
    for i in np.ndindex(dy.shape):
        t = int(arg[i])
        dx[i[0], i[1] * s + t // p, i[2] * s + t % p, i[3]] += dy[i]
    return dx
