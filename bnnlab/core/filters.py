"""Duplicate-filter analysis of binary 3x3 convolutions.

A binary 3x3 kernel slice (one input channel of one filter) is one of 2^9 = 512
patterns; a pattern and its negation give the same response up to sign, leaving 256
classes. Filters that share a pattern *and* an input channel compute the same 2-D
response map, so hardware could compute each unique (channel, pattern) once and reuse
it (BinaryNet, Courbariaux et al. 2016, Section 3).

Pattern ids: bit i (i = 3*dy + dx, row-major) is 1 where the weight is -1, the bit
convention of the packed kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import QuantConv2D
from .model import Sequential

__all__ = ["FilterReport", "analyze_filters", "analyze_kernel", "pattern_grid", "canonical"]

N_PATTERNS = 512
FULL = N_PATTERNS - 1


def canonical(ids: np.ndarray) -> np.ndarray:
    """The smaller of a pattern and its negation: one id per inverse pair."""
    ids = np.asarray(ids)
    return np.minimum(ids, FULL ^ ids)


def pattern_grid(pattern_id: int) -> np.ndarray:
    """(3, 3) float32 array of ±1 for a pattern id."""
    bits = (int(pattern_id) >> np.arange(9)) & 1
    return np.where(bits == 1, -1.0, 1.0).astype(np.float32).reshape(3, 3)


@dataclass(frozen=True)
class FilterReport:
    layer: str
    in_channels: int
    out_channels: int
    output_pixels: int
    patterns: np.ndarray  # (in, out) pattern ids
    counts: np.ndarray  # (512,) how often each pattern occurs
    top: tuple[tuple[int, int], ...]  # most common (pattern id, count), by count

    @property
    def total(self) -> int:
        return self.in_channels * self.out_channels

    @property
    def unique(self) -> int:
        return int(np.count_nonzero(self.counts))

    @property
    def unique_up_to_sign(self) -> int:
        return int(np.unique(canonical(np.flatnonzero(self.counts))).size)

    @property
    def unique_fraction(self) -> float:
        return self.unique / self.total if self.total else 0.0

    @property
    def reusable_per_channel(self) -> int:
        """Sum over input channels of distinct patterns up to sign: responses to compute."""
        return int(sum(np.unique(canonical(row)).size for row in self.patterns))

    @property
    def ops_total(self) -> int:
        """Binary MACs (XNOR-popcount work) per inference for the layer as it is."""
        return 9 * self.total * self.output_pixels

    @property
    def ops_dedup(self) -> int:
        """Binary MACs if each (input channel, pattern up to sign) were applied once."""
        return 9 * self.reusable_per_channel * self.output_pixels

    @property
    def saving(self) -> float:
        return 1.0 - self.ops_dedup / self.ops_total if self.ops_total else 0.0


def analyze_kernel(name: str, kernel_signs: np.ndarray, output_pixels: int = 1, top: int = 16) -> FilterReport:
    """Analyze a (3, 3, in, out) kernel of ±1 (or latent weights: only signs count)."""
    k = np.asarray(kernel_signs)
    if k.ndim != 4 or k.shape[:2] != (3, 3):
        raise ValueError(f"expected a (3, 3, in, out) kernel, got shape {k.shape}")
    bits = (k < 0).reshape(9, k.shape[2], k.shape[3]).astype(np.int64)
    ids = np.tensordot(1 << np.arange(9), bits, axes=(0, 0))  # (in, out)
    counts = np.bincount(ids.ravel(), minlength=N_PATTERNS)
    order = np.argsort(-counts, kind="stable")
    best = tuple((int(i), int(counts[i])) for i in order[:top] if counts[i] > 0)
    return FilterReport(name, k.shape[2], k.shape[3], int(output_pixels), ids, counts, best)


def analyze_filters(model: Sequential, top: int = 16) -> list[FilterReport]:
    """One report per binary-kernel 3x3 convolution of the model."""
    reports = []
    for layer in model.layers:
        if isinstance(layer, QuantConv2D) and layer.kernel_binary and layer.kernel_size == (3, 3):
            ho, wo, _ = layer.output_shape
            reports.append(analyze_kernel(layer.name, layer.kernel.value, ho * wo, top))
    return reports
