"""Compare a deployed model with the engine, image by image and bit by bit.

The runtime's integer thresholds reproduce the engine's float32 arithmetic exactly for
every binary-input layer (see :mod:`bnnlab.deploy.fold`). The one place they can part is
a real-valued first layer: the engine sums float pixels in its own order and rounds, the
runtime sums exactly (or in another order), so a unit whose batch-normalized value is
within rounding of zero can take the other sign. :func:`compare_with_engine` finds every
such bit and reports how far from zero the engine's value was, so each disagreement can
be traced to a tie rather than taken on trust.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.layers import _QuantBase
from ..core.model import Sequential
from .runtime import Runtime

__all__ = ["Comparison", "Disagreement", "compare_with_engine", "engine_trace"]


@dataclass(frozen=True)
class Disagreement:
    """One input whose predicted class differs."""

    index: int
    engine: int
    runtime: int
    block: int  # first block whose output bits differ; -1 when only the logits differ
    bits: int  # how many bits of that block differ
    margin: float  # the largest |engine value before sign| among them


@dataclass(frozen=True)
class Comparison:
    n: int
    same: int  # inputs with the same predicted class
    first_block_bits: tuple[int, ...]  # per block: differing bits where that block is the first to differ
    max_margin: tuple[float, ...]  # per block: largest |engine value| at such a bit (0 if none)
    disagreements: tuple[Disagreement, ...]

    @property
    def tie_bits(self) -> int:
        return sum(self.first_block_bits)


def engine_trace(model: Sequential, x: np.ndarray) -> list[np.ndarray]:
    """The engine's value at each block boundary (what the next layer binarizes), then logits."""
    compute = [i for i, layer in enumerate(model.layers) if isinstance(layer, _QuantBase)]
    cuts = {i - 1 for i in compute[1:]}
    out = []
    h = np.ascontiguousarray(x, dtype=np.float32)
    for i, layer in enumerate(model.layers):
        h = layer.forward(h)
        if i in cuts:
            out.append(h.reshape(h.shape[0], -1).copy())
    out.append(h.reshape(h.shape[0], -1))
    return out


def compare_with_engine(model: Sequential, runtime: Runtime, x: np.ndarray, raw: np.ndarray,
                        batch_size: int = 500) -> Comparison:
    """Run both on the same inputs (``x`` for the engine, ``raw`` for the runtime)."""
    n_blocks = len(runtime.model_file.blocks)
    first_bits = np.zeros(n_blocks, np.int64)
    margins = np.zeros(n_blocks)
    same = 0
    found = []
    for start in range(0, len(x), batch_size):
        eng = engine_trace(model, x[start:start + batch_size])
        rt = runtime.trace(raw[start:start + batch_size])
        pe, pr = eng[-1].argmax(1), rt[-1].argmax(1)
        same += int((pe == pr).sum())
        first = np.full(len(pe), -1)
        nbits = np.zeros(len(pe), np.int64)
        marg = np.zeros(len(pe))
        for b in range(n_blocks - 1):
            diff = np.where(eng[b] >= 0, 1, -1) != rt[b]
            new = diff.any(axis=1) & (first < 0)
            if new.any():
                first[new] = b
                nbits[new] = diff[new].sum(axis=1)
                marg[new] = np.where(diff[new], np.abs(eng[b][new]), 0).max(axis=1)
                first_bits[b] += int(nbits[new].sum())
                margins[b] = max(margins[b], float(marg[new].max()))
        for j in np.flatnonzero(pe != pr):
            found.append(Disagreement(start + int(j), int(pe[j]), int(pr[j]), int(first[j]),
                                      int(nbits[j]), float(marg[j])))
    return Comparison(len(x), same, tuple(int(v) for v in first_bits), tuple(margins), tuple(found))
