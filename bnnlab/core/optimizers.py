"""Optimizers (Adam, SGD with momentum, Bop) and learning-rate schedules.

Latent-weight clipping (``weight_clip``) is applied after every update, as Larq's
``kernel_constraint`` does. Each :class:`Param` may scale its own learning rate
(``Param.lr_scale``), as BinaryNet does per layer; :func:`glorot_lr_scale` gives its factor.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from . import kernels as K
from .layers import Param

__all__ = ["Optimizer", "Adam", "SGD", "Bop", "make_optimizer", "optimizer_names",
           "make_schedule", "schedule_names", "glorot_lr_scale"]


def glorot_lr_scale(fan_in: int, fan_out: int) -> float:
    """BinaryNet's per-layer learning-rate factor ``sqrt((fan_in + fan_out) / 1.5)``: twice
    the inverse of the Glorot-uniform bound ``sqrt(6 / (fan_in + fan_out))``. Wide layers,
    whose initial weights are tiny, take proportionally larger steps, so their latent
    weights move across [-1, 1] as fast as a narrow layer's (Courbariaux et al. 2016; for a
    convolution both fans include the kernel's area, as in Glorot initialization)."""
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"fans must be positive, got {fan_in}, {fan_out}")
    return math.sqrt((fan_in + fan_out) / 1.5)


# --------------------------------------------------------------------------- schedules


def make_schedule(name: str, lr: float, total_steps: int, **kw) -> Callable[[int], float]:
    """Learning rate as a function of the step (0-based).

    ``constant``; ``cosine`` (to ``final_fraction`` * lr); ``exponential`` (``decay`` per
    epoch of ``steps_per_epoch``); ``step`` (x ``factor`` every ``every`` steps).
    """
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"learning_rate must be a positive number, got {lr!r}")
    if name == "constant":
        return lambda step: lr
    if name == "cosine":
        final = float(kw.get("final_fraction", 0.0))
        t = max(1, total_steps)
        return lambda step: lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, t) / t)))
    if name == "exponential":
        decay = float(kw.get("decay", 0.9))
        per = max(1, int(kw.get("steps_per_epoch", 1)))
        return lambda step: lr * decay ** (step / per)
    if name == "step":
        factor = float(kw.get("factor", 0.1))
        every = max(1, int(kw.get("every", max(1, total_steps // 3))))
        return lambda step: lr * factor ** (step // every)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(schedule_names())}")


def schedule_names() -> list[str]:
    return ["constant", "cosine", "exponential", "step"]


# --------------------------------------------------------------------------- optimizers


def _fused(p: Param, *slots: np.ndarray) -> bool:
    """Whether the compiled update applies: C-contiguous float32 arrays, a positive clip."""
    arrays = (p.value, p.grad, *slots)
    return (all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)
            and (p.clip is None or p.clip > 0))


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> float:
    """A real number within bounds from a config; strings and booleans are refused."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (math.isfinite(v) and (v > low if low_open else v >= low)
              and (v < high if high_open else v <= high))
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    return float(value)


class Optimizer:
    """Updates a list of :class:`Param` in place from their ``grad``."""

    name = "optimizer"

    def __init__(self, learning_rate: float = 1e-3):
        if not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.schedule: Callable[[int], float] | None = None
        self.iterations = 0
        self._state: dict[int, dict[str, np.ndarray]] = {}

    @property
    def current_lr(self) -> float:
        return self.schedule(self.iterations) if self.schedule else self.learning_rate

    def _slots(self, p: Param, *names: str) -> list[np.ndarray]:
        st = self._state.setdefault(id(p), {})
        for n in names:
            if n not in st:  # allocate once, not on every step
                st[n] = np.zeros_like(p.value)
        return [st[n] for n in names]

    def step(self, params: list[Param]) -> None:
        lr = self.current_lr
        self.iterations += 1
        for p in params:
            self.update(p, lr)
            p.apply_constraint()

    def update(self, p: Param, lr: float) -> None:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "learning_rate": self.learning_rate}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) in Keras's form: eps added to sqrt(v), bias correction in lr."""

    name = "adam"

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _number("beta_1", beta_1, 0.0, 1.0, high_open=True)
        self.beta_2 = _number("beta_2", beta_2, 0.0, 1.0, high_open=True)
        self.epsilon = _number("epsilon", epsilon, 0.0, math.inf, low_open=True, high_open=True)

    def step(self, params):
        self._t = self.iterations + 1
        lr_t = self._lr_t(self.current_lr)
        self.iterations += 1
        for p in params:
            m, v = self._slots(p, "m", "v")
            lr_p = lr_t * p.lr_scale
            if _fused(p, m, v):
                # One compiled pass per array, with weight_clip folded in.
                K.adam_update(p.value, p.grad, m, v, self.beta_1, self.beta_2, lr_p,
                              self.epsilon, p.clip or 0.0)
            else:
                self._update(p, m, v, lr_p)
                p.apply_constraint()

    def update(self, p, lr):
        m, v = self._slots(p, "m", "v")
        self._update(p, m, v, self._lr_t(lr) * p.lr_scale)

    def _lr_t(self, lr):
        """The step size with Adam's bias corrections folded in, at step ``self._t``."""
        return lr * math.sqrt(1 - self.beta_2 ** self._t) / (1 - self.beta_1 ** self._t)

    def _update(self, p, m, v, lr_t):
        b1, b2 = self.beta_1, self.beta_2
        g = p.grad
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        p.value -= (lr_t * m / (np.sqrt(v) + self.epsilon)).astype(np.float32)

    def config(self):
        return dict(super().config(), beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum."""

    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = _number("momentum", momentum, 0.0, 1.0, high_open=True)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be true or false, got {nesterov!r}")
        self.nesterov = nesterov

    def update(self, p, lr):
        (vel,) = self._slots(p, "velocity")
        lr = lr * p.lr_scale
        vel *= self.momentum
        vel -= lr * p.grad
        if self.nesterov:
            p.value += self.momentum * vel - lr * p.grad
        else:
            p.value += vel

    def config(self):
        return dict(super().config(), momentum=self.momentum, nesterov=self.nesterov)


class Bop(Optimizer):
    """Binary optimizer (Helwegen et al. 2019) for binary weights; another for the rest.

    For binary latent weights w (kept at ±1): ``m <- m + gamma (g - m)``; flip ``w`` where
    ``|m| > threshold`` and ``sign(m) == sign(w)``. Real-valued parameters (batch norm,
    biases, float layers) are updated by ``fp_optimizer`` (Adam by default), as Larq's
    ``CaseOptimizer`` pairs them.
    """

    name = "bop"

    def __init__(self, threshold=1e-8, gamma=1e-4, fp_optimizer: Optimizer | None = None,
                 learning_rate=1e-3):
        super().__init__(learning_rate)
        self.threshold = _number("threshold", threshold, 0.0, math.inf, high_open=True)
        self.gamma = _number("gamma", gamma, 0.0, 1.0, low_open=True)
        self.fp = fp_optimizer or Adam(learning_rate)

    def step(self, params):
        binary = [p for p in params if p.binary]
        other = [p for p in params if not p.binary]
        self.iterations += 1
        for p in binary:
            (m,) = self._slots(p, "m")
            if not np.all(np.abs(p.value) == 1):
                p.value[...] = np.where(p.value >= 0, 1.0, -1.0)  # Bop keeps weights at ±1
            m += self.gamma * (p.grad - m)
            flip = (np.abs(m) > self.threshold) & (np.sign(m) == np.sign(p.value))
            p.value[flip] *= -1
        self.fp.step(other)

    def config(self):
        return {"name": self.name, "threshold": self.threshold, "gamma": self.gamma,
                "learning_rate": self.fp.learning_rate}


_OPTIMIZERS = {"adam": Adam, "sgd": SGD, "bop": Bop}


def optimizer_names() -> list[str]:
    return list(_OPTIMIZERS)


def make_optimizer(name: str, **kw) -> Optimizer:
    """Optimizer by name; unknown names and bad options raise ``ValueError``."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(_OPTIMIZERS)}")
    try:
        return _OPTIMIZERS[name](**kw)
    except TypeError as exc:
        raise ValueError(f"optimizer {name!r}: {exc}") from None

