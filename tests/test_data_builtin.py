"""Built-in datasets: the Playground point sets and the synthetic digits."""

from __future__ import annotations

import numpy as np
import pytest

from bnnlab.data import Dataset, DatasetError, dataset_info, digits, load_dataset, toy

POINT_SETS = ["circle", "xor", "gauss", "spiral", "moons"]


@pytest.fixture(scope="module")
def digit_sets() -> dict[int, Dataset]:
    return {seed: load_dataset("digits", seed=seed) for seed in (0, 1)}


@pytest.mark.parametrize("name", POINT_SETS)
def test_points_format(name):
    ds = load_dataset(name)
    assert (ds.name, ds.kind, ds.source) == (name, "points", "built-in")
    assert ds.x_train.shape == (toy.DEFAULT_TRAIN, 2) and ds.x_test.shape == (toy.DEFAULT_TEST, 2)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.input_shape == (2,) and ds.num_classes == 2
    assert np.bincount(ds.y_train).tolist() == [500, 500]
    assert np.bincount(ds.y_test).tolist() == [250, 250]
    assert np.all(np.isfinite(ds.x_train))
    # Playground scale: nearly everything within [-6, 6], and the data fills the space.
    assert np.mean(np.abs(ds.x_train) <= 6.0) > 0.99
    assert np.abs(ds.x_train).max() > 2.0
    info = dataset_info(name)
    assert info.kind == "points" and not info.needs_files and info.input_shape == ds.input_shape


@pytest.mark.parametrize("name", POINT_SETS + ["digits"])
def test_deterministic_per_seed(name, digit_sets):
    a = digit_sets[0] if name == "digits" else load_dataset(name, seed=0)
    b = load_dataset(name, seed=0)
    c = digit_sets[1] if name == "digits" else load_dataset(name, seed=1)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_test, c.x_test)
    # Train and test come from independent streams, not one repeated.
    assert not np.array_equal(a.x_train[: len(a.x_test)], a.x_test)


def test_any_int_seed_works():
    assert load_dataset("xor", seed=-5).x_train.shape == (1000, 2)
    assert load_dataset("xor", seed=2**70).x_train.shape == (1000, 2)


def test_limits_take_a_prefix():
    full = load_dataset("spiral", seed=3)
    part = load_dataset("spiral", seed=3, limit_train=10, limit_test=4)
    np.testing.assert_array_equal(part.x_train, full.x_train[:10])
    np.testing.assert_array_equal(part.y_test, full.y_test[:4])
    assert load_dataset("moons", limit_train=10**6).x_train.shape[0] == 1000


def _agreement(name, rule) -> float:
    x, y = toy.make_points(name, 4000, np.random.default_rng(0), noise=0.0)
    return float(np.mean(rule(x.astype(np.float64)) == y))


@pytest.mark.parametrize("name, rule", [
    ("circle", lambda x: (np.hypot(x[:, 0], x[:, 1]) < 3.0).astype(int)),
    ("xor", lambda x: (x[:, 0] * x[:, 1] > 0).astype(int)),
    ("gauss", lambda x: (x.sum(1) > 0).astype(int)),
    ("moons", lambda x: (x[:, 1] < 0.75 * np.cos(np.pi * (x[:, 0] + 1.5) / 3.0)).astype(int)),
])
def test_clean_sets_have_the_expected_geometry(name, rule):
    assert _agreement(name, rule) > 0.9


def test_spiral_arms_interleave():
    x, y = toy.make_points("spiral", 2000, np.random.default_rng(0), noise=0.0)
    r = np.hypot(x[:, 0], x[:, 1])
    # Both arms span the whole radius range: no single radius threshold separates them.
    for cls in (0, 1):
        assert r[y == cls].min() < 0.5 and r[y == cls].max() > 4.5


def test_noise_changes_the_points():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    clean, _ = toy.make_points("circle", 200, rng(), noise=0.0)
    noisy, _ = toy.make_points("circle", 200, rng(), noise=0.4)
    assert not np.allclose(clean, noisy)


def test_digits_format(digit_sets):
    ds = digit_sets[0]
    assert (ds.name, ds.kind, ds.source) == ("digits", "image", "built-in")
    assert ds.x_train.shape == (6000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.input_shape == (28, 28, 1) and ds.class_names == tuple("0123456789")
    assert np.bincount(ds.y_train).tolist() == [600] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Exactly representable as uint8 / 255, like MNIST.
    levels = ds.x_train[:200] * 255
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    ink = ds.x_train.reshape(6000, -1).mean(1)
    assert 0.01 < ink.min() and ink.max() < 0.5  # every image has a digit, none is a blob


def test_digits_are_learnable_but_not_trivial(digit_sets):
    ds = digit_sets[0]
    xtr, xte = ds.x_train.reshape(6000, -1), ds.x_test.reshape(1000, -1)
    centroids = np.stack([xtr[ds.y_train == k].mean(0) for k in range(10)])
    d2 = (xte**2).sum(1)[:, None] - 2 * xte @ centroids.T + (centroids**2).sum(1)
    accuracy = np.mean(d2.argmin(1) == ds.y_test)
    # Nearest class mean is a weak classifier: far above chance, far below perfect.
    assert 0.35 < accuracy < 0.9


def test_digit_glyphs_are_well_formed():
    assert len(digits.GLYPHS) == 10
    for variants in digits.GLYPHS:
        for strokes in variants:
            pts = np.concatenate([np.asarray(s) for s in strokes])
            assert np.all(np.abs(pts[:, 0]) <= 0.7) and np.all(np.abs(pts[:, 1]) <= 1.0 + 1e-9)


def test_digits_small_counts():
    x, y = digits.make_digits(7, np.random.default_rng(0))
    assert x.shape == (7, 28, 28, 1) and len(set(y.tolist())) == 7


def test_builtin_names_are_case_insensitive():
    assert load_dataset("Circle", limit_train=5).name == "circle"


def test_dataset_checks_its_invariants():
    x = np.zeros((3, 2), np.float32)
    y = np.array([0, 1, 2])
    with pytest.raises(DatasetError, match="labels fall outside"):
        Dataset("t", x, y, x, y, ("a", "b"), "points", "built-in")
    with pytest.raises(DatasetError, match="float32/int64"):
        Dataset("t", x.astype(np.float64), y % 2, x, y % 2, ("a", "b"), "points", "built-in")
    ok = Dataset("t", x, y % 2, x, y % 2, ("a", "b"), "points", "built-in")
    assert "train=3" in repr(ok) and ok.num_classes == 2
