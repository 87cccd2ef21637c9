"""Compile (or load from Numba's cache) every kernel once, on tiny inputs."""

from __future__ import annotations

import numpy as np

from .batchnorm import bn_backward_train, bn_forward_train, scale_shift
from .conv import col2im, conv_backward, conv_forward_direct, im2col
from .float_gemm import matmul
from .optimizer import adam_update
from .packing import pack_conv_input, pack_patches_parallel
from .pooling import maxpool_backward, maxpool_forward
from .sign import sign_pack, ste_gate
from .xnor import xnor_gemm

__all__ = ["warm_up"]


def warm_up(progress=None) -> None:
    """Compile (or load from cache) every kernel on tiny inputs.

    The GUI calls this from a background thread at start-up; ``progress(i, total)``
    reports each kernel done. Both the serial and the parallel variants are touched, by
    asking each wrapper for one thread and for two (``threads=``); nothing global changes.
    """
    steps = []
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 3)).astype(np.float32)
    xb = np.random.default_rng(1).standard_normal((4, 9, 9, 64)).astype(np.float32)
    steps.append(lambda: pack_conv_input(x, 3, 3, 1, (1, 1), (5, 5), 0))
    w4 = np.zeros(4, np.float32)
    for nt in (1, 2):
        steps.append(lambda nt=nt: scale_shift(xb.reshape(-1, 64), w4.repeat(16), w4.repeat(16),
                                               threads=nt))
    steps.append(lambda: adam_update(w4, w4.copy(), w4.copy(), w4.copy(), 0.9, 0.999, 1e-3,
                                     1e-7, 1.0))
    a = np.zeros((4, 1), np.uint64)
    bt = np.zeros((1, 3), np.uint64)
    for parallel in (False, True):
        steps.append(lambda parallel=parallel: xnor_gemm(a, bt, 9, parallel=parallel))
        steps.append(lambda parallel=parallel: xnor_gemm(a, bt, 9, out=np.empty((4, 3), np.float32),
                                                         parallel=parallel))
    cols = np.empty((25, 27), np.float32)
    steps.append(lambda: im2col(x, 3, 3, 1, 1, 1, 5, 5, np.float32(0), cols))
    steps.append(lambda: col2im(cols, 1, 5, 5, 3, 3, 3, 1, 1, 1, 5, 5, np.empty_like(x)))
    wt = np.zeros((16, 3, 3, 64), np.float32)
    for nt in (1, 2):
        for method in ("sparse", "dense"):
            dz = np.ones((4, 7, 7, 16), np.float32)
            steps.append(lambda nt=nt, method=method, dz=dz: conv_backward(
                xb, wt, dz, 1, 0, 0, True, np.empty_like(wt), np.empty_like(xb), method=method,
                threads=nt))
        steps.append(lambda nt=nt: conv_forward_direct(
            x, np.zeros((3, 3, 3, 16), np.float32), 1, 1, 1, np.float32(0),
            np.empty((1, 5, 5, 16), np.float32), threads=nt))
        steps.append(lambda nt=nt: sign_pack(xb, threads=nt))
        steps.append(lambda nt=nt: ste_gate(xb, xb, 1.0, threads=nt))
        steps.append(lambda nt=nt: matmul(xb.reshape(-1, 64), wt.reshape(-1, 64)[:64], threads=nt))
        steps.append(lambda nt=nt: bn_forward_train(xb.reshape(-1, 64), np.ones(64, np.float32),
                                                    np.zeros(64, np.float32), 1e-3, threads=nt))
        steps.append(lambda nt=nt: bn_backward_train(xb.reshape(-1, 64), xb.reshape(-1, 64),
                                                     np.zeros(64, np.float32),
                                                     np.ones(64, np.float32),
                                                     np.ones(64, np.float32), threads=nt))
        steps.append(lambda nt=nt: pack_patches_parallel(np.zeros((4 * 81, 1), np.uint64), 4, 9, 9,
                                                         64, 3, 3, 1, 0, 0, 7, 7, 0, threads=nt))
        out = np.empty((4, 4, 4, 64), np.float32)
        arg = np.empty((4, 4, 4, 64), np.int32)
        steps.append(lambda nt=nt, out=out, arg=arg: maxpool_forward(xb, 2, 2, out, arg,
                                                                     threads=nt))
        steps.append(lambda nt=nt, out=out, arg=arg: maxpool_backward(out, arg, 2, 2,
                                                                      np.empty_like(xb),
                                                                      threads=nt))
    for i, step in enumerate(steps):
        step()
        if progress is not None:
            progress(i + 1, len(steps))
