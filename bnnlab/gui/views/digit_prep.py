"""Turning a large hand-drawn canvas into an MNIST-like 28x28 digit (plain NumPy, no Qt).

MNIST digits were size-normalized to fit a 20x20 box (keeping their aspect ratio),
anti-aliased, and placed in a 28x28 field with their centre of mass at the centre
(LeCun et al., "The MNIST database"). A drawing processed the same way looks to a network
like the images it was trained on, instead of a thin, off-centre scribble.
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_resize", "paint_segment", "to_mnist"]


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights averaging the input cells each output cell covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in, dtype=float)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize by area averaging (box filter): no aliasing when shrinking."""
    rows = _area_matrix(image.shape[0], shape[0])
    cols = _area_matrix(image.shape[1], shape[1])
    return (rows @ image.astype(np.float64) @ cols.T).astype(np.float32)


def to_mnist(canvas: np.ndarray, size: int = 28, box: int = 20, threshold: float = 0.05) -> np.ndarray:
    """A ``(size, size)`` float32 image in [0, 1] from a drawing in [0, 1] (ink = 1).

    Crops the ink, scales its longer side to ``box`` pixels, and shifts it so the centre of
    mass sits in the middle. An empty canvas gives an empty image.
    """
    canvas = np.asarray(canvas, dtype=np.float32)
    ink = canvas > threshold
    if not ink.any():
        return np.zeros((size, size), np.float32)
    ys, xs = np.nonzero(ink)
    crop = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = box / max(crop.shape)
    h = max(1, round(crop.shape[0] * scale))
    w = max(1, round(crop.shape[1] * scale))
    small = area_resize(crop, (h, w))
    peak = float(small.max())
    if peak > 0:
        small = np.clip(small / peak, 0.0, 1.0)
    mass = small.sum()
    cy = float((small.sum(axis=1) * np.arange(h)).sum() / mass) + 0.5
    cx = float((small.sum(axis=0) * np.arange(w)).sum() / mass) + 0.5
    top = int(np.clip(round(size / 2 - cy), 0, size - h))
    left = int(np.clip(round(size / 2 - cx), 0, size - w))
    out = np.zeros((size, size), np.float32)
    out[top:top + h, left:left + w] = small
    return out


def paint_segment(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                  radius: float, softness: float = 0.45) -> None:
    """Ink a stroke from p0 to p1 (x, y in canvas pixels) into ``canvas`` in place.

    The brush is a round capsule whose edge fades over ``softness * radius``, so strokes
    are anti-aliased like a pen on paper; ink only ever increases (max, not add), so going
    over a stroke again does not blot it.
    """
    h, w = canvas.shape
    (x0, y0), (x1, y1) = p0, p1
    pad = radius + 1
    xa, xb = int(max(0, np.floor(min(x0, x1) - pad))), int(min(w, np.ceil(max(x0, x1) + pad)))
    ya, yb = int(max(0, np.floor(min(y0, y1) - pad))), int(min(h, np.ceil(max(y0, y1) + pad)))
    if xa >= xb or ya >= yb:
        return
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32) + 0.5
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0.0, 1.0)
    dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
    edge = max(1e-6, softness * radius)
    ink = np.clip((radius - dist) / edge, 0.0, 1.0)
    ink = ink * ink * (3.0 - 2.0 * ink)  # smoothstep: a soft, round edge
    region = canvas[ya:yb, xa:xb]
    np.maximum(region, ink, out=region)
