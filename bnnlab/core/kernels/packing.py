"""Bit packing: signs of float rows into 64-bit words, and the packed im2col of a
convolution, with their NumPy twins.

Convention (as in Larq Compute Engine): bit 1 means -1, bit 0 means +1; element i of a
row goes to bit ``i % 64`` of word ``i // 64`` (least-significant bit first). Rows are
padded with zero bits in *both* operands of a product, so padding never changes
``popcount(a ^ w)``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import threads as _threads
from .jit import JIT, JIT_PAR

__all__ = ["words_for", "pack_rows", "pack_patches", "pack_patches_parallel", "pack_conv_input",
           "pack_weights", "pack_rows_ref", "unpack_rows_ref"]


def words_for(k: int) -> int:
    """Number of 64-bit words that hold k bits."""
    return (int(k) + 63) // 64



@nb.njit(**JIT)
def pack_rows(x, out):
    """Pack the signs of a float matrix row by row.

    x: (M, K) float32; out: (M, words_for(K)) uint64, overwritten. Bit = 1 where x < 0.
    """
    m, k = x.shape
    kw = out.shape[1]
    for i in range(m):
        for w in range(kw):
            word = np.uint64(0)
            base = w * 64
            n = min(64, k - base)
            for b in range(n):
                if x[i, base + b] < 0:
                    word |= np.uint64(1) << np.uint64(b)
            out[i, w] = word
    return out


@nb.njit(**JIT)
def _or_bits(out, r, off, val, nbits):
    # OR the low `nbits` of `val` into row r of `out`, starting at bit `off`.
    w = off >> 6
    s = off & 63
    out[r, w] |= val << np.uint64(s)
    if s != 0 and s + nbits > 64:
        out[r, w + 1] |= val >> np.uint64(64 - s)


@nb.njit(**JIT)
def pack_patches(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out):
    """Packed im2col: one bit row per output pixel, taps in (dy, dx, channel) order.

    pix: (n*h*w, words_for(c)) uint64, each pixel's channel bits (see ``pack_rows``).
    out: (n*ho*wo, words_for(kh*kw*c)) uint64, overwritten. Taps that fall in the
    padding get ``pad_bit`` (0 = +1, 1 = -1) in all their channel bits.
    """
    if c % 64 == 0 or 64 % c == 0:
        return _pack_patches_aligned(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo,
                                     pad_bit, out)
    cw = (c + 63) // 64
    tail = c - (cw - 1) * 64
    full = np.uint64(0xFFFFFFFFFFFFFFFF)
    out[:] = 0
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                off = 0
                for dy in range(kh):
                    iy = oy * stride + dy - pad_top
                    for dx in range(kw):
                        ix = ox * stride + dx - pad_left
                        inside = 0 <= iy < h and 0 <= ix < w
                        p = (img * h + iy) * w + ix
                        for cc in range(cw):
                            nb_ = 64 if cc < cw - 1 else tail
                            if inside:
                                val = pix[p, cc]
                            elif pad_bit:
                                val = full if nb_ == 64 else (np.uint64(1) << np.uint64(nb_)) - np.uint64(1)
                            else:
                                val = np.uint64(0)
                            if val != 0:
                                _or_bits(out, r, off, val, nb_)
                            off += nb_
    return out


@nb.njit(**JIT)
def _pack_patches_aligned(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit,
                          out):
    # C a multiple of 64 (whole words per tap) or a divisor of 64 (64/C taps per word):
    # the bits of a tap never straddle a word, so each output word is built in a
    # register and stored once, with no read-modify-write of the output row.
    cw = (c + 63) // 64
    per = 64 // c if c < 64 else 1
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if c >= 64 else (np.uint64(1) << np.uint64(c)) - np.uint64(1)
    padv = mask if pad_bit else np.uint64(0)
    ntap = kh * kw
    nwo = out.shape[1]
    tdy = np.empty(ntap, np.int64)
    tdx = np.empty(ntap, np.int64)
    poff = np.empty(ntap, np.int64)
    for t in range(ntap):
        tdy[t] = t // kw - pad_top
        tdx[t] = t % kw - pad_left
        poff[t] = (t // kw) * w + t % kw
    pix1 = pix[:, 0]
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                if c >= 64:
                    for t in range(ntap):
                        iy = oy * stride + tdy[t]
                        ix = ox * stride + tdx[t]
                        if 0 <= iy < h and 0 <= ix < w:
                            p = (img * h + iy) * w + ix
                            for cc in range(cw):
                                out[r, t * cw + cc] = pix[p, cc]
                        else:
                            for cc in range(cw):
                                out[r, t * cw + cc] = padv
                elif (oy * stride - pad_top >= 0 and oy * stride - pad_top + kh <= h
                      and ox * stride - pad_left >= 0 and ox * stride - pad_left + kw <= w):
                    # The whole patch is inside: no bounds checks per tap.
                    b = (img * h + oy * stride - pad_top) * w + ox * stride - pad_left
                    if per == 2:  # 32 channels: two taps per word, spelled out
                        for wd in range(nwo):
                            lo = pix1[b + poff[2 * wd]]
                            hi = pix1[b + poff[2 * wd + 1]] if 2 * wd + 1 < ntap else np.uint64(0)
                            out[r, wd] = lo | (hi << np.uint64(32))
                        continue
                    t = 0
                    for wd in range(nwo):
                        word = np.uint64(0)
                        for q in range(min(per, ntap - t)):
                            word |= pix1[b + poff[t]] << np.uint64(q * c)
                            t += 1
                        out[r, wd] = word
                else:
                    t = 0
                    for wd in range(nwo):
                        word = np.uint64(0)
                        for q in range(min(per, ntap - t)):
                            iy = oy * stride + tdy[t]
                            ix = ox * stride + tdx[t]
                            v = padv
                            if 0 <= iy < h and 0 <= ix < w:
                                v = pix[(img * h + iy) * w + ix, 0]
                            word |= v << np.uint64(q * c)
                            t += 1
                        out[r, wd] = word
    return out


@nb.njit(**JIT_PAR)
def _pack_patches_par(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out,
                      nch):
    per = (n + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(n, ch * per)
        i1 = min(n, i0 + per)
        pack_patches(pix[i0 * h * w:i1 * h * w], i1 - i0, h, w, c, kh, kw, stride, pad_top,
                     pad_left, ho, wo, pad_bit, out[i0 * ho * wo:i1 * ho * wo])


def pack_patches_parallel(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit,
                          threads=None):
    """:func:`pack_patches` into a new array, images split over threads (see
    :func:`~.threads.chunks` for ``threads``)."""
    out = np.empty((n * ho * wo, words_for(kh * kw * c)), np.uint64)
    nch = _threads.chunks(n, out.size * 8, threads)
    if nch == 1:
        return pack_patches(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit,
                            out)
    _pack_patches_par(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out,
                      nch)
    return out


def pack_conv_input(xq: np.ndarray, kh: int, kw: int, stride: int, pads: tuple[int, int],
                    out_hw: tuple[int, int], pad_bit: int) -> np.ndarray:
    """Packed patches of a binarized NHWC input: (N*Ho*Wo, words_for(kh*kw*C)) uint64."""
    n, h, w, c = xq.shape
    pix = np.empty((n * h * w, words_for(c)), np.uint64)
    pack_rows(np.ascontiguousarray(xq.reshape(n * h * w, c), dtype=np.float32), pix)
    ho, wo = out_hw
    out = np.empty((n * ho * wo, words_for(kh * kw * c)), np.uint64)
    return pack_patches(pix, n, h, w, c, kh, kw, stride, pads[0], pads[1], ho, wo, pad_bit, out)


def pack_weights(wq: np.ndarray) -> np.ndarray:
    """Pack a (K, N) ±1 weight matrix column-wise into the (KW, N) layout of ``xnor_gemm``."""
    k, n = wq.shape
    rows = np.empty((n, words_for(k)), np.uint64)
    pack_rows(np.ascontiguousarray(wq.T, dtype=np.float32), rows)
    return np.ascontiguousarray(rows.T)


# --------------------------------------------------------------------------- twins


def pack_rows_ref(x: np.ndarray) -> np.ndarray:
    """Sign bits of each row (1 = negative), LSB first, zero-padded to whole uint64 words."""
    bits = (np.asarray(x) < 0).astype(np.uint8)
    m, k = bits.shape
    kw = (k + 63) // 64
    padded = np.zeros((m, kw * 64), np.uint8)
    padded[:, :k] = bits
    by = np.packbits(padded, axis=1, bitorder="little")  # (m, kw*8) bytes, little-endian order
    return by.view("<u8").astype(np.uint64).reshape(m, kw)


def unpack_rows_ref(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_rows_ref`: (M, KW) uint64 -> (M, K) float32 of ±1."""
    by = np.ascontiguousarray(words.astype("<u8")).view(np.uint8)
    bits = np.unpackbits(by, axis=1, bitorder="little")[:, :k]
    return np.where(bits == 1, -1.0, 1.0).astype(np.float32)
