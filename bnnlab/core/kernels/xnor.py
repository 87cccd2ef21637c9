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
from .simd import (POPCOUNT_MODE, popcount64, uadd, ubytesum, ucsa, ucsa_rest, uld, uload,
                   upopadd, usplat, ustore_dots, usub_dots, utimes8, uxor, uxor_popadd, uzero)

__all__ = ["xnor_gemm", "xnor_gemm_serial", "xnor_gemm_parallel", "xnor_gemm_ref",
           "binary_dot_ref"]


@nb.njit(**JIT_INLINE)
def _xnor_tile2x16(a, i0, i1, bt, j0, n, nw, wa, wb):
    # Bit counts of rows i0, i1 of a against 16 columns of B over words [wa, wb), as 8
    # lane vectors; word w of those columns is bt.flat[j0 + w * n : ... + 16].
    t00 = uzero()
    t01 = uzero()
    t02 = uzero()
    t03 = uzero()
    t10 = uzero()
    t11 = uzero()
    t12 = uzero()
    t13 = uzero()
    for w0 in range(wa, wb, 31):
        c00 = uzero()
        c01 = uzero()
        c02 = uzero()
        c03 = uzero()
        c10 = uzero()
        c11 = uzero()
        c12 = uzero()
        c13 = uzero()
        for w in range(w0, min(wb, w0 + 31)):
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


# --------------------------------------------------------------------------- Harley-Seal
#
# Counting bits per byte costs about six vector instructions per word (two nibble-table
# shuffles and their masking and adds). A carry-save adder costs five bitwise ones and
# turns three bit vectors into two (a "sum" of weight 1 and a "carry" of weight 2), so
# chaining them sums eight words into one vector of weight 8 plus three running vectors
# of weight 1, 2 and 4 (Harley and Seal; for AVX2, Mula, Kurz and Lemire 2018): one
# population count per eight words instead of eight. The running vectors are counted
# once per tile at the end, so it pays only for long enough rows: on a Zen 3 core (1
# thread, M=2048, N=64, CPU time) it was 0.7-0.9x the per-word count at 8-20 words, even
# at 24-28, and 1.07, 1.11, 1.13, 1.19x at 32, 40, 48, 64 words.

CSA_MIN_WORDS = 32
# The ``csa`` argument of the GEMMs: the fewest words a block of K needs to be counted
# this way (0: never); the default follows the process's popcount mode.
CSA = CSA_MIN_WORDS if POPCOUNT_MODE == "csa" else 0


@nb.njit(**JIT_INLINE)
def _pair(a, ra, rb, bt, p, q, ones0, ones1):
    # Words ra, rb of the row (at B offsets p, q) into the weight-1 vectors of the two
    # column groups; returns the two weight-2 carries and the new weight-1 vectors.
    sa = usplat(uld(a, ra))
    sb = usplat(uld(a, rb))
    c0, ones0 = ucsa(ones0, uxor(sa, uload(bt, p)), uxor(sb, uload(bt, q)))
    c1, ones1 = ucsa(ones1, uxor(sa, uload(bt, p + 4)), uxor(sb, uload(bt, q + 4)))
    return c0, c1, ones0, ones1


@nb.njit(**JIT_INLINE)
def _xnor_tile1x8ucsa(a, i, bt, j0, n, nw, wa, wb):
    # Bit counts of row i of a against 8 columns of B over words [wa, wb), as 2 lane
    # vectors; word w of those columns is bt.flat[j0 + w * n : ... + 8].
    row = i * nw
    t0 = uzero()
    t1 = uzero()
    ones0 = uzero()
    ones1 = uzero()
    twos0 = uzero()
    twos1 = uzero()
    fours0 = uzero()
    fours1 = uzero()
    wend = wa + (wb - wa) // 8 * 8
    # An eights count adds at most 8 to a byte counter: fold them every 31 blocks.
    for g0 in range(wa, wend, 248):
        e0 = uzero()
        e1 = uzero()
        for w in range(g0, min(wend, g0 + 248), 8):
            p = w * n + j0
            ta0, ta1, ones0, ones1 = _pair(a, row + w, row + w + 1, bt, p, p + n, ones0, ones1)
            tb0, tb1, ones0, ones1 = _pair(a, row + w + 2, row + w + 3, bt, p + 2 * n,
                                           p + 3 * n, ones0, ones1)
            fa0, twos0 = ucsa(twos0, ta0, tb0)
            fa1, twos1 = ucsa(twos1, ta1, tb1)
            ta0, ta1, ones0, ones1 = _pair(a, row + w + 4, row + w + 5, bt, p + 4 * n,
                                           p + 5 * n, ones0, ones1)
            tb0, tb1, ones0, ones1 = _pair(a, row + w + 6, row + w + 7, bt, p + 6 * n,
                                           p + 7 * n, ones0, ones1)
            fb0, twos0 = ucsa(twos0, ta0, tb0)
            fb1, twos1 = ucsa(twos1, ta1, tb1)
            eights0, fours0 = ucsa(fours0, fa0, fb0)
            eights1, fours1 = ucsa(fours1, fa1, fb1)
            e0 = upopadd(e0, eights0)
            e1 = upopadd(e1, eights1)
        t0 = uadd(t0, ubytesum(e0))
        t1 = uadd(t1, ubytesum(e1))
    # The weight-8 counts, the bits left in the adders, then the last words one by one
    # (at most 56 + 7 * 8 per byte counter).
    t0 = utimes8(t0)
    t1 = utimes8(t1)
    r0 = ucsa_rest(ones0, twos0, fours0)
    r1 = ucsa_rest(ones1, twos1, fours1)
    for w in range(wend, wb):
        p = w * n + j0
        s = usplat(uld(a, row + w))
        r0 = uxor_popadd(r0, s, uload(bt, p))
        r1 = uxor_popadd(r1, s, uload(bt, p + 4))
    return uadd(t0, ubytesum(r0)), uadd(t1, ubytesum(r1))


@nb.njit(**JIT_INLINE)
def _put_dots2(out, at, k, first, t0, t1):
    if first:
        ustore_dots(out, at, t0, k)
        ustore_dots(out, at + 4, t1, k)
    else:
        usub_dots(out, at, t0)
        usub_dots(out, at + 4, t1)


@nb.njit(**JIT_INLINE)
def _put_dots(out, at, k, first, t0, t1, t2, t3):
    if first:
        ustore_dots(out, at, t0, k)
        ustore_dots(out, at + 4, t1, k)
        ustore_dots(out, at + 8, t2, k)
        ustore_dots(out, at + 12, t3, k)
    else:
        usub_dots(out, at, t0)
        usub_dots(out, at + 4, t1)
        usub_dots(out, at + 8, t2)
        usub_dots(out, at + 12, t3)


# Cache blocking. A 2x16 tile reads a sliver of B of (words x 16 columns); with at most
# KB_WORDS words that is 16 KiB, so it stays in L1 while the tile loop walks down a block
# of MB_ROWS rows of A, whose (rows x KB_WORDS) words (256 KiB at most) stay in L2 while
# the column loop passes over all of B. K longer than KB_WORDS words (8192 bits) is cut
# into blocks: the first stores K - 2*count, the later ones subtract their 2*count.
KB_WORDS = 128
MB_ROWS = 256
PANEL_MIN_BYTES = 16 << 10


@nb.njit(**JIT)
def _xnor_gemm_rows(a, bt, k, out, r0, r1, csa):
    nw = bt.shape[0]
    n = bt.shape[1]
    n16 = n - n % 16
    a1 = a.reshape(-1)
    b1 = bt.reshape(-1)
    o1 = out.reshape(-1)
    # Panels: when the 16-column slivers of B are far apart in memory (rows of B longer
    # than the L1 can hold for a whole sliver), each sliver's words are copied next to
    # each other once, so a tile reads one contiguous run instead of lines a whole row
    # of B apart (which fall into a few cache sets and evict each other).
    panel = nw * n16 * 8 > PANEL_MIN_BYTES and r1 - r0 >= 16
    if panel:
        bp = np.empty(n16 * nw, np.uint64)
        for j0 in range(0, n16, 16):
            for w in range(nw):
                for q in range(16):
                    bp[j0 * nw + w * 16 + q] = b1[w * n + j0 + q]
    else:
        bp = b1
    for wa in range(0, max(nw, 1), KB_WORDS):
        wb = min(nw, wa + KB_WORDS)
        first = wa == 0
        for i0 in range(r0, r1, MB_ROWS):
            i1 = min(r1, i0 + MB_ROWS)
            for j0 in range(0, n16, 16):
                base = j0 * nw if panel else j0
                stride = 16 if panel else n
                if csa > 0 and wb - wa >= csa:
                    for i in range(i0, i1):
                        t0, t1 = _xnor_tile1x8ucsa(a1, i, bp, base, stride, nw, wa, wb)
                        _put_dots2(o1, i * n + j0, k, first, t0, t1)
                        t0, t1 = _xnor_tile1x8ucsa(a1, i, bp, base + 8, stride, nw, wa, wb)
                        _put_dots2(o1, i * n + j0 + 8, k, first, t0, t1)
                    continue
                for i in range(i0, i1, 2):
                    ii = min(i + 1, i1 - 1)  # an odd last row is computed twice, stored once
                    t00, t01, t02, t03, t10, t11, t12, t13 = _xnor_tile2x16(
                        a1, i, ii, bp, base, stride, nw, wa, wb)
                    _put_dots(o1, i * n + j0, k, first, t00, t01, t02, t03)
                    if ii != i:
                        _put_dots(o1, ii * n + j0, k, first, t10, t11, t12, t13)
            for i in range(i0, i1):
                for j in range(n16, n):
                    acc = 0
                    for w in range(wa, wb):
                        acc += popcount64(a[i, w] ^ bt[w, j])
                    if first:
                        out[i, j] = k - 2 * acc
                    else:
                        out[i, j] -= 2 * acc


@nb.njit(**JIT)
def xnor_gemm_serial(a, bt, k, out, csa=CSA):
    """out[i, j] = K - 2 * popcount(a[i] ^ b[j]), the ±1 dot product of packed rows.

    a: (M, KW) uint64 packed rows; bt: (KW, N) uint64, packed B rows stored transposed
    (word-major) so that four output columns share one vector load; out: (M, N) int32
    (or float32, to feed float layers without a conversion pass). ``csa``: count with
    Harley-Seal carry-save adders the blocks of K of at least that many words (0: never;
    default: CSA_MIN_WORDS if the process's popcount mode is "csa").
    """
    _xnor_gemm_rows(a, bt, k, out, 0, a.shape[0], csa)
    return out


@nb.njit(parallel=True, **JIT)
def xnor_gemm_parallel(a, bt, k, out, nch, csa=CSA):
    """Same as :func:`xnor_gemm_serial`, rows split in ``nch`` near-equal even blocks."""
    # The chunk count comes from the caller: asking Numba for the thread count inside a
    # cached parallel function would make it uncacheable (a ctypes pointer).
    m = a.shape[0]
    per = (m + nch - 1) // nch
    per += per % 2
    for c in nb.prange(nch):
        _xnor_gemm_rows(a, bt, k, out, min(m, c * per), min(m, c * per + per), csa)
    return out


def xnor_gemm(a: np.ndarray, bt: np.ndarray, k: int, out: np.ndarray | None = None,
              parallel: bool | None = None, threads: int | None = None,
              csa: bool | None = None) -> np.ndarray:
    """Binary GEMM on packed operands; see :func:`xnor_gemm_serial` for shapes.

    ``parallel`` None: threads when there are enough rows and the machine is not busy;
    True splits the rows over ``threads`` chunks (default: Numba's thread count).
    ``csa``: Harley-Seal counting for long rows (None: if the popcount mode is "csa").
    """
    if a.shape[1] != bt.shape[0]:
        raise ValueError(f"packed widths differ: A has {a.shape[1]} words, B has {bt.shape[0]}")
    if out is None:
        out = np.empty((a.shape[0], bt.shape[1]), np.int32)
    if out.dtype not in (np.int32, np.float32):
        raise ValueError(f"xnor_gemm writes int32 or float32, not {out.dtype}")
    a = np.ascontiguousarray(a, dtype=np.uint64)
    bt = np.ascontiguousarray(bt, dtype=np.uint64)
    csa = np.int64(CSA if csa is None else CSA_MIN_WORDS if csa else 0)
    if parallel is None:
        parallel = (a.shape[0] >= _threads.PARALLEL_MIN_ROWS and nb.get_num_threads() > 1
                    and not _threads.contended())
    if parallel:
        nch = max(1, int(threads or nb.get_num_threads()))
        return xnor_gemm_parallel(a, bt, np.int64(k), out, np.int64(nch), csa)
    return xnor_gemm_serial(a, bt, np.int64(k), out, csa)


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
