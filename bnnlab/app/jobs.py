"""Background work, without Qt: kernel compilation, a model preview, one training run, a
comparison over seeds.

Each job runs in a plain thread and reports by putting ``(tag, kind, payload)`` events on a
queue that the owner drains on its own thread (:meth:`bnnlab.app.session.Session.poll`).
Nothing here touches the owner's state: a late event from a run that was removed is
recognised by its tag and dropped. A training job's controls (pause, resume, step, stop)
are thread-safe calls, because the job is busy in the training loop.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback

from ..core.trainer import TrainingDiverged
from ..data import DatasetError
from ..io.scenes import Scene, SceneError

__all__ = ["GUI_SNAPSHOT_EVERY", "SNAPSHOT_PERIOD", "Cancelled", "PreviewJob", "SeedsJob", "TrainingJob", "WarmUpJob"]

# The curves get a point every 5 steps even for scenes that snapshot rarely (larq-mnist:
# every 50 steps). A point is cheap; a whole snapshot (histograms of every binarizer's
# input, copies of the weights) and the redraw it causes are not, so whole snapshots of
# ordinary steps come at most every SNAPSHOT_PERIOD seconds. The drawing shares the cores
# with the two threads of the training's parallel kernels, which wait for each other at
# every region, so each redraw stalls both: on larq-mnist-bnn the window trained at 0.51 of
# the terminal's images/s with 30 snapshots a second, about 0.85 with 5 and 0.93 with 2.5
# (benchmarks/app_speed.py).
GUI_SNAPSHOT_EVERY = 5
SNAPSHOT_PERIOD = 0.4  # s

_PROGRESS_PERIOD = 0.1  # s between progress events while downloading


def twin_config(scene: Scene, config: dict, input_shape, num_classes) -> dict | None:
    """The full-precision twin's model config, or None when the scene is its own twin."""
    from ..experiment import build_model

    twin = build_model(scene.full_precision_twin(), input_shape, num_classes).config()
    return None if twin["layers"] == config["layers"] else twin


class Cancelled(Exception):
    """Raised inside a progress callback to abandon loading when the run is stopped."""


def _failure(exc: Exception, doing: str, bad_request: str, requests: tuple) -> tuple[str, str]:
    """(title, message) of a job's failure: a person's mistake (missing data, a setting of
    one of the ``requests`` types, divergence) in one line, anything else with its trace."""
    if isinstance(exc, DatasetError):
        return "The dataset is not available", str(exc)
    if isinstance(exc, requests):
        return bad_request, str(exc)
    if isinstance(exc, TrainingDiverged):
        return "Training diverged", str(exc)
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"Unexpected error while {doing}", f"{detail}\n\n{traceback.format_exc(limit=-3)}"


class _Job:
    def __init__(self, tag: int, events: queue.Queue, name: str):
        self.tag = tag
        self.events = events
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def post(self, kind: str, *payload) -> None:
        self.events.put((self, kind, payload))

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _main(self) -> None:
        try:
            self.run()
        finally:
            self.post("ended")

    def run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class WarmUpJob(_Job):
    """Compiles (or loads from cache) the Numba kernels: the engine's, then sets
    ``ready``; then the ``.bnn`` runtime's, then sets ``runtime_ready``.

    On a cold cache the compiling happens in child processes, one per core (see
    :func:`bnnlab.core.kernels.prepare_kernels` and
    :func:`bnnlab.deploy.warmup.prepare_runtime_kernels`); this thread then loads the
    result.

    Events: ``progress(what, done, total)`` (``what``: :data:`ENGINE` or :data:`RUNTIME`),
    ``kernels_ready`` (the engine's are), ``failed(what, message)``, ``ended``. The thread
    is a daemon: closing the app does not wait for a compilation to finish.
    """

    ENGINE = "compiling kernels"
    RUNTIME = "compiling runtime kernels"  # the .bnn runtime's

    def __init__(self, events: queue.Queue, ready: threading.Event,
                 runtime_ready: threading.Event):
        super().__init__(0, events, "bnnlab-warm-up")
        self.ready = ready
        self.runtime_ready = runtime_ready

    def run(self) -> None:
        from ..core.kernels import prepare_kernels
        from ..deploy.warmup import prepare_runtime_kernels

        for what, prepare, event in ((self.ENGINE, prepare_kernels, self.ready),
                                     (self.RUNTIME, prepare_runtime_kernels, self.runtime_ready)):
            try:
                prepare(lambda done, total, what=what: self.post("progress", what, done, total))
            except Exception as exc:  # noqa: BLE001 - kernels then compile on first use instead
                self.post("failed", what, f"{type(exc).__name__}: {exc}")
            finally:
                event.set()
            if event is self.ready:
                self.post("kernels_ready")


class PreviewJob(_Job):
    """Builds a scene's model (and its twin) for the summary, without data: the input
    shape comes from the dataset registry. Events: ``built(config, twin)``, ``failed``."""

    def __init__(self, tag: int, events: queue.Queue, scene: Scene):
        super().__init__(tag, events, "bnnlab-preview")
        self.scene = scene.copy()

    def run(self) -> None:
        from ..data import dataset_info
        from ..experiment import build_model

        try:
            info = dataset_info(self.scene.dataset)
            shape, classes = info.input_shape, len(info.class_names)
            config = build_model(self.scene, shape, classes).config()
            self.post("built", config, twin_config(self.scene, config, shape, classes))
        except (DatasetError, SceneError, ValueError) as exc:
            self.post("failed", str(exc))


class TrainingJob(_Job):
    """Prepares data, builds the model and trains one run of ``scene``.

    Events: ``stage(name)`` ("loading data", "building model", "compiling kernels",
    "training"), ``progress(what, done, total)``, ``data(prepared)``,
    ``model(config, twin config, parameters)``, ``snapshot(snapshot)``, ``failed(title, message)``
    and always last ``ended``.
    """

    def __init__(self, tag: int, events: queue.Queue, scene: Scene, *, data_dir=None,
                 download: bool = True, prepared=None,
                 kernels_ready: threading.Event | None = None, start_paused: bool = False,
                 tune=None):
        super().__init__(tag, events, f"bnnlab-run-{tag}")
        self.scene = scene.copy()
        self.data_dir = data_dir
        self.download = download
        self.prepared = prepared
        self.kernels_ready = kernels_ready
        self.tune = tune  # an OpenedModel to fine-tune (its layers and weights, the scene's training)
        self.snapshot_period = SNAPSHOT_PERIOD  # s between snapshots of ordinary steps
        self._lock = threading.Lock()
        self._trainer = None
        self._stop = threading.Event()
        # Requests made before the trainer exists are replayed onto it.
        self._paused = start_paused
        self._pending_steps = 0
        self._last_progress = 0.0

    # -- controls, callable from any thread
    @property
    def paused(self) -> bool:
        """Whether the run holds after its current batch (the one place this is kept)."""
        with self._lock:
            return self._paused

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            if self._trainer is not None:
                self._trainer.pause()

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._pending_steps = 0
            if self._trainer is not None:
                self._trainer.resume()

    def step_once(self) -> None:
        with self._lock:
            self._paused = True
            if self._trainer is not None:
                self._trainer.step_once()
            else:
                self._pending_steps += 1

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self._trainer is not None:
                self._trainer.stop()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # -- the run
    def run(self) -> None:
        try:
            self._train()
        except Cancelled:
            pass
        except Exception as exc:  # noqa: BLE001 - shown in the window, never a silent dead thread
            self.post("failed", *_failure(exc, "training", "The scene cannot be trained",
                                          (SceneError,)))
        finally:
            # Drop the data and the model now: the job object may outlive the run.
            self.prepared = None
            with self._lock:
                self._trainer = None

    def _train(self) -> None:
        from ..core.summary import profile_model
        from ..experiment import build_model, make_trainer

        if self.tune is not None:
            self.post("stage", "loading data")
            from .models import IncompatibleModel, NoLatentWeights

            try:
                ft = self.tune.fine_tune(self.scene, data_dir=self.data_dir,
                                         download=self.download, progress=self._progress)
            except (IncompatibleModel, NoLatentWeights) as exc:
                self.post("failed", "Cannot fine-tune this model", str(exc))
                return
            prepared, model, trainer = ft.data, ft.model, ft.trainer
            self.post("data", prepared)
        else:
            prepared = self.prepared
            if prepared is None:
                self.post("stage", "loading data")
                prepared = self._load()
                self.post("data", prepared)
            if self._stop.is_set():
                return
            self.post("stage", "building model")
            ds = prepared.dataset
            model = build_model(self.scene, ds.input_shape, ds.num_classes)
            trainer = None
        if self._stop.is_set():
            return
        config = model.config()
        ds = prepared.dataset
        twin = None if self.tune is not None else \
            twin_config(self.scene, config, ds.input_shape, ds.num_classes)
        self.post("model", config, twin, profile_model(model).total_params)
        if self.kernels_ready is not None and not self.kernels_ready.is_set():
            self.post("stage", "compiling kernels")
            while not self.kernels_ready.wait(0.05):
                if self._stop.is_set():
                    return
        if trainer is None:
            trainer = make_trainer(self.scene, model, prepared)
        trainer.snapshot_every = min(trainer.snapshot_every, GUI_SNAPSHOT_EVERY)
        last_post = [0.0]

        def due() -> bool:
            return time.monotonic() - last_post[0] >= self.snapshot_period

        trainer.snapshot_due = due
        with self._lock:
            if self._stop.is_set():
                return
            self._trainer = trainer
            if self._paused:
                trainer.pause()
            for _ in range(self._pending_steps):
                trainer.step_once()
            self._pending_steps = 0
        self.post("stage", "training")
        for snapshot in trainer:
            last_post[0] = time.monotonic()
            self.post("snapshot", snapshot)

    def _progress(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise Cancelled
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_PERIOD or (total > 0 and done >= total):
            self._last_progress = now
            self.post("progress", "downloading", int(done), int(total))

    def _load(self):
        from ..experiment import prepare_data

        return prepare_data(self.scene, self.data_dir, progress=self._progress,
                            download=self.download)


class SeedsJob(_Job):
    """Trains scenes over seeds with :func:`bnnlab.app.compare.run_seeds`.

    ``variants`` is a list of (label, scene). Events: ``progress(label, seed, epoch,
    epochs, done, total)`` after each epoch (``done`` of ``total`` epochs over the whole
    comparison), ``seed_run(SeedRun)`` after each training, ``failed(title, message)``,
    ``cancelled`` and always last ``ended``. :meth:`cancel` stops within a batch.
    """

    def __init__(self, tag: int, events: queue.Queue, variants, seeds: int, *,
                 epochs: int | None = None, data_dir=None,
                 kernels_ready: threading.Event | None = None):
        super().__init__(tag, events, f"bnnlab-seeds-{tag}")
        self.variants = [(label, scene.copy()) for label, scene in variants]
        self.seeds = int(seeds)
        self.epochs = epochs
        self.data_dir = data_dir
        self.kernels_ready = kernels_ready
        self._cancel = threading.Event()
        self.total = self.seeds * sum(int(epochs or scene.epochs) for _, scene in self.variants)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        from .compare import CompareCancelled, run_seeds

        done = 0

        def progress(label, seed, epoch, epochs):
            nonlocal done
            done += 1
            self.post("progress", label, seed, epoch, epochs, done, self.total)

        try:
            if self.kernels_ready is not None:
                while not self.kernels_ready.wait(0.05):
                    if self._cancel.is_set():
                        raise CompareCancelled("cancelled while kernels compiled")
            run_seeds(self.variants, self.seeds, epochs=self.epochs, data_dir=self.data_dir,
                      progress=progress, cancelled=self._cancel.is_set,
                      on_run=lambda run: self.post("seed_run", run))
        except CompareCancelled:
            self.post("cancelled")
        except Exception as exc:  # noqa: BLE001 - shown in the window, never a silent dead thread
            self.post("failed", *_failure(exc, "comparing seeds", "The comparison cannot run",
                                          (SceneError, ValueError)))
