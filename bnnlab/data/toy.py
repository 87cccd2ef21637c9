"""The 2-D point sets of TensorFlow Playground (circle, xor, gauss, spiral), plus moons.

Points use Playground's scale: coordinates lie roughly in [-6, 6] (a few noisy points may fall
just outside). Each set has two exactly balanced classes, shuffled: class 0 ("negative") is
Playground's orange -1, class 1 ("positive") its blue +1. ``noise`` keeps Playground's meaning
per set (0 = clean, 0.5 = its slider's maximum).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

__all__ = ["CLASS_NAMES", "DEFAULT_NOISE", "DEFAULT_TEST", "DEFAULT_TRAIN", "POINT_SETS",
           "make_points", "make_split", "split_rngs"]

CLASS_NAMES = ("negative", "positive")
DEFAULT_TRAIN = 1000
DEFAULT_TEST = 500
DEFAULT_NOISE = {"circle": 0.1, "xor": 0.1, "gauss": 0.1, "spiral": 0.25, "moons": 0.1}

_RADIUS = 5.0  # Playground's half-extent of the data


def split_rngs(name: str, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent train and test generators for dataset ``name`` and ``seed``.

    Mixing in the name keeps two sets built with the same seed unrelated; any int is accepted.
    """
    root = np.random.SeedSequence([int(seed) % 2**64, zlib.crc32(name.encode())])
    train, test = root.spawn(2)
    return np.random.default_rng(train), np.random.default_rng(test)


def _uniform_noise(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    return rng.uniform(-_RADIUS, _RADIUS, (n, 2)) * noise


def _circle(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # A gap between the inner disc (r < 2.5) and the ring (r > 3.5) keeps clean data separable.
    def ring(n: int, r_lo: float, r_hi: float) -> np.ndarray:
        r = rng.uniform(r_lo, r_hi, n)
        angle = rng.uniform(0.0, 2 * np.pi, n)
        return np.stack([r * np.sin(angle), r * np.cos(angle)], 1) + _uniform_noise(rng, n, noise)

    return [ring(n0, 0.7 * _RADIUS, _RADIUS), ring(n1, 0.0, 0.5 * _RADIUS)]


def _xor(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Playground pushes points 0.3 away from the axes so the quadrant is unambiguous.
    def quadrants(n: int, same_sign: bool) -> np.ndarray:
        mag = rng.uniform(0.3, _RADIUS + 0.3, (n, 2))
        sx = rng.choice([-1.0, 1.0], n)
        sy = sx if same_sign else -sx
        return mag * np.stack([sx, sy], 1) + _uniform_noise(rng, n, noise)

    return [quadrants(n0, False), quadrants(n1, True)]


def _gauss(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Playground maps noise 0..0.5 linearly onto variance 0.5..4.
    sd = np.sqrt(0.5 + 7.0 * noise)
    return [rng.normal(-2.0, sd, (n0, 2)), rng.normal(2.0, sd, (n1, 2))]


def _spiral(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    def arm(n: int, phase: float) -> np.ndarray:
        u = rng.uniform(0.0, 1.0, n)
        r, t = u * _RADIUS, 1.75 * 2 * np.pi * u + phase
        jitter = rng.uniform(-1.0, 1.0, (n, 2)) * noise
        return np.stack([r * np.sin(t), r * np.cos(t)], 1) + jitter

    return [arm(n0, np.pi), arm(n1, 0.0)]


def _moons(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # The classic pair of half circles, centred and scaled by 3 to about [-4.5, 4.5] x [-2.3, 2.3].
    t0, t1 = rng.uniform(0.0, np.pi, n0), rng.uniform(0.0, np.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], 1)
    lower = np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    centre = np.array([0.5, 0.25])
    return [3.0 * (upper - centre) + _uniform_noise(rng, n0, noise),
            3.0 * (lower - centre) + _uniform_noise(rng, n1, noise)]


POINT_SETS: dict[str, Callable[[np.random.Generator, int, int, float], list[np.ndarray]]] = {
    "circle": _circle, "xor": _xor, "gauss": _gauss, "spiral": _spiral, "moons": _moons,
}


def make_points(name: str, n: int, rng: np.random.Generator,
                noise: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` shuffled points of set ``name``: float32 ``(n, 2)`` and int64 labels ``(n,)``."""
    noise = DEFAULT_NOISE[name] if noise is None else float(noise)
    n0 = n // 2
    parts = POINT_SETS[name](rng, n0, n - n0, noise)
    x = np.concatenate(parts).astype(np.float32)
    y = np.repeat(np.arange(2, dtype=np.int64), [n0, n - n0])
    order = rng.permutation(n)
    return x[order], y[order]


def make_split(name: str, seed: int, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST,
               noise: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of set ``name``, fully determined by ``seed``."""
    rng_train, rng_test = split_rngs(name, seed)
    return (*make_points(name, n_train, rng_train, noise),
            *make_points(name, n_test, rng_test, noise))
