"""Random valid ``.bnn`` records of every block kind, for testing implementations of the format.

:func:`random_model_file` draws a small model: a rank-1 or rank-3 input in either encoding
with any finite input scale (negative ones included), then 1..4 blocks. The first block
is a convolution or a dense layer on the raw input with an int32 accumulator and a bit
kernel, or a float32 accumulator with a bit or float kernel; later blocks are binary
convolutions (any kernel size, stride, padding, pad value and max pool that fit) or
binary dense layers. Thresholds are drawn near the middle of each accumulator's range so
that outputs vary, with some constant channels and some of each comparison direction.
"""

from __future__ import annotations

import math

import numpy as np

from .format import (MODE_GE, MODE_LE, MODE_MINUS, MODE_PLUS, Block, InputSpec, ModelFile,
                     pack_signs, validate)

__all__ = ["random_inputs", "random_model_file"]


def _f32(x) -> float:
    return float(np.float32(x))


def _input_spec(rng: np.random.Generator) -> InputSpec:
    if rng.random() < 0.65:
        shape = (int(rng.integers(1, 13)), int(rng.integers(1, 13)), int(rng.choice([1, 2, 3, 5, 33])))
    else:
        shape = (int(rng.integers(1, 70)),)
    encoding = "uint8" if rng.random() < 0.7 else "float32"
    if encoding == "uint8":
        scale, offset = rng.choice([(1 / 255, 0.0), (2 / 255, -1.0), (-1 / 255, 1.0), (-2 / 255, 1.0),
                                    (0.5, -3.0)])
    else:
        scale, offset = rng.choice([(1.0, 0.0), (-1.0, 0.0), (0.25, 0.5)])
    return InputSpec(shape, encoding, _f32(scale), _f32(offset))


def _geometry(rng: np.random.Generator, h: int, w: int) -> dict:
    kh = int(rng.integers(1, min(4, h) + 1))
    kw = int(rng.integers(1, min(4, w) + 1))
    pads = tuple(int(rng.integers(0, k)) if rng.random() < 0.5 else 0 for k in (kh, kh, kw, kw))
    stride = int(rng.choice([1, 1, 2, 3]))
    ho = (h + pads[0] + pads[1] - kh) // stride + 1
    wo = (w + pads[2] + pads[3] - kw) // stride + 1
    pool = (0, 0)
    if min(ho, wo) >= 2 and rng.random() < 0.4:
        size = int(rng.integers(2, min(ho, wo, 3) + 1))
        pool = (size, int(rng.integers(1, size + 1)))
    return dict(kernel_size=(kh, kw), stride=stride, pads=pads, pool=pool)


def _epilogue(rng: np.random.Generator, n: int, acc: str, spread: float, last: bool) -> dict:
    if last:
        return dict(output="logits",
                    scale=rng.normal(0, 1, n).astype(np.float32),
                    offset=rng.normal(0, spread, n).astype(np.float32))
    modes = rng.choice([MODE_GE, MODE_LE, MODE_PLUS, MODE_MINUS], n, p=[0.45, 0.45, 0.05, 0.05])
    t = rng.normal(0, spread, n)
    if acc == "int32":
        thr = np.rint(t).astype(np.int32)
    else:
        thr = t.astype(np.float32)
    thr[modes >= MODE_PLUS] = 0
    return dict(output="bits", modes=modes.astype(np.uint8), thresholds=thr)


def random_model_file(rng: np.random.Generator, max_blocks: int = 4) -> ModelFile:
    """A valid model of 1..``max_blocks`` blocks; see the module's description."""
    spec = _input_spec(rng)
    n_blocks = int(rng.integers(1, max_blocks + 1))
    shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
    spatial = len(spec.shape) == 3
    blocks = []
    for i in range(n_blocks):
        h, w, c = shape
        first, last = i == 0, i == n_blocks - 1
        conv = spatial and rng.random() < 0.7
        geo = _geometry(rng, h, w) if conv else {}
        out_c = int(rng.choice([1, 2, 3, 7, 16, 31, 32, 33, 40, 64, 65]))
        if last:
            out_c = int(rng.integers(1, 12))
        if first:
            choice = rng.random()
            if spec.encoding == "uint8" and choice < 0.5:
                kernel, acc = "bits", "int32"
            elif choice < 0.75:
                kernel, acc = "bits", "float32"
            else:
                kernel, acc = "float32", "float32"
        else:
            kernel, acc = "bits", "int32"
        pad_value = 0
        if conv and not (first and acc == "int32"):
            pad_value = int(rng.choice([0, 1, -1]))
        k = (geo["kernel_size"][0] * geo["kernel_size"][1] * c) if conv else h * w * c
        if kernel == "bits":
            kdata = pack_signs(rng.choice([-1, 1], out_c * k))
        else:
            kdata = rng.normal(0, 1, (out_c, k)).astype(np.float32)
        if first and acc == "int32":
            spread = 128 * math.sqrt(k)  # pixels around 128, random signs
        elif first:
            span = abs(spec.scale) * (255 if spec.encoding == "uint8" else 1) + abs(spec.offset)
            spread = span * math.sqrt(k)
        else:
            spread = math.sqrt(k)
        b = Block(kind="conv2d" if conv else "dense", input="raw" if first else "bits",
                  kernel=kernel, acc=acc, in_shape=(h, w, c), out_channels=out_c,
                  kernel_data=kdata, pad_value=pad_value, **geo,
                  **_epilogue(rng, out_c, acc, spread, last))
        blocks.append(b)
        shape, spatial = b.out_shape, conv
    names = tuple(f"class {j}" for j in range(math.prod(blocks[-1].out_shape))) \
        if rng.random() < 0.5 else ()
    mf = ModelFile(spec, tuple(blocks), names, {"name": "random"})
    validate(mf)
    return mf


def random_inputs(rng: np.random.Generator, mf: ModelFile, n: int) -> np.ndarray:
    """``n`` raw inputs for ``mf``: uint8 pixels, or float32 values of either sign."""
    shape = (n, *mf.input.shape)
    if mf.input.encoding == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.normal(0, 2, shape).astype(np.float32)
