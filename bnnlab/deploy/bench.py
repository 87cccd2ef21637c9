"""Time the runtime against the same network in float32 through NumPy/BLAS, in one run.

The float32 twin is what a float framework does with a binary network: every layer as a
float32 matrix product (im2col + BLAS ``sgemm`` for convolutions), the binary weights and
activations stored as float ±1, batch norm as float multiply-add, sign by comparison.
It is built from the same engine model, so it computes the same predictions (up to
float rounding at a threshold), and its thread count is set with threadpoolctl.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from ..core.layers import Activation, BatchNorm, Flatten, MaxPool2D, QuantConv2D, _QuantBase
from ..core.model import Sequential

__all__ = ["FloatTwin", "Timing", "time_float", "time_runtime"]


class FloatTwin:
    """``Sequential`` inference in float32 with NumPy/BLAS only."""

    def __init__(self, model: Sequential):
        self.input_shape = model.input_shape
        self.steps = []
        for layer in model.layers:
            if isinstance(layer, _QuantBase):
                w = np.asarray(layer.quantized_kernel(), np.float32)
                iq = layer.input_quantizer
                binarize = iq is not None and iq.binary
                bias = None if layer.bias is None else layer.bias.value.astype(np.float32)
                if isinstance(layer, QuantConv2D):
                    kh, kw = layer.kernel_size
                    geo = (kh, kw, layer.strides, layer._pt, layer._pl, layer.output_shape[:2],
                           np.float32(layer.pad_values))
                    self.steps.append(("conv", w.reshape(-1, w.shape[-1]), bias, binarize, geo,
                                       layer.activation))
                else:
                    self.steps.append(("dense", w, bias, binarize, None, layer.activation))
            elif isinstance(layer, BatchNorm):
                a, b = layer.scale_offset()
                self.steps.append(("bn", a, b))
            elif isinstance(layer, MaxPool2D):
                self.steps.append(("pool", layer.pool_size, layer.strides))
            elif isinstance(layer, Flatten):
                self.steps.append(("flatten",))
            elif isinstance(layer, Activation):
                self.steps.append(("act", layer.activation))

    @staticmethod
    def _im2col(x, kh, kw, stride, pt, pl, out_hw, pad):
        n, h, w, c = x.shape
        ho, wo = out_hw
        hp = max(h + pt, (ho - 1) * stride + kh)
        wp = max(w + pl, (wo - 1) * stride + kw)
        xp = np.full((n, hp, wp, c), pad, np.float32)
        xp[:, pt:pt + h, pl:pl + w] = x
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
        win = win[:, :(ho - 1) * stride + 1:stride, :(wo - 1) * stride + 1:stride]
        # (n, ho, wo, c, kh, kw) -> taps in (dy, dx, c) order, like the kernel's rows.
        return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, -1)

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float32)
        for step in self.steps:
            kind = step[0]
            if kind in ("conv", "dense"):
                _, w, bias, binarize, geo, act = step
                if binarize:
                    h = np.where(h >= 0, np.float32(1), np.float32(-1))
                if kind == "conv":
                    n = h.shape[0]
                    kh, kw, s, pt, pl, out_hw, pad = geo
                    h = (self._im2col(h, kh, kw, s, pt, pl, out_hw, pad) @ w).reshape(n, *out_hw, -1)
                else:
                    h = h @ w
                if bias is not None:
                    h += bias
                if act == "relu":
                    np.maximum(h, 0, out=h)
            elif kind == "bn":
                h = h * step[1] + step[2]
            elif kind == "pool":
                p, s = step[1], step[2]
                hh, ww = h.shape[1:3]
                ho, wo = (hh - p) // s + 1, (ww - p) // s + 1
                if p == s:  # the usual case: element-wise maxima of strided views
                    views = [h[:, dy:ho * p:p, dx:wo * p:p] for dy in range(p) for dx in range(p)]
                    h = functools.reduce(np.maximum, views)
                else:
                    win = np.lib.stride_tricks.sliding_window_view(h, (p, p), axis=(1, 2))
                    h = win[:, :(ho - 1) * s + 1:s, :(wo - 1) * s + 1:s].max(axis=(-2, -1))
            elif kind == "flatten":
                h = h.reshape(h.shape[0], -1)
            elif kind == "act" and step[1] == "relu":
                h = np.maximum(h, 0)
        return h.reshape(h.shape[0], -1)


@dataclass(frozen=True)
class Timing:
    what: str
    threads: int
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else float("inf")


def time_runtime(runtime, raw: np.ndarray, threads: int, repeats: int = 3) -> tuple[Timing, np.ndarray]:
    """Best of ``repeats`` full passes; the first (warm-up) pass is not timed."""
    pred = runtime.predict(raw[:64], threads=threads)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        pred = runtime.predict(raw, threads=threads)
        best = min(best, time.perf_counter() - t)
    return Timing("runtime", threads, len(raw), best), pred


def time_float(twin: FloatTwin, x: np.ndarray, threads: int, repeats: int = 3,
               batch_size: int = 256) -> tuple[Timing, np.ndarray]:
    """The float32 twin in batches (as Keras's ``predict`` does), BLAS limited to ``threads``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        twin.logits(x[:batch_size])
        best = float("inf")
        pred = None
        for _ in range(repeats):
            t = time.perf_counter()
            pred = np.concatenate([twin.logits(x[i:i + batch_size]).argmax(1)
                                   for i in range(0, len(x), batch_size)])
            best = min(best, time.perf_counter() - t)
    return Timing("float32 numpy/blas", threads, len(x), best), pred
