"""Comparing scenes over seeds: the multi-seed runner and the statistics of its results.

:func:`run_seeds` trains every scene with seeds 0..N-1 (a seed fixes the initial weights,
the batch order, stochastic draws and, for built-in data, the data drawn) and keeps one
:class:`SeedRun` per training. :func:`summarize` gives mean, sample standard deviation,
min and max of final validation accuracies; :func:`welch_difference` the difference of two
means with a confidence interval from Welch's t (unequal variances, Welch-Satterthwaite
degrees of freedom); :func:`paired_difference` the same for runs paired by seed. The
Student t quantiles are computed here (regularized incomplete beta function by its
continued fraction, inverted by bisection), so no SciPy is needed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..core.evaluation import evaluate_averaged, is_stochastic
from ..data import dataset_info
from ..experiment import build_model, make_trainer, prepare_data
from ..io.scenes import Scene

__all__ = ["SeedRun", "Summary", "Difference", "CompareCancelled", "run_seed", "run_seeds",
           "summarize", "welch_difference", "paired_difference", "t_cdf", "t_quantile",
           "comparison_json", "Band", "epoch_band"]

METHOD_WELCH = "Welch's t, Welch-Satterthwaite degrees of freedom"
METHOD_PAIRED = "paired t over seeds (same seed: same data, initial weights and batch order)"


class CompareCancelled(Exception):
    """The caller asked to stop a multi-seed run."""


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class SeedRun:
    """One finished training of one scene with one seed."""

    label: str  # how the caller named the scene (preset name or file)
    scene: str  # the scene's own name
    seed: int
    epochs: int
    loss: float  # last epoch's mean training loss
    accuracy: float
    val_loss: float
    val_accuracy: float  # final validation accuracy, running batch-norm statistics
    val_accuracy_batch_stats: float | None
    seconds: float  # wall time of the training, validation included
    parameters: int
    epoch_val_accuracy: tuple[float, ...]  # one per epoch, for curves with a band
    epoch_loss: tuple[float, ...]
    averaged: dict = field(default_factory=dict)  # K -> val accuracy over K stochastic passes


def _data_key(scene: Scene) -> tuple:
    seed = None if dataset_info(scene.dataset).needs_files else scene.seed
    return (scene.dataset, scene.limit_train, scene.limit_test, scene.input_scale, seed)


def run_seed(scene: Scene, seed: int, *, label: str | None = None, epochs: int | None = None,
             data_dir=None, data_cache: dict | None = None, passes: Sequence[int] = (),
             on_epoch: Callable[[object], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> SeedRun:
    """Train ``scene`` with ``seed`` (and ``epochs`` if given) and return its result.

    ``data_cache`` (a dict) keeps prepared data between calls; ``passes`` lists K values
    for which the final model is also evaluated averaging K stochastic passes (only for
    networks with stochastic binarizers); ``on_epoch`` receives each epoch's snapshot;
    ``cancelled`` is polled between batches and stops the run with
    :class:`CompareCancelled`.
    """
    scene = scene.copy()
    scene.seed = int(seed)
    if epochs is not None:
        scene.epochs = int(epochs)
    key = _data_key(scene)
    data = data_cache.get(key) if data_cache is not None else None
    if data is None:
        data = prepare_data(scene, data_dir)
        if data_cache is not None:
            data_cache[key] = data
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    trainer = make_trainer(scene, model, data, telemetry=False)
    t0 = time.perf_counter()
    ends = []
    for snap in trainer:
        if cancelled is not None and cancelled():
            trainer.stop()
            raise CompareCancelled(f"stopped while training {label or scene.name} seed {seed}")
        if snap.event in ("epoch", "done"):
            ends.append(snap)
            if on_epoch is not None:
                on_epoch(snap)
    seconds = time.perf_counter() - t0
    last = ends[-1]
    averaged = {}
    if passes and is_stochastic(model):
        res = evaluate_averaged(model, data.x_test, data.y_test, passes, seed=scene.seed)
        averaged = dict(zip(res.ks, res.accuracy))
    return SeedRun(
        label=label or scene.name, scene=scene.name, seed=scene.seed, epochs=scene.epochs,
        loss=last.loss, accuracy=last.accuracy,
        val_loss=float("nan") if last.val_loss is None else last.val_loss,
        val_accuracy=float("nan") if last.val_accuracy is None else last.val_accuracy,
        val_accuracy_batch_stats=last.val_accuracy_batch_stats, seconds=seconds,
        parameters=int(sum(p.value.size for _, p in model.params())),
        epoch_val_accuracy=tuple(float("nan") if s.val_accuracy is None else s.val_accuracy
                                 for s in ends),
        epoch_loss=tuple(s.loss for s in ends), averaged=averaged)


def run_seeds(scenes: Sequence[tuple[str, Scene]], seeds: int, *, epochs: int | None = None,
              data_dir=None, passes: Sequence[int] = (),
              progress: Callable[[str, int, int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None,
              on_run: Callable[[SeedRun], None] | None = None) -> dict[str, list[SeedRun]]:
    """Train each (label, scene) with seeds 0..``seeds``-1; results keyed by label, in order.

    ``progress(label, seed, epoch, epochs)`` is called after every epoch, ``on_run`` with
    each finished training.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    labels = [label for label, _ in scenes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"scene labels must differ, got {labels}")
    cache: dict = {}
    out: dict[str, list[SeedRun]] = {label: [] for label in labels}
    for seed in range(seeds):  # seed-major: the data of a seed is prepared once for all scenes
        for label, scene in scenes:
            def on_epoch(snap, label=label, seed=seed):
                if progress is not None:
                    progress(label, seed, snap.epoch, snap.epochs)
            run = run_seed(scene, seed, label=label, epochs=epochs, data_dir=data_dir,
                           data_cache=cache, passes=passes, on_epoch=on_epoch, cancelled=cancelled)
            out[label].append(run)
            if on_run is not None:
                on_run(run)
        if len(cache) > 2:
            cache.clear()
    return out


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1 in the denominator); NaN for n = 1
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarize")
    std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return Summary(int(v.size), float(np.mean(v)), std, float(np.min(v)), float(np.max(v)))


@dataclass(frozen=True)
class Band:
    """A per-epoch curve over seeds: mean with ±1 sample standard deviation and min-max.

    Row ``i`` describes epoch ``epochs[i]`` over the ``n[i]`` runs that reached it (runs
    of different lengths are allowed); ``std`` is NaN where fewer than two runs did."""

    epochs: np.ndarray  # 1, 2, ...
    n: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray


def epoch_band(curves: Sequence[Sequence[float]]) -> Band:
    """Aggregate per-epoch curves (one per seed, e.g. :attr:`SeedRun.epoch_val_accuracy`)."""
    length = max((len(c) for c in curves), default=0)
    grid = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        grid[i, :len(c)] = np.asarray(c, np.float64)
    n = np.sum(~np.isnan(grid), axis=0)
    mean, std, lo, hi = (np.full(length, np.nan) for _ in range(4))
    for j in range(length):
        col = grid[:, j][~np.isnan(grid[:, j])]
        if col.size:
            s = summarize(col)
            mean[j], std[j], lo[j], hi[j] = s.mean, s.std, s.min, s.max
    return Band(np.arange(1, length + 1), n, mean, std, lo, hi)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (any real df)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on :func:`t_cdf` (to about 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with a two-sided confidence interval."""

    mean: float
    ci_low: float  # NaN when the interval is undefined (fewer than 2 runs a side)
    ci_high: float
    level: float
    standard_error: float
    df: float
    t_critical: float
    method: str


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Difference of means with Welch's t interval (no equal-variance assumption):
    se = sqrt(s_a^2/n_a + s_b^2/n_b), df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one value")
    d = float(a.mean() - b.mean())
    nan = float("nan")
    if a.size < 2 or b.size < 2:
        return Difference(d, nan, nan, level, nan, nan, nan, METHOD_WELCH)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:  # every run gave the same figure on both sides
        return Difference(d, d, d, level, 0.0, nan, nan, METHOD_WELCH)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    t = t_quantile(0.5 + level / 2.0, df)
    return Difference(d, d - t * se, d + t * se, level, se, float(df), t, METHOD_WELCH)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Mean of the differences a_i - b_i (runs paired by seed) with a t interval, n-1 df."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"paired samples need the same non-zero size, got {a.size} and {b.size}")
    diff = a - b
    d = float(diff.mean())
    nan = float("nan")
    if diff.size < 2:
        return Difference(d, nan, nan, level, nan, nan, nan, METHOD_PAIRED)
    se = float(diff.std(ddof=1) / math.sqrt(diff.size))
    df = float(diff.size - 1)
    if se == 0.0:
        return Difference(d, d, d, level, 0.0, df, nan, METHOD_PAIRED)
    t = t_quantile(0.5 + level / 2.0, df)
    return Difference(d, d - t * se, d + t * se, level, se, df, t, METHOD_PAIRED)


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _difference_json(label_a: str, label_b: str, diff: Difference) -> dict:
    return {"scenes": [label_a, label_b], "val_accuracy_difference": diff.mean,
            "ci_low": _num(diff.ci_low), "ci_high": _num(diff.ci_high), "level": diff.level,
            "standard_error": _num(diff.standard_error), "df": _num(diff.df),
            "t_critical": _num(diff.t_critical), "method": diff.method}


def comparison_json(results: dict[str, list[SeedRun]], level: float = 0.95) -> dict:
    """The ``bnnlab compare --json`` object: per-scene summaries, and the difference
    between the first two scenes (Welch's t; a paired t too when the seeds match)."""
    scenes = []
    for label, runs in results.items():
        s = summarize([r.val_accuracy for r in runs])
        row = {"scene": label, "n": s.n, "val_accuracy_mean": s.mean,
               "val_accuracy_std": _num(s.std), "val_accuracy_min": s.min,
               "val_accuracy_max": s.max, "seeds": [r.seed for r in runs],
               "val_accuracy": [r.val_accuracy for r in runs],
               "seconds_mean": float(np.mean([r.seconds for r in runs]))}
        ks = sorted({k for r in runs for k in r.averaged})
        if ks:
            row["averaged_passes"] = [
                {"k": k, "val_accuracy_mean": float(np.mean([r.averaged[k] for r in runs]))}
                for k in ks]
        scenes.append(row)
    out = {"scenes": scenes, "difference": None}
    labels = list(results)
    if len(labels) >= 2:
        a, b = results[labels[0]], results[labels[1]]
        va, vb = [r.val_accuracy for r in a], [r.val_accuracy for r in b]
        out["difference"] = _difference_json(labels[0], labels[1], welch_difference(va, vb, level))
        if [r.seed for r in a] == [r.seed for r in b]:
            out["difference"]["paired"] = _difference_json(labels[0], labels[1],
                                                           paired_difference(va, vb, level))
    return out
