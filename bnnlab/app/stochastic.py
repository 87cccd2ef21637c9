"""Inference with stochastic activations: the average of K stochastic passes.

A network whose activations are binarized by ``stochastic_sign`` draws fresh signs on
every forward pass, so one prediction is one sample. Averaging the class probabilities of
K passes estimates the expected prediction; accuracy usually grows with K and levels off.
"""

from __future__ import annotations

import numpy as np

from ..core.evaluation import averaged_probabilities, evaluate_averaged

__all__ = ["accuracy_by_passes", "averaged_proba", "is_stochastic"]


def is_stochastic(config: dict | None) -> bool:
    """True when some layer of a model config binarizes its input stochastically."""
    for lc in (config or {}).get("layers", []):
        q = lc.get("input_quantizer")
        name = q.get("name") if isinstance(q, dict) else q
        if name == "stochastic_sign":
            return True
    return False


def averaged_proba(model, x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Mean class probabilities of ``k`` stochastic passes (pass i = 0..k-1 draws from [seed, i])."""
    return averaged_probabilities(model, x, k, seed).astype(np.float32)


def accuracy_by_passes(model, x: np.ndarray, y: np.ndarray, ks=(1, 2, 4, 8, 16),
                       seed: int = 0) -> dict[int, float]:
    """Accuracy of the average of the first K passes, for each K in ``ks`` (one run of
    max(ks) passes: the K-pass average is the running mean after pass K)."""
    res = evaluate_averaged(model, x, y, ks, seed=seed)
    return dict(zip(res.ks, res.accuracy))
