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
from .caches import data_cache_bytes
from .jit import JIT, JIT_INLINE
from .simd import (POPCOUNT_MODE, popcount64, uadd, ubytesum, ucsa, ucsa_rest, uld, uload,
                   uhinib, ulonib, unibpop, upopadd, usplat, ustore, ustore_dots, ustore_dots8,
                   usub_dots, usub_dots8, utimes8,
                   uxor, uxor_popadd, uzero)

__all__ = ["xnor_gemm", "xnor_gemm_serial", "xnor_gemm_parallel", "xnor_gemm_ref",
           "xnor_gemm_prepared", "xnor_gemm_prepared_parallel", "gemm_panels", "aligned_words",
           "binary_dot_ref", "nibble_panels", "nibble_panels_ref"]


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


# --------------------------------------------------------------------------- nibbles
#
# Without VPOPCNTDQ, counting the bits of a ^ b from whole bytes costs eight vector
# instructions per four words. Split both operands into nibbles first (see
# :func:`.simd.unibpop`) and it costs six: B once per call, into panels of 16 columns,
# and A a block of rows at a time. On a Zen 3 core that is faster than the carry-save
# adders (register-only probes: 1.06 against 0.98 T binary ops/s) and, unlike them, it
# needs no eight words in a row, so short rows count at the same rate. The byte
# counters hold at most 8 per word, so K is cut into blocks of at most 31 words; each
# tile's counters are summed and stored once per block (:func:`.simd.ustore_dots8`,
# two vectors of four columns into eight outputs; later blocks subtract).
#
# Cache blocking: a tile of one row by 32 columns reads two panels over one block of K
# (at most 31 x 32 x 16 bytes = 16 KiB, kept in L1) while it walks down a block of rows;
# the column loop passes over all of B once per block of rows. When all of B's panels
# for a block of K fit in half of L1 (few columns, short rows), the split rows of a
# block take most of the other half; otherwise they fill half of L2, so each panel
# fetched from L2 or L3 serves many rows (Zen 3, 1 thread, CPU time, load about 7:
# 5184x576x64 82% of the nibble probe with rows in L1 against 79% in L2; 4096^3 88%
# in L2 against 83% in L1).

NIB_KB_WORDS = 31
NIB_MIN_ROWS = 128
# The ``nib`` argument of the GEMMs: the fewest rows a call needs for the nibble count
# (0: never); by default in the "csa" popcount mode (the "bytes" mode keeps the
# whole-byte count, "lanes" its vpopcntq). Splitting B and allocating the blocks is a
# cost per call that a few rows of A do not repay (Zen 3, 1 thread, CPU time, load
# about 6: against the best other count, 0.88x at 64x576x64 and 0.89x at 32x576x64,
# 1.12x at 128x576x64, 1.07x at 64x4608x256).
NIB = NIB_MIN_ROWS if POPCOUNT_MODE == "csa" else 0
# Bytes of A's split words kept per block of rows: in L1 beside all of B's panels, or
# in L2.
NIB_L1_BYTES = data_cache_bytes(1)
NIB_ROWS_L1_BYTES = NIB_L1_BYTES * 3 // 8
NIB_ROWS_L2_BYTES = data_cache_bytes(2) // 2
_LO = np.uint64(0x0F0F0F0F0F0F0F0F)
_FOUR = np.uint64(4)


@nb.njit(**JIT)
def nibble_panels(bt, n16):
    """The first ``n16`` columns of bt (KW, N), a multiple of 16, as nibble panels: panel s
    (columns 16s..16s+15) holds for each word w 32 words at ``(s * KW + w) * 32``: the low
    nibbles of columns (0, 2, 4, 6), (1, 3, 5, 7), (8, .., 14), (9, .., 15) of the panel,
    then their high nibbles (shifted down), so that even and odd columns sit in separate
    vectors for :func:`.simd.ustore_dots8`."""
    return _fill_nibble_panels(bt, n16, np.empty(n16 * bt.shape[0] * 2, np.uint64))


@nb.njit(**JIT)
def _fill_nibble_panels(bt, n16, bp):
    nw = bt.shape[0]
    for s in range(n16 // 16):
        for w in range(nw):
            at = (s * nw + w) * 32
            for v in range(4):
                for q in range(4):
                    x = bt[w, s * 16 + (v // 2) * 8 + 2 * q + v % 2]
                    bp[at + v * 4 + q] = x & _LO
                    bp[at + 16 + v * 4 + q] = (x >> _FOUR) & _LO
    return bp


@nb.njit(**JIT_INLINE)
def _nib_acc(c0, c1, c2, c3, lo, hi, bp, p):
    # Counters of one row's word (nibbles lo, hi) against the panel's word at bp[p:].
    c0 = unibpop(unibpop(c0, lo, uload(bp, p)), hi, uload(bp, p + 16))
    c1 = unibpop(unibpop(c1, lo, uload(bp, p + 4)), hi, uload(bp, p + 20))
    c2 = unibpop(unibpop(c2, lo, uload(bp, p + 8)), hi, uload(bp, p + 24))
    c3 = unibpop(unibpop(c3, lo, uload(bp, p + 12)), hi, uload(bp, p + 28))
    return c0, c1, c2, c3


@nb.njit(**JIT_INLINE)
def _nib_tile1x32(al, ah, r, bp, p0, p1, nw):
    # Byte counters of one row of A (its nibbles at al[r:], ah[r:]) against the panels at
    # bp[p0:] and bp[p1:] (32 columns), as even/odd column vectors.
    c00 = uzero()
    c01 = uzero()
    c02 = uzero()
    c03 = uzero()
    c10 = uzero()
    c11 = uzero()
    c12 = uzero()
    c13 = uzero()
    for w in range(nw):
        lo = usplat(uld(al, r + w))
        hi = usplat(uld(ah, r + w))
        c00, c01, c02, c03 = _nib_acc(c00, c01, c02, c03, lo, hi, bp, p0 + w * 32)
        c10, c11, c12, c13 = _nib_acc(c10, c11, c12, c13, lo, hi, bp, p1 + w * 32)
    return c00, c01, c02, c03, c10, c11, c12, c13


@nb.njit(**JIT_INLINE)
def _nib_tile1x16(al, ah, r, bp, p0, nw):
    c00 = uzero()
    c01 = uzero()
    c02 = uzero()
    c03 = uzero()
    for w in range(nw):
        c00, c01, c02, c03 = _nib_acc(c00, c01, c02, c03, usplat(uld(al, r + w)),
                                      usplat(uld(ah, r + w)), bp, p0 + w * 32)
    return c00, c01, c02, c03


@nb.njit(**JIT_INLINE)
def _nib_put(o1, at, k, first, even, odd):
    if first:
        ustore_dots8(o1, at, even, odd, k)
    else:
        usub_dots8(o1, at, even, odd)


@nb.njit(**JIT)
def _xnor_gemm_rows_nibbles(a, bt, bp, k, out, r0, r1):
    # Rows [r0, r1) of the GEMM with B's nibble panels bp (:func:`nibble_panels`): tiles
    # of one row by 32 columns (two panels; 16 for an odd last panel).
    nw = bt.shape[0]
    n = bt.shape[1]
    n16 = n - n % 16
    o1 = out.reshape(-1)
    a1 = a.reshape(-1)
    nkb = max(1, (nw + NIB_KB_WORDS - 1) // NIB_KB_WORDS)
    kbw = max(1, (nw + nkb - 1) // nkb)  # blocks of K as even as they can be
    budget = NIB_ROWS_L1_BYTES if kbw * n16 * 16 <= NIB_L1_BYTES // 2 else NIB_ROWS_L2_BYTES
    rows = max(1, min(r1 - r0, budget // (16 * kbw)))
    al = np.empty((rows, kbw), np.uint64)
    ah = np.empty((rows, kbw), np.uint64)
    al1 = al.reshape(-1)
    ah1 = ah.reshape(-1)
    for wa in range(0, max(nw, 1), kbw):
        wb = min(nw, wa + kbw)
        cw = wb - wa
        first = wa == 0
        for i0 in range(r0, r1, rows):
            i1 = min(r1, i0 + rows)
            for i in range(i0, i1):
                # Split four words at a time: done word by word, this pass took a tenth
                # of the GEMM's time at N = 64.
                src = i * nw + wa
                dst = (i - i0) * kbw
                w = 0
                while w + 4 <= cw:
                    v = uload(a1, src + w)
                    ustore(al1, dst + w, ulonib(v))
                    ustore(ah1, dst + w, uhinib(v))
                    w += 4
                while w < cw:
                    x = uld(a1, src + w)
                    al1[dst + w] = x & _LO
                    ah1[dst + w] = (x >> _FOUR) & _LO
                    w += 1
            for j0 in range(0, n16 - 16, 32):
                p0 = (j0 * nw + wa * 16) * 2
                p1 = ((j0 + 16) * nw + wa * 16) * 2
                for i in range(i0, i1):
                    c00, c01, c02, c03, c10, c11, c12, c13 = _nib_tile1x32(
                        al1, ah1, (i - i0) * kbw, bp, p0, p1, cw)
                    at = i * n + j0
                    _nib_put(o1, at, k, first, c00, c01)
                    _nib_put(o1, at + 8, k, first, c02, c03)
                    _nib_put(o1, at + 16, k, first, c10, c11)
                    _nib_put(o1, at + 24, k, first, c12, c13)
            if n16 % 32:
                j0 = n16 - 16
                p0 = (j0 * nw + wa * 16) * 2
                for i in range(i0, i1):
                    c00, c01, c02, c03 = _nib_tile1x16(al1, ah1, (i - i0) * kbw, bp, p0, cw)
                    _nib_put(o1, i * n + j0, k, first, c00, c01)
                    _nib_put(o1, i * n + j0 + 8, k, first, c02, c03)
            _tail_columns(a, bt, k, out, i0, i1, n16, wa, wb, first)


@nb.njit(**JIT_INLINE)
def _tail_columns(a, bt, k, out, i0, i1, j0, wa, wb, first):
    # Columns j0.. of rows [i0, i1) over words [wa, wb), one word at a time.
    for i in range(i0, i1):
        for j in range(j0, bt.shape[1]):
            acc = 0
            for w in range(wa, wb):
                acc += popcount64(a[i, w] ^ bt[w, j])
            if first:
                out[i, j] = k - 2 * acc
            else:
                out[i, j] -= 2 * acc


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
            _tail_columns(a, bt, k, out, i0, i1, n16, wa, wb, first)


@nb.njit(**JIT_INLINE)
def _nibbles(a, bt, nib):
    # Whether the nibble count is used: enough rows, and at least one panel of columns.
    return 0 < nib <= a.shape[0] and bt.shape[0] > 0 and bt.shape[1] >= 16


@nb.njit(**JIT)
def xnor_gemm_serial(a, bt, k, out, csa=CSA, nib=NIB):
    """out[i, j] = K - 2 * popcount(a[i] ^ b[j]), the ±1 dot product of packed rows.

    a: (M, KW) uint64 packed rows; bt: (KW, N) uint64, packed B rows stored transposed
    (word-major) so that four output columns share one vector load; out: (M, N) int32
    (or float32, to feed float layers without a conversion pass). ``csa``: count with
    Harley-Seal carry-save adders the blocks of K of at least that many words (0: never;
    default: CSA_MIN_WORDS if the process's popcount mode is "csa"). ``nib``: count in
    split nibbles when A has at least that many rows (0: never; default: NIB_MIN_ROWS
    in the "csa" mode); the carry-save adders then serve only calls with fewer rows.
    """
    if _nibbles(a, bt, nib):
        _xnor_gemm_rows_nibbles(a, bt, nibble_panels(bt, bt.shape[1] // 16 * 16), k, out, 0,
                                a.shape[0])
    else:
        _xnor_gemm_rows(a, bt, k, out, 0, a.shape[0], csa)
    return out


# The GEMM reads the nibble panels 32 bytes at a time: a load that straddles two cache
# lines costs two (on Zen 3, 121x288x64 took 0.50-0.55 T binary ops/s with panels at
# offsets that are not a multiple of 32 bytes against 0.59-0.61 at multiples of it).
ALIGN_WORDS = 8  # 64 bytes


def aligned_words(n: int) -> np.ndarray:
    """n zeroed uint64 words starting on a 64-byte boundary (a cache line)."""
    buf = np.zeros(n + ALIGN_WORDS, np.uint64)
    skip = (-(buf.ctypes.data // 8)) % ALIGN_WORDS
    return buf[skip:skip + n]


def gemm_panels(bt: np.ndarray) -> np.ndarray:
    """What :func:`xnor_gemm_prepared` needs of a B that many calls share (a model's
    weights): its nibble panels, starting on a 64-byte boundary, when the split-nibble
    count is this process's choice (the "csa" popcount mode) and B has at least 16
    columns, else an empty array."""
    bt = np.ascontiguousarray(bt, dtype=np.uint64)
    if NIB == 0 or bt.ndim != 2 or bt.shape[0] == 0 or bt.shape[1] < 16:
        return np.zeros(0, np.uint64)
    n16 = bt.shape[1] // 16 * 16
    return _fill_nibble_panels(bt, n16, aligned_words(n16 * bt.shape[0] * 2))


@nb.njit(**JIT)
def xnor_gemm_prepared(a, bt, bp, k, out):
    """:func:`xnor_gemm_serial` for a B whose nibble panels ``bp`` were made once
    (:func:`gemm_panels` or :func:`nibble_panels`); an empty ``bp`` counts as the
    process's popcount mode does for short calls (whole bytes, or ``vpopcntq``).

    Splitting B on every call is what kept the nibble count from calls of a few rows
    (a runtime's images one at a time); with the panels made beforehand it wins at
    every row count (Zen 3, 1 thread, CPU time, quiet: 121x288x64 0.63 against 0.45 T
    binary ops/s by whole bytes, 968x288x64 0.74 against 0.50, 8x576x64 through a
    Python call 0.39 against 0.27).
    """
    if bp.size > 0 and a.shape[0] > 0:
        _xnor_gemm_rows_nibbles(a, bt, bp, k, out, 0, a.shape[0])
    else:
        _xnor_gemm_rows(a, bt, k, out, 0, a.shape[0], CSA)
    return out


@nb.njit(parallel=True, **JIT)
def _xnor_gemm_par(a, bt, bp, k, out, nch, csa):
    # Rows split in nch near-equal even blocks; with B's nibble panels bp when not empty.
    m = a.shape[0]
    per = (m + nch - 1) // nch
    per += per % 2
    use_nib = bp.size > 0
    for c in nb.prange(nch):
        if use_nib:
            _xnor_gemm_rows_nibbles(a, bt, bp, k, out, min(m, c * per), min(m, c * per + per))
        else:
            _xnor_gemm_rows(a, bt, k, out, min(m, c * per), min(m, c * per + per), csa)
    return out


@nb.njit(**JIT)
def xnor_gemm_parallel(a, bt, k, out, nch, csa=CSA, nib=NIB):
    """Same as :func:`xnor_gemm_serial`, rows split in ``nch`` near-equal even blocks."""
    # The chunk count comes from the caller: asking Numba for the thread count inside a
    # cached parallel function would make it uncacheable (a ctypes pointer).
    # B's panels are split once, before the threads start, and shared.
    bp = nibble_panels(bt, bt.shape[1] // 16 * 16 if _nibbles(a, bt, nib) else 0)
    return _xnor_gemm_par(a, bt, bp, k, out, nch, csa)


@nb.njit(**JIT)
def xnor_gemm_prepared_parallel(a, bt, bp, k, out, nch):
    """:func:`xnor_gemm_prepared` with the rows split in ``nch`` blocks over threads."""
    return _xnor_gemm_par(a, bt, bp, k, out, nch, CSA)


def xnor_gemm(a: np.ndarray, bt: np.ndarray, k: int, out: np.ndarray | None = None,
              parallel: bool | None = None, threads: int | None = None,
              csa: bool | None = None, nibbles: bool | None = None,
              panels: np.ndarray | None = None) -> np.ndarray:
    """Binary GEMM on packed operands; see :func:`xnor_gemm_serial` for shapes.

    ``parallel`` None: threads when there are enough rows and the machine is not busy;
    True splits the rows over ``threads`` chunks (default: Numba's thread count).
    ``nibbles``: the split-nibble count when there are enough rows, ``csa``: Harley-Seal
    counting for long rows otherwise (None: each if the popcount mode is "csa").
    ``panels``: B's :func:`gemm_panels`, made once for many calls; they decide the count
    (as in :func:`xnor_gemm_prepared`) and ``csa`` and ``nibbles`` are not used.
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
    nib = np.int64(NIB if nibbles is None else NIB_MIN_ROWS if nibbles else 0)
    if parallel is None:
        parallel = (a.shape[0] >= _threads.PARALLEL_MIN_ROWS and nb.get_num_threads() > 1
                    and not _threads.contended())
    if parallel:
        nch = np.int64(max(1, int(threads or nb.get_num_threads())))
        if panels is not None:
            return xnor_gemm_prepared_parallel(a, bt, panels, np.int64(k), out, nch)
        return xnor_gemm_parallel(a, bt, np.int64(k), out, nch, csa, nib)
    if panels is not None:
        return xnor_gemm_prepared(a, bt, panels, np.int64(k), out)
    return xnor_gemm_serial(a, bt, np.int64(k), out, csa, nib)


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


def nibble_panels_ref(bt: np.ndarray, n16: int) -> np.ndarray:
    """What :func:`nibble_panels` returns, by reordering columns with NumPy."""
    nw = bt.shape[0]
    order = np.array([(v // 2) * 8 + 2 * q + v % 2 for v in range(4) for q in range(4)])
    lo = np.uint64(0x0F0F0F0F0F0F0F0F)
    out = []
    for s in range(n16 // 16):
        cols = bt[:, s * 16 + order]  # (nw, 16)
        out.append(np.concatenate([cols & lo, (cols >> np.uint64(4)) & lo], axis=1))
    return np.concatenate(out).reshape(-1) if out else np.empty(0, np.uint64)
