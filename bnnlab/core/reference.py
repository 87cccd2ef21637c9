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


def maxpool_backward_ref(dy, arg, p, s, input_shape):
    """Each pooled gradient added to its window's winning input (zero elsewhere)."""
    dx = np.zeros(input_shape, np.float64)
    for i in np.ndindex(dy.shape):
        t = int(arg[i])
        dx[i[0], i[1] * s + t // p, i[2] * s + t % p, i[3]] += dy[i]
    return dx


def sign_ref(x):
    """+1 where x >= 0, else -1 (NaN too), float32: ``binarizers.sign``."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def sign_pack_ref(x):
    """(sign(x), packed sign bits of the last axis), as ``kernels.sign_pack``."""
    xq = sign_ref(x)
    return xq, pack_rows_ref(xq.reshape(-1, xq.shape[-1]))


def ste_gate_ref(x, dy, clip):
    """The ste_sign straight-through gradient dy * 1[|x| <= clip], float32."""
    return (np.asarray(dy, np.float32) * (np.abs(x) <= clip)).astype(np.float32)


def padded_input_ref(x, kh, kw, stride, pad_top, pad_left, ho, wo, value):
    """x inside a block of ``value`` big enough for every (ho, wo) window, float64."""
    n, h, w, c = x.shape
    hp = max(h + pad_top, (ho - 1) * stride + kh)
    wp = max(w + pad_left, (wo - 1) * stride + kw)
    xp = np.full((n, hp, wp, c), value, np.float64)
    xp[:, pad_top:pad_top + h, pad_left:pad_left + w] = x
    return xp


def conv_backward_ref(x, w, dz, stride, pad_top, pad_left, pad_value=0.0):
    """Dense float64 convolution gradients: (dw (kh, kw, C, F), dx (N, H, W, C)).

    w is the (kh, kw, C, F) kernel of the forward pass; padded taps hold pad_value,
    so with ±1 padding they add to dw; dx has the input's shape.
    """
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = dz.shape[1], dz.shape[2]
    xp = padded_input_ref(x, kh, kw, stride, pad_top, pad_left, ho, wo, pad_value)
    dz = dz.astype(np.float64)
    dw = np.zeros((kh, kw, c, f))
    dxp = np.zeros(xp.shape)
    for dy in range(kh):
        for dx in range(kw):
            win = (slice(None), slice(dy, dy + stride * (ho - 1) + 1, stride),
                   slice(dx, dx + stride * (wo - 1) + 1, stride))
            dw[dy, dx] = np.einsum("nhwc,nhwf->cf", xp[win], dz)
            dxp[win] += np.einsum("nhwf,cf->nhwc", dz, w[dy, dx].astype(np.float64))
    return dw, dxp[:, pad_top:pad_top + h, pad_left:pad_left + wd]


def batchnorm_train_ref(x2, gamma, beta, eps, dy2):
    """Training-mode batch norm of (M, C), float64: (y, xhat, mean, var, dx, dgamma, dbeta)."""
    x2 = x2.astype(np.float64)
    mean = x2.mean(axis=0)
    var = x2.var(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x2 - mean) * inv
    y = xhat * gamma + beta
    dy2 = dy2.astype(np.float64)
    dxhat = dy2 * gamma
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * inv
    return y, xhat, mean, var, dx, (dy2 * xhat).sum(axis=0), dy2.sum(axis=0)
