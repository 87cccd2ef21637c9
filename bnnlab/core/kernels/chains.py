"""Inference chains: a convolution's output through max pooling, batch norm and the next
layer's sign, straight into that layer's packed input bits, with their NumPy twins.

At inference the values between two binary layers matter only through the signs the
second one packs. Computed layer by layer, each step writes a full float array to
memory and the next reads it back (a 26x26x32 convolution output is 86 KB per image,
22 MB per batch of 256). These kernels run the same steps on a few images at a time, so
the intermediate arrays stay in the L2 cache, and they never write the ±1 floats the
sign would make (only its bits):

- :func:`chain_bits`: a float array (N, H, W, C) -> [max pooling] -> ``x * a + b`` ->
  sign bits;
- :func:`float_conv_chain`: a float convolution (the product of :func:`~.conv.
  conv_forward_direct`), its bias and ReLU, then the chain;
- :func:`binary_conv_chain`: a binary convolution from packed input pixels (packed
  im2col and the XNOR GEMM), its padding correction, bias and ReLU, then the chain.

Every step is the engine's own arithmetic in the same order: the products are computed
by the same kernels (``gemm_offsets``, ``pack_patches``, and the XNOR GEMM with the
weights' nibble panels made beforehand, ``xnor_gemm_prepared``; integer counts, the
same whatever the count) on row blocks that start at multiples of four rows, pooling by the same row kernel, and the
float32 ``x * a`` and ``+ b`` round separately (no fused multiply-add, no fastmath), as
:func:`~.batchnorm.scale_shift` does. So the bits equal those of the layer-by-layer
pass. A sign bit is 1 where ``not (y >= 0)`` (negative or NaN), as ``binarizers.sign``.

Bits are packed in rows of ``rlen`` consecutive elements of the chain's output in NHWC
order: ``rlen = C`` packs each pixel's channels (the input of a binary convolution),
``rlen = H*W*C`` each image (a binary dense layer after ``Flatten``). ``a`` and ``b``
hold one number per element of a row (the per-channel values tiled over the row).

``threads`` in the wrappers: see :func:`~.threads.chunks`.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import threads as _threads
from .float_gemm import gemm_offsets
from .jit import JIT
from .packing import pack_patches, pack_rows_ref, words_for
from .pooling import _maxpool_forward_rows, maxpool_ref
from .xnor import gemm_panels, xnor_gemm_prepared

__all__ = ["ChainGeometry", "chain_bits", "float_conv_chain", "binary_conv_chain",
           "affine_sign_pack", "chain_block_images", "chain_bits_ref"]

# The images of a block are sized so that a block of the convolution's float output takes
# about this many bytes (it stays in L2 while the chain reads it back).
BLOCK_BYTES = 192 << 10


def chain_block_images(pixels: int, channels: int, n: int) -> int:
    """Images per block for a producer output of ``pixels`` x ``channels`` floats per
    image: about :data:`BLOCK_BYTES`, at most ``n``, and a whole number of groups of four
    output rows (so the products' 4-row tiles fall as in the whole-batch call)."""
    b = max(1, BLOCK_BYTES // max(1, 4 * pixels * channels))
    while (b * pixels) % 4:
        b += 1
    return max(1, min(b, n))


class ChainGeometry:
    """The steps after the producer: input pixels (h, w, c) per image, the pooling (p, s;
    p = 0 for none) and its output (ho, wo), the tiled ``a``, ``b`` and the row length."""

    def __init__(self, h, w, c, pool, stride, a_row, b_row):
        self.h, self.w, self.c = int(h), int(w), int(c)
        self.pool, self.stride = int(pool), int(stride)
        if self.pool:
            self.ho = (self.h - self.pool) // self.stride + 1
            self.wo = (self.w - self.pool) // self.stride + 1
        else:
            self.ho, self.wo = self.h, self.w
        self.a_row = np.ascontiguousarray(a_row, dtype=np.float32)
        self.b_row = np.ascontiguousarray(b_row, dtype=np.float32)
        self.rlen = self.a_row.shape[0]
        out = self.ho * self.wo * self.c
        if self.b_row.shape != self.a_row.shape or self.rlen < 1 or out % self.rlen:
            raise ValueError(f"chain rows of {self.rlen} do not tile {out} outputs per image")
        self.rows_per_image = out // self.rlen

    def bits(self, n: int) -> np.ndarray:
        return np.empty((n * self.rows_per_image, words_for(self.rlen)), np.uint64)

    def args(self):
        return (self.h, self.w, self.c, self.pool, self.stride, self.ho, self.wo, self.a_row,
                self.b_row)


_V8 = ir.VectorType(ir.FloatType(), 8)


def _v8_at(context, builder, aryty, ary, idx):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.load(builder.bitcast(builder.gep(data, [idx]), _V8.as_pointer()), align=4)


@intrinsic
def _negbits8(typingctx, x, xi, a, ai, b, bi):
    # Bit t (of 8) = not (x[xi+t] * a[ai+t] + b[bi+t] >= 0): one vector multiply, one add
    # (each rounded; no fast-math flags, so never fused), an unordered less-than (true
    # for NaN) and the eight comparison bits as an integer (a movemask on x86).
    f32c = [isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C"
            for t in (x, a, b)]
    if not all(f32c) or not all(isinstance(t, types.Integer) for t in (xi, ai, bi)):
        return None

    def codegen(context, builder, sig, args):
        tx, _, ta, _, tb, _ = sig.args
        vx = _v8_at(context, builder, tx, args[0], args[1])
        va = _v8_at(context, builder, ta, args[2], args[3])
        vb = _v8_at(context, builder, tb, args[4], args[5])
        y = builder.fadd(builder.fmul(vx, va), vb)
        neg = builder.fcmp_unordered("<", y, ir.Constant(_V8, [0.0] * 8))
        return builder.zext(builder.bitcast(neg, ir.IntType(8)), ir.IntType(64))

    return types.uint64(x, xi, a, ai, b, bi), codegen


# No fastmath here: ``x * a + b`` must round twice, and "not (y >= 0)" must keep NaN.
@nb.njit(**JIT)
def affine_sign_pack(x, a_row, b_row, out):
    """out[r] = packed bits of ``not (x[r*rlen + i] * a_row[i] + b_row[i] >= 0)``.

    x: flat float32 with a whole number of rows of rlen = len(a_row); out: (rows,
    words_for(rlen)) uint64, overwritten. Eight elements at a time, the rest one by one.
    """
    rlen = a_row.shape[0]
    nw = out.shape[1]
    for r in range(out.shape[0]):
        base = r * rlen
        for wd in range(nw):
            b0 = wd * 64
            cnt = min(64, rlen - b0)
            word = np.uint64(0)
            i = 0
            while i + 8 <= cnt:
                word |= _negbits8(x, base + b0 + i, a_row, b0 + i, b_row, b0 + i) << np.uint64(i)
                i += 8
            while i < cnt:
                y = x[base + b0 + i] * a_row[b0 + i] + b_row[b0 + i]
                if not (y >= np.float32(0)):
                    word |= np.uint64(1) << np.uint64(i)
                i += 1
            out[r, wd] = word


@nb.njit(**JIT)
def _chain_block(z2, nimg, h, w, c, pool, stride, ho, wo, a_row, b_row, pooled2, noarg,
                 out):
    # z2: (nimg*h*w, c) float32; out: this block's bit rows.
    if pool:
        _maxpool_forward_rows(z2, 0, nimg * ho, h, w, pool, stride, ho, wo, pooled2, noarg)
        affine_sign_pack(pooled2[:nimg * ho * wo].reshape(-1), a_row, b_row, out)
    else:
        affine_sign_pack(z2[:nimg * h * w].reshape(-1), a_row, b_row, out)


@nb.njit(**JIT)
def _epilogue(z, rows, f, npix, corr, bias, relu):
    # What the layer's forward does after the product, element by element and in its
    # order: z -= padding correction (per output pixel), z += bias, z *= (z > 0).
    hc = corr.shape[0] > 0
    hb = bias.shape[0] > 0
    if not (hc or hb or relu):
        return
    for r in range(rows):
        p = r % npix
        for j in range(f):
            v = z[r * f + j]
            if hc:
                v = v - corr[p * f + j]
            if hb:
                v = v + bias[j]
            if relu:
                v = v * (np.float32(1) if v > np.float32(0) else np.float32(0))
            z[r * f + j] = v


@nb.njit(**JIT)
def _chain_images(z, i0, i1, bimg, h, w, c, pool, stride, ho, wo, a_row, b_row, rows_img,
                  out):
    pooled2 = np.empty((bimg * ho * wo if pool else 0, c), np.float32)
    noarg = np.empty((0, c), np.int32)
    z2 = z.reshape(-1, c)
    for b0 in range(i0, i1, bimg):
        b1 = min(i1, b0 + bimg)
        _chain_block(z2[b0 * h * w:b1 * h * w], b1 - b0, h, w, c, pool, stride, ho, wo,
                     a_row, b_row, pooled2, noarg, out[b0 * rows_img:b1 * rows_img])


@nb.njit(**dict(JIT, inline="always"))
def _span(ch, n, bimg, nch):
    # Images [i0, i1) of chunk ch of nch: whole blocks of bimg images, as even as they go.
    per = ((n + bimg - 1) // bimg + nch - 1) // nch
    i0 = min(n, ch * per * bimg)
    return i0, min(n, i0 + per * bimg)


@nb.njit(parallel=True, **JIT)
def _chain_par(z, n, bimg, h, w, c, pool, stride, ho, wo, a_row, b_row, rows_img, out, nch):
    for ch in nb.prange(nch):
        i0, i1 = _span(ch, n, bimg, nch)
        _chain_images(z, i0, i1, bimg, h, w, c, pool, stride, ho, wo, a_row, b_row, rows_img,
                      out)


def _run(n, bimg, work, threads, serial, parallel):
    nblk = (n + bimg - 1) // bimg
    nch = _threads.chunks(nblk, work, threads)
    if nch == 1:
        serial()
    else:
        parallel(nch)


def chain_bits(z: np.ndarray, geo: ChainGeometry, threads=None) -> np.ndarray:
    """The chain of ``geo`` on a float array z (N, h, w, c): new (N * rows_per_image,
    words_for(rlen)) uint64 bits."""
    n = z.shape[0]
    z1 = np.ascontiguousarray(z, dtype=np.float32).reshape(-1)
    if z1.shape[0] != n * geo.h * geo.w * geo.c:
        raise ValueError(f"chain_bits: {z.shape} is not (N, {geo.h}, {geo.w}, {geo.c})")
    out = geo.bits(n)
    bimg = chain_block_images(geo.h * geo.w, geo.c, n)
    g = geo.args()
    _run(n, bimg, z1.shape[0], threads,
         lambda: _chain_images(z1, 0, n, bimg, *g, geo.rows_per_image, out),
         lambda nch: _chain_par(z1, n, bimg, *g, geo.rows_per_image, out, nch))
    return out


# --------------------------------------------------------------------------- float convolution


@nb.njit(**JIT)
def _float_conv_images(xp, orig, toff, w1, f, bias, relu, npix, i0, i1, bimg, h, w, c, pool,
                       stride, ho, wo, a_row, b_row, rows_img, out):
    z = np.empty(bimg * npix * f, np.float32)
    ic = np.arange(bimg * npix) * f
    pooled2 = np.empty((bimg * ho * wo if pool else 0, c), np.float32)
    noarg = np.empty((0, c), np.int32)
    nocorr = np.empty(0, np.float32)
    for b0 in range(i0, i1, bimg):
        b1 = min(i1, b0 + bimg)
        rows = (b1 - b0) * npix
        gemm_offsets(xp, orig[b0 * npix:b1 * npix], toff, w1, 0, f, f, z, 0, ic[:rows], False)
        _epilogue(z, rows, f, npix, nocorr, bias, relu)
        _chain_block(z.reshape(-1, c), b1 - b0, h, w, c, pool, stride, ho, wo, a_row, b_row,
                     pooled2, noarg, out[b0 * rows_img:b1 * rows_img])


@nb.njit(parallel=True, **JIT)
def _float_conv_par(xp, orig, toff, w1, f, bias, relu, npix, n, bimg, h, w, c, pool, stride,
                    ho, wo, a_row, b_row, rows_img, out, nch):
    for ch in nb.prange(nch):
        i0, i1 = _span(ch, n, bimg, nch)
        _float_conv_images(xp, orig, toff, w1, f, bias, relu, npix, i0, i1, bimg, h, w, c,
                           pool, stride, ho, wo, a_row, b_row, rows_img, out)


def float_conv_chain(x, w, stride, pad_top, pad_left, pad_value, bias, relu, geo: ChainGeometry,
                     threads=None) -> np.ndarray:
    """Float convolution x (N, H, W, C) * w (kh, kw, C, F), as ``conv_forward_direct``
    with output (N, geo.h, geo.w, F); then ``+ bias`` (None: none) and ReLU (``relu``),
    then the chain of ``geo``. Returns the chain's bits (see :func:`chain_bits`)."""
    from .conv import offset_tables, pad_input, padded_extent

    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = geo.h, geo.w
    if geo.c != f:
        raise ValueError(f"float_conv_chain: {f} filters, the chain expects {geo.c} channels")
    xp = pad_input(x, pad_top, pad_left, padded_extent(h, kh, stride, pad_top, ho),
                   padded_extent(wd, kw, stride, pad_left, wo), float(pad_value))
    orig, toff = offset_tables(n, xp.shape[1], xp.shape[2], c, kh, kw, ho, wo, stride)
    w1 = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    b = np.empty(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    out = geo.bits(n)
    npix = ho * wo
    bimg = chain_block_images(npix, f, n)
    g = geo.args()
    r = geo.rows_per_image
    xp1 = xp.reshape(-1)
    _run(n, bimg, n * npix * f * kh * kw * c // 8, threads,
         lambda: _float_conv_images(xp1, orig, toff, w1, f, b, bool(relu), npix, 0, n, bimg,
                                    *g, r, out),
         lambda nch: _float_conv_par(xp1, orig, toff, w1, f, b, bool(relu), npix, n, bimg,
                                     *g, r, out, nch))
    return out


# --------------------------------------------------------------------------- binary convolution


@nb.njit(**JIT)
def _binary_conv_images(pix, ih, iw, ic, kh, kw, cstride, pad_top, pad_left, pad_bit, bt, bp,
                        k, corr, bias, relu, i0, i1, bimg, h, w, c, pool, stride, ho, wo, a_row,
                        b_row, rows_img, out):
    npix = h * w
    f = bt.shape[1]
    a = np.empty((bimg * npix, bt.shape[0]), np.uint64)
    z = np.empty((bimg * npix, f), np.float32)
    pooled2 = np.empty((bimg * ho * wo if pool else 0, c), np.float32)
    noarg = np.empty((0, c), np.int32)
    for b0 in range(i0, i1, bimg):
        b1 = min(i1, b0 + bimg)
        rows = (b1 - b0) * npix
        pack_patches(pix[b0 * ih * iw:b1 * ih * iw], b1 - b0, ih, iw, ic, kh, kw, cstride,
                     pad_top, pad_left, h, w, pad_bit, a[:rows])
        xnor_gemm_prepared(a[:rows], bt, bp, k, z[:rows])
        _epilogue(z.reshape(-1), rows, f, npix, corr, bias, relu)
        _chain_block(z, b1 - b0, h, w, c, pool, stride, ho, wo, a_row, b_row, pooled2, noarg,
                     out[b0 * rows_img:b1 * rows_img])


@nb.njit(parallel=True, **JIT)
def _binary_conv_par(pix, ih, iw, ic, kh, kw, cstride, pad_top, pad_left, pad_bit, bt, bp, k,
                     corr, bias, relu, n, bimg, h, w, c, pool, stride, ho, wo, a_row, b_row,
                     rows_img, out, nch):
    for ch in nb.prange(nch):
        i0, i1 = _span(ch, n, bimg, nch)
        _binary_conv_images(pix, ih, iw, ic, kh, kw, cstride, pad_top, pad_left, pad_bit, bt,
                            bp, k, corr, bias, relu, i0, i1, bimg, h, w, c, pool, stride, ho, wo,
                            a_row, b_row, rows_img, out)


def binary_conv_chain(pix, n, in_shape, kernel_size, stride, pads, pad_bit, bt, k, corr, bias,
                      relu, geo: ChainGeometry, threads=None, panels=None) -> np.ndarray:
    """Binary convolution of packed input pixels ``pix`` (n*H*W, words_for(C)), as a
    binary ``QuantConv2D`` computes it (``pack_patches``, then ``xnor_gemm`` against
    ``bt`` (words_for(k), F) with ``k = kh*kw*C``), output (N, geo.h, geo.w, F); then
    ``- corr`` (the (geo.h*geo.w, F) padding correction; None: none), ``+ bias`` (None:
    none) and ReLU, then the chain of ``geo``. Returns the chain's bits. ``panels``:
    bt's :func:`~.xnor.gemm_panels` if kept from an earlier call (None: made here)."""
    ih, iw, ic = in_shape
    kh, kw = kernel_size
    f = bt.shape[1]
    if geo.c != f:
        raise ValueError(f"binary_conv_chain: {f} filters, the chain expects {geo.c} channels")
    if pix.shape != (n * ih * iw, words_for(ic)):
        raise ValueError(f"binary_conv_chain: pixels {pix.shape}, expected "
                         f"{(n * ih * iw, words_for(ic))}")
    cr = np.empty(0, np.float32) if corr is None else np.ascontiguousarray(corr, np.float32).reshape(-1)
    b = np.empty(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    bt = np.ascontiguousarray(bt, dtype=np.uint64)
    bp = gemm_panels(bt) if panels is None else panels
    out = geo.bits(n)
    npix = geo.h * geo.w
    bimg = chain_block_images(npix, f, n)
    g = geo.args()
    r = geo.rows_per_image
    common = (np.ascontiguousarray(pix, dtype=np.uint64), ih, iw, ic, kh, kw, stride, pads[0],
              pads[1], pad_bit, bt, bp, np.int64(k), cr, b, bool(relu))
    _run(n, bimg, n * npix * f * words_for(k) * 8, threads,
         lambda: _binary_conv_images(*common, 0, n, bimg, *g, r, out),
         lambda nch: _binary_conv_par(*common, n, bimg, *g, r, out, nch))
    return out


# --------------------------------------------------------------------------- twins


def chain_bits_ref(z, pool, stride, a_row, b_row):
    """What the chain computes, with NumPy: z (N, H, W, C) float32 -> [max pooling] ->
    ``x * a + b`` per element of each row of len(a_row) (float32, rounding twice) -> sign
    bits of each row (1 where not >= 0)."""
    z = np.asarray(z, np.float32)
    y = maxpool_ref(z, pool, stride)[0] if pool else z
    rlen = len(a_row)
    rows = y.reshape(-1, rlen)
    v = (rows * np.asarray(a_row, np.float32)).astype(np.float32) + np.asarray(b_row, np.float32)
    return pack_rows_ref(np.where(v >= 0, 1.0, -1.0).astype(np.float32))
