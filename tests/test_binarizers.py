import numpy as np
import pytest

from bnnlab.core.binarizers import (binarizer_names, get_binarizer, hard_sigmoid, sign)

X = np.linspace(-3, 3, 601).astype(np.float32)


def test_sign_maps_zero_to_plus_one():
    np.testing.assert_array_equal(sign(np.array([-2.0, -0.0, 0.0, 1e-9])), [-1, 1, 1, 1])


@pytest.mark.parametrize("name", binarizer_names())
def test_every_binarizer_gives_curves_and_config_roundtrip(name):
    b = get_binarizer(name)
    c = b.curves(X)
    for key in ("forward", "expected", "p_plus", "grad"):
        assert c[key].shape == X.shape and np.all(np.isfinite(c[key]))
    assert np.all((c["p_plus"] >= 0) & (c["p_plus"] <= 1))
    again = get_binarizer(b.config())
    assert again.config() == b.config()
    y = b.forward(X, np.random.default_rng(0))
    if b.binary:
        assert set(np.unique(y)) <= {-1.0, 1.0}
    np.testing.assert_allclose(b.backward(X, np.full_like(X, 2.0)), 2.0 * b.grad(X))


def test_ste_sign_gates_outside_clip_value():
    b = get_binarizer("ste_sign")
    g = b.grad(np.array([-1.5, -1.0, 0.3, 1.0, 1.01], np.float32))
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])
    assert b.gate_window() == (-1.0, 1.0)
    ungated = get_binarizer({"name": "ste_sign", "clip_value": "none"})
    assert ungated.clip_value is None and ungated.gate_window() is None
    np.testing.assert_array_equal(ungated.grad(np.array([-5.0, 5.0])), [1, 1])
    wide = get_binarizer({"name": "ste_sign", "clip_value": 2.0})
    np.testing.assert_array_equal(wide.grad(np.array([-1.5, 2.5])), [1, 0])


def test_approx_sign_gradient_is_bi_real_triangle():
    b = get_binarizer("approx_sign")
    np.testing.assert_allclose(b.grad(np.array([-1.2, -0.5, 0.0, 0.25, 1.0])), [0, 1.0, 2.0, 1.5, 0.0])


def test_swish_sign_gradient_matches_derivative_of_its_smooth_forward():
    # BNN+'s surrogate is the derivative of 2*sigmoid(beta x)(1 + beta x (1 - sigmoid(beta x))) - 1.
    beta = 5.0
    b = get_binarizer({"name": "swish_sign", "beta": beta})
    x = np.linspace(-1.5, 1.5, 301)

    def smooth(v):
        s = 1 / (1 + np.exp(-beta * v))
        return 2 * s * (1 + beta * v * (1 - s)) - 1

    h = 1e-5
    numeric = (smooth(x + h) - smooth(x - h)) / (2 * h)
    np.testing.assert_allclose(b.grad(x), numeric, rtol=1e-3, atol=1e-3)


def test_stochastic_sign_probability_and_mean_converges_to_hard_tanh():
    b = get_binarizer("stochastic_sign")
    x = np.array([-2.0, -0.5, 0.0, 0.3, 0.9, 1.5], np.float32)
    np.testing.assert_allclose(b.probability(x), hard_sigmoid(x))
    rng = np.random.default_rng(0)
    draws = b.forward(np.broadcast_to(x, (20000, x.size)), rng)
    np.testing.assert_allclose(draws.mean(axis=0), np.clip(x, -1, 1), atol=0.02)
    # seeded: same generator state, same draws
    a1 = b.forward(x, np.random.default_rng(5))
    a2 = b.forward(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a1, a2)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*ste_sign"):
        get_binarizer("sgn")
    with pytest.raises(ValueError, match="clip_value"):
        get_binarizer({"name": "ste_sign", "clip_value": -1})
    with pytest.raises(ValueError, match="bad parameters"):
        get_binarizer({"name": "ste_sign", "beta": 2})
    assert get_binarizer(None) is None and get_binarizer("none") is None
