"""The sign binarizer's forward (+-1 values and packed bits in one pass) and its
straight-through gradient gate, with their NumPy twins. ``threads`` in the wrappers: see
:func:`~.threads.chunks`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT
from .packing import pack_rows_ref, words_for

__all__ = ["sign_pack", "signs_differ", "ste_gate", "ste_gate_rows", "sign_ref",
           "sign_pack_ref", "sign_bits_columns_ref", "ste_gate_ref"]


# No fastmath for the comparisons below: it lets LLVM assume there are no NaNs, and
# "not (x >= 0)" would then become "x < 0", turning NaN into +1.
@nb.njit(**JIT)
def _sign_pack_rows(xs, qs, bs):
    c = xs.shape[1]
    for i in range(xs.shape[0]):
        for wd in range(bs.shape[1]):
            base = wd * 64
            word = np.uint64(0)
            for b in range(min(64, c - base)):
                # "not >= 0" so that NaN, as in ``binarizers.sign``, becomes -1.
                neg = not (xs[i, base + b] >= 0)
                qs[i, base + b] = np.float32(-1) if neg else np.float32(1)
                word |= np.uint64(neg) << np.uint64(b)
            bs[i, wd] = word


@nb.njit(parallel=True, **JIT)
def _sign_pack_par(x2, xq2, bits, nch):
    p = x2.shape[0]
    per = (p + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(p, ch * per)
        i1 = min(p, i0 + per)
        _sign_pack_rows(x2[i0:i1], xq2[i0:i1], bits[i0:i1])


def sign_pack(x: np.ndarray, threads=None):
    """``binarizers.sign`` and ``pack_rows`` of the last axis in one pass.

    x: (..., C) float32. Returns (xq, bits): xq shaped like x, +1 where x >= 0 and -1
    elsewhere (NaN too); bits (prod(...), words_for(C)) uint64, bit 1 where xq is -1.
    """
    c = x.shape[-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, c)
    xq = np.empty(x.shape, np.float32)
    bits = np.empty((x2.shape[0], words_for(c)), np.uint64)
    nch = _threads.chunks(x2.shape[0], x2.size, threads)
    if nch == 1:
        _sign_pack_rows(x2, xq.reshape(-1, c), bits)
    else:
        _sign_pack_par(x2, xq.reshape(-1, c), bits, nch)
    return xq, bits


@nb.njit(**JIT)
def _signs_differ(w, bt):
    # The sign bits of w's columns, 64 rows at a time, against bt's words; the first
    # difference ends the search.
    k, n = w.shape
    acc = np.empty(n, np.uint64)
    for wd in range(bt.shape[0]):
        acc[:] = 0
        for r in range(wd * 64, min(k, wd * 64 + 64)):
            sh = np.uint64(r & 63)
            for j in range(n):
                acc[j] |= np.uint64(not (w[r, j] >= 0)) << sh
        for j in range(n):
            if acc[j] != bt[wd, j]:
                return True
    return False


def signs_differ(w: np.ndarray, bt: np.ndarray) -> bool:
    """Whether the sign bits of the columns of w (K, N) float32 differ from ``bt``, a
    (words_for(K), N) uint64 matrix in the layout of the GEMM's B (bit ``k % 64`` of
    ``bt[k // 64, j]`` is 1 where ``not w[k, j] >= 0``, NaN too, as :func:`sign_pack` of
    ``w.T``). Reads w once and writes nothing: cheap enough to ask on every call whether
    a weight matrix's bits changed."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or bt.shape != (words_for(w.shape[0]), w.shape[1]):
        return True
    return bool(_signs_differ(w, np.ascontiguousarray(bt, dtype=np.uint64)))


@nb.njit(**JIT)
def ste_gate_rows(xs, ds, clip, os_):
    # os_[i] = ds[i] where |xs[i]| <= clip, else 0 (flat float32 arrays).
    for i in range(xs.shape[0]):
        os_[i] = ds[i] * (np.float32(1) if abs(xs[i]) <= clip else np.float32(0))


@nb.njit(parallel=True, **JIT)
def _ste_gate_par(x, dy, clip, out, nch):
    m = x.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        ste_gate_rows(x[i0:i1], dy[i0:i1], clip, out[i0:i1])


def ste_gate(x: np.ndarray, dy: np.ndarray, clip: float, threads=None) -> np.ndarray:
    """``dy * (|x| <= clip)`` as float32: the straight-through gradient of ``ste_sign``."""
    x1 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    dy1 = np.ascontiguousarray(dy, dtype=np.float32).reshape(-1)
    if x1.shape != dy1.shape:
        raise ValueError(f"ste_gate: x has {x1.size} elements, dy {dy1.size}")
    out = np.empty(np.shape(dy), np.float32)
    nch = _threads.chunks(x1.shape[0], x1.shape[0], threads)
    if nch == 1:
        ste_gate_rows(x1, dy1, np.float32(clip), out.reshape(-1))
    else:
        _ste_gate_par(x1, dy1, np.float32(clip), out.reshape(-1), nch)
    return out


# --------------------------------------------------------------------------- twins


def sign_ref(x):
    """+1 where x >= 0, else -1 (NaN too), float32: ``binarizers.sign``."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def sign_pack_ref(x):
    """(sign(x), packed sign bits of the last axis), as :func:`sign_pack`."""
    xq = sign_ref(x)
    return xq, pack_rows_ref(xq.reshape(-1, xq.shape[-1]))


def sign_bits_columns_ref(w):
    """The packed signs of the columns of w, (words_for(K), N): what
    :func:`signs_differ` compares with; :func:`sign_pack` of ``w.T``, transposed."""
    return np.ascontiguousarray(sign_pack_ref(np.asarray(w, np.float32).T)[1].T)


def ste_gate_ref(x, dy, clip):
    """The ste_sign straight-through gradient dy * 1[|x| <= clip], float32."""
    return (np.asarray(dy, np.float32) * (np.abs(x) <= clip)).astype(np.float32)
