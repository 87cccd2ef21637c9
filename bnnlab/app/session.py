"""The session: the scene being edited, the runs trained from it, and the jobs behind them.

Jobs run in threads and only post events; :meth:`Session.poll`, called from the owner's
thread (the window's frame timer, or a test), applies them. So every change to the
session happens on one thread, and views read it without locks. Views learn of changes
through listeners (:meth:`Session.listen`) and through :attr:`Session.version`, bumped on
every change they draw.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..io.scenes import Scene, load_preset
from .describe import describe_scene, label_runs
from .editing import SceneEditing
from .opened import OpenedModels
from .results import result_rows, seed_result_rows
from .jobs import TrainingJob, WarmUpJob
from .runs import RUN_COLORS, Focus, Probe, Run, RunState, RunView
from .seeds import SeedComparisons

__all__ = ["DEFAULT_PRESET", "EVENTS", "Session"]

DEFAULT_PRESET = "quickstart"

# What listeners can hear, with their arguments.
EVENTS = {
    "scene_changed": "scene",
    "state_changed": "",
    "runs_changed": "",
    "progress": "what, done, total (total 0: nothing to show, -1: unknown)",
    "error": "title, message",
    "data_ready": "prepared data of the selected run",
    "model_built": "model config, full-precision twin config (selected run or scene)",
}


def _data_key(scene: Scene, data_dir) -> tuple:
    return (scene.dataset, scene.limit_train, scene.limit_test, scene.seed, scene.input_scale,
            os.fspath(data_dir) if data_dir else None)


class Session(SceneEditing, OpenedModels, SeedComparisons):
    """Scene, runs and jobs. Never raises for a person's mistake: it reports ``error``."""

    def __init__(self, *, data_dir=None, warm_up: bool = True, scene: Scene | None = None):
        self.scene: Scene = scene.copy() if scene is not None else load_preset(DEFAULT_PRESET)
        self.scene_path: str | None = None
        self.workspace_path: str | None = None
        self.data_dir = data_dir if data_dir is not None else (os.environ.get("BNNLAB_DATA_DIR") or None)
        self.allow_download = True
        self.runs: list[Run] = []
        self.selected: Run | None = None
        self.probe: Probe | None = None  # Try it's current input
        self.version = 0  # bumped on every change the views draw
        self.kernels_ready = threading.Event()  # the engine's kernels (training waits for them)
        self.runtime_ready = threading.Event()  # the .bnn runtime's (the Bits panel waits)
        self.runtime_progress = (0, 0)  # (done, total) of compiling the runtime's kernels
        self.kernels_progress = (0, 0)  # and the engine's
        self.preview_config: tuple | None = None  # (config, fp_config) of the current scene
        self._listeners: dict[str, list[Callable]] = {name: [] for name in EVENTS}
        self._events: queue.Queue = queue.Queue()
        self._numbers = 0
        self._job: TrainingJob | None = None
        self._active: Run | None = None
        self._job_runs: dict[TrainingJob, Run] = {}
        self._data_cache: dict[tuple, Any] = {}
        self._warm: WarmUpJob | None = None
        self._preview_tag = 0
        self._init_comparisons()
        if warm_up:
            self.start_warm_up()
        else:
            self.kernels_ready.set()
            self.runtime_ready.set()
        self.preview_model()

    # ------------------------------------------------------------------ listeners
    def listen(self, event: str, callback: Callable) -> None:
        if event not in self._listeners:
            raise KeyError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
        self._listeners[event].append(callback)

    def _emit(self, event: str, *args) -> None:
        for callback in list(self._listeners[event]):
            callback(*args)

    def _changed(self, runs: bool = False, state: bool = False) -> None:
        self.version += 1
        if runs:
            self._emit("runs_changed")
        if state:
            self._emit("state_changed")

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while a run's job is alive (the scene controls are locked)."""
        return self._job is not None

    @property
    def paused(self) -> bool:
        return self._job is not None and self._job.paused

    @property
    def active_run(self) -> Run | None:
        return self._active

    @property
    def state(self) -> RunState | None:
        """The live run's state (None when no run is live)."""
        return self._active.state if self._active is not None else None

    @property
    def latest_snapshot(self):
        return self.selected.snapshot if self.selected is not None else None

    def status_text(self) -> str:
        """One line for the status bar."""
        run = self._active
        if run is None:
            if not self.kernels_ready.is_set():
                return "compiling kernels"
            last = self.runs[-1] if self.runs else None
            if last is not None and last.state is RunState.ERROR:
                return "error"
            return "ready" if last is None else f"ready ({last.title}: {last.state})"
        if run.state is RunState.TRAINING and run.snapshot is not None:
            s = run.snapshot
            return f"{run.title}: training epoch {s.epoch}/{s.epochs}"
        if run.state is RunState.COMPILING:
            return "compiling kernels (training starts when done)"
        return f"{run.title}: {run.state}"

    def _set_run_state(self, run: Run, state: RunState) -> None:
        if run.state is not state:
            run.state = state
            run.saved = False
            self._changed(state=True)

    # ------------------------------------------------------------------ events from jobs
    def poll(self) -> None:
        """Apply every event the jobs have posted (call from the owner's thread)."""
        while True:
            try:
                job, kind, payload = self._events.get_nowait()
            except queue.Empty:
                return
            getattr(self, f"_on_{type(job).__name__}_{kind}")(job, *payload)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """For scripts and tests: poll until no run is live (True) or the timeout passes."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            try:
                job, kind, payload = self._events.get(timeout=0.05)
            except queue.Empty:
                pass
            else:
                getattr(self, f"_on_{type(job).__name__}_{kind}")(job, *payload)
            if end is not None and time.monotonic() > end:
                break
        self.poll()
        return not self.busy

    # warm-up
    def _on_WarmUpJob_progress(self, job, what: str, done: int, total: int) -> None:
        if what == WarmUpJob.RUNTIME:
            self.runtime_progress = (done, total)
            self.version += 1  # the pages that wait for them say how far it is
        elif (done, total) != self.kernels_progress:
            self.kernels_progress = (done, total)
            self.version += 1
        self._emit("progress", what, done, total)

    def _on_WarmUpJob_failed(self, job, what: str, message: str) -> None:
        if what == WarmUpJob.RUNTIME:
            self._emit("error", "Compiling the .bnn runtime's kernels failed",
                       f"{message}\nThe runtime will compile them on first use (a slower "
                       "first answer in Bits, Try it and Evaluate).")
        else:
            self._emit("error", "Kernel compilation failed",
                       f"{message}\nTraining will compile kernels on first use (slower start).")

    def _on_WarmUpJob_kernels_ready(self, job) -> None:
        self._emit("progress", WarmUpJob.ENGINE, 0, 0)
        run = self._active
        if run is not None and run.state is RunState.COMPILING:
            self._set_run_state(run, RunState.TRAINING)
        self._changed(state=True)

    def _on_WarmUpJob_ended(self, job) -> None:
        if job is self._warm:
            self._warm = None
        self._emit("progress", WarmUpJob.RUNTIME, 0, 0)
        self._changed(state=True)

    # preview
    def _on_PreviewJob_built(self, job, config, fp_config) -> None:
        if job.tag == self._preview_tag:
            self.preview_config = (config, fp_config)
            self.version += 1
            if self.selected is None or self.selected.model_config is None:
                self._emit("model_built", config, fp_config)

    def _on_PreviewJob_failed(self, job, message: str) -> None:
        pass  # the scene's own validation reports bad settings; the summary stays as it was

    def _on_PreviewJob_ended(self, job) -> None:
        pass

    # training
    def _on_TrainingJob_stage(self, job, stage: str) -> None:
        run = self._job_runs.get(job)
        if run is None or job is not self._job or run.state in (RunState.STOPPING, RunState.ERROR):
            return
        state = RunState(stage)
        if state is RunState.TRAINING:
            # Objects alive now (modules, compiled kernels, data, model) stay alive for the
            # whole run; moving them out of the collector's reach turns the ~100 ms full
            # collections that froze the window mid-training into sub-millisecond ones.
            gc.freeze()
            if job.paused:
                state = RunState.PAUSED
        self._set_run_state(run, state)

    def _on_TrainingJob_progress(self, job, what: str, done: int, total: int) -> None:
        if job is self._job:
            self._emit("progress", what, done, total)

    def _on_TrainingJob_data(self, job, prepared) -> None:
        run = self._job_runs.get(job)
        if job.tune is None:  # a fine-tune's data is scaled for its model, not the scene
            self._data_cache.clear()  # one data set in memory at a time: MNIST is ~200 MB as float32
            self._data_cache[_data_key(job.scene, job.data_dir)] = prepared
        self._emit("progress", "downloading", 0, 0)
        self.version += 1
        if run is not None:
            run.prepared = prepared
            if run is self.selected:
                self._emit("data_ready", prepared)

    def _on_TrainingJob_model(self, job, config, fp_config, parameters: int) -> None:
        run = self._job_runs.get(job)
        if run is not None:
            run.model_config, run.fp_config, run.parameters = config, fp_config, parameters
            self.version += 1
            if run is self.selected:
                self._emit("model_built", config, fp_config)

    def _on_TrainingJob_snapshot(self, job, snapshot) -> None:
        run = self._job_runs.get(job)
        if run is None:
            return
        run.snapshot = snapshot
        run.saved = False
        self.version += 1
        if job is not self._job:
            return
        if snapshot.event == "done":
            state = RunState.FINISHED
        elif snapshot.event == "stopped":
            state = RunState.STOPPED
        elif run.state is RunState.STOPPING:
            return
        else:
            state = RunState.PAUSED if job.paused else RunState.TRAINING
        self._set_run_state(run, state)

    def _on_TrainingJob_failed(self, job, title: str, message: str) -> None:
        run = self._job_runs.get(job)
        if run is not None:
            run.error = message
            self._set_run_state(run, RunState.ERROR)
        self._emit("progress", "", 0, 0)
        self._emit("error", title, message)

    def _on_TrainingJob_ended(self, job) -> None:
        self._job_runs.pop(job, None)
        if job is self._job:
            self._finalize()

    def _finalize(self) -> None:
        job = self._job
        job.join()
        self._job = None
        run, self._active = self._active, None
        if run is not None and run.state.live:
            run.state = RunState.STOPPED
        self._changed(runs=True, state=True)

    # ------------------------------------------------------------------ kernels
    def start_warm_up(self) -> None:
        if self._warm is not None or self.kernels_ready.is_set():
            return
        self._warm = WarmUpJob(self._events, self.kernels_ready, self.runtime_ready)
        self._warm.start()
        self._changed(state=True)

    # ------------------------------------------------------------------ training controls
    def start(self, paused: bool = False) -> None:
        """Resume a paused run, or start a new run of the current scene."""
        if self._job is not None:
            if self._active is not None and self._active.state is RunState.STOPPING:
                self._join()
            else:
                if not paused:
                    self.resume()
                return
        self._launch(self.scene, paused=paused)

    def toggle(self) -> None:
        """Start or pause (the Space key)."""
        if self._job is not None and not self._job.paused and self._active.state is not RunState.STOPPING:
            self.pause()
        else:
            self.start()

    def pause(self) -> None:
        if self._job is None:
            return
        self._job.pause()
        if self._active.state is RunState.TRAINING:
            self._set_run_state(self._active, RunState.PAUSED)
        self._changed(state=True)

    def resume(self) -> None:
        if self._job is None:
            return
        self._job.resume()
        if self._active.state is RunState.PAUSED:
            self._set_run_state(self._active, RunState.TRAINING)
        self._changed(state=True)

    def step(self) -> None:
        """Train exactly one batch, then stay paused (starts a paused run if none is live)."""
        if self._job is None:
            self._launch(self.scene, paused=True)
        self._job.step_once()
        if self._active.state is RunState.TRAINING:
            self._set_run_state(self._active, RunState.PAUSED)
        self._changed(state=True)

    def stop(self, wait: bool = False, timeout: float | None = None) -> None:
        if self._job is None:
            return
        self._job.stop()
        if self._active is not None and self._active.state is not RunState.ERROR:
            self._set_run_state(self._active, RunState.STOPPING)
        if wait:
            self._join(timeout)

    def _join(self, timeout: float | None = None) -> None:
        job = self._job
        if job is not None:
            job.stop()
            if job.join(timeout):
                self.poll()  # its last events, up to "ended" (which finalizes)
            if self._job is job:  # still alive after the timeout: let it end on its own
                self._job_runs.pop(job, None)
                self._job = None
                run, self._active = self._active, None
                if run is not None:
                    run.state = RunState.STOPPED
                self._changed(runs=True, state=True)

    def reset(self) -> None:
        """Stop and forget every run: the next start trains fresh weights."""
        self.stop(wait=True)
        self.runs.clear()
        self.selected = None
        self._changed(runs=True, state=True)
        if self.preview_config is not None:
            self._emit("model_built", *self.preview_config)

    def twin_base(self) -> Run | None:
        """The run a new full-precision twin would belong to: the selected binary run."""
        run = self.selected
        return run if run is not None and not run.full_precision else None

    def train_twin(self) -> None:
        """Train the selected run's full-precision twin on the same data, as a new run tied
        to it (with no binary run selected: the current scene's twin, tied to nothing)."""
        if self._job is not None:
            self._emit("error", "A run is in progress",
                       "Stop or finish the current run before training the twin.")
            return
        base = self.twin_base()
        scene = (base.scene if base is not None else self.scene).full_precision_twin()
        self._launch(scene, paused=False, twin_of=base)

    def shutdown(self, timeout: float = 1.5) -> None:
        """Stop the live run and any comparison, waiting at most ``timeout`` s each (closing
        the window). Jobs are daemon threads: one still busy (compiling kernels) does not
        keep the process alive."""
        self.cancel_comparison(wait=True, timeout=timeout)
        self.stop(wait=True, timeout=timeout)

    # ------------------------------------------------------------------ runs
    def select_run(self, run: Run | None) -> None:
        """Show ``run`` in the views; while idle its settings become the scene edited."""
        if run is self.selected:
            return
        self.selected = run
        self._changed(runs=True)
        if run is None:
            return
        if self._job is None and describe_scene(run.scene) != describe_scene(self.scene):
            self.scene = run.scene.copy()
            self.scene_path = None
            self._emit("scene_changed", self.scene)
        if run.prepared is not None:
            self._emit("data_ready", run.prepared)
        if run.model_config is not None:
            self._emit("model_built", run.model_config, run.fp_config)

    def set_run_visible(self, run: Run, visible: bool) -> None:
        if run.visible != visible:
            run.visible = visible
            self._changed(runs=True)

    def remove_run(self, run: Run) -> None:
        if run is self._active:
            self.stop(wait=True)
        if run in self.runs:
            self.runs.remove(run)
        for other in self.runs:
            if other.twin_of == run.number:
                other.twin_of = None
        if self.selected is run:
            self.selected = self.runs[-1] if self.runs else None
        self._relabel()
        self._changed(runs=True)

    def run_views(self) -> tuple[RunView, ...]:
        return tuple(r.view(r is self.selected) for r in self.runs)

    def focus(self) -> Focus:
        """The selected run, its data, model and twin, and every run: what panels draw."""
        run = self.selected
        twin = self.twin_of(run)
        config = fp = None
        if run is not None and (run.model_config is not None or run.opened is not None):
            config, fp = run.model_config, run.fp_config  # None: no engine model (a .bnn)
        elif self.preview_config is not None:
            config, fp = self.preview_config
        return Focus(runs=self.run_views(), run=run.view(True) if run is not None else None,
                     twin=twin.view(False) if twin is not None else None,
                     prepared=run.prepared if run is not None else None,
                     model_config=config, fp_config=fp, results=tuple(self.result_table()),
                     evaluating=self.evaluating, comparison=self.comparison, probe=self.probe,
                     runtime_ready=self.runtime_ready.is_set(),
                     runtime_progress=self.runtime_progress,
                     engine_ready=self.kernels_ready.is_set(),
                     engine_progress=self.kernels_progress,
                     evaluation_waits_on=self.evaluation_waits_on, version=self.version)

    def result_table(self) -> list[dict]:
        """The results table: every run, then every training of every comparison over seeds."""
        return result_rows(self.runs) + seed_result_rows(self.comparisons)

    def set_probe(self, x, label: str) -> None:
        """Try it's current input (one dataset input, e.g. (28, 28, 1) in [0, 1]) and what
        it is, for the panels that explain it (Bits)."""
        self.probe = Probe(x, label)
        self.version += 1

    def run_by_number(self, number: int) -> Run | None:
        return next((r for r in self.runs if r.number == number), None)

    def twin_of(self, run: Run | None) -> Run | None:
        """The newest trained full-precision twin tied to ``run``, if any."""
        if run is None:
            return None
        return next((r for r in reversed(self.runs)
                     if r.twin_of == run.number and r.snapshot is not None), None)

    @property
    def unsaved_runs(self) -> list[Run]:
        return [r for r in self.runs if r.snapshot is not None and not r.saved]

    def unsaved_text(self) -> str:
        """What closing would lose ("2 trained runs and 1 comparison over seeds"), or ""."""
        parts = []
        if n := len(self.unsaved_runs):
            parts.append(f"{n} trained run{'s' if n != 1 else ''}")
        if n := len(self.unsaved_comparisons):
            parts.append(f"{n} comparison{'s' if n != 1 else ''} over seeds")
        return " and ".join(parts)

    def _relabel(self) -> None:
        trained = [r for r in self.runs if r.opened is None]
        for run, label in zip(trained, label_runs([r.scene for r in trained])):
            run.label = label
        for run in self.runs:
            if run.opened is not None:
                run.label = run.opened.label()

    def _next_color(self) -> str:
        used = {r.color for r in self.runs}
        free = [c for c in RUN_COLORS if c not in used]
        return free[0] if free else RUN_COLORS[self._numbers % len(RUN_COLORS)]

    def add_run(self, run: Run) -> Run:
        """Append a run read from a workspace, keeping its number, label and colour."""
        self._numbers = max(self._numbers, run.number)
        self.runs.append(run)
        self._changed(runs=True)
        return run

    def _launch(self, scene: Scene, paused: bool, twin_of: Run | None = None,
                tune: Any = None) -> Run:
        self._numbers += 1
        run = Run(number=self._numbers, scene=scene.copy(), color=self._next_color(),
                  twin_of=twin_of.number if twin_of is not None else None)
        self.runs.append(run)
        self._relabel()
        if twin_of is None:
            self.selected = run  # a twin leaves its binary run selected, to compare with it
        self._active = run
        key = _data_key(scene, self.data_dir)
        prepared = self._data_cache.get(key) if tune is None else None
        run.prepared = prepared
        run.state = RunState.BUILDING_MODEL if prepared is not None else RunState.LOADING_DATA
        job = TrainingJob(run.number, self._events, scene, data_dir=self.data_dir,
                          download=self.allow_download, prepared=prepared,
                          kernels_ready=self.kernels_ready, start_paused=paused, tune=tune)
        self._job = job
        self._job_runs[job] = run
        self._changed(runs=True, state=True)
        if prepared is not None and run is self.selected:
            self._emit("data_ready", prepared)
        job.start()
        return run
