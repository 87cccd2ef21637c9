"""Float32 products in registers: the offset-table GEMM behind every dense float product
of training, and the sparse row sums of the convolution gradients.

One register-tiled product serves every dense float product:

    c[ic[i] + j] (+)= sum_k a[ia[i] + ka[k]] * b[bo + k*ldb + j]

for i < len(ia), k < len(ka), j < n. The offset tables let A be a plain matrix, its
transpose, or the patches of an NHWC image (ia = pixel origins, ka = tap offsets), so
no im2col copy is made. Tiles are 4 rows x 16 columns: eight accumulators, two loads
of B and four broadcasts of A per eight fused multiply-adds.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT_FLOAT, JIT_INLINE, JIT_PAR
from .simd import ld, vadd, vfma, vload, vsplat, vstore, vzero

__all__ = ["gemm_offsets", "matmul", "sparse_rows", "matmul_ref"]


@nb.njit(**JIT_INLINE)
def _tile4x16(a, a0, a1, a2, a3, ka, b, bo, ldb):
    c00 = vzero()
    c01 = vzero()
    c10 = vzero()
    c11 = vzero()
    c20 = vzero()
    c21 = vzero()
    c30 = vzero()
    c31 = vzero()
    for k in range(ka.shape[0]):
        q = ka[k]
        p = bo + k * ldb
        b0 = vload(b, p)
        b1 = vload(b, p + 8)
        s = vsplat(ld(a, a0 + q))
        c00 = vfma(s, b0, c00)
        c01 = vfma(s, b1, c01)
        s = vsplat(ld(a, a1 + q))
        c10 = vfma(s, b0, c10)
        c11 = vfma(s, b1, c11)
        s = vsplat(ld(a, a2 + q))
        c20 = vfma(s, b0, c20)
        c21 = vfma(s, b1, c21)
        s = vsplat(ld(a, a3 + q))
        c30 = vfma(s, b0, c30)
        c31 = vfma(s, b1, c31)
    return c00, c01, c10, c11, c20, c21, c30, c31


@nb.njit(**JIT_INLINE)
def _put16(c, at, v0, v1, acc):
    if acc:
        v0 = vadd(v0, vload(c, at))
        v1 = vadd(v1, vload(c, at + 8))
    vstore(c, at, v0)
    vstore(c, at + 8, v1)


@nb.njit(**JIT_INLINE)
def _tile1x16(a, a0, ka, b, bo, ldb):
    c0 = vzero()
    c1 = vzero()
    for k in range(ka.shape[0]):
        p = bo + k * ldb
        s = vsplat(ld(a, a0 + ka[k]))
        c0 = vfma(s, vload(b, p), c0)
        c1 = vfma(s, vload(b, p + 8), c1)
    return c0, c1


@nb.njit(**JIT_FLOAT)
def _gemm_block(a, ia, ka, b, bo, ldb, n, c, co, ic, acc):
    m = ia.shape[0]
    nk = ka.shape[0]
    n16 = n - n % 16
    m4 = m - m % 4
    for i in range(0, m4, 4):
        a0 = ia[i]
        a1 = ia[i + 1]
        a2 = ia[i + 2]
        a3 = ia[i + 3]
        for j in range(0, n16, 16):
            c00, c01, c10, c11, c20, c21, c30, c31 = _tile4x16(a, a0, a1, a2, a3, ka, b,
                                                               bo + j, ldb)
            _put16(c, co + ic[i] + j, c00, c01, acc)
            _put16(c, co + ic[i + 1] + j, c10, c11, acc)
            _put16(c, co + ic[i + 2] + j, c20, c21, acc)
            _put16(c, co + ic[i + 3] + j, c30, c31, acc)
    for i in range(m4, m):
        for j in range(0, n16, 16):
            c0, c1 = _tile1x16(a, ia[i], ka, b, bo + j, ldb)
            _put16(c, co + ic[i] + j, c0, c1, acc)
    # Columns past the last multiple of 16: a plain loop.
    for i in range(m):
        for j in range(n16, n):
            s = np.float32(0)
            for k in range(nk):
                s += ld(a, ia[i] + ka[k]) * ld(b, bo + k * ldb + j)
            if acc:
                c[co + ic[i] + j] += s
            else:
                c[co + ic[i] + j] = s


@nb.njit(**JIT_FLOAT)
def gemm_offsets(a, ia, ka, b, bo, ldb, n, c, co, ic, acc):
    """c[co + ic[i] + j] (+ if acc)= sum_k a[ia[i] + ka[k]] * b[bo + k*ldb + j], j < n.

    a, b, c: flat float32 arrays; ia, ka, ic: int64 offset tables. Callable from other
    kernels (it is compiled, not a Python wrapper); see the module docstring.
    """
    # Blocks of K sized so that the rows of B they touch (about 16 KiB) stay in L1 while
    # every tile of C passes over them; otherwise each tile would stream all of B again.
    nk = ka.shape[0]
    kb = max(16, 4096 // max(n, 1))
    if nk <= kb:
        _gemm_block(a, ia, ka, b, bo, ldb, n, c, co, ic, acc)
        return
    for k0 in range(0, nk, kb):
        k1 = min(nk, k0 + kb)
        _gemm_block(a, ia, ka[k0:k1], b, bo + k0 * ldb, ldb, n, c, co, ic, acc or k0 > 0)


@nb.njit(**JIT_PAR)
def _gemm_par(a, ia, ka, b, ldb, n, c, ic, acc, nch):
    m = ia.shape[0]
    per = (m + nch - 1) // nch
    per += (-per) % 4
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        gemm_offsets(a, ia[i0:i1], ka, b, 0, ldb, n, c, 0, ic[i0:i1], acc)


def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, threads=None) -> np.ndarray:
    """a @ b (or a.T @ b) in float32 with the Numba GEMM, for the products of training.

    Multi-threaded OpenBLAS leaves its workers spinning after each call, which starves
    the Numba threads of the next kernel on a two-core machine (a 576x64 @ 64x64 product
    measured 12 ms that way, 0.06 ms on one BLAS thread); these products are small, so
    training stays off BLAS altogether. ``threads``: see :func:`~.threads.chunks`.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if trans_a:
        k, m = a.shape
        ia, ka = np.arange(m, dtype=np.int64), np.arange(k, dtype=np.int64) * m
    else:
        m, k = a.shape
        ia, ka = np.arange(m, dtype=np.int64) * k, np.arange(k, dtype=np.int64)
    if b.shape[0] != k:
        raise ValueError(f"matmul: inner sizes differ ({k} and {b.shape[0]})")
    n = b.shape[1]
    out = np.empty((m, n), np.float32)
    ic = np.arange(m, dtype=np.int64) * n
    nch = _threads.chunks(m // 4, m * n * k // 8, threads)
    if nch == 1:
        gemm_offsets(a.reshape(-1), ia, ka, b.reshape(-1), 0, n, n, out.reshape(-1), 0, ic, False)
    else:
        _gemm_par(a.reshape(-1), ia, ka, b.reshape(-1), n, n, out.reshape(-1), ic, False, nch)
    return out


# --------------------------------------------------------------------------- sparse rows


@nb.njit(**JIT_INLINE)
def sparse_rows(dst, d, src, offs, gs, j0, j1, e, m):
    """dst[d:d+m] += sum_j gs[j] * src[offs[j]+e : offs[j]+e+m] for j0 <= j < j1.

    The row is summed over all j in registers, in blocks of 96 floats (twelve
    accumulators: enough independent chains to hide the FMA latency), then 32 and 8,
    and stored once per block.
    """
    k = 0
    while k + 96 <= m:
        p = d + k
        v0 = vload(dst, p)
        v1 = vload(dst, p + 8)
        v2 = vload(dst, p + 16)
        v3 = vload(dst, p + 24)
        v4 = vload(dst, p + 32)
        v5 = vload(dst, p + 40)
        v6 = vload(dst, p + 48)
        v7 = vload(dst, p + 56)
        v8 = vload(dst, p + 64)
        v9 = vload(dst, p + 72)
        v10 = vload(dst, p + 80)
        v11 = vload(dst, p + 88)
        for j in range(j0, j1):
            s = vsplat(gs[j])
            q = offs[j] + e + k
            v0 = vfma(s, vload(src, q), v0)
            v1 = vfma(s, vload(src, q + 8), v1)
            v2 = vfma(s, vload(src, q + 16), v2)
            v3 = vfma(s, vload(src, q + 24), v3)
            v4 = vfma(s, vload(src, q + 32), v4)
            v5 = vfma(s, vload(src, q + 40), v5)
            v6 = vfma(s, vload(src, q + 48), v6)
            v7 = vfma(s, vload(src, q + 56), v7)
            v8 = vfma(s, vload(src, q + 64), v8)
            v9 = vfma(s, vload(src, q + 72), v9)
            v10 = vfma(s, vload(src, q + 80), v10)
            v11 = vfma(s, vload(src, q + 88), v11)
        vstore(dst, p, v0)
        vstore(dst, p + 8, v1)
        vstore(dst, p + 16, v2)
        vstore(dst, p + 24, v3)
        vstore(dst, p + 32, v4)
        vstore(dst, p + 40, v5)
        vstore(dst, p + 48, v6)
        vstore(dst, p + 56, v7)
        vstore(dst, p + 64, v8)
        vstore(dst, p + 72, v9)
        vstore(dst, p + 80, v10)
        vstore(dst, p + 88, v11)
        k += 96
    while k + 32 <= m:
        p = d + k
        v0 = vload(dst, p)
        v1 = vload(dst, p + 8)
        v2 = vload(dst, p + 16)
        v3 = vload(dst, p + 24)
        for j in range(j0, j1):
            s = vsplat(gs[j])
            q = offs[j] + e + k
            v0 = vfma(s, vload(src, q), v0)
            v1 = vfma(s, vload(src, q + 8), v1)
            v2 = vfma(s, vload(src, q + 16), v2)
            v3 = vfma(s, vload(src, q + 24), v3)
        vstore(dst, p, v0)
        vstore(dst, p + 8, v1)
        vstore(dst, p + 16, v2)
        vstore(dst, p + 24, v3)
        k += 32
    while k + 8 <= m:
        p = d + k
        v0 = vload(dst, p)
        for j in range(j0, j1):
            v0 = vfma(vsplat(gs[j]), vload(src, offs[j] + e + k), v0)
        vstore(dst, p, v0)
        k += 8
    while k < m:
        t = np.float32(0)
        for j in range(j0, j1):
            t += gs[j] * ld(src, offs[j] + e + k)
        dst[d + k] += t
        k += 1


# --------------------------------------------------------------------------- twins


def matmul_ref(a: np.ndarray, b: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """a @ b (or a.T @ b) in float64."""
    a = np.asarray(a, np.float64)
    return (a.T if trans_a else a) @ np.asarray(b, np.float64)
