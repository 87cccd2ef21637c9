"""Binarizers (quantizers) and their straight-through gradients, looked up by name.

Every binarizer gives three things the engine and the explorer need:

* ``forward(x, rng)``: the value used in the forward pass (+1/-1 for binary ones);
* ``grad(x)``: the surrogate derivative d forward / d x used by backprop, so
  ``backward(x, dy) = dy * grad(x)``; where it is zero the gradient is *gated off*;
* ``curves(x)``: vectorized plot data (forward, expected value, P(+1), gradient).

Names and semantics follow Larq (``larq.quantizers``) where Larq has the same function.
Zero maps to +1 everywhere, as ``larq.math.sign`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "Binarizer",
    "Sign",
    "StochasticSign",
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "Identity",
    "HardTanh",
    "get_binarizer",
    "binarizer_names",
    "register_binarizer",
    "hard_sigmoid",
    "sign",
]


def sign(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0, else -1, as float32 (zero maps to +1)."""
    return np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1)).astype(np.float32, copy=False)


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """sigma(x) = clip((x + 1) / 2, 0, 1): BinaryNet's probability of drawing +1."""
    return np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class Binarizer:
    """Base class. Subclasses set ``name`` and override ``forward`` / ``grad``."""

    name = "base"
    binary = True  # output is in {-1, +1}
    stochastic = False

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def grad(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Straight-through backward: ``dy * grad(x)``."""
        return dy * self.grad(x)

    def gate(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of where a gradient passes (``grad(x) != 0``)."""
        return self.grad(x) != 0

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(forward(x) = +1). A step for deterministic binarizers."""
        return (np.asarray(x) >= 0).astype(np.float32)

    def expected(self, x: np.ndarray) -> np.ndarray:
        """E[forward(x)]: equals forward for deterministic binarizers."""
        return 2.0 * self.probability(x) - 1.0

    def gate_window(self) -> tuple[float, float] | None:
        """The interval of x where the gradient passes, or None if it passes everywhere."""
        return None

    def curves(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Plot data over ``x``: forward value, expectation, P(+1), surrogate gradient."""
        x = np.asarray(x, dtype=np.float32)
        fwd = self.expected(x) if self.stochastic else self.forward(x)
        return {
            "x": x,
            "forward": np.asarray(fwd, dtype=np.float32),
            "expected": np.asarray(self.expected(x), dtype=np.float32),
            "p_plus": np.asarray(self.probability(x), dtype=np.float32),
            "grad": np.asarray(self.grad(x), dtype=np.float32),
        }

    def config(self) -> dict[str, Any]:
        """Plain-data description, accepted back by :func:`get_binarizer`."""
        return {"name": self.name}

    def label(self) -> str:
        """Short human-readable label, e.g. ``ste_sign(clip=1)``."""
        args = {k: v for k, v in self.config().items() if k != "name"}
        if not args:
            return self.name
        inner = ", ".join(f"{k}={'none' if v is None else v}" for k, v in args.items())
        return f"{self.name}({inner})"


def _gated(x: np.ndarray, clip_value: float | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if clip_value is None:
        return np.ones_like(x)
    return (np.abs(x) <= clip_value).astype(np.float32)


@dataclass(frozen=True)
class Sign(Binarizer):
    """Deterministic sign with its true derivative (zero almost everywhere).

    Forward ``sign(x)``; backward ``0``. Shown to make clear why training needs a
    straight-through estimator: with this gradient nothing before it learns.
    """

    name = "sign"

    def forward(self, x, rng=None):
        return sign(x)

    def grad(self, x):
        return np.zeros(np.shape(x), dtype=np.float32)

    def gate_window(self):
        return (0.0, 0.0)


@dataclass(frozen=True)
class SteSign(Binarizer):
    """Sign with the straight-through estimator (Hubara et al. 2016, BinaryNet).

    Forward ``sign(x)``; backward ``dy * 1[|x| <= clip_value]`` (gradient gating).
    ``clip_value=None`` passes every gradient (no gating). Larq: ``ste_sign``.
    """

    name = "ste_sign"
    clip_value: float | None = 1.0

    def __post_init__(self):
        _check_clip(self.clip_value)

    def forward(self, x, rng=None):
        return sign(x)

    def grad(self, x):
        return _gated(x, self.clip_value)

    def gate_window(self):
        return None if self.clip_value is None else (-self.clip_value, self.clip_value)

    def config(self):
        return {"name": self.name, "clip_value": self.clip_value}


@dataclass(frozen=True)
class StochasticSign(Binarizer):
    """Stochastic binarization (Courbariaux et al. 2016, BinaryNet).

    Forward ``+1`` with probability ``hard_sigmoid(x) = clip((x+1)/2, 0, 1)``, else ``-1``;
    its expectation is ``clip(x, -1, 1)``. Backward: the same gated STE as ``ste_sign``.
    Draws use the generator passed to ``forward`` (the trainer's seeded one), or a
    generator seeded with ``seed``.
    """

    name = "stochastic_sign"
    stochastic = True
    clip_value: float | None = 1.0
    seed: int = 0
    _rng: np.random.Generator = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        _check_clip(self.clip_value)
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def forward(self, x, rng=None):
        rng = self._rng if rng is None else rng
        x = np.asarray(x, dtype=np.float32)
        u = rng.random(x.shape, dtype=np.float32)
        return np.where(u < hard_sigmoid(x), np.float32(1), np.float32(-1))

    def probability(self, x):
        return hard_sigmoid(x)

    def grad(self, x):
        return _gated(x, self.clip_value)

    def gate_window(self):
        return None if self.clip_value is None else (-self.clip_value, self.clip_value)

    def config(self):
        return {"name": self.name, "clip_value": self.clip_value}


@dataclass(frozen=True)
class ApproxSign(Binarizer):
    """Sign with a piecewise-polynomial gradient (Liu et al. 2018, Bi-Real Net).

    Forward ``sign(x)``; backward ``dy * (2 - 2|x|) * 1[|x| <= 1]``. Larq: ``approx_sign``.
    """

    name = "approx_sign"

    def forward(self, x, rng=None):
        return sign(x)

    def grad(self, x):
        a = np.abs(np.asarray(x, dtype=np.float32))
        return np.where(a <= 1.0, 2.0 - 2.0 * a, 0.0).astype(np.float32)

    def gate_window(self):
        return (-1.0, 1.0)


@dataclass(frozen=True)
class SwishSign(Binarizer):
    """Sign with the swish-sign gradient (Darabi et al. 2018, BNN+).

    Forward ``sign(x)``; backward
    ``dy * beta * (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))``. Larq: ``swish_sign``.
    """

    name = "swish_sign"
    beta: float = 5.0

    def __post_init__(self):
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ValueError(f"swish_sign: beta must be a positive number, got {self.beta!r}")

    def forward(self, x, rng=None):
        return sign(x)

    def grad(self, x):
        bx = self.beta * np.asarray(x, dtype=np.float64)
        bx = np.clip(bx, -80.0, 80.0)  # cosh overflows past ~710; the gradient is ~0 there
        g = self.beta * (2.0 - bx * np.tanh(bx / 2.0)) / (1.0 + np.cosh(bx))
        return g.astype(np.float32)

    def config(self):
        return {"name": self.name, "beta": self.beta}


@dataclass(frozen=True)
class Identity(Binarizer):
    """No quantization: forward ``x``, backward ``dy``. Used for full-precision twins."""

    name = "identity"
    binary = False

    def forward(self, x, rng=None):
        return np.asarray(x, dtype=np.float32)

    def grad(self, x):
        return np.ones(np.shape(x), dtype=np.float32)

    def probability(self, x):
        return hard_sigmoid(x)

    def expected(self, x):
        return np.asarray(x, dtype=np.float32)


@dataclass(frozen=True)
class HardTanh(Binarizer):
    """Hard tanh, ``clip(x, -1, 1)``: what the binarizers approximate in full precision.

    Forward ``clip(x, -1, 1)`` (the expectation of ``stochastic_sign``); backward
    ``dy * 1[|x| <= 1]``, the same gate as ``ste_sign``. Used as the activation of a
    binary network's full-precision twin, so the twin keeps a nonlinearity.
    """

    name = "hard_tanh"
    binary = False

    def forward(self, x, rng=None):
        return np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)

    def grad(self, x):
        return _gated(x, 1.0)

    def probability(self, x):
        return hard_sigmoid(x)

    def expected(self, x):
        return self.forward(x)

    def gate_window(self):
        return (-1.0, 1.0)


def _check_clip(clip_value):
    if clip_value is not None and not (isinstance(clip_value, (int, float)) and clip_value > 0):
        raise ValueError(f"clip_value must be a positive number or None, got {clip_value!r}")


_REGISTRY: dict[str, Callable[..., Binarizer]] = {}


def register_binarizer(name: str, factory: Callable[..., Binarizer]) -> None:
    """Add a binarizer factory under ``name`` (used by scenes and the GUI)."""
    _REGISTRY[name] = factory


for _cls in (Sign, SteSign, StochasticSign, ApproxSign, SwishSign, HardTanh, Identity):
    register_binarizer(_cls.name, _cls)


def binarizer_names() -> list[str]:
    """All registered binarizer names."""
    return list(_REGISTRY)


def _normalize_clip(v):
    # TOML has no null: "none" or false disables gating.
    if v is False or (isinstance(v, str) and v.lower() == "none"):
        return None
    return v


def get_binarizer(spec: str | Mapping[str, Any] | Binarizer | None) -> Binarizer | None:
    """Look a binarizer up by name, ``{"name": ..., **params}``, or pass one through.

    ``None`` (and ``"none"``) mean no quantizer. Unknown names raise ``ValueError``
    listing the valid ones.
    """
    if spec is None or isinstance(spec, Binarizer):
        return spec
    if isinstance(spec, str):
        if spec.lower() in ("none", ""):
            return None
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"binarizer spec {dict(spec)!r} has no 'name'")
        name = params.pop("name")
    else:
        raise TypeError(f"cannot make a binarizer from {spec!r}")
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown binarizer {name!r}; valid names: {', '.join(sorted(_REGISTRY))}"
        )
    if "clip_value" in params:
        params["clip_value"] = _normalize_clip(params["clip_value"])
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:
        raise ValueError(f"binarizer {name!r}: bad parameters {params!r} ({exc})") from None
