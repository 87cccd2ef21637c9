"""Optimizer updates fused into one pass over the parameter arrays, with their twins."""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import JIT

__all__ = ["adam_update", "adam_update_ref"]


@nb.njit(**JIT)
def adam_update(w, g, m, v, b1, b2, lr_t, eps, clip):
    """One Adam step in Keras's form, in place and in one pass over float32 arrays:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr_t m / (sqrt(v) + eps)

    then, when ``clip`` > 0, w is clipped to [-clip, clip] (``weight_clip``). Each
    operation rounds to float32 in that order, as the NumPy expression does (no FMA).
    """
    w1 = w.reshape(-1)
    g1 = g.reshape(-1)
    m1 = m.reshape(-1)
    v1 = v.reshape(-1)
    b1f = np.float32(b1)
    b2f = np.float32(b2)
    c1 = np.float32(1.0 - b1)
    c2 = np.float32(1.0 - b2)
    lr = np.float32(lr_t)
    e = np.float32(eps)
    cl = np.float32(clip)
    for i in range(w1.shape[0]):
        gi = g1[i]
        mi = m1[i] * b1f + c1 * gi
        vi = v1[i] * b2f + c2 * (gi * gi)
        m1[i] = mi
        v1[i] = vi
        wi = w1[i] - lr * mi / (np.sqrt(vi) + e)
        if cl > 0:
            wi = min(max(wi, -cl), cl)
        w1[i] = wi


# --------------------------------------------------------------------------- twins


def adam_update_ref(w, g, m, v, b1, b2, lr_t, eps, clip):
    """:func:`adam_update` as NumPy float32 expressions, in place, in the same order."""
    f = np.float32
    m[...] = m * f(b1) + f(1.0 - b1) * g
    v[...] = v * f(b2) + f(1.0 - b2) * (g * g)
    w[...] = w - f(lr_t) * m / (np.sqrt(v) + f(eps))
    if clip > 0:
        w[...] = np.clip(w, -f(clip), f(clip))
