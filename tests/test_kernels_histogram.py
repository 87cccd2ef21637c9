"""The telemetry histogram kernel against np.histogram, on awkward inputs."""

import numpy as np
import pytest

from bnnlab.core.kernels.histogram import histogram_uniform, histogram_uniform_ref


def _same(x, lo, hi, bins):
    c, e = histogram_uniform(x, lo, hi, bins)
    rc, re = histogram_uniform_ref(x, lo, hi, bins)
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_array_equal(e, re)
    assert e.dtype == re.dtype
    return c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 7, 1000, 100_003])
def test_random_values_match_numpy(dtype, size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 2).astype(dtype)
    c = _same(x, -3.0, 3.0, 60)
    assert c.sum() == np.count_nonzero(np.abs(x) <= 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lo,hi,bins", [(-3.0, 3.0, 60), (-1.3125, 1.3125, 60),
                                        (-0.37801, 0.37801, 60), (0.0, 1.0, 1), (-1.0, 2.0, 7)])
def test_values_on_every_edge_and_outside(dtype, lo, hi, bins):
    edges = np.linspace(lo, hi, bins + 1, dtype=dtype)
    near = np.concatenate([edges, np.nextafter(edges, dtype(-np.inf)),
                           np.nextafter(edges, dtype(np.inf))])
    x = np.concatenate([near, np.array([np.nan, np.inf, -np.inf, lo - 1, hi + 1], dtype)])
    _same(x.astype(dtype), lo, hi, bins)


def test_multidimensional_input_and_integer_values():
    x = np.arange(-5, 6).reshape(11, 1, 1)
    _same(x, -3.0, 3.0, 6)
    x4 = np.random.default_rng(3).standard_normal((2, 5, 5, 3)).astype(np.float32)
    _same(x4, -1.0, 1.0, 9)


def test_only_nan_counts_nothing():
    c, _ = histogram_uniform(np.full(5, np.nan, np.float32), -1.0, 1.0, 4)
    assert c.sum() == 0


@pytest.mark.parametrize("lo,hi,bins", [(1.0, 1.0, 4), (2.0, 1.0, 4), (0.0, 1.0, 0)])
def test_bad_range_is_refused(lo, hi, bins):
    with pytest.raises(ValueError):
        histogram_uniform(np.zeros(3), lo, hi, bins)
