"""The compiled loops of the ``.bnn`` runtime (:mod:`bnnlab.deploy.runtime`).

Each block's accumulator (packed im2col + XNOR-popcount GEMM for binary inputs, exact
integer or float32 sums for raw first layers), and the epilogue that max-pools it,
compares it with the folded thresholds and packs the output bits. They take plain arrays
and release the GIL; :class:`bnnlab.deploy.runtime.Runtime` drives them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..core.kernels import gemm_offsets, pack_patches, xnor_gemm_prepared
from ..core.kernels.jit import JIT

_JIT = dict(JIT)  # cached only in the automatic popcount mode, like the kernels it calls
# Helpers called per pixel are inlined: a real call passes every array as a struct and
# pays atomic reference-count updates.
_JIT_INLINE = dict(_JIT, inline="always")


# --------------------------------------------------------------------------- kernels
#
# Binary blocks run on the engine's kernels: packed im2col (``pack_patches``) and the
# SIMD XNOR-popcount GEMM, a few images at a time so the accumulators stay in cache,
# then one pass that max-pools the integer accumulators, compares them with the
# thresholds and packs the result bits (the "epilogue"). Nothing is converted to float.

# Images per GEMM chunk: about this many accumulator bytes at once (fits in L2).
_CHUNK_BYTES = 1 << 18

# Every binary GEMM of the runtime multiplies by a block's weights, the same on every
# call: their nibble panels (:func:`~bnnlab.core.kernels.gemm_panels`) are made once per
# model, so even one image's rows use the split-nibble count where it is this CPU's best.


@nb.njit(**_JIT_INLINE)
def _pool_threshold_pack(z, r0, ho, wo, corr, ps, pst, hp, wp, sgn, thr, out, n, m):
    """Max-pool image ``n``'s accumulators and pack ``sgn * max >= thr`` as bits.

    z: (rows, F) accumulators, image n's ho*wo rows starting at r0; corr: (ho*wo, F)
    subtracted before pooling, or (0, F); sgn, thr: (F,) int32 for integer accumulators,
    float for float ones; out: (N, hp*wp, ceil(F/64)) uint64 (bit 1 = -1, i.e. the
    comparison failed); m: scratch (F,) of z's dtype.
    """
    f_n = z.shape[1]
    fw_n = out.shape[2]
    has_corr = corr.shape[0] > 0
    for py in range(hp):
        for px in range(wp):
            _window_max(z, r0, wo, corr, has_corr, py * pst, px * pst, ps, m)
            for fw in range(fw_n):
                word = np.uint64(0)
                base = fw * 64
                for b in range(min(64, f_n - base)):
                    f = base + b
                    # A constant channel (sgn 0) compares 0, not 0 * m: a float m may be
                    # infinite or NaN, and 0 * inf is NaN.
                    s = sgn[f]
                    v = s * m[f] if s != 0 else s
                    fail = np.uint64(0) if v >= thr[f] else np.uint64(1)
                    word |= fail << np.uint64(b)
                out[n, py * wp + px, fw] = word


@nb.njit(**_JIT_INLINE)
def _window_max(z, r0, wo, corr, has_corr, y0, x0, ps, m):
    # Plain compare-and-select (not ``max``, which handles NaN) into values that are
    # stored unconditionally: that is what LLVM vectorizes over the filters.
    f_n = z.shape[1]
    q0 = y0 * wo + x0
    if ps == 2:  # the common 2x2 window, spelled out
        q1, q2, q3 = q0 + 1, q0 + wo, q0 + wo + 1
        for f in range(f_n):
            a = z[r0 + q0, f]
            b = z[r0 + q1, f]
            c = z[r0 + q2, f]
            d = z[r0 + q3, f]
            if has_corr:
                a -= corr[q0, f]
                b -= corr[q1, f]
                c -= corr[q2, f]
                d -= corr[q3, f]
            # "x != x" is false for integers (and folded away): only a float NaN is kept,
            # so a window holding one pools to NaN, as numpy.maximum and the C do.
            ab = a if (a > b or a != a) else b
            cd = c if (c > d or c != c) else d
            m[f] = ab if (ab > cd or ab != ab) else cd
        return
    for f in range(f_n):
        m[f] = z[r0 + q0, f] - corr[q0, f] if has_corr else z[r0 + q0, f]
    for t in range(1, ps * ps):
        q = (y0 + t // ps) * wo + x0 + t % ps
        for f in range(f_n):
            v = z[r0 + q, f] - corr[q, f] if has_corr else z[r0 + q, f]
            mf = m[f]
            m[f] = v if (v > mf or v != v) else mf


@nb.njit(**_JIT_INLINE)
def _pool_only(z, r0, ho, wo, corr, ps, pst, hp, wp, out, n, m):
    """Like :func:`_pool_threshold_pack`, keeping the pooled accumulators: out (N, hp*wp, F)."""
    has_corr = corr.shape[0] > 0
    for py in range(hp):
        for px in range(wp):
            _window_max(z, r0, wo, corr, has_corr, py * pst, px * pst, ps, m)
            for f in range(z.shape[1]):
                out[n, py * wp + px, f] = m[f]


@nb.njit(**_JIT)
def _conv_bits(x, wt, bp, k, h, w, c, kh, kw, stride, pt, pl, pad_bit, corr, ho, wo, ps, pst,
               hp, wp, chunk, sgn, thr, bits_out, out_bits, out_acc):
    """Binary convolution of packed pixels, max pool, then thresholds or accumulators.

    x: (N, h*w, CW) uint64 pixel words; wt: (KW, F) uint64, filter rows of K = kh*kw*c bits
    in (dy, dx, c) order stored word-major (the GEMM's B layout), bp its nibble panels
    (:func:`~bnnlab.core.kernels.gemm_panels`, maybe empty); pad_bit: what a padding
    tap packs as (1 = -1); corr: (ho*wo, F) int32 subtracted from every dot (zero
    padding), or (0, F). With ``bits_out`` the thresholds give out_bits (N, hp*wp,
    ceil(F/64)); otherwise out_acc (N, hp*wp, F) int32 gets the pooled dots.
    """
    n_img = x.shape[0]
    cw = x.shape[2]
    kw_n, f_n = wt.shape
    rows = chunk * ho * wo
    a = np.empty((rows, kw_n), np.uint64)
    z = np.empty((rows, f_n), np.int32)
    m = np.empty(f_n, np.int32)
    for i0 in range(0, n_img, chunk):
        nc = min(chunk, n_img - i0)
        r = nc * ho * wo
        pix = x[i0:i0 + nc].reshape(nc * h * w, cw)
        pack_patches(pix, nc, h, w, c, kh, kw, stride, pt, pl, ho, wo, pad_bit, a[:r])
        xnor_gemm_prepared(a[:r], wt, bp, k, z[:r])
        for i in range(nc):
            if bits_out:
                _pool_threshold_pack(z, i * ho * wo, ho, wo, corr, ps, pst, hp, wp, sgn, thr,
                                     out_bits, i0 + i, m)
            else:
                _pool_only(z, i * ho * wo, ho, wo, corr, ps, pst, hp, wp, out_acc, i0 + i, m)


@nb.njit(**_JIT)
def _conv_raw(x, wt, kh, kw, stride, pt, pl, pad, ho, wo, ps, pst, hp, wp, sgn, thr,
              bits_out, out_bits, out_acc):
    """Convolution of real-valued (or integer) input with a dense kernel, pool, thresholds.

    x: (N, h, w, C) int16/int32/float32; wt: (kh*kw*C, F) same dtype, taps in (dy, dx, c)
    order; pad: value of a tap outside the image. Each output sums its taps in that order,
    as the generated C does, so float results match it exactly; filters are the inner,
    vectorized loop. Outputs as in :func:`_conv_bits`.
    """
    n_img, h, w, c = x.shape
    f_n = wt.shape[1]
    z = np.empty((ho * wo, f_n), wt.dtype)
    m = np.empty(f_n, wt.dtype)
    corr = np.zeros((0, f_n), wt.dtype)
    for n in range(n_img):
        for oy in range(ho):
            for ox in range(wo):
                q = oy * wo + ox
                for f in range(f_n):
                    z[q, f] = 0
                t = 0
                for dy in range(kh):
                    iy = oy * stride + dy - pt
                    for dx in range(kw):
                        ix = ox * stride + dx - pl
                        inside = 0 <= iy < h and 0 <= ix < w
                        for cc in range(c):
                            v = x[n, iy, ix, cc] if inside else pad
                            for f in range(f_n):
                                z[q, f] += wt[t, f] * v
                            t += 1
        if bits_out:
            _pool_threshold_pack(z, 0, ho, wo, corr, ps, pst, hp, wp, sgn, thr, out_bits, n, m)
        else:
            _pool_only(z, 0, ho, wo, corr, ps, pst, hp, wp, out_acc, n, m)


@nb.njit(**_JIT)
def _conv_raw_exact_f32(xp, orig, toff, w1, f_, ho, wo, ps, pst, hp, wp, chunk, sgn, thr,
                        bits_out, out_bits, out_acc):
    """:func:`_conv_raw` for integer pixels and weights, on the engine's float32 tiles.

    Every partial sum is an integer below 2**24 (the caller checks the bound), so float32
    arithmetic gives the exact integer accumulator in any order. xp: the padded input
    flattened, orig/toff: pixel origins and tap offsets into it; w1: (K*F,) weights.
    """
    per = ho * wo
    n_img = orig.shape[0] // per
    z = np.empty(chunk * per * f_, np.float32)
    z2 = z.reshape(chunk * per, f_)
    ic = np.arange(chunk * per) * f_
    m = np.empty(f_, np.float32)
    corr = np.zeros((0, f_), np.float32)
    for i0 in range(0, n_img, chunk):
        nc = min(chunk, n_img - i0)
        gemm_offsets(xp, orig[i0 * per:(i0 + nc) * per], toff, w1, 0, f_, f_, z, 0,
                      ic[:nc * per], False)
        for i in range(nc):
            if bits_out:
                _pool_threshold_pack(z2, i * per, ho, wo, corr, ps, pst, hp, wp, sgn, thr,
                                     out_bits, i0 + i, m)
            else:
                _pool_only(z2, i * per, ho, wo, corr, ps, pst, hp, wp, out_acc, i0 + i, m)


@nb.njit(**_JIT)
def _conv_c1_pm1(xp, pat, ho, wo, pool2, hp, wp, sgn, thr, out_bits):
    """First block on one-channel integer input, weights all ±1, kernels three taps wide.

    Three ±1 taps in a kernel row form one of 8 sign patterns, so every input row gets
    its 8 signed three-tap sums once (``hs``), shared by all filters; a filter's
    accumulator is then kh additions per output against 3*kh multiply-adds. Everything
    runs in int16 on whole images flattened with the padded row stride (columns past
    ``wo`` hold sums nobody reads): short rows would keep the loops from vectorizing.
    Per filter: accumulate, max over 2x2 windows at every position (``pool2``), compare,
    and OR the filter's bit into 16-bit words; the pixel words are gathered at the end.

    xp: (N, Hp, Wp) int16 padded input, Hp >= ho + kh - 1 and Wp >= wo + 2; pat: (F, kh)
    int64, bit j set when tap dx = j is -1; sgn, thr: (F,) int32 (see _pool_threshold_pack);
    out_bits: (N, hp*wp, ceil(F/64)) uint64. The caller checks that sums of kh*3 taps fit
    in int16.
    """
    n_img, hpin, wpin = xp.shape
    f_n, kh = pat.shape
    if pool2 and kh == 3:
        _c1_pool2_k3(xp, pat, hp, wp, sgn, thr, out_bits)
        return
    big = wpin * hpin
    xf = xp.reshape(n_img, big)
    rows = ho + kh - 1
    ln = rows * wpin
    hs = np.zeros((8, ln), np.int16)
    zn = ho * wpin
    z = np.empty(zn, np.int16)
    rn = (2 * hp - 1) * wpin if pool2 else zn  # positions whose window max is needed
    qn = rn - 1 if pool2 else zn
    r = np.empty(rn, np.int16)
    w16 = np.empty(((f_n + 15) // 16, qn), np.uint16)
    fw_n = out_bits.shape[2]
    for n in range(n_img):
        _signed_sums(xf[n][0:ln - 2], xf[n][1:ln - 1], xf[n][2:ln], hs, 0, 1, ln - 2)
        w16[:] = 0
        for f in range(f_n):
            if pool2 and kh == 3:  # accumulate and take the vertical max in one pass
                p0, p1, p2 = hs[pat[f, 0]], hs[pat[f, 1]], hs[pat[f, 2]]
                a0, b0 = p0[0:rn], p0[wpin:wpin + rn]
                a1, b1 = p1[wpin:wpin + rn], p1[2 * wpin:2 * wpin + rn]
                a2, b2 = p2[2 * wpin:2 * wpin + rn], p2[3 * wpin:3 * wpin + rn]
                for q in range(rn):
                    u = np.int16(a0[q] + a1[q] + a2[q])
                    v = np.int16(b0[q] + b1[q] + b2[q])
                    r[q] = u if u > v else v
            else:
                s0 = hs[pat[f, 0]]
                for q in range(zn):
                    z[q] = s0[q]
                for dy in range(1, kh):
                    sd = hs[pat[f, dy]][dy * wpin:dy * wpin + zn]
                    for q in range(zn):
                        z[q] += sd[q]
                if pool2:
                    za, zb = z[0:rn], z[wpin:wpin + rn]
                    for q in range(rn):
                        u = za[q]
                        v = zb[q]
                        r[q] = u if u > v else v
                else:
                    r[:] = z
            one = np.uint16(1 << (f & 15))
            wr = w16[f >> 4]
            sf = sgn[f]
            tf = np.int64(thr[f])
            ra = r[0:qn]
            rb = r[1:qn + 1] if pool2 else r[0:qn]
            if sf == 0:  # the comparison 0 >= thr fails everywhere or nowhere
                if tf > 0:
                    for q in range(qn):
                        wr[q] |= one
                continue
            # sgn*m >= thr fails when m < thr (sgn 1) or m > -thr (sgn -1); m fits int16.
            t16 = np.int16(min(max(tf if sf > 0 else -tf, -32768), 32767))
            if sf > 0:
                for q in range(qn):
                    u = ra[q]
                    v = rb[q]
                    m = u if u > v else v
                    wr[q] |= one if m < t16 else np.uint16(0)
            else:
                for q in range(qn):
                    u = ra[q]
                    v = rb[q]
                    m = u if u > v else v
                    wr[q] |= one if m > t16 else np.uint16(0)
        st = 2 if pool2 else 1
        for py in range(hp):
            for px in range(wp):
                q = st * (py * wpin + px)
                for fw in range(fw_n):
                    word = np.uint64(0)
                    for j in range(4):
                        g = 4 * fw + j
                        if g < w16.shape[0]:
                            word |= np.uint64(w16[g, q]) << np.uint64(16 * j)
                    out_bits[n, py * wp + px, fw] = word


@nb.njit(**_JIT_INLINE)
def _signed_sums(a, b, c, hs, at, step, i_n):
    # The eight signed three-tap sums of taps a, b, c (patterns 0..7, bit j: tap j is
    # -1) into rows at, at + step, ..., at + 7 * step of hs.
    h0, h1, h2, h3 = hs[at], hs[at + step], hs[at + 2 * step], hs[at + 3 * step]
    h4, h5, h6, h7 = hs[at + 4 * step], hs[at + 5 * step], hs[at + 6 * step], hs[at + 7 * step]
    for i in range(i_n):
        ab = np.int16(a[i] + b[i])
        amb = np.int16(a[i] - b[i])
        ci = c[i]
        h0[i] = ab + ci
        h4[i] = ab - ci
        h2[i] = amb + ci
        h6[i] = amb - ci
        h1[i] = ci - amb
        h5[i] = -amb - ci
        h3[i] = ci - ab
        h7[i] = -ab - ci


@nb.njit(**_JIT)
def _c1_pool2_k3(xp, pat, hp, wp, sgn, thr, out_bits):
    """:func:`_conv_c1_pm1` for 3x3 kernels and 2x2 pooling, computing only what the
    pooled outputs read.

    The padded input is split into four phases by row and column parity, each (hp + 1)
    rows of ``w2 = wp + 1`` values (one spare column), and the signed sums are kept per
    phase. The convolution at row 2*py + dy, column 2*px + dx is then three sums at the
    same flat index q = py * w2 + px (or one row further) of three phase rows, so one
    contiguous loop over q gives, per filter, the four outputs of every pooling window,
    their maximum and its comparison, without the rows and columns no window reads.
    Arguments as for :func:`_conv_c1_pm1`; xp: (N, Hp, Wp) with Hp >= 2*hp + 2 and
    Wp >= 2*wp + 2.
    """
    n_img = xp.shape[0]
    f_n = pat.shape[0]
    w2 = wp + 1
    # Positions q, rounded up to whole vector iterations (the scalar tail of a short
    # loop costs as much as its vector body); every array is long enough for them.
    nq = (hp * w2 + 63) // 64 * 64
    ln = nq + w2 + 1
    xs = np.zeros((4, ln + 1), np.int16)  # phase rp * 2 + cp; one spare value
    hs = np.zeros((32, ln), np.int16)  # pattern p, phase ph at row p * 4 + ph
    g_n = (f_n + 15) // 16
    w16 = np.empty((g_n, nq), np.uint16)
    o64 = np.empty(nq, np.uint64)
    fw_n = out_bits.shape[2]
    for n in range(n_img):
        for ph in range(4):
            rp, cp = ph // 2, ph % 2
            xph = xs[ph]
            for rr in range(hp + 1):
                for c2 in range(w2):
                    xph[rr * w2 + c2] = xp[n, 2 * rr + rp, 2 * c2 + cp]
        # Taps x, x+1, x+2 of an even column x = 2*c2 are phases (.., 0), (.., 1) at c2
        # and (.., 0) at c2 + 1; of an odd one, (.., 1), (.., 0) at c2 + 1, (.., 1) at c2 + 1.
        for rp in range(2):
            e, o = xs[rp * 2], xs[rp * 2 + 1]
            _signed_sums(e[0:ln], o[0:ln], e[1:ln + 1], hs, rp * 2, 4, ln)
            _signed_sums(o[0:ln], e[1:ln + 1], o[1:ln + 1], hs, rp * 2 + 1, 4, ln)
        w16[:] = 0
        hsf = hs.reshape(-1)
        w16f = w16.reshape(-1)
        for f in range(f_n):
            # Offsets into hsf of the twelve phase rows that the four outputs of a window
            # read: window row dy reads kernel row ky at input row 2*py + dy + ky, i.e.
            # phase row parity (dy + ky) % 2, one phase row on when dy + ky >= 2. Unsigned
            # offsets: no negative-index wraparound, which would stop vectorization; and no
            # slices per filter, each an atomic reference-count update.
            r0, r1, r2 = pat[f, 0] * 4 * ln, pat[f, 1] * 4 * ln, pat[f, 2] * 4 * ln
            ia0, ib0, ic0 = np.uint64(r0), np.uint64(r1 + 2 * ln), np.uint64(r2 + w2)
            id0, ie0, ig0 = np.uint64(r0 + 2 * ln), np.uint64(r1 + w2), np.uint64(r2 + 2 * ln + w2)
            ia1, ib1, ic1 = ia0 + np.uint64(ln), ib0 + np.uint64(ln), ic0 + np.uint64(ln)
            id1, ie1, ig1 = id0 + np.uint64(ln), ie0 + np.uint64(ln), ig0 + np.uint64(ln)
            one = np.uint16(1 << (f & 15))
            iw = np.uint64((f >> 4) * nq)
            sf = sgn[f]
            tf = np.int64(thr[f])
            if sf == 0:  # the comparison 0 >= thr fails everywhere or nowhere
                if tf > 0:
                    for q in range(nq):
                        w16f[iw + np.uint64(q)] |= one
                continue
            # sgn*m >= thr fails when m < thr (sgn 1) or m > -thr (sgn -1); m fits int16,
            # so one of the two bounds below can never be crossed.
            t16 = np.int16(min(max(tf if sf > 0 else -tf, -32768), 32767))
            lo = t16 if sf > 0 else np.int16(-32768)
            hi = t16 if sf < 0 else np.int16(32767)
            for q in range(nq):
                u = np.uint64(q)
                s00 = np.int16(hsf[ia0 + u] + hsf[ib0 + u] + hsf[ic0 + u])
                s10 = np.int16(hsf[id0 + u] + hsf[ie0 + u] + hsf[ig0 + u])
                s01 = np.int16(hsf[ia1 + u] + hsf[ib1 + u] + hsf[ic1 + u])
                s11 = np.int16(hsf[id1 + u] + hsf[ie1 + u] + hsf[ig1 + u])
                m0 = s00 if s00 > s10 else s10
                m1 = s01 if s01 > s11 else s11
                m = m0 if m0 > m1 else m1
                w16f[iw + u] |= one if (m < lo or m > hi) else np.uint16(0)
        for fw in range(fw_n):
            o64[:] = 0
            for j in range(4):
                g = 4 * fw + j
                if g < g_n:
                    wg = w16[g]
                    sh = np.uint64(16 * j)
                    for q in range(nq):
                        o64[q] |= np.uint64(wg[q]) << sh
            for py in range(hp):
                for px in range(wp):
                    out_bits[n, py * wp + px, fw] = o64[py * w2 + px]


@nb.njit(**_JIT)
def _dense_raw(x, wt, out):
    """x: (N, K) int32/float32; wt: (K, F) same dtype; sums in ascending k, as the C does."""
    for n in range(x.shape[0]):
        _dense_raw_image(x, n, wt, out)
    return out


@nb.njit(**_JIT)
def _dense_raw_image(x, n, wt, out):
    k_n, f_n = wt.shape
    acc = np.zeros(f_n, wt.dtype)
    for j in range(k_n):
        v = x[n, j]
        for f in range(f_n):
            acc[f] += wt[j, f] * v
    for f in range(f_n):
        out[n, 0, f] = acc[f]


@nb.njit(**_JIT)
def _threshold_pack(acc, sgn, thr, out):
    """Bits of the comparison ``sgn[f] * acc >= thr[f]`` (true means +1, bit 0).

    acc: (N, P, F) int32/float32; sgn: (F,) -1/0/+1 and thr: (F,) int32 or float64, which
    encode the four threshold modes; out: (N, P, ceil(F/64)) uint64.
    """
    n_img, p_n, f_n = acc.shape
    z = acc.reshape(n_img * p_n, f_n)
    corr = np.zeros((0, f_n), acc.dtype)
    m = np.empty(f_n, acc.dtype)
    for n in range(n_img):
        _pool_threshold_pack(z, n * p_n, 1, p_n, corr, 1, 1, 1, p_n, sgn, thr, out, n, m)
    return out


@nb.njit(**_JIT)
def _scale_offset(acc, scale, offset, out):
    """out[n, j] = float32(acc[n, j]) * scale[j] + offset[j], rounded after the multiply
    and after the add (no fused multiply-add): the logits. acc: (N, J); scale, offset:
    (J,) float32; out: (N, J) float32."""
    for n in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[n, j] = np.float32(acc[n, j]) * scale[j] + offset[j]
    return out


# --------------------------------------------------------------------------- packing helpers


