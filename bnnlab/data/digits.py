"""A synthetic handwritten-digit set in MNIST's format, drawn procedurally (no files).

Each digit is a few pen strokes (polylines through hand-placed points, with a couple of
variants per digit, e.g. a 7 with or without its bar). Every sample bends its glyph with a
smooth random warp, then a random affine map (scale, aspect, shear, rotation, shift), and is
drawn as an anti-aliased stroke of random width by measuring each pixel's distance to the
nearest segment. A random blur, contrast and pixel noise finish it, and now and then a stray
pen mark or a rubbed-out patch, so that a few samples are genuinely ambiguous and a good model
scores high but not 100%. Rendering is vectorised over all samples that share a glyph variant.
"""

from __future__ import annotations

import numpy as np

from .toy import split_rngs

__all__ = ["CLASS_NAMES", "DEFAULT_TEST", "DEFAULT_TRAIN", "GLYPHS", "SIZE", "make_digits",
           "make_split"]

SIZE = 28
CLASS_NAMES = tuple("0123456789")
DEFAULT_TRAIN = 6000
DEFAULT_TEST = 1000

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
         n: int) -> Stroke:
    # Angles in degrees with y pointing down, so 90 is the bottom of the ellipse.
    t = np.radians(np.linspace(start, stop, n + 1))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True))


# Glyph space: x in about [-0.6, 0.6], y in [-1, 1] pointing down. GLYPHS[d] lists the variants
# of digit d; a variant is a list of strokes.
GLYPHS: list[list[list[Stroke]]] = [
    [  # 0
        [_arc(0, 0, 0.55, 0.95, 0, 360, 12)],
        [_arc(0, 0, 0.42, 0.95, 250, 625, 12)],
    ],
    [  # 1
        [[(0.0, -1.0), (0.0, 1.0)]],
        [[(-0.3, -0.62), (0.05, -1.0), (0.05, 1.0)]],
        [[(-0.3, -0.62), (0.05, -1.0), (0.05, 1.0)], [(-0.3, 1.0), (0.4, 1.0)]],
    ],
    [  # 2
        [_arc(0, -0.45, 0.5, 0.5, 190, 395, 7) + [(-0.55, 0.95), (0.6, 0.95)]],
        [_arc(0, -0.5, 0.45, 0.45, 180, 420, 7) + [(-0.5, 0.85), (-0.3, 0.95), (0.6, 0.9)]],
    ],
    [  # 3
        [_arc(0, -0.5, 0.48, 0.45, 200, 450, 7) + _arc(0, 0.47, 0.55, 0.5, 270, 520, 8)],
        [[(-0.5, -0.95), (0.5, -0.95), (-0.05, -0.15)] + _arc(0, 0.42, 0.55, 0.55, 250, 520, 8)],
    ],
    [  # 4
        [[(0.25, 1.0), (0.25, -1.0), (-0.6, 0.35), (0.6, 0.35)]],
        [[(-0.4, -1.0), (-0.5, 0.3), (0.6, 0.3)], [(0.3, -0.6), (0.3, 1.0)]],
    ],
    [  # 5
        [[(0.5, -0.95), (-0.35, -0.95), (-0.45, -0.1)] + _arc(0, 0.42, 0.55, 0.52, 235, 520, 8)],
        [[(-0.35, -0.95), (0.5, -0.95)],
         [(-0.35, -0.95), (-0.42, -0.05)] + _arc(0, 0.45, 0.52, 0.5, 240, 515, 8)],
    ],
    [  # 6
        [[(0.45, -0.95), (0.1, -0.8), (-0.25, -0.45), (-0.48, 0.05)]
         + _arc(0, 0.45, 0.5, 0.5, 180, 540, 10)],
        [[(0.3, -1.0), (-0.45, 0.3)] + _arc(0, 0.45, 0.48, 0.5, 190, 550, 10)],
    ],
    [  # 7
        [[(-0.55, -0.95), (0.55, -0.95), (-0.1, 1.0)]],
        [[(-0.55, -0.95), (0.55, -0.95), (-0.1, 1.0)], [(-0.25, 0.05), (0.35, 0.05)]],
        [[(-0.55, -0.95), (0.55, -0.95), (0.2, -0.2), (0.0, 0.4), (-0.05, 1.0)]],
    ],
    [  # 8
        [_arc(0, -0.5, 0.42, 0.45, 0, 360, 10), _arc(0, 0.47, 0.52, 0.5, 0, 360, 10)],
        [_arc(0, -0.55, 0.36, 0.4, 90, 450, 10), _arc(0, 0.4, 0.55, 0.55, 270, 630, 10)],
    ],
    [  # 9
        [_arc(0, -0.45, 0.5, 0.5, 0, 360, 10)
         + [(0.48, 0.2), (0.3, 0.7), (-0.05, 0.95), (-0.4, 0.95)]],
        [_arc(0, -0.45, 0.48, 0.5, 0, 360, 10) + [(0.45, 1.0)]],
    ],
]


def _segments(variant: list[Stroke]) -> np.ndarray:
    """(S, 2, 2) array of segment end points of all strokes of a variant."""
    segs = [(p, q) for stroke in variant for p, q in zip(stroke[:-1], stroke[1:], strict=True)]
    return np.asarray(segs, dtype=np.float32)


_SEGMENTS = [[_segments(v) for v in variants] for variants in GLYPHS]
_GRID_Y, _GRID_X = (g.ravel().astype(np.float32) for g in np.indices((SIZE, SIZE)))
_CHUNK_ELEMENTS = 1 << 19


def _warp(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bend glyph points (n, ..., 2) with a smooth random field, one per sample.

    A function of position only, so segment ends that coincide stay joined.
    """
    n = points.shape[0]
    lead = (n,) + (1,) * (points.ndim - 2)
    amp = rng.uniform(0.0, 0.13, (n, 2)).reshape(lead + (2,))
    freq = rng.uniform(1.0, 3.0, (n, 2, 2)).reshape(lead + (2, 2))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 2)).reshape(lead + (2,))
    arg = np.einsum("...k,...jk->...j", points, freq) + phase
    return points + amp * np.sin(arg)


def _affine(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample 2x2 matrices (glyph units to pixels) and pixel offsets."""
    height = rng.uniform(7.0, 10.5, n)  # pixels per glyph unit; glyphs are 2 units tall
    aspect = rng.uniform(0.7, 1.3, n)
    shear = rng.uniform(-0.4, 0.4, n)
    angle = np.radians(rng.uniform(-18.0, 18.0, n))
    cos, sin = np.cos(angle), np.sin(angle)
    zero = np.zeros(n)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shr = np.stack([np.stack([np.ones(n), shear], -1), np.stack([zero, np.ones(n)], -1)], -2)
    scl = np.stack([np.stack([height * aspect, zero], -1), np.stack([zero, height], -1)], -2)
    offset = (SIZE - 1) / 2 + rng.uniform(-3.0, 3.0, (n, 2))
    return rot @ shr @ scl, offset


def _render(segs: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Anti-aliased strokes: (n, S, 2, 2) pixel-space segments -> (n, SIZE*SIZE) in [0, 1]."""
    n, s = segs.shape[:2]
    out = np.empty((n, SIZE * SIZE), np.float32)
    # Chunks keep the (chunk, S, P) temporaries near cache size; x and y are kept apart because
    # NumPy reduces a trailing axis of length 2 slowly.
    step = max(1, _CHUNK_ELEMENTS // (s * SIZE * SIZE))
    for lo in range(0, n, step):
        seg = segs[lo:lo + step]
        ax, ay = seg[:, :, 0, 0, None], seg[:, :, 0, 1, None]
        dx, dy = seg[:, :, 1, 0, None] - ax, seg[:, :, 1, 1, None] - ay
        inv_len2 = 1.0 / np.maximum(dx * dx + dy * dy, 1e-6)
        rx = _GRID_X - ax
        ry = _GRID_Y - ay
        t = rx * dx
        t += ry * dy
        t *= inv_len2
        np.clip(t, 0.0, 1.0, out=t)
        rx -= t * dx
        ry -= t * dy
        rx *= rx
        ry *= ry
        rx += ry
        dist = np.sqrt(rx.min(1))
        out[lo:lo + step] = np.clip(width[lo:lo + step, None] / 2 + 0.5 - dist, 0.0, 1.0)
    return out


def _blur(images: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur of (n, SIZE, SIZE) images, zero outside."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    p = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4


def make_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit images, float32 ``(n, 28, 28, 1)`` in [0, 1] (multiples of 1/255), and
    int64 labels, as balanced as ``n`` allows, in random order."""
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    counts = np.array([len(v) for v in GLYPHS])
    variant = (rng.uniform(size=n) * counts[labels]).astype(np.int64)
    matrix, offset = _affine(rng, n)
    width = rng.uniform(1.4, 3.3, n).astype(np.float32)
    # A stray mark on some samples; the others get one far off the canvas, which draws nothing.
    stray_a = rng.uniform(0, SIZE, (n, 2))
    stray_b = stray_a + rng.uniform(-9, 9, (n, 2))
    far = rng.uniform(size=n) >= 0.25
    stray = np.stack([stray_a, stray_b], 1)
    stray[far] = -1000.0
    images = np.empty((n, SIZE * SIZE), np.float32)
    for digit, variants in enumerate(_SEGMENTS):
        for v, base in enumerate(variants):
            idx = np.flatnonzero((labels == digit) & (variant == v))
            if idx.size == 0:
                continue
            pts = _warp(np.broadcast_to(base, (idx.size, *base.shape)), rng)
            pts = np.einsum("nij,nsej->nsei", matrix[idx], pts) + offset[idx, None, None, :]
            segs = np.concatenate([pts, stray[idx, None]], 1).astype(np.float32)
            images[idx] = _render(segs, width[idx])
    images = images.reshape(n, SIZE, SIZE)
    # Rub out a random square on some samples (an ink gap), which can make a digit ambiguous.
    side = rng.integers(3, 8, (n, 1, 1))
    top, left = rng.integers(4, SIZE - 8, (2, n, 1, 1))
    rows, cols = np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]
    erased = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    erased &= (rng.uniform(size=n) < 0.15)[:, None, None]
    images[erased] = 0.0
    blur = rng.uniform(0.0, 0.8, (n, 1, 1)).astype(np.float32)
    images = (1 - blur) * images + blur * _blur(images)
    images *= rng.uniform(0.7, 1.0, (n, 1, 1)).astype(np.float32)
    noise_sd = rng.uniform(0.0, 0.12, (n, 1, 1)).astype(np.float32)
    images += noise_sd * rng.standard_normal(images.shape, dtype=np.float32)
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0)
    return (pixels / np.float32(255.0)).astype(np.float32)[..., None], labels


def make_split(seed: int, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``, fully determined by ``seed``."""
    rng_train, rng_test = split_rngs("digits", seed)
    return (*make_digits(n_train, rng_train), *make_digits(n_test, rng_test))
