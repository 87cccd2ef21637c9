"""Slow, obvious NumPy evaluation of a ``.bnn`` model: the test oracle of the runtime and the C.

Activations are ±1 numbers, the padding is filled in explicitly, convolutions are
im2col products, and the threshold modes are spelled out one by one. Integer
accumulators are exact in float64; float accumulators are summed in float32 tap by tap,
in the order the fast kernels use, so the results are comparable bit for bit.
"""

from __future__ import annotations

import numpy as np

from .format import MODE_GE, MODE_LE, MODE_MINUS, MODE_PLUS, Block, ModelFile

__all__ = ["reference_logits", "reference_trace"]


def _patches(x: np.ndarray, b: Block, pad: float) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) with taps in (dy, dx, c) order."""
    pt, pb, pl, pr = b.pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad)
    kh, kw = b.kernel_size
    ho, wo, _ = b.conv_shape
    s = b.stride
    cols = [xp[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s, :]
            for dy in range(kh) for dx in range(kw)]
    return np.concatenate(cols, axis=-1)


def _accumulate(x: np.ndarray, b: Block, exact: bool) -> np.ndarray:
    n = x.shape[0]
    if b.kind == "dense":
        cols = x.reshape(n, 1, 1, -1)
    else:
        cols = _patches(x, b, float(b.pad_value))
    w = b.weights()  # (F, K)
    if exact:
        return np.einsum("nhwk,fk->nhwf", cols.astype(np.float64), w.astype(np.float64))
    acc = np.zeros((*cols.shape[:3], w.shape[0]), np.float32)
    for k in range(w.shape[1]):  # one tap at a time: the kernels' summation order
        acc += cols[..., k:k + 1].astype(np.float32) * w[:, k]
    return acc


def _pool(acc: np.ndarray, b: Block) -> np.ndarray:
    size, stride = b.pool
    if not size:
        return acc
    hp, wp, _ = b.out_shape
    out = np.full((acc.shape[0], hp, wp, acc.shape[3]), -np.inf, acc.dtype)
    for dy in range(size):
        for dx in range(size):
            out = np.maximum(out, acc[:, dy:dy + stride * (hp - 1) + 1:stride,
                                      dx:dx + stride * (wp - 1) + 1:stride, :])
    return out


def _threshold(m: np.ndarray, b: Block) -> np.ndarray:
    t = b.thresholds.astype(np.float64)
    plus = np.zeros(m.shape, bool)
    for mode, hit in ((MODE_GE, m >= t), (MODE_LE, m <= t), (MODE_PLUS, np.ones_like(plus)),
                      (MODE_MINUS, np.zeros_like(plus))):
        sel = b.modes == mode
        plus[..., sel] = hit[..., sel]
    return np.where(plus, 1.0, -1.0)


def reference_trace(mf: ModelFile, raw: np.ndarray) -> list[np.ndarray]:
    """Every block's output (±1 as float, flattened per example), then the logits (of a
    stack of blocks; a graph has :func:`reference_logits` only).

    Float32 values that overflow become infinite (or NaN), as in the runtime and the C.
    """
    if mf.nodes:
        raise ValueError("a graph model has no chain of blocks to trace")
    with np.errstate(over="ignore", invalid="ignore"):
        return _trace(mf, raw)


def _trace(mf: ModelFile, raw: np.ndarray) -> list[np.ndarray]:
    spec = mf.input
    n = raw.shape[0]
    shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
    b0 = mf.blocks[0]
    if b0.acc == "int32":
        x = raw.astype(np.float64).reshape(n, *shape)
    else:
        x = (raw.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)).reshape(n, *shape)
    out = []
    for b in mf.blocks:
        exact = b.acc == "int32"
        m = _pool(_accumulate(x, b, exact), b)
        if b.output == "bits":
            if not exact:
                m = m.astype(np.float64)
            x = _threshold(m, b)
            out.append(x.reshape(n, -1).astype(np.int8))
        else:
            z = m.astype(np.float32) * b.scale
            z += b.offset
            out.append(z.reshape(n, -1))
    return out


def reference_logits(mf: ModelFile, raw: np.ndarray) -> np.ndarray:
    if mf.nodes:
        with np.errstate(over="ignore", invalid="ignore"):
            return _graph(mf, raw)
    return reference_trace(mf, raw)[-1]


def _graph(mf: ModelFile, raw: np.ndarray) -> np.ndarray:
    """A version 2 graph, node by node; float tensors are float32 (N, H, W, C)."""
    spec = mf.input
    n = raw.shape[0]
    shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
    tensors: list = [None]  # 0: the input, normalized by each block that reads it
    for node in mf.nodes:
        src = [tensors[s] for s in node.sources]
        if node.op == "block":
            b = mf.blocks[node.block]
            exact = b.acc == "int32"
            if b.input == "raw":
                x = (raw.astype(np.float64).reshape(n, *shape) if exact else
                     (raw.astype(np.float32) * np.float32(spec.scale)
                      + np.float32(spec.offset)).reshape(n, *shape))
            elif b.input == "signs":
                x = np.where(src[0] >= 0, 1.0, -1.0)  # sign(0) = +1; NaN gives -1
            else:
                x = src[0]
            m = _pool(_accumulate(x, b, exact), b)
            if b.output == "bits":
                y = _threshold(m if exact else m.astype(np.float64), b)
            else:
                y = m.astype(np.float32) * b.scale
                y += b.offset
        elif node.op == "add":
            y = src[0].astype(np.float32)
            for t in src[1:]:
                y = y + t  # float32, in the order of the sources
        elif node.op == "concatenate":
            y = np.concatenate(src, axis=-1)
        else:  # max pooling of floats, windows spelled out
            size, stride = node.pool
            _, h, w, _ = src[0].shape
            hp, wp = (h - size) // stride + 1, (w - size) // stride + 1
            y = np.full((n, hp, wp, src[0].shape[3]), -np.inf, np.float32)
            for dy in range(size):
                for dx in range(size):
                    y = np.maximum(y, src[0][:, dy:dy + stride * (hp - 1) + 1:stride,
                                             dx:dx + stride * (wp - 1) + 1:stride, :])
        tensors.append(y)
    return tensors[-1].reshape(n, -1)
