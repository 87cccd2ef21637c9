"""Per-layer statistics of latent weights and gradient gating, as plain functions.

The trainer's snapshots and the per-epoch records of ``bnnlab train --json`` both use
these, so a figure means the same everywhere:

* ``weights_at_clip``: fraction of latent weights with ``|w| >= bound * (1 - 1e-6)``,
  where the bound is the layer's ``weight_clip`` value, or 1 when clipping is off;
* ``weights_beyond_clip``: fraction with ``|w| > 1`` (only possible without clipping);
* ``flip_ratio``: fraction of weights whose sign differs from an earlier copy of the signs;
* ``gated_fraction``: fraction of a batch's input gradients the straight-through
  estimator zeroes (None for a layer without an input binarizer);
* ``grad_norm``: L2 norm of the gradient of a batch's mean loss with respect to the
  layer's latent weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLIP_TOLERANCE", "weights_at_clip", "weights_beyond_clip", "flip_ratio",
           "gated_fraction", "grad_norm", "LayerStats", "layer_stats"]

CLIP_TOLERANCE = 1e-6  # relative: Adam's clipped updates land on the bound to float32 rounding


def weights_at_clip(w: np.ndarray, clip: float | None) -> float:
    """Fraction of ``w`` at (or past) the clip bound; the bound is 1 when ``clip`` is None."""
    if w.size == 0:
        return 0.0
    bound = 1.0 if clip is None else float(clip)
    return float(np.count_nonzero(np.abs(w) >= bound * (1 - CLIP_TOLERANCE)) / w.size)


def weights_beyond_clip(w: np.ndarray) -> float:
    """Fraction of ``w`` with ``|w| > 1``: latent weights that drifted past ±1."""
    if w.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(w) > 1.0) / w.size)


def flip_ratio(previous_signs: np.ndarray, w: np.ndarray) -> float:
    """Fraction of weights whose sign bit differs from ``previous_signs`` (``np.signbit``)."""
    if w.size == 0:
        return 0.0
    return float(np.count_nonzero(np.signbit(w) != previous_signs) / w.size)


def grad_norm(g: np.ndarray) -> float:
    """L2 norm of a gradient, summed in float64."""
    return float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))


def gated_fraction(quantizer, x: np.ndarray | None) -> float | None:
    """Fraction of ``x``'s entries where ``quantizer`` passes no gradient, or None when the
    layer has no input binarizer or has seen no input yet."""
    if quantizer is None or x is None or x.size == 0:
        return None
    return float(1.0 - np.count_nonzero(quantizer.gate(x)) / x.size)


@dataclass(frozen=True)
class LayerStats:
    """One quantized layer at the end of an epoch."""

    name: str
    weights_at_clip: float
    weights_beyond_clip: float
    flip_ratio: float  # signs changed since the previous epoch's end (or the start)
    gated_fraction: float | None  # of the epoch's last training batch
    grad_norm: float | None = None  # of the latent weights, the epoch's last training batch

    def as_dict(self) -> dict:
        return {"name": self.name, "weights_at_clip": self.weights_at_clip,
                "weights_beyond_clip": self.weights_beyond_clip, "flip_ratio": self.flip_ratio,
                "gated_fraction": self.gated_fraction, "grad_norm": self.grad_norm}


def layer_stats(layer, previous_signs: np.ndarray) -> LayerStats:
    """:class:`LayerStats` of a quantized layer; gating from its last training input."""
    w = layer.kernel.value
    return LayerStats(
        name=layer.name,
        weights_at_clip=weights_at_clip(w, layer.kernel.clip),
        weights_beyond_clip=weights_beyond_clip(w),
        flip_ratio=flip_ratio(previous_signs, w),
        gated_fraction=gated_fraction(layer.input_quantizer, layer.last_input),
        grad_norm=grad_norm(layer.kernel.grad),
    )
