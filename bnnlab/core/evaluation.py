"""Ways to evaluate a model beyond plain inference, and the batch-norm re-estimation that
honest evaluation needs.

* :func:`evaluate_batch_stats`: accuracy when every batch norm normalizes each batch by its
  own statistics, as in training. When it differs much from :meth:`Sequential.evaluate`
  (running statistics), the running statistics do not describe the current weights.
* :func:`reestimate_batchnorm`: replace every batch norm's running statistics by the
  average of the batch statistics over some training batches, computed with the current
  weights (a "precise" re-estimate rather than a moving average that lags behind).
* :func:`evaluate_averaged`: for networks with stochastic binarizers, the accuracy of the
  class probabilities averaged over K stochastic forward passes, for every K up to a bound.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .layers import BatchNorm
from .model import Sequential, softmax, softmax_cross_entropy

__all__ = ["batchnorm_layers", "batch_stats_inference", "evaluate_batch_stats",
           "reestimate_batchnorm", "is_stochastic", "stochastic_passes", "averaged_probabilities",
           "evaluate_averaged", "AveragedEvaluation"]


def batchnorm_layers(model: Sequential) -> list[BatchNorm]:
    return [layer for layer in model.layers if isinstance(layer, BatchNorm)]


def _chunks(n: int, batch_size: int) -> list[slice]:
    """About ``batch_size``-sized consecutive slices covering range(n), none tiny: the
    statistics of a batch of one image would be degenerate."""
    parts = max(1, -(-n // batch_size))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@contextmanager
def batch_stats_inference(model: Sequential):
    """Inference forwards inside the block use batch statistics in every batch norm."""
    bns = batchnorm_layers(model)
    for bn in bns:
        bn.inference_batch_stats = True
    try:
        yield
    finally:
        for bn in bns:
            bn.inference_batch_stats = False


def evaluate_batch_stats(model: Sequential, x: np.ndarray, y: np.ndarray,
                         batch_size: int = 64) -> tuple[float, float]:
    """(mean loss, accuracy) with batch statistics, in batches of about ``batch_size``
    (use the training batch size: that is the batch the network learnt to be normalized
    over). Running statistics are not changed."""
    logits = np.empty((len(x), *model.output_shape), np.float32)
    with batch_stats_inference(model):
        for sl in _chunks(len(x), batch_size):
            logits[sl] = model.forward(x[sl])
    loss, _ = softmax_cross_entropy(logits, y)
    return loss, float(np.mean(logits.argmax(axis=1) == y))


def reestimate_batchnorm(model: Sequential, x: np.ndarray, batches: int, batch_size: int,
                         rng: np.random.Generator) -> int:
    """Recompute every batch norm's running mean and variance with the current weights.

    Runs training-mode forwards (no backward, no weight change) over ``batches`` random
    batches of ``x`` drawn with ``rng``; each batch norm's running statistics become the
    plain average of the batch means and variances it saw (variances with the same
    correction the momentum update applies). Stochastic binarizers draw from ``rng`` too.
    Returns the number of images used.
    """
    bns = batchnorm_layers(model)
    if not bns or batches < 1 or len(x) == 0:
        return 0
    n = len(x)
    take = min(n, batches * batch_size)
    idx = rng.permutation(n)[:take]
    for bn in bns:
        bn.start_reestimate()
    try:
        for sl in _chunks(take, batch_size):
            model.forward(x[np.sort(idx[sl])], training=True, rng=rng)
    finally:
        for bn in bns:
            bn.stop_reestimate()
    return take


def is_stochastic(model: Sequential) -> bool:
    """True when some quantizer of the model draws random values in its forward pass."""
    for q in model.quant_layers:
        for b in (q.input_quantizer, q.kernel_quantizer):
            if b is not None and getattr(b, "stochastic", False):
                return True
    return False


@dataclass(frozen=True)
class AveragedEvaluation:
    """Accuracy of probabilities averaged over the first k passes, for each k in ``ks``."""

    ks: tuple[int, ...]
    accuracy: tuple[float, ...]
    loss: tuple[float, ...]  # cross-entropy of the averaged probabilities


def stochastic_passes(model: Sequential, x: np.ndarray, k: int, seed: int = 0,
                      batch_size: int = 256):
    """Yield the class probabilities (float64) of ``k`` inference passes over ``x``; pass
    i (0-based) draws its stochastic signs from a generator seeded with ``(seed, i)``."""
    for i in range(int(k)):
        rng = np.random.default_rng([int(seed), i])
        out = np.empty((len(x), *model.output_shape), np.float64)
        for j in range(0, len(x), batch_size):
            z = model.forward(x[j:j + batch_size], training=False, rng=rng)
            out[j:j + batch_size] = softmax(z.astype(np.float64))
        yield out


def averaged_probabilities(model: Sequential, x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Mean class probabilities of ``k`` stochastic passes (see :func:`stochastic_passes`)."""
    if int(k) < 1:
        raise ValueError(f"K must be a positive integer, got {k}")
    total = np.zeros((len(x), *model.output_shape), np.float64)
    for p in stochastic_passes(model, x, k, seed):
        total += p
    return total / int(k)


def evaluate_averaged(model: Sequential, x: np.ndarray, y: np.ndarray, ks, *, seed: int = 0,
                      batch_size: int = 256) -> AveragedEvaluation:
    """Evaluate with class probabilities averaged over K stochastic inference passes.

    One run of ``max(ks)`` passes (see :func:`stochastic_passes`) gives every K in
    ``ks``: the average over the first K passes. For a deterministic network every K
    gives the same figure.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"every K must be a positive integer, got {ks}")
    want = set(ks)
    total = np.zeros((len(x), *model.output_shape), np.float64)
    acc, losses = [], []
    rows = np.arange(len(y))
    for j, p in enumerate(stochastic_passes(model, x, ks[-1], seed, batch_size), start=1):
        total += p
        if j in want:
            p = total / j
            acc.append(float(np.mean(p.argmax(axis=1) == y)))
            losses.append(float(-np.mean(np.log(np.maximum(p[rows, y], 1e-12)))))
    return AveragedEvaluation(ks, tuple(acc), tuple(losses))
