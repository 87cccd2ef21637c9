"""Multi-seed comparison: the statistics against direct NumPy computations, and the CLI."""

import json
import math

import numpy as np
import pytest

from bnnlab.app.compare import (paired_difference, summarize, t_cdf, t_quantile,
                                welch_difference)
from bnnlab.cli import main


def _t_cdf_numeric(t, df, n=400_001):
    """P(T <= t) by integrating Student's density with the trapezoid rule on a wide grid."""
    x = np.linspace(-400.0, t, n)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    dens = np.exp(logc - (df + 1) / 2 * np.log1p(x * x / df))
    y = (dens[1:] + dens[:-1]) * 0.5 * np.diff(x)
    return float(np.sum(y))


@pytest.mark.parametrize("df", [3.0, 4.0, 7.3, 12.0, 40.0])
def test_t_cdf_and_quantile_match_numerical_integration(df):
    for t in (-2.5, -0.3, 0.0, 1.0, 2.2):
        assert t_cdf(t, df) == pytest.approx(_t_cdf_numeric(t, df), abs=2e-5)
    q = t_quantile(0.975, df)
    assert _t_cdf_numeric(q, df) == pytest.approx(0.975, abs=2e-5)
    assert t_quantile(0.025, df) == pytest.approx(-q)


def test_t_quantile_known_values():
    # two-sided 95% critical values from printed t tables
    for df, q in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-3)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_summary_and_welch_difference_against_numpy():
    a = np.array([0.912, 0.931, 0.925, 0.940, 0.918])
    b = np.array([0.880, 0.902, 0.870, 0.915, 0.899, 0.905])
    s = summarize(a)
    assert (s.n, s.mean, s.min, s.max) == (5, pytest.approx(a.mean()), a.min(), a.max())
    assert s.std == pytest.approx(np.sqrt(np.sum((a - a.mean()) ** 2) / 4))
    d = welch_difference(a, b)
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 6
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 5)
    assert d.mean == pytest.approx(a.mean() - b.mean())
    assert d.standard_error == pytest.approx(se) and d.df == pytest.approx(df)
    # the interval holds exactly the differences whose t statistic is within the 97.5% point
    assert _t_cdf_numeric((d.ci_high - d.mean) / se, df) == pytest.approx(0.975, abs=2e-5)
    assert d.ci_low == pytest.approx(2 * d.mean - d.ci_high)
    assert "Welch" in d.method


def test_paired_difference_and_degenerate_cases():
    a = np.array([0.90, 0.92, 0.95, 0.91])
    b = np.array([0.88, 0.91, 0.92, 0.90])
    p = paired_difference(a, b)
    diff = a - b
    se = diff.std(ddof=1) / 2
    assert p.df == 3 and p.standard_error == pytest.approx(se)
    assert p.ci_high == pytest.approx(diff.mean() + 3.182446 * se, rel=1e-5)
    one = welch_difference([0.9], [0.8])
    assert one.mean == pytest.approx(0.1) and math.isnan(one.ci_low)
    same = welch_difference([0.9, 0.9], [0.8, 0.8])
    assert same.ci_low == same.ci_high == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_difference([0.9, 0.8], [0.7])


def test_compare_cli_json_shape(capsys):
    code = main(["compare", "toy-xor", "toy-circle", "--seeds", "2", "--epochs", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert [s["scene"] for s in doc["scenes"]] == ["toy-xor", "toy-circle"]
    for s in doc["scenes"]:
        assert {"scene", "n", "val_accuracy_mean", "val_accuracy_std", "val_accuracy_min",
                "val_accuracy_max"} <= set(s)
        assert s["n"] == 2 and s["val_accuracy_min"] <= s["val_accuracy_mean"] <= s["val_accuracy_max"]
        assert s["val_accuracy_mean"] == pytest.approx(np.mean(s["val_accuracy"]))
    d = doc["difference"]
    assert d["scenes"] == ["toy-xor", "toy-circle"]
    assert d["val_accuracy_difference"] == pytest.approx(
        doc["scenes"][0]["val_accuracy_mean"] - doc["scenes"][1]["val_accuracy_mean"])
    assert d["ci_low"] <= d["val_accuracy_difference"] <= d["ci_high"] and "Welch" in d["method"]
    # text output names the method too
    code = main(["compare", "toy-xor", "toy-circle", "--seeds", "1", "--epochs", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and "toy-xor - toy-circle" in out and "no interval with one seed" in out


@pytest.mark.parametrize("argv, match", [
    (["compare", "toy-xor"], "at least two scenes"),
    (["compare", "toy-xor", "toy-xor"], "named once"),
    (["compare", "toy-xor", "toy-circle", "--seeds", "0"], "--seeds"),
])
def test_compare_bad_arguments(capsys, argv, match):
    assert main(argv) == 2
    assert match in capsys.readouterr().err
