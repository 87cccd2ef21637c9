"""Comparing the current scene with its variants over seeds, in the app.

A :class:`Comparison` is one "Compare over seeds": its scenes, the trainings finished so
far (:class:`bnnlab.app.compare.SeedRun`) and where it is. :class:`SeedComparisons` (part
of the session) starts one on a background :class:`bnnlab.app.jobs.SeedsJob`, applies its
events on the owner's thread and cancels it. The statistics are those of
``bnnlab compare``: :func:`bnnlab.app.compare.comparison_json` and
:func:`bnnlab.app.compare.epoch_band`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..io.scenes import Scene, SceneError, load_preset, preset_names
from .compare import Band, comparison_json, epoch_band
from .describe import describe_scene, difference_label
from .jobs import SeedsJob

__all__ = ["Comparison", "SeedComparisons", "default_variant", "variant_choices"]

# The preset that answers a question about a preset: deterministic against stochastic
# binarization of activations (see README, "Measured"); a residual network against the
# same network with its shortcuts cut.
_PAIRS = {"quickstart": "ablation-stochastic", "ablation-stochastic": "quickstart",
          "bireal-mnist": "bireal-mnist-noshortcut", "bireal-mnist-noshortcut": "bireal-mnist"}


def variant_choices(scene: Scene) -> list[str]:
    """Presets a scene can be compared with: those on the same dataset, the scene's own
    preset excluded when the scene still has its settings."""
    names = []
    for name in preset_names():
        try:
            preset = load_preset(name)
        except SceneError:
            continue
        if preset.dataset != scene.dataset:
            continue
        if name == scene.name and describe_scene(preset) == describe_scene(scene):
            continue
        names.append(name)
    return names


def default_variant(scene: Scene, choices: list[str]) -> str | None:
    """The variant offered first: the scene's documented pair if any, else the first."""
    pair = _PAIRS.get(scene.name)
    if pair in choices:
        return pair
    return choices[0] if choices else None


@dataclass(eq=False)
class Comparison:
    """One comparison over seeds: what it trains and what it has found so far."""

    number: int
    variants: list  # (label, scene), the first is the scene the others are compared with
    seeds: int
    epochs: int | None  # None: each scene's own
    state: str = "running"  # running, cancelling, finished, cancelled, failed
    runs: dict = field(default_factory=dict)  # label -> [SeedRun], in seed order
    done: int = 0  # epochs trained over the whole comparison
    total: int = 0
    current: str = ""  # what trains now
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    version: int = 0
    saved: bool = False  # written to a workspace file since it last changed

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.variants]

    @property
    def live(self) -> bool:
        return self.state in ("running", "cancelling")

    def differs(self, label: str) -> str:
        """What sets the scene ``label`` apart from the first one ("" for the first)."""
        base = self.variants[0][1]
        scene = dict(self.variants)[label]
        if label == self.labels[0]:
            return ""
        return difference_label(base, scene) or "same settings"

    def bands(self, metric: str = "val_accuracy") -> dict[str, Band]:
        """Per scene, the per-epoch band of ``metric`` ("val_accuracy" or "loss") over
        the seeds finished so far."""
        attr = {"val_accuracy": "epoch_val_accuracy", "loss": "epoch_loss"}[metric]
        return {label: epoch_band([getattr(r, attr) for r in runs])
                for label, runs in self.runs.items() if runs}

    def report(self) -> dict | None:
        """The ``bnnlab compare --json`` object of the finished trainings (scenes with at
        least one run), or None before the first one finishes."""
        done = {label: self.runs[label] for label in self.labels if self.runs.get(label)}
        return comparison_json(done) if done else None


class SeedComparisons:
    """The session's comparisons over seeds. One runs at a time, beside any training run.

    Needs from its host: ``scene``, ``data_dir``, ``kernels_ready``, ``_events``,
    ``_emit`` and ``_changed``.
    """

    comparisons: list[Comparison]
    _seeds_job: SeedsJob | None

    def _init_comparisons(self) -> None:
        self.comparisons = []
        self._seeds_job = None
        self._seeds_jobs: dict[SeedsJob, Comparison] = {}

    @property
    def comparison(self) -> Comparison | None:
        """The newest comparison (the one the window shows)."""
        return self.comparisons[-1] if self.comparisons else None

    @property
    def comparing(self) -> bool:
        return self._seeds_job is not None

    def compare_seeds(self, variants: list[str | Scene], seeds: int = 5,
                      epochs: int | None = None) -> Comparison | None:
        """Train the current scene and each variant (a preset name or a scene) with seeds
        0..``seeds``-1, in the background. Reports ``error`` and returns None when it
        cannot start."""
        if self._seeds_job is not None:
            self._emit("error", "A comparison is running",
                       "Cancel it or wait for it to finish before starting another.")
            return None
        if not 1 <= int(seeds) <= 1000:
            self._emit("error", "Cannot compare", f"seeds must be between 1 and 1000, got {seeds}")
            return None
        if epochs is not None and int(epochs) < 1:
            self._emit("error", "Cannot compare", f"epochs must be at least 1, got {epochs}")
            return None
        pairs = [(self.scene.name, self.scene.copy())]
        for v in variants:
            try:
                scene = load_preset(v) if isinstance(v, str) else v.copy()
            except SceneError as exc:
                self._emit("error", "Cannot compare", str(exc))
                return None
            label = v if isinstance(v, str) else scene.name
            while label in dict(pairs):
                label += " (preset)" if isinstance(v, str) else " (variant)"
            pairs.append((label, scene))
        if len(pairs) < 2:
            self._emit("error", "Cannot compare", "choose a scene to compare the current one with")
            return None
        number = len(self.comparisons) + 1
        job = SeedsJob(number, self._events, pairs, int(seeds),
                       epochs=None if epochs is None else int(epochs), data_dir=self.data_dir,
                       kernels_ready=self.kernels_ready)
        comparison = Comparison(number, pairs, int(seeds), epochs, total=job.total,
                                runs={label: [] for label, _ in pairs})
        self.comparisons.append(comparison)
        self._seeds_job = job
        self._seeds_jobs[job] = comparison
        self._changed(runs=True, state=True)
        job.start()
        return comparison

    def cancel_comparison(self, wait: bool = False, timeout: float | None = None) -> None:
        """Stop the running comparison within a batch; what finished stays."""
        job = self._seeds_job
        if job is None:
            return
        job.cancel()
        comparison = self._seeds_jobs.get(job)
        if comparison is not None and comparison.state == "running":
            comparison.state = "cancelling"
            comparison.version += 1
        self._changed(state=True)
        if wait and job.join(timeout):
            self.poll()

    def wait_comparison(self, timeout: float | None = None) -> bool:
        """For scripts and tests: poll until no comparison runs (True) or the timeout passes."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._seeds_job is not None:
            self.poll()
            if end is not None and time.monotonic() > end:
                break
            time.sleep(0.02)
        self.poll()
        return self._seeds_job is None

    # events of the job, applied by Session.poll on the owner's thread
    @property
    def unsaved_comparisons(self) -> list[Comparison]:
        """Comparisons with finished trainings not written to a workspace since."""
        return [c for c in self.comparisons if not c.saved and any(c.runs.values())]

    def _touch(self, comparison: Comparison) -> None:
        comparison.saved = False
        comparison.version += 1
        comparison.seconds = time.monotonic() - comparison.started

    def _on_SeedsJob_progress(self, job, label, seed, epoch, epochs, done, total) -> None:
        c = self._seeds_jobs.get(job)
        if c is not None:
            c.done, c.total = done, total
            c.current = f"{label}, seed {seed}, epoch {epoch}/{epochs}"
            self._touch(c)
            self._changed()
            self._emit("progress", "comparing seeds", done, total)

    def _on_SeedsJob_seed_run(self, job, run) -> None:
        c = self._seeds_jobs.get(job)
        if c is not None:
            c.runs[run.label].append(run)
            self._touch(c)
            self._changed(runs=True)

    def _on_SeedsJob_failed(self, job, title: str, message: str) -> None:
        c = self._seeds_jobs.get(job)
        if c is not None:
            c.state, c.error = "failed", message
            self._touch(c)
        self._emit("error", title, message)

    def _on_SeedsJob_cancelled(self, job) -> None:
        c = self._seeds_jobs.get(job)
        if c is not None:
            c.state = "cancelled"
            self._touch(c)

    def _on_SeedsJob_ended(self, job) -> None:
        c = self._seeds_jobs.pop(job, None)
        if c is not None:
            if c.live:
                c.state = "finished"
            c.current = ""
            self._touch(c)
        if job is self._seeds_job:
            job.join()
            self._seeds_job = None
        self._emit("progress", "comparing seeds", 0, 0)
        self._changed(runs=True, state=True)
