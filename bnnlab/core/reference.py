"""Slow, obvious NumPy twins of the Numba kernels: the oracle the tests compare against.

Written for clarity, not speed; nothing here is used on a hot path.
"""

from __future__ import annotations

import numpy as np

from .shapes import conv_output_size


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


def pad_nhwc(x: np.ndarray, kh: int, kw: int, stride: int, padding: str, value: float):
    n, h, w, c = x.shape
    ho, pt = conv_output_size(h, kh, stride, padding)
    wo, pl = conv_output_size(w, kw, stride, padding)
    need_h = (ho - 1) * stride + kh
    need_w = (wo - 1) * stride + kw
    xp = np.full((n, max(need_h, h + pt), max(need_w, w + pl), c), value, dtype=np.float32)
    xp[:, pt:pt + h, pl:pl + w, :] = x
    return xp, ho, wo


def im2col_ref(x, kh, kw, stride, padding, pad_value=0.0):
    """Patches (N*Ho*Wo, kh*kw*C) with taps in (dy, dx, c) order."""
    xp, ho, wo = pad_nhwc(x, kh, kw, stride, padding, pad_value)
    n, c = x.shape[0], x.shape[3]
    cols = np.empty((n, ho, wo, kh, kw, c), np.float32)
    for dy in range(kh):
        for dx in range(kw):
            cols[:, :, :, dy, dx, :] = xp[:, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride, :]
    return cols.reshape(n * ho * wo, kh * kw * c)


def conv2d_ref(x, w, stride=1, padding="valid", pad_value=0.0):
    """Direct NHWC convolution (cross-correlation) with kernel (kh, kw, cin, cout), float64."""
    kh, kw, cin, cout = w.shape
    xp, ho, wo = pad_nhwc(x, kh, kw, stride, padding, pad_value)
    n = x.shape[0]
    y = np.zeros((n, ho, wo, cout), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride, :].astype(np.float64)
            y += np.einsum("nhwc,co->nhwo", patch, w[dy, dx].astype(np.float64))
    return y


def maxpool_ref(x, p, s):
    n, h, w, c = x.shape
    ho, wo = (h - p) // s + 1, (w - p) // s + 1
    win = np.stack(
        [x[:, dy:dy + s * ho:s, dx:dx + s * wo:s, :] for dy in range(p) for dx in range(p)],
        axis=-1,
    )
    return win.max(axis=-1), win.argmax(axis=-1).astype(np.int8)
