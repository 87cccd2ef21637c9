"""Inference with stochastic activations: the average of K stochastic passes.

A network whose activations are binarized by ``stochastic_sign`` draws fresh signs on
every forward pass, so one prediction is one sample. Averaging the class probabilities of
K passes estimates the expected prediction; accuracy usually grows with K and levels off.
"""

from __future__ import annotations

import numpy as np

from ..core.model import softmax

__all__ = ["accuracy_by_passes", "averaged_proba", "is_stochastic"]


def is_stochastic(config: dict | None) -> bool:
    """True when some layer of a model config binarizes its input stochastically."""
    for lc in (config or {}).get("layers", []):
        q = lc.get("input_quantizer")
        name = q.get("name") if isinstance(q, dict) else q
        if name == "stochastic_sign":
            return True
    return False


def _passes(model, x: np.ndarray, k: int, seed: int, batch_size: int = 256):
    """Yield the class probabilities of ``k`` stochastic passes over ``x``, one per pass."""
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        logits = np.concatenate([model.forward(x[j:j + batch_size], rng=rng)
                                 for j in range(0, len(x), batch_size)])
        yield softmax(logits.astype(np.float64))


def averaged_proba(model, x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Mean class probabilities of ``k`` stochastic passes (pass i draws from [seed, i])."""
    total = None
    for p in _passes(model, x, k, seed):
        total = p if total is None else total + p
    return (total / k).astype(np.float32)


def accuracy_by_passes(model, x: np.ndarray, y: np.ndarray, ks=(1, 2, 4, 8, 16),
                       seed: int = 0) -> dict[int, float]:
    """Accuracy of the average of the first K passes, for each K in ``ks`` (one run of
    max(ks) passes: the K-pass average is the running mean after pass K)."""
    ks = sorted(set(int(k) for k in ks))
    out, total = {}, None
    for i, p in enumerate(_passes(model, x, ks[-1], seed), start=1):
        total = p if total is None else total + p
        if i in ks:
            out[i] = float(np.mean(total.argmax(axis=1) == y))
    return out
