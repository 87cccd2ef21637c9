"""Run a ``.bnn`` model: integer XNOR-popcount blocks with per-channel thresholds.

Activations between blocks are bits, one group of 64-bit words per pixel
(``(N, H*W, ceil(C/64))`` uint64, bit 1 = -1, channel c at bit c % 64 of word c // 64, tail
bits zero). Every block computes its accumulator, max-pools it, then either compares it
with its thresholds (bits out) or maps it to logits with a float scale and offset. Only a
first block on float input and the final logits touch floating point.

The kernels are plain compiled loops that release the GIL; :meth:`Runtime.logits` runs
slices of a batch on Python threads (Numba's ``prange`` stopped LLVM from vectorizing the
loop bodies and was slower here). The NumPy oracle of all this is
:mod:`bnnlab.deploy.reference`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

from ..core.kernels import (gemm_offsets, offset_tables, pack_patches, pad_input,
                            padded_extent, xnor_gemm_serial)
from .format import MODE_GE, MODE_LE, MODE_PLUS, Block, ModelFile, ModelFileError, read_file
from .limits import check_runtime_cost

__all__ = ["Runtime", "available_cpus", "load_runtime", "pack_activations", "raw_from_unit",
           "unpack_activations"]

_JIT = dict(nogil=True, cache=True, error_model="numpy")
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
def _conv_bits(x, wt, k, h, w, c, kh, kw, stride, pt, pl, pad_bit, corr, ho, wo, ps, pst,
               hp, wp, chunk, sgn, thr, bits_out, out_bits, out_acc):
    """Binary convolution of packed pixels, max pool, then thresholds or accumulators.

    x: (N, h*w, CW) uint64 pixel words; wt: (KW, F) uint64, filter rows of K = kh*kw*c bits
    in (dy, dx, c) order stored word-major (the GEMM's B layout); pad_bit: what a padding
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
        xnor_gemm_serial(a[:r], wt, k, z[:r])
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
        x0 = xf[n][0:ln - 2]
        x1 = xf[n][1:ln - 1]
        x2 = xf[n][2:ln]
        h0, h1, h2, h3 = hs[0], hs[1], hs[2], hs[3]
        h4, h5, h6, h7 = hs[4], hs[5], hs[6], hs[7]
        for i in range(ln - 2):
            a = x0[i]
            b = x1[i]
            c = x2[i]
            ab = np.int16(a + b)
            amb = np.int16(a - b)
            h0[i] = ab + c
            h4[i] = ab - c
            h2[i] = amb + c
            h6[i] = amb - c
            h1[i] = c - amb
            h5[i] = -amb - c
            h3[i] = c - ab
            h7[i] = -ab - c
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


# --------------------------------------------------------------------------- packing helpers


def pack_activations(signs: np.ndarray) -> np.ndarray:
    """(N, P, C) signs (negative = -1) -> (N, P, ceil(C/64)) uint64 words, bit 1 = -1."""
    n, p, c = signs.shape
    cw = -(-c // 64)
    bits = np.zeros((n, p, cw * 64), np.uint8)
    bits[..., :c] = signs < 0
    return np.packbits(bits, axis=-1, bitorder="little").view("<u8").astype(np.uint64).reshape(n, p, cw)


def unpack_activations(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of :func:`pack_activations`: int8 ±1 of shape (N, P, c)."""
    n, p, cw = words.shape
    b = np.unpackbits(words.astype("<u8").view(np.uint8).reshape(n, p, cw * 8), axis=-1,
                      bitorder="little")[..., :c]
    return (1 - 2 * b.astype(np.int8))


# Filters unpacked to one byte per weight at a time: about this many weights, so that
# preparing a block costs a bounded amount of memory beyond its packed kernel.
_GROUP_WEIGHTS = 1 << 22


def _filter_groups(b: Block):
    """(f0, f1, int8 ±1 signs (f1 - f0, K)) for consecutive groups of a bit kernel's filters."""
    k = b.fan_in
    step = max(1, _GROUP_WEIGHTS // k)
    for f0 in range(0, b.out_channels, step):
        f1 = min(b.out_channels, f0 + step)
        start, stop = f0 * k, f1 * k
        bits = np.unpackbits(b.kernel_data[start // 8:-(-stop // 8)], bitorder="little")
        bits = bits[start % 8:start % 8 + stop - start].reshape(f1 - f0, k)
        signs = bits.view(np.int8)
        signs *= -2
        signs += 1
        yield f0, f1, signs


def _tap_words(signs: np.ndarray, taps: int, c: int) -> np.ndarray:
    """(F, taps*c) signs -> (taps*CW, F) uint64 in the activation word layout."""
    f = signs.shape[0]
    return np.ascontiguousarray(pack_activations(signs.reshape(f, taps, c)).reshape(f, -1).T)


def raw_from_unit(x01: np.ndarray, encoding: str) -> np.ndarray:
    """Dataset images in [0, 1] (uint8 / 255) -> the raw pixels a model file reads."""
    pixels = np.rint(np.asarray(x01, np.float64) * 255.0)
    return pixels.astype(np.uint8) if encoding == "uint8" else pixels.astype(np.float32)


# --------------------------------------------------------------------------- the runtime


class _Prepared:
    """A block's arrays in the layout its kernel wants."""

    def __init__(self, b: Block):
        self.b = b
        self.k = b.fan_in
        self.ho, self.wo, _ = b.conv_shape
        self.hp, self.wp, self.f = b.out_shape
        self.ps, self.pst = b.pool if b.pool[0] else (1, 1)
        taps = self.k // b.in_shape[2] if b.kind == "conv2d" else b.in_shape[0] * b.in_shape[1]
        dtype = np.int32 if b.acc == "int32" else np.float32
        if b.input == "raw" and b.acc == "int32" and 255 * self.k <= 0x7FFF:
            dtype = np.int16  # twice the SIMD lanes; pixel sums this small cannot overflow
        if b.input == "bits" and b.kind == "conv2d":
            # One word row per filter of K bits; the padding table needs per-tap sums.
            self.wt = np.empty((-(-self.k // 64), self.f), np.uint64)
            per_tap = np.empty((self.f, taps), np.int64)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = pack_activations(signs[:, None, :]).reshape(f1 - f0, -1).T
                per_tap[f0:f1] = signs.reshape(f1 - f0, taps, -1).sum(axis=2, dtype=np.int64)
            self.pad_bit = 1 if b.pad_value == -1 else 0
            self.corr = self._zero_pad_correction(b, per_tap) if b.pad_value == 0 else \
                np.zeros((0, self.f), np.int32)
            self.chunk = max(1, _CHUNK_BYTES // (4 * self.ho * self.wo * self.f))
        elif b.input == "bits":
            c = b.in_shape[2]
            self.wt = np.empty((taps * -(-c // 64), self.f), np.uint64)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = _tap_words(signs, taps, c)
        elif b.kernel == "bits":  # (K, F): filters innermost, for the vectorized loops
            self.wt = np.empty((self.k, self.f), dtype)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = signs.T
        else:
            self.wt = np.ascontiguousarray(b.kernel_data.T.astype(dtype))
        self.dtype = dtype
        if b.output == "bits":
            m = b.modes
            sgn = np.select([m == MODE_GE, m == MODE_LE], [1, -1], 0)
            thr = np.select([m == MODE_GE, m == MODE_LE, m == MODE_PLUS],
                            [b.thresholds.astype(np.float64), -b.thresholds.astype(np.float64), 0.0],
                            1.0)
            if b.acc == "int32":
                # |accumulator| < 2**31, so clipping a threshold to int32 keeps every result.
                lim = np.iinfo(np.int32)
                self.sgn = sgn.astype(np.int32)
                self.thr = np.clip(np.ceil(thr), lim.min, lim.max).astype(np.int32)
            else:
                self.sgn, self.thr = sgn.astype(np.float64), thr
        # One-channel integer pixels with ±1 kernels three taps wide (a binary first
        # layer on images) share signed row sums between filters; see _conv_c1_pm1.
        self.c1_pm1 = (b.kind == "conv2d" and b.input == "raw" and b.output == "bits"
                       and dtype == np.int16 and b.in_shape[2] == 1
                       and tuple(b.kernel_size)[1] == 3 and b.stride == 1
                       and (self.ps, self.pst) in ((1, 1), (2, 2))
                       and float(b.pad_value).is_integer() and abs(float(b.pad_value)) <= 255
                       and bool(np.all(np.abs(self.wt) == 1)))
        if self.c1_pm1:
            kh = b.kernel_size[0]
            neg = (self.wt.T.reshape(self.f, kh, 3) < 0).astype(np.int64)
            self.pat = np.ascontiguousarray(neg[:, :, 0] | neg[:, :, 1] << 1 | neg[:, :, 2] << 2)
        # Integer pixels and weights whose sums stay below 2**24 run on float32 tiles,
        # exactly; real-valued inputs keep the tap order of the C code instead.
        self.exact_f32 = (b.kind == "conv2d" and b.input == "raw" and dtype != np.float32
                          and not self.c1_pm1
                          and 255 * self.k * int(np.abs(self.wt).max(initial=0)) < (1 << 24))
        if self.exact_f32:
            self.w1 = self.wt.astype(np.float32).reshape(-1)
            self.chunk = max(1, _CHUNK_BYTES // (4 * self.ho * self.wo * self.f))
            if b.output == "bits":  # exact: |accumulator| < 2**24
                self.sgn_f32, self.thr_f32 = self.sgn.astype(np.float32), self.thr.astype(np.float32)

    @staticmethod
    def _zero_pad_correction(b: Block, per_tap: np.ndarray) -> np.ndarray:
        """(ho*wo, F): what the padding taps add when packed as +1, to subtract again.

        per_tap: (F, kh*kw) the sum of each filter's signs at each tap.
        """
        h, w, c = b.in_shape
        kh, kw = b.kernel_size
        pt, pb, pl, pr = b.pads
        if not any(b.pads):
            return np.zeros((0, b.out_channels), np.int32)
        ho, wo, _ = b.conv_shape
        s = b.stride
        outside = np.ones((h + pt + pb, w + pl + pr), np.int64)
        outside[pt:pt + h, pl:pl + w] = 0
        taps = np.stack([outside[dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
                         for dy in range(kh) for dx in range(kw)], axis=-1)  # (ho, wo, taps)
        return np.ascontiguousarray((taps.reshape(ho * wo, -1) @ per_tap.T).astype(np.int32))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The block's output for a batch: bit words (N, P, ceil(F/64)), or float32 logits."""
        b, n = self.b, x.shape[0]
        bits_out = b.output == "bits"
        acc_dtype = np.int32 if b.input == "bits" else self.dtype
        out_bits = np.empty((n, self.hp * self.wp, -(-self.f // 64)) if bits_out else (0, 0, 1),
                            np.uint64)
        out_acc = np.empty((0, 0, self.f) if bits_out else (n, self.hp * self.wp, self.f),
                           acc_dtype)
        sgn = self.sgn if bits_out else np.zeros(0, np.int32)
        thr = self.thr if bits_out else np.zeros(0, np.int32)
        if b.kind == "dense":
            acc = np.empty((n, 1, self.f), acc_dtype)
            if b.input == "bits":
                xnor_gemm_serial(np.ascontiguousarray(x.reshape(n, -1)), self.wt, self.k,
                                 acc.reshape(n, self.f))
            else:
                _dense_raw(np.ascontiguousarray(x.reshape(n, -1)), self.wt, acc)
            if bits_out:
                return _threshold_pack(acc, sgn, thr, out_bits)
            out_acc = acc
        else:
            h, w, c = b.in_shape
            kh, kw = b.kernel_size
            pt, _, pl, _ = b.pads
            if b.input == "bits":
                _conv_bits(x, self.wt, self.k, h, w, c, kh, kw, b.stride, pt, pl, self.pad_bit,
                           self.corr, self.ho, self.wo, self.ps, self.pst, self.hp, self.wp,
                           min(self.chunk, n), sgn, thr, bits_out, out_bits, out_acc)
            elif self.c1_pm1:
                ho, wo = self.ho, self.wo
                hp_in = padded_extent(h, kh, 1, pt, ho)
                wp_in = padded_extent(w, kw, 1, pl, wo)
                if pt == 0 and pl == 0 and hp_in <= h and wp_in <= w:
                    xp = np.ascontiguousarray(x.reshape(n, h, w), dtype=np.int16)
                else:
                    xp = np.full((n, max(hp_in, h + pt), max(wp_in, w + pl)),
                                 int(b.pad_value), np.int16)
                    xp[:, pt:pt + h, pl:pl + w] = x.reshape(n, h, w)
                _conv_c1_pm1(xp, self.pat, ho, wo, self.ps == 2, self.hp, self.wp, self.sgn,
                             self.thr, out_bits)
            elif self.exact_f32:
                ho, wo = self.ho, self.wo
                xp = pad_input(x, pt, pl, padded_extent(h, kh, b.stride, pt, ho),
                               padded_extent(w, kw, b.stride, pl, wo), float(b.pad_value))
                orig, toff = offset_tables(n, xp.shape[1], xp.shape[2], c, kh, kw, ho, wo,
                                            b.stride)
                _conv_raw_exact_f32(xp.reshape(-1), orig, toff, self.w1, self.f, ho, wo,
                                    self.ps, self.pst, self.hp, self.wp, min(self.chunk, n),
                                    self.sgn_f32 if bits_out else np.zeros(0, np.float32),
                                    self.thr_f32 if bits_out else np.zeros(0, np.float32),
                                    bits_out, out_bits, out_acc)
            else:
                _conv_raw(x, self.wt, kh, kw, b.stride, pt, pl, self.dtype(b.pad_value),
                          self.ho, self.wo, self.ps, self.pst, self.hp, self.wp, sgn, thr,
                          bits_out, out_bits, out_acc)
            if bits_out:
                return out_bits
        # Float32 multiply then add, unfused, as the engine's batch norm and the C do it;
        # a logit beyond float32 becomes infinite there as here, without a warning.
        with np.errstate(over="ignore", invalid="ignore"):
            z = out_acc.astype(np.float32) * b.scale
            z += b.offset
        return z.reshape(n, -1)


class Runtime:
    """Inference on a :class:`~bnnlab.deploy.format.ModelFile`.

    Inputs are *raw*: what the file's input record reads (uint8 pixels 0..255 for image
    models, float32 values otherwise); :func:`raw_from_unit` converts dataset images.
    """

    def __init__(self, mf: ModelFile, file_bytes: int | None = None,
                 max_memory: int | None = None, max_work: int | None = None):
        # Refuse, before allocating, a model that would take too much memory or time
        # (limits in bnnlab.deploy.limits; None takes the default or the environment's).
        self.cost = check_runtime_cost(mf, file_bytes, max_memory, max_work)
        self.model_file = mf
        self.input = mf.input
        self.class_names = mf.class_names
        self.metadata = dict(mf.metadata)
        self._blocks = [_Prepared(b) for b in mf.blocks]
        per_image = max(4 * (np.prod(b.conv_shape) + np.prod(b.in_shape)) for b in mf.blocks)
        # Keep a slice's buffers near 64 MiB however large the model's activations are.
        self.batch_size = int(max(1, min(1024, (64 << 20) // max(int(per_image), 1))))

    @property
    def n_outputs(self) -> int:
        return self.model_file.n_outputs

    def _normalize(self, raw: np.ndarray) -> np.ndarray:
        spec = self.input
        if raw.shape[1:] != tuple(spec.shape):
            raise ValueError(f"the model reads inputs of shape {spec.shape}, got {raw.shape[1:]}")
        if spec.encoding == "uint8" and raw.dtype != np.uint8:
            raise ValueError(f"the model reads uint8 pixels, got {raw.dtype}")
        b0 = self._blocks[0]
        if b0.dtype != np.float32:
            x = raw.astype(b0.dtype)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                x = raw.astype(np.float32) * np.float32(spec.scale)
                x += np.float32(spec.offset)
        shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
        return np.ascontiguousarray(x.reshape(raw.shape[0], *shape))

    def _run(self, raw: np.ndarray, trace: list | None = None) -> np.ndarray:
        x = self._normalize(raw)
        for pb in self._blocks:
            x = pb.run(x)
            if trace is not None:
                trace.append(x if pb.b.output == "logits" else
                             unpack_activations(x, pb.f).reshape(x.shape[0], -1))
        return x

    def logits(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, n_outputs) float32 logits of raw inputs (N, *input shape).

        ``threads`` (default: every CPU this process may use) run slices of the batch at
        once; the kernels release the GIL, so plain Python threads share the work.
        """
        raw = np.asarray(raw)
        threads = available_cpus() if threads is None else max(1, int(threads))
        # Slices of at most 256 images, and at least one slice per thread.
        step = max(1, min(self.batch_size, 256, -(-len(raw) // threads)))
        slices = [raw[i:i + step] for i in range(0, len(raw), step)]
        if threads == 1 or len(slices) < 2:
            outs = [self._run(s) for s in slices]
        else:
            with ThreadPoolExecutor(max_workers=min(threads, len(slices))) as pool:
                outs = list(pool.map(self._run, slices))
        return np.concatenate(outs) if outs else np.zeros((0, self.n_outputs), np.float32)

    def predict(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Class index per input (first maximum, like ``numpy.argmax``)."""
        return self.logits(raw, threads).argmax(axis=1)

    def trace(self, raw: np.ndarray) -> list[np.ndarray]:
        """Every block's output for a small batch: int8 ±1 (N, elements), then the logits."""
        out: list[np.ndarray] = []
        self._run(np.asarray(raw), out)
        return out

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) the kernels this model uses."""
        shape = (1, *self.input.shape)
        self.logits(np.zeros(shape, np.uint8 if self.input.encoding == "uint8" else np.float32))


def available_cpus() -> int:
    """CPUs this process may run on: the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_runtime(path: str | os.PathLike, max_memory: int | None = None,
                 max_work: int | None = None) -> Runtime:
    """A :class:`Runtime` for a ``.bnn`` file; every refusal is a ModelFileError naming it."""
    mf = read_file(path)
    try:
        return Runtime(mf, os.path.getsize(path), max_memory, max_work)
    except ModelFileError as exc:
        raise ModelFileError(f"{os.fspath(path)}: {exc}") from None
