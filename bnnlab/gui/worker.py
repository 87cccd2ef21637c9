"""Background threads: kernel compilation, and one training run from data to last snapshot.

The GUI thread never loads data, builds a model or trains: a :class:`TrainingThread` does
all three and reports through queued signals. Its controls (pause, resume, step, stop) are
plain thread-safe calls, because the thread is busy in the training loop and has no event
loop to receive queued slots.
"""

from __future__ import annotations

import threading
import time
import traceback

from PySide6.QtCore import QThread, Signal

from ..core.trainer import TrainingDiverged
from ..data import DatasetError
from ..io.scenes import Scene, SceneError

__all__ = ["GUI_SNAPSHOT_EVERY", "ModelPreviewThread", "TrainingThread", "WarmUpThread"]

# Curves stay live even for scenes that snapshot rarely (larq-mnist: every 50 steps, ~8 s
# on two cores); a snapshot costs a few histograms and a copy of the weights.
GUI_SNAPSHOT_EVERY = 5

_PROGRESS_PERIOD = 0.1  # s between progress signals while downloading
_SNAPSHOT_PERIOD = 1 / 30  # s between snapshot signals: the GUI redraws at ~30 Hz anyway


def _leave_a_core_for_the_gui() -> None:
    """Run this thread's parallel kernels on one core fewer than the machine has.

    Numba's thread count is per calling thread, so this touches only training. With every
    core busy the GUI thread waits for a time slice and the window stutters; on two cores
    the parallel kernels gained nothing anyway while another process held the second core.
    """
    try:
        import numba

        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS - 1))
    except (ImportError, ValueError):
        pass


def _twin_config(scene: Scene, config: dict, input_shape, num_classes) -> dict | None:
    """The full-precision twin's model config, or None when the scene is its own twin."""
    from ..experiment import build_model

    twin = build_model(scene.full_precision_twin(), input_shape, num_classes).config()
    return None if twin["layers"] == config["layers"] else twin


class Cancelled(Exception):
    """Raised inside a progress callback to abandon loading when the run is stopped."""


class WarmUpThread(QThread):
    """Compiles (or loads from cache) the Numba kernels, then sets ``ready``."""

    progressed = Signal(int, int)
    failed = Signal(str)

    def __init__(self, ready: threading.Event, parent=None):
        super().__init__(parent)
        self.ready = ready

    def run(self) -> None:
        try:
            from ..core.kernels import warm_up

            warm_up(lambda done, total: self.progressed.emit(done, total))
        except Exception as exc:  # noqa: BLE001 - kernels then compile on first use instead
            self.failed.emit(f"{type(exc).__name__}: {exc}")
        finally:
            self.ready.set()


class TrainingThread(QThread):
    """Prepares data, builds the model and trains one run of ``scene``.

    Every signal carries ``tag`` (the run number) so a late signal from a run that was
    removed can be recognised and dropped.
    """

    stage_changed = Signal(int, str)  # tag, "loading data" / "building model" / ...
    progressed = Signal(int, str, int, int)  # tag, what, done, total (-1 unknown)
    data_ready = Signal(int, object)  # tag, experiment.Prepared
    model_built = Signal(int, object, object)  # tag, model config, full-precision twin config
    snapshot_ready = Signal(int, object)  # tag, trainer.Snapshot
    failed = Signal(int, str, str)  # tag, title, message
    ended = Signal(int)  # tag; the last signal of a run, whatever happened

    def __init__(self, tag: int, scene: Scene, *, data_dir=None, download: bool = True,
                 prepared=None, kernels_ready: threading.Event | None = None,
                 start_paused: bool = False, parent=None):
        super().__init__(parent)
        self.tag = tag
        self.scene = scene.copy()
        self.data_dir = data_dir
        self.download = download
        self.prepared = prepared
        self.kernels_ready = kernels_ready
        self._lock = threading.Lock()
        self._trainer = None
        self._stop = threading.Event()
        # Requests made before the trainer exists are replayed onto it.
        self._paused = start_paused
        self._pending_steps = 0

    # -- controls, callable from any thread
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
        tag = self.tag
        try:
            prepared = self.prepared
            if prepared is None:
                self.stage_changed.emit(tag, "loading data")
                prepared = self._load()
                self.data_ready.emit(tag, prepared)
            if self._stop.is_set():
                return
            self.stage_changed.emit(tag, "building model")
            from ..experiment import build_model, make_trainer

            ds = prepared.dataset
            model = build_model(self.scene, ds.input_shape, ds.num_classes)
            config = model.config()
            self.model_built.emit(tag, config, _twin_config(self.scene, config, ds.input_shape,
                                                            ds.num_classes))
            if self.kernels_ready is not None and not self.kernels_ready.is_set():
                self.stage_changed.emit(tag, "compiling kernels")
                while not self.kernels_ready.wait(0.05):
                    if self._stop.is_set():
                        return
            _leave_a_core_for_the_gui()
            trainer = make_trainer(self.scene, model, prepared)
            trainer.snapshot_every = min(trainer.snapshot_every, GUI_SNAPSHOT_EVERY)
            with self._lock:
                if self._stop.is_set():
                    return
                self._trainer = trainer
                if self._paused:
                    trainer.pause()
                for _ in range(self._pending_steps):
                    trainer.step_once()
                self._pending_steps = 0
            self.stage_changed.emit(tag, "training")
            last = 0.0
            for snapshot in trainer:
                # Each snapshot is cumulative, so skipping some loses nothing; every signal
                # makes the GUI thread wait for the GIL, and a small model yields hundreds a
                # second. Epoch ends, the last snapshot and single steps always go through.
                now = time.monotonic()
                if (snapshot.event != "step" or trainer.paused or trainer.stopped
                        or now - last >= _SNAPSHOT_PERIOD):
                    last = now
                    self.snapshot_ready.emit(tag, snapshot)
        except Cancelled:
            pass
        except DatasetError as exc:
            self.failed.emit(tag, "The dataset is not available", str(exc))
        except SceneError as exc:
            self.failed.emit(tag, "The scene cannot be trained", str(exc))
        except TrainingDiverged as exc:
            self.failed.emit(tag, "Training diverged", str(exc))
        except Exception as exc:  # noqa: BLE001 - shown in the window, never a silent dead thread
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.failed.emit(tag, "Unexpected error while training",
                             f"{detail}\n\n{traceback.format_exc(limit=-3)}")
        finally:
            # Drop the data and the model now: the thread object may outlive the run.
            self.prepared = None
            with self._lock:
                self._trainer = None
            self.ended.emit(tag)

    def _load(self):
        from ..experiment import prepare_data

        last = [0.0]

        def progress(done: int, total: int) -> None:
            if self._stop.is_set():
                raise Cancelled
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_PERIOD or (total > 0 and done >= total):
                last[0] = now
                self.progressed.emit(self.tag, "downloading", int(done), int(total))

        return prepare_data(self.scene, self.data_dir, progress=progress, download=self.download)


class ModelPreviewThread(QThread):
    """Builds a scene's model (and its full-precision twin) for the summary, without data:
    the input shape comes from the dataset registry."""

    built = Signal(int, object, object)  # tag, model config, twin config (None if no twin)
    failed = Signal(int, str)

    def __init__(self, tag: int, scene: Scene, parent=None):
        super().__init__(parent)
        self.tag = tag
        self.scene = scene.copy()

    def run(self) -> None:
        from ..data import dataset_info
        from ..experiment import build_model

        try:
            info = dataset_info(self.scene.dataset)
            shape, classes = info.input_shape, len(info.class_names)
            config = build_model(self.scene, shape, classes).config()
            self.built.emit(self.tag, config, _twin_config(self.scene, config, shape, classes))
        except (DatasetError, SceneError, ValueError) as exc:
            self.failed.emit(self.tag, str(exc))
