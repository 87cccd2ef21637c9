"""Histograms over equal-width bins, for the trainer's live telemetry, with the NumPy
twin they must equal.

The telemetry histograms the input of every binarizer at each snapshot; on a
convolution's input that is a few hundred thousand values, where ``np.histogram`` spends
about 25 ns a value. This kernel makes one pass, without temporaries, and gives the same
counts as ``np.histogram(x, bins, range=(lo, hi))``: values outside ``[lo, hi]`` and NaN
are not counted, ``hi`` itself falls in the last bin, and a value on an inner edge falls
in the bin above it (the edges are compared exactly, as NumPy does).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import JIT

__all__ = ["bin_edges", "histogram_uniform", "histogram_uniform_ref"]


def bin_edges(lo: float, hi: float, bins: int, dtype=np.float64) -> np.ndarray:
    """The ``bins + 1`` edges ``np.histogram`` uses for ``range=(lo, hi)`` on values of
    ``dtype`` (float32 values get float32 edges, as in NumPy)."""
    return np.linspace(lo, hi, bins + 1, endpoint=True, dtype=dtype)


@nb.njit(**JIT)
def _histogram(x, edges, counts):
    bins = counts.shape[0]
    lo, hi = edges[0], edges[bins]
    scale = bins / (np.float64(hi) - np.float64(lo))
    for i in range(x.shape[0]):
        v = x[i]
        if not (v >= lo and v <= hi):  # also drops NaN
            continue
        k = min(int((np.float64(v) - np.float64(lo)) * scale), bins - 1)
        # The scaled index can be one off near an edge; the edges decide, as in NumPy.
        if v < edges[k]:
            k -= 1
        elif k + 1 < bins and v >= edges[k + 1]:
            k += 1
        counts[k] += 1


def histogram_uniform(x: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` of ``x`` over ``bins`` equal bins spanning ``[lo, hi]``.

    Equal to ``np.histogram(x, bins=bins, range=(lo, hi))``; counts are int64, edges
    float32 for float32 ``x`` and float64 otherwise.
    """
    if not (hi > lo) or bins < 1:
        raise ValueError(f"need lo < hi and bins >= 1, got lo={lo}, hi={hi}, bins={bins}")
    flat = np.ravel(x)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float64)
    edges = bin_edges(float(lo), float(hi), int(bins), flat.dtype)
    counts = np.zeros(int(bins), np.int64)
    if flat.size:
        _histogram(flat, edges, counts)
    return counts, edges


def histogram_uniform_ref(x: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy twin: ``np.histogram`` with NaN removed first (NumPy refuses it)."""
    flat = np.ravel(x)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float64)
    counts, edges = np.histogram(flat[~np.isnan(flat)], bins=bins, range=(lo, hi))
    return counts.astype(np.int64), edges
