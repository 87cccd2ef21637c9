"""The application's state, without widgets: the scene being edited, the runs trained from
it, and the threads behind them.

Panels read from the controller and write back through its methods; the main window polls
:attr:`Controller.version` from a timer, so a burst of snapshots costs the GUI nothing
until the next frame.
"""

from __future__ import annotations

import csv
import gc
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from ..core.binarizers import get_binarizer
from ..io.scenes import Scene, SceneError, load_preset, load_scene, save_scene
from .worker import ModelPreviewThread, TrainingThread, WarmUpThread

__all__ = [
    "DEFAULT_PRESET",
    "RUN_COLORS",
    "Controller",
    "Run",
    "RunView",
    "binarizer_choice",
    "binarizer_spec",
    "describe_scene",
    "label_runs",
]

DEFAULT_PRESET = "quickstart"

# Run colours: far apart in hue and lightness, none close to the red used for clip bounds.
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
              "#7f7f7f", "#bcbd22", "#393b79"]

_QUANT_TYPES = ("QuantConv2D", "QuantDense")
_STE_VARIANTS = ("ste_sign", "approx_sign", "swish_sign")


# --------------------------------------------------------------------------- binarizer choices

def binarizer_choice(spec) -> tuple[str, str, bool]:
    """Split a binarizer spec into what the controls show: (mode, STE variant, gated).

    ``mode`` is "deterministic" or "stochastic"; ``gated`` is whether the straight-through
    gradient is cut outside |x| <= 1.
    """
    b = get_binarizer(spec) if spec is not None else get_binarizer("ste_sign")
    if b is None:
        b = get_binarizer("ste_sign")
    if b.name == "stochastic_sign":
        return "stochastic", "ste_sign", b.clip_value is not None
    if b.name == "ste_sign":
        return "deterministic", "ste_sign", b.clip_value is not None
    if b.name == "approx_sign":
        return "deterministic", "approx_sign", True
    if b.name == "swish_sign":
        return "deterministic", "swish_sign", False
    return "deterministic", b.name, b.gate_window() is not None


def binarizer_spec(mode: str, ste: str, gated: bool):
    """The scene value for a choice of controls (inverse of :func:`binarizer_choice`)."""
    if mode == "stochastic":
        return "stochastic_sign" if gated else {"name": "stochastic_sign", "clip_value": None}
    if ste == "ste_sign":
        return "ste_sign" if gated else {"name": "ste_sign", "clip_value": None}
    if ste in _STE_VARIANTS:
        return ste  # approx_sign is always gated to |x| <= 1, swish_sign never hard-gated
    raise ValueError(f"unknown straight-through estimator {ste!r}; valid: {', '.join(_STE_VARIANTS)}")


def _short(spec) -> str:
    b = get_binarizer(spec)
    if b is None:
        return "none"
    if b.name in ("ste_sign", "stochastic_sign"):
        return b.name if b.clip_value == 1.0 else (
            f"{b.name} ungated" if b.clip_value is None else f"{b.name}(clip={b.clip_value:g})")
    return b.label()


def _is_binary(spec) -> bool:
    b = get_binarizer(spec) if spec else None
    return b is not None and b.binary


def effective_binarizer(scene: Scene, key: str):
    """The spec the quantized layers will use for ``key`` ("input_quantizer" or
    "kernel_quantizer"): the scene override, else the first layer's own, else None."""
    for lc in scene.resolved_layers():
        if lc.get("type") in _QUANT_TYPES and lc.get(key):
            return lc[key]
    return None


def effective_clip(scene: Scene) -> bool | None:
    """Whether latent weights are clipped (None when the model has no binary kernel)."""
    values = {lc.get("kernel_constraint") == "weight_clip" for lc in scene.resolved_layers()
              if lc.get("type") in _QUANT_TYPES and lc.get("kernel_quantizer")}
    if not values:
        return None
    return True in values


def describe_scene(scene: Scene) -> dict[str, str]:
    """The settings a person compares runs by, as short strings."""
    resolved = scene.resolved_layers()
    binary = any(_is_binary(lc.get(key)) for lc in resolved if lc.get("type") in _QUANT_TYPES
                 for key in ("kernel_quantizer", "input_quantizer"))
    acts = sorted({_short(lc["input_quantizer"]) for lc in resolved
                   if lc.get("type") in _QUANT_TYPES and lc.get("input_quantizer")})
    kernels = sorted({_short(lc["kernel_quantizer"]) for lc in resolved
                      if lc.get("type") in _QUANT_TYPES and lc.get("kernel_quantizer")})
    clip = effective_clip(scene)
    shape = [{k: v for k, v in lc.items()
              if k not in ("input_quantizer", "kernel_quantizer", "kernel_constraint")}
             | {"type": {"QuantConv2D": "Conv2D", "QuantDense": "Dense"}.get(lc.get("type"), lc.get("type"))}
             for lc in scene.layers]
    data = scene.dataset + (f"[:{scene.limit_train}]" if scene.limit_train else "")
    return {
        "precision": "binary" if binary else "full precision",
        "act": "/".join(acts) or "none",
        "weights": "/".join(kernels) or "none",
        "clip": "none" if clip is None else ("on" if clip else "off"),
        "opt": scene.optimizer,
        "lr": f"{scene.learning_rate:g}",
        "schedule": scene.schedule,
        "batch": str(scene.batch_size),
        "epochs": str(scene.epochs),
        "data": data,
        "scale": scene.input_scale,
        "seed": str(scene.seed),
        "layers": repr(shape),
    }


def difference_label(base: Scene, scene: Scene) -> str:
    """What differs from ``base``, e.g. "act=stochastic_sign, clip off" ("" if nothing)."""
    a, b = describe_scene(base), describe_scene(scene)
    parts = []
    if a["precision"] != b["precision"]:
        parts.append(b["precision"])
    else:
        if a["act"] != b["act"]:
            parts.append(f"act={b['act']}")
        if a["weights"] != b["weights"]:
            parts.append(f"weights={b['weights']}")
        if a["clip"] != b["clip"]:
            parts.append(f"clip {b['clip']}")
    for key in ("opt", "lr", "schedule", "batch", "epochs", "data", "scale", "seed"):
        if a[key] != b[key]:
            parts.append(f"{key}={b[key]}")
    if a["layers"] != b["layers"]:
        parts.append("other layers")
    return ", ".join(parts)


def label_runs(scenes: list[Scene]) -> list[str]:
    """Labels for runs in order: the first by its scene name, the others by what differs."""
    if not scenes:
        return []
    labels = [scenes[0].name]
    for scene in scenes[1:]:
        labels.append(difference_label(scenes[0], scene) or "same settings")
    return labels


# --------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class RunView:
    """What the views draw of a run: plain, immutable data."""

    number: int
    title: str
    color: str
    visible: bool
    selected: bool
    status: str
    snapshot: Any  # trainer.Snapshot or None

@dataclass(eq=False)
class Run:
    """One training run: its frozen scene, its colour, and the latest snapshot."""

    number: int
    scene: Scene
    color: str
    label: str = ""
    visible: bool = True
    status: str = "loading data"  # loading data, building model, compiling kernels, training,
    #                               paused, stopping, stopped, finished, error
    snapshot: Any = None  # trainer.Snapshot
    prepared: Any = None  # experiment.Prepared
    model_config: dict | None = None
    fp_config: dict | None = None
    error: str = ""

    @property
    def title(self) -> str:
        return f"#{self.number} {self.label}"

    @property
    def full_precision(self) -> bool:
        return describe_scene(self.scene)["precision"] == "full precision"


def _data_key(scene: Scene, data_dir) -> tuple:
    return (scene.dataset, scene.limit_train, scene.limit_test, scene.seed, scene.input_scale,
            os.fspath(data_dir) if data_dir else None)


class Controller(QObject):
    """Scene, runs, and the worker threads; emits what changed, holds no widgets."""

    scene_changed = Signal(object)  # the Scene (replaced or edited)
    state_changed = Signal(str)  # compiling, ready, loading data, ..., training, paused, ...
    runs_changed = Signal()  # a run was added, removed, relabelled, shown or hidden
    progress_changed = Signal(str, int, int)  # what, done, total (total 0: nothing to show)
    error_raised = Signal(str, str)  # title, message: shown in the window, never raised
    data_ready = Signal(object)  # experiment.Prepared of the newest run
    model_built = Signal(object, object)  # model config, full-precision twin config

    def __init__(self, parent=None, *, data_dir=None, warm_up: bool = True):
        super().__init__(parent)
        self.scene: Scene = load_preset(DEFAULT_PRESET)
        self.scene_path: str | None = None
        self.data_dir = data_dir if data_dir is not None else (os.environ.get("BNNLAB_DATA_DIR") or None)
        self.allow_download = True
        self.runs: list[Run] = []
        self.selected: Run | None = None
        self.version = 0  # bumped on every change the views draw
        self._numbers = 0
        self._thread: TrainingThread | None = None
        self._active: Run | None = None
        self._paused = False
        self._data_cache: dict[tuple, Any] = {}
        self.kernels_ready = threading.Event()
        self._warm_thread: WarmUpThread | None = None
        self._state = "ready"
        self._previews: list[ModelPreviewThread] = []
        self._preview_tag = 0
        self.preview_config: tuple | None = None  # (config, fp_config) of the current scene
        if warm_up:
            self.start_warm_up()
        else:
            self.kernels_ready.set()
        self.preview_model()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self._state

    @property
    def busy(self) -> bool:
        """True while a run's thread is alive (the scene controls are locked)."""
        return self._thread is not None

    @property
    def paused(self) -> bool:
        return self.busy and self._paused

    @property
    def active_run(self) -> Run | None:
        return self._active

    @property
    def latest_snapshot(self):
        return self.selected.snapshot if self.selected is not None else None

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.version += 1
            self.state_changed.emit(state)

    def status_text(self) -> str:
        """One line for the status bar."""
        run = self._active
        if self._state == "training" and run is not None and run.snapshot is not None:
            s = run.snapshot
            return f"training epoch {s.epoch}/{s.epochs}"
        if self._state == "compiling" and run is not None:
            return "compiling kernels (training starts when done)"
        return self._state

    # ------------------------------------------------------------------ kernels
    def start_warm_up(self) -> None:
        if self._warm_thread is not None or self.kernels_ready.is_set():
            return
        self._set_state("compiling")
        t = WarmUpThread(self.kernels_ready)
        t.progressed.connect(self._on_warm_progress)
        t.failed.connect(self._on_warm_failed)
        t.finished.connect(self._on_warm_finished)
        self._warm_thread = t
        t.start()

    @Slot(int, int)
    def _on_warm_progress(self, done: int, total: int) -> None:
        self.progress_changed.emit("compiling kernels", done, total)

    @Slot(str)
    def _on_warm_failed(self, message: str) -> None:
        self.error_raised.emit("Kernel compilation failed",
                               f"{message}\nTraining will compile kernels on first use (slower start).")

    @Slot()
    def _on_warm_finished(self) -> None:
        t, self._warm_thread = self._warm_thread, None
        if t is not None:
            t.wait()
        self.progress_changed.emit("compiling kernels", 0, 0)
        if self._state == "compiling":
            self._set_state("ready")
        elif self._active is not None and self._active.status == "compiling kernels":
            self._active.status = "training"

    # ------------------------------------------------------------------ scenes
    def set_scene(self, scene: Scene, path: str | None = None) -> None:
        """Make ``scene`` current (stopping any run: its settings no longer apply)."""
        self.stop(wait=True)
        self.scene = scene.copy()
        self.scene_path = path
        self.version += 1
        self.scene_changed.emit(self.scene)
        self.preview_model()

    def open_scene(self, path: str | os.PathLike) -> bool:
        import warnings

        from ..io.scenes import SceneWarning

        path = os.fspath(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SceneWarning)
                scene = load_scene(path)
        except SceneError as exc:
            self.error_raised.emit("Cannot open the scene", str(exc))
            return False
        self.set_scene(scene, path)
        notes = [str(w.message) for w in caught if issubclass(w.category, SceneWarning)]
        if notes:
            self.error_raised.emit("Scene opened with warnings", "\n".join(notes))
        return True

    def open_preset(self, name: str) -> bool:
        try:
            scene = load_preset(name)
        except SceneError as exc:
            self.error_raised.emit("Cannot open the preset", str(exc))
            return False
        self.set_scene(scene, None)
        return True

    def save_scene(self, path: str | os.PathLike) -> bool:
        path = os.fspath(path)
        try:
            save_scene(self.scene, path)
        except (SceneError, OSError) as exc:
            self.error_raised.emit("Cannot save the scene", str(exc))
            return False
        self.scene_path = path
        self.scene_changed.emit(self.scene)
        return True

    def update_scene(self, **changes) -> bool:
        """Edit fields of the current scene; invalid values are refused with a message."""
        new = self.scene.copy()
        for key, value in changes.items():
            if not hasattr(new, key):
                raise AttributeError(f"Scene has no field {key!r}")
            setattr(new, key, value)
        if "optimizer" in changes and "optimizer_options" not in changes:
            new.optimizer_options = self._options_for(new)
        try:
            new.validate()
        except SceneError as exc:
            self.error_raised.emit("Invalid setting", str(exc))
            self.scene_changed.emit(self.scene)  # puts the controls back
            return False
        self.scene = new
        self.version += 1
        self.scene_changed.emit(self.scene)
        self.preview_model()
        return True

    def _options_for(self, scene: Scene) -> dict:
        # Options belong to one optimizer (Adam's epsilon means nothing to SGD): keep them
        # only if the new optimizer accepts them.
        from ..core.optimizers import make_optimizer

        try:
            make_optimizer(scene.optimizer, learning_rate=float(scene.learning_rate),
                           **scene.optimizer_options)
            return dict(scene.optimizer_options)
        except ValueError:
            return {}

    def set_data_dir(self, path) -> None:
        self.data_dir = os.fspath(path) if path else None
        self._data_cache.clear()

    # ------------------------------------------------------------------ training controls
    def start(self, paused: bool = False) -> None:
        """Resume a paused run, or start a new run of the current scene."""
        if self._thread is not None:
            if self._active is not None and self._active.status == "stopping":
                self._join()
            else:
                if not paused:
                    self.resume()
                return
        self._launch(self.scene, paused=paused)

    def toggle(self) -> None:
        """Start or pause (the Space key)."""
        if self._thread is not None and not self._paused and self._active.status != "stopping":
            self.pause()
        else:
            self.start()

    def pause(self) -> None:
        if self._thread is None:
            return
        self._paused = True
        self._thread.pause()
        if self._active.status in ("training",):
            self._active.status = "paused"
        self._set_state("paused")

    def resume(self) -> None:
        if self._thread is None:
            return
        self._paused = False
        self._thread.resume()
        run = self._active
        if run.status == "paused":
            run.status = "training"
        self._set_state(run.status)

    def step(self) -> None:
        """Train exactly one batch, then stay paused (starts a paused run if none is live)."""
        if self._thread is None:
            self._launch(self.scene, paused=True)
        self._paused = True
        self._thread.step_once()
        self._set_state("paused")

    def stop(self, wait: bool = False) -> None:
        if self._thread is None:
            return
        self._thread.stop()
        if self._active is not None and self._active.status not in ("error",):
            self._active.status = "stopping"
        self._set_state("stopping")
        if wait:
            self._join()

    def reset(self) -> None:
        """Stop and forget every run: the next start trains fresh weights."""
        self.stop(wait=True)
        self.runs.clear()
        self.selected = None
        self.version += 1
        self.runs_changed.emit()
        self._set_state("ready" if self.kernels_ready.is_set() else "compiling")

    def train_twin(self) -> None:
        """Train the current scene's full-precision twin on the same data, as a new run."""
        if self._thread is not None:
            self.error_raised.emit("A run is in progress",
                                   "Stop or finish the current run before training the twin.")
            return
        self._launch(self.scene.full_precision_twin(), paused=False)

    def shutdown(self) -> None:
        """Stop everything and wait for the threads (closing the window)."""
        self.stop(wait=True)
        for t in self._previews:
            t.wait()
        self._previews.clear()
        if self._warm_thread is not None:
            self._warm_thread.wait()
            self._warm_thread = None

    # ------------------------------------------------------------------ model preview
    def preview_model(self) -> None:
        """Build the current scene's model in the background, for the summary view."""
        self._preview_tag += 1
        t = ModelPreviewThread(self._preview_tag, self.scene)
        t.built.connect(self._on_preview)
        t.finished.connect(self._on_preview_finished)
        self._previews.append(t)
        t.start()

    @Slot(int, object, object)
    def _on_preview(self, tag: int, config, fp_config) -> None:
        if tag == self._preview_tag:
            self.preview_config = (config, fp_config)
            if self._active is None:
                self.model_built.emit(config, fp_config)

    @Slot()
    def _on_preview_finished(self) -> None:
        for t in [t for t in self._previews if t.isFinished()]:
            t.wait()
            self._previews.remove(t)

    # ------------------------------------------------------------------ runs
    def select_run(self, run: Run | None) -> None:
        if run is not self.selected:
            self.selected = run
            self.version += 1
            self.runs_changed.emit()
            if run is not None and run.prepared is not None:
                self.data_ready.emit(run.prepared)
            if run is not None and run.model_config is not None:
                self.model_built.emit(run.model_config, run.fp_config)

    def set_run_visible(self, run: Run, visible: bool) -> None:
        if run.visible != visible:
            run.visible = visible
            self.version += 1
            self.runs_changed.emit()

    def remove_run(self, run: Run) -> None:
        if run is self._active:
            self.stop(wait=True)
        if run in self.runs:
            self.runs.remove(run)
        if self.selected is run:
            self.selected = self.runs[-1] if self.runs else None
        self._relabel()
        self.version += 1
        self.runs_changed.emit()

    def run_views(self) -> tuple[RunView, ...]:
        return tuple(RunView(r.number, r.title, r.color, r.visible, r is self.selected, r.status,
                             r.snapshot) for r in self.runs)

    def run_by_number(self, number: int) -> Run | None:
        return next((r for r in self.runs if r.number == number), None)

    def twin_run(self) -> Run | None:
        """The newest full-precision run, if any (the try-it view compares against it)."""
        return next((r for r in reversed(self.runs) if r.full_precision and r.snapshot is not None), None)

    def _relabel(self) -> None:
        for run, label in zip(self.runs, label_runs([r.scene for r in self.runs])):
            run.label = label

    def _next_color(self) -> str:
        used = {r.color for r in self.runs}
        free = [c for c in RUN_COLORS if c not in used]
        return free[0] if free else RUN_COLORS[self._numbers % len(RUN_COLORS)]

    def _launch(self, scene: Scene, paused: bool) -> None:
        self._numbers += 1
        run = Run(number=self._numbers, scene=scene.copy(), color=self._next_color())
        self.runs.append(run)
        self._relabel()
        self.selected = run
        self._active = run
        self._paused = paused
        key = _data_key(scene, self.data_dir)
        prepared = self._data_cache.get(key)
        run.prepared = prepared
        run.status = "building model" if prepared is not None else "loading data"
        t = TrainingThread(run.number, scene, data_dir=self.data_dir, download=self.allow_download,
                           prepared=prepared, kernels_ready=self.kernels_ready, start_paused=paused)
        t.stage_changed.connect(self._on_stage)
        t.progressed.connect(self._on_progress)
        t.data_ready.connect(self._on_data)
        t.model_built.connect(self._on_model)
        t.snapshot_ready.connect(self._on_snapshot)
        t.failed.connect(self._on_failed)
        t.ended.connect(self._on_ended)
        self._thread = t
        self.version += 1
        self.runs_changed.emit()
        self._set_state(run.status)
        if prepared is not None:
            self.data_ready.emit(prepared)
        t.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._finalize()

    # ------------------------------------------------------------------ thread signals
    def _live(self, tag: int) -> Run | None:
        run = self._active
        return run if run is not None and run.number == tag and run in self.runs else None

    @Slot(int, str)
    def _on_stage(self, tag: int, stage: str) -> None:
        run = self._live(tag)
        if run is None or run.status in ("stopping", "error"):
            return
        if stage == "training":
            # Objects alive now (modules, compiled kernels, data, model) stay alive for the
            # whole run; moving them out of the collector's reach turns the ~100 ms full
            # collections that froze the window mid-training into sub-millisecond ones.
            gc.freeze()
            if self._paused:
                stage = "paused"
        run.status = stage
        self.version += 1
        self._set_state(stage)

    @Slot(int, str, int, int)
    def _on_progress(self, tag: int, what: str, done: int, total: int) -> None:
        if self._live(tag) is not None:
            self.progress_changed.emit(what, done, total)

    @Slot(int, object)
    def _on_data(self, tag: int, prepared) -> None:
        run = self.run_by_number(tag)
        self._data_cache.clear()  # one data set in memory at a time: MNIST is ~200 MB as float32
        self._data_cache[_data_key(run.scene if run else self.scene, self.data_dir)] = prepared
        self.progress_changed.emit("downloading", 0, 0)
        if run is not None:
            run.prepared = prepared
            if run is self.selected:
                self.data_ready.emit(prepared)

    @Slot(int, object, object)
    def _on_model(self, tag: int, config, fp_config) -> None:
        run = self.run_by_number(tag)
        if run is not None:
            run.model_config, run.fp_config = config, fp_config
            if run is self.selected:
                self.model_built.emit(config, fp_config)

    @Slot(int, object)
    def _on_snapshot(self, tag: int, snapshot) -> None:
        run = self.run_by_number(tag)
        if run is None:
            return
        run.snapshot = snapshot
        self.version += 1
        if run is not self._active:
            return
        if snapshot.event == "done":
            run.status = "finished"
        elif snapshot.event == "stopped":
            run.status = "stopped"
        elif run.status not in ("stopping",):
            run.status = "paused" if self._paused else "training"
        self._set_state(run.status)

    @Slot(int, str, str)
    def _on_failed(self, tag: int, title: str, message: str) -> None:
        run = self.run_by_number(tag)
        if run is not None:
            run.status = "error"
            run.error = message
        self.progress_changed.emit("", 0, 0)
        self.error_raised.emit(title, message)
        self._set_state("error")

    @Slot(int)
    def _on_ended(self, tag: int) -> None:
        # A run joined by stop(wait=True) was finalized already; its late signal is stale.
        if self._thread is not None and self._thread.tag == tag:
            self._finalize()

    def _finalize(self) -> None:
        t = self._thread
        t.wait()
        self._thread = None
        run, self._active = self._active, None
        self._paused = False
        if run is not None and run.status not in ("finished", "error"):
            run.status = "stopped"
        if run is not None:
            self._state = run.status
        self.version += 1
        self.runs_changed.emit()
        # Always announce: the state name may not change ("finished" arrives with the last
        # snapshot) but the controls unlock only now that no thread is alive.
        self.state_changed.emit(self._state)

    # ------------------------------------------------------------------ export
    def export_metrics(self, path: str | os.PathLike) -> bool:
        """Write every run's curves as one CSV (one row per snapshot or epoch)."""
        path = os.fspath(path)
        header = ["run", "label", "kind", "step", "epoch", "loss", "accuracy", "val_loss",
                  "val_accuracy"]
        rows = []
        for run in self.runs:
            s = run.snapshot
            if s is None:
                continue
            h, bpe = s.history, s.batches_per_epoch
            for i in range(len(h.step)):
                rows.append([run.number, run.label, "train", int(h.step[i]),
                             round(h.step[i] / bpe, 4), _num(h.loss[i]), _num(h.accuracy[i]), "", ""])
            for i in range(len(h.epoch)):
                rows.append([run.number, run.label, "epoch", int(h.epoch[i]) * bpe, int(h.epoch[i]),
                             _num(h.epoch_loss[i]), _num(h.epoch_accuracy[i]),
                             _num(h.val_loss[i]), _num(h.val_accuracy[i])])
        try:
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(rows)
        except OSError as exc:
            self.error_raised.emit("Cannot export the metrics", f"{path}: {exc.strerror}")
            return False
        return True


def _num(v) -> str:
    v = float(v)
    return "" if math.isnan(v) else f"{v:.6g}"
