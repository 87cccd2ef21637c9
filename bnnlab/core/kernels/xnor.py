"""Binary GEMM: XOR of packed rows and population counts, with its NumPy twins.

``dot(a, w) = K - 2 * popcount(a ^ w)`` for ±1 vectors of true length K packed as in
:mod:`.packing` (padding bits are zero in both operands). Tiles of 2 rows x 16 columns
keep eight ``uint64x4`` accumulators in registers; see :mod:`.simd` for how the bits
are counted on this CPU.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT, JIT_INLINE
from .simd import (popcount64, uadd, ubytesum, uld, uload, usplat, ustore_dots, uxor_popadd,
                   uzero)

__all__ = ["xnor_gemm", "xnor_gemm_serial", "xnor_gemm_parallel", "xnor_gemm_ref",
           "binary_dot_ref"]


@nb.njit(**JIT_INLINE)
def _xnor_tile2x16(a, i0, i1, bt, j0, n, nw):
    # Bit counts of rows i0, i1 of a against columns j0..j0+15 of bt, as 8 lane vectors.
    t00 = uzero()
    t01 = uzero()
    t02 = uzero()
    t03 = uzero()
    t10 = uzero()
    t11 = uzero()
    t12 = uzero()
    t13 = uzero()
    for w0 in range(0, nw, 31):
        c00 = uzero()
        c01 = uzero()
        c02 = uzero()
        c03 = uzero()
        c10 = uzero()
        c11 = uzero()
        c12 = uzero()
        c13 = uzero()
        for w in range(w0, min(nw, w0 + 31)):
            p = w * n + j0
            b0 = uload(bt, p)
            b1 = uload(bt, p + 4)
            b2 = uload(bt, p + 8)
            b3 = uload(bt, p + 12)
            s = usplat(uld(a, i0 * nw + w))
            c00 = uxor_popadd(c00, s, b0)
            c01 = uxor_popadd(c01, s, b1)
            c02 = uxor_popadd(c02, s, b2)
            c03 = uxor_popadd(c03, s, b3)
            s = usplat(uld(a, i1 * nw + w))
            c10 = uxor_popadd(c10, s, b0)
            c11 = uxor_popadd(c11, s, b1)
            c12 = uxor_popadd(c12, s, b2)
            c13 = uxor_popadd(c13, s, b3)
        t00 = uadd(t00, ubytesum(c00))
        t01 = uadd(t01, ubytesum(c01))
        t02 = uadd(t02, ubytesum(c02))
        t03 = uadd(t03, ubytesum(c03))
        t10 = uadd(t10, ubytesum(c10))
        t11 = uadd(t11, ubytesum(c11))
        t12 = uadd(t12, ubytesum(c12))
        t13 = uadd(t13, ubytesum(c13))
    return t00, t01, t02, t03, t10, t11, t12, t13


@nb.njit(**JIT_INLINE)
def _put_dots(out, at, k, t0, t1, t2, t3):
    ustore_dots(out, at, t0, k)
    ustore_dots(out, at + 4, t1, k)
    ustore_dots(out, at + 8, t2, k)
    ustore_dots(out, at + 12, t3, k)


@nb.njit(**JIT)
def _xnor_gemm_simd_rows(a, bt, k, out, r0, r1):
    nw = bt.shape[0]
    n = bt.shape[1]
    n16 = n - n % 16
    a1 = a.reshape(-1)
    b1 = bt.reshape(-1)
    o1 = out.reshape(-1)
    for i in range(r0, r1, 2):
        i1 = min(i + 1, r1 - 1)  # an odd last row is computed twice, stored once
        for j0 in range(0, n16, 16):
            t00, t01, t02, t03, t10, t11, t12, t13 = _xnor_tile2x16(a1, i, i1, b1, j0, n, nw)
            _put_dots(o1, i * n + j0, k, t00, t01, t02, t03)
            if i1 != i:
                _put_dots(o1, i1 * n + j0, k, t10, t11, t12, t13)
        for j in range(n16, n):
            acc = 0
            for w in range(nw):
                acc += popcount64(a[i, w] ^ bt[w, j])
            out[i, j] = k - 2 * acc
            if i1 != i:
                acc = 0
                for w in range(nw):
                    acc += popcount64(a[i1, w] ^ bt[w, j])
                out[i1, j] = k - 2 * acc


@nb.njit(**JIT)
def xnor_gemm_serial(a, bt, k, out):
    """out[i, j] = K - 2 * popcount(a[i] ^ b[j]), the ±1 dot product of packed rows.

    a: (M, KW) uint64 packed rows; bt: (KW, N) uint64, packed B rows stored transposed
    (word-major) so that four output columns share one vector load; out: (M, N) int32
    (or float32, to feed float layers without a conversion pass).
    """
    _xnor_gemm_simd_rows(a, bt, k, out, 0, a.shape[0])
    return out


@nb.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def xnor_gemm_parallel(a, bt, k, out):
    """Same as :func:`xnor_gemm_serial`, rows split in equal blocks over threads."""
    # Fixed blocks of rows: asking Numba for the thread count inside a cached parallel
    # function would make it uncacheable (the call goes through a ctypes pointer).
    m = a.shape[0]
    for b in nb.prange((m + 63) // 64):
        _xnor_gemm_simd_rows(a, bt, k, out, b * 64, min(m, b * 64 + 64))
    return out


def xnor_gemm(a: np.ndarray, bt: np.ndarray, k: int, out: np.ndarray | None = None,
              parallel: bool | None = None) -> np.ndarray:
    """Binary GEMM on packed operands; see :func:`xnor_gemm_serial` for shapes."""
    if a.shape[1] != bt.shape[0]:
        raise ValueError(f"packed widths differ: A has {a.shape[1]} words, B has {bt.shape[0]}")
    if out is None:
        out = np.empty((a.shape[0], bt.shape[1]), np.int32)
    if out.dtype not in (np.int32, np.float32):
        raise ValueError(f"xnor_gemm writes int32 or float32, not {out.dtype}")
    a = np.ascontiguousarray(a, dtype=np.uint64)
    bt = np.ascontiguousarray(bt, dtype=np.uint64)
    if parallel is None:
        parallel = (a.shape[0] >= _threads.PARALLEL_MIN_ROWS and nb.get_num_threads() > 1
                    and not _threads.contended())
    if parallel:
        return xnor_gemm_parallel(a, bt, np.int64(k), out)
    return xnor_gemm_serial(a, bt, np.int64(k), out)


# --------------------------------------------------------------------------- twins


def binary_dot_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sign(a) @ sign(b) in integers for a (M, K), b (K, N): what the binary GEMM computes."""
    sa = np.where(np.asarray(a) >= 0, 1, -1).astype(np.int64)
    sb = np.where(np.asarray(b) >= 0, 1, -1).astype(np.int64)
    return (sa @ sb).astype(np.int32)


def xnor_gemm_ref(a_bits: np.ndarray, b_bits: np.ndarray, k: int) -> np.ndarray:
    """K - 2 * popcount(a_i XOR b_j) for packed rows a (M, KW) and b (N, KW)."""
    x = a_bits[:, None, :] ^ b_bits[None, :, :]
    pop = np.zeros(x.shape[:2], np.int64)
    for shift in range(64):
        pop += ((x >> np.uint64(shift)) & np.uint64(1)).sum(axis=2).astype(np.int64)
    return (k - 2 * pop).astype(np.int32)
