"""Models opened from files, as runs of the session: opening, test data, evaluation and
fine-tuning, each in a background job.

A part of :class:`bnnlab.app.session.Session`, kept apart to keep each module small. An
opened model becomes a run in the state :attr:`RunState.OPENED` with the model
(:class:`bnnlab.app.models.OpenedModel`) in :attr:`Run.opened`; the panels show it as they
show a trained run. Its dataset's test images are loaded in the background for Try it.
"""

from __future__ import annotations

import os
import threading

from ..experiment import Prepared
from .jobs import _Job
from .runs import Run, RunState

__all__ = ["EvaluateJob", "OpenJob", "OpenedModels", "TestDataJob"]


class OpenJob(_Job):
    """Opens a model file. Events: ``opened(model)``, ``failed(message)``."""

    def __init__(self, tag: int, events, path: str):
        super().__init__(tag, events, "bnnlab-open")
        self.path = path

    def run(self) -> None:
        from .opening import OpenError, open_any

        try:
            model = open_any(self.path, want="model")
        except OpenError as exc:
            self.post("failed", str(exc))
            return
        self.post("opened", model, model_snapshot(model))


def model_snapshot(opened):
    """A training snapshot of an opened model as it is (no curves): what the per-layer,
    filter and try-it views read. A .bnn file has no latent weights: no layer telemetry;
    a .bnn the engine cannot represent has no snapshot (None)."""
    import dataclasses
    import time

    import numpy as np

    from ..core.trainer import Trainer

    model = opened.model
    if model is None:  # a .bnn the engine cannot represent: the runtime-backed views only
        return None
    probe = Trainer(model, np.zeros((1, *model.input_shape), np.float32), np.zeros(1, np.int64),
                    epochs=1, batch_size=1, telemetry=opened.has_latent_weights)
    snap = probe._snapshot("done", 0, 1, 0, 0.0, 0, 0, None, None, 0.0, time.perf_counter())
    return dataclasses.replace(snap, epochs=1, batches_per_epoch=1)


class TestDataJob(_Job):
    """Loads the test split of the first of ``names`` that loads. Events: ``data(prepared)``,
    ``failed(message)`` (the first dataset's error, when none loads)."""

    def __init__(self, tag: int, events, names: list[str], data_dir, seed: int, download: bool):
        super().__init__(tag, events, "bnnlab-test-data")
        self.names, self.data_dir, self.seed, self.download = names, data_dir, seed, download

    def run(self) -> None:
        from ..data import DatasetError, load_dataset

        errors = []
        for name in self.names:
            try:
                ds = load_dataset(name, self.data_dir, download=self.download, seed=self.seed,
                                  splits=("test",))
            except DatasetError as exc:
                errors.append(str(exc))
                continue
            self.post("data", Prepared(ds, ds.x_train, ds.y_train, ds.x_test, ds.y_test))
            return
        self.post("failed", errors[0])


class EvaluateJob(_Job):
    """Scores a model on a dataset. Events: ``progress(done, total)``,
    ``evaluated(evaluation)``, ``failed(message)``."""

    def __init__(self, tag: int, events, model, dataset: str, data_dir, download: bool,
                 limit: int | None = None, kernels: threading.Event | None = None):
        super().__init__(tag, events, "bnnlab-evaluate")
        self.model, self.dataset, self.data_dir, self.download = model, dataset, data_dir, download
        self.limit = limit
        self.kernels = kernels  # set once the kernels the model computes with are compiled
        self.waiting = False  # for them (the session's copy, set from the events)
        self.cancel = threading.Event()

    def run(self) -> None:
        from ..data import DatasetError
        from .models import IncompatibleModel

        if self.kernels is not None and not self.kernels.is_set():
            # The start-up warm-up compiles them: computing now would compile them again,
            # here, for seconds. Wait for them (cancelling still works meanwhile).
            self.post("waiting", True)
            while not self.kernels.wait(0.1):
                if self.cancel.is_set():
                    return
            self.post("waiting", False)

        try:
            result = self.model.evaluate(self.dataset, data_dir=self.data_dir,
                                         download=self.download, limit=self.limit,
                                         progress=lambda d, t: self.post("progress", d, t),
                                         should_stop=self.cancel.is_set)
        except (DatasetError, IncompatibleModel) as exc:
            self.post("failed", str(exc))
            return
        self.post("evaluated", result)


class OpenedModels:
    """Opened-model methods of the session (uses its runs, ``_events``, ``_emit``)."""

    def open_model(self, path: str | os.PathLike) -> None:
        """Open a .bnn, .h5 or .npz file in the background; it arrives as a new run."""
        OpenJob(0, self._events, os.fspath(path)).start()

    def _on_OpenJob_opened(self, job, model, snapshot) -> None:
        scene = self.scene.copy()
        scene.name = model.name
        self._numbers += 1
        run = Run(number=self._numbers, scene=scene, color=self._next_color(),
                  state=RunState.OPENED, opened=model,
                  model_config=model.model.config() if model.model is not None else None,
                  snapshot=snapshot, saved=True,  # its file keeps it
                  parameters=model.profile().total_params)
        self.runs.append(run)
        self._relabel()
        self.selected = run
        self._changed(runs=True, state=True)
        names = self.datasets_for(model)
        if names:
            TestDataJob(run.number, self._events, names, self.data_dir, model.seed,
                        self.allow_download).start()

    @staticmethod
    def datasets_for(model) -> list[str]:
        """The datasets ``model`` can be tried and evaluated on, best first: the one its
        file names, then every registered one with its input shape and class count."""
        from ..data import DatasetError, dataset_info, dataset_names

        names = [model.dataset] if model.dataset else []
        for name in dataset_names():
            try:
                info = dataset_info(name)
            except DatasetError:
                continue
            if name not in names and tuple(info.input_shape) == model.input_shape and \
                    len(info.class_names) == model.num_classes:
                names.append(name)
        return names

    def _on_OpenJob_failed(self, job, message: str) -> None:
        self._emit("error", "Cannot open the model", message)

    def _on_OpenJob_ended(self, job) -> None:
        pass

    def _on_TestDataJob_data(self, job, prepared) -> None:
        run = self.run_by_number(job.tag)
        if run is not None:
            run.prepared = prepared
            self.version += 1

    def _on_TestDataJob_failed(self, job, message: str) -> None:
        self._emit("error", "No test images for the opened model", message)

    def _on_TestDataJob_ended(self, job) -> None:
        pass

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, run: Run, dataset: str, limit: int | None = None) -> None:
        """Score ``run``'s model (opened or trained) on ``dataset``'s test set (its first
        ``limit`` images)."""
        model = run.opened if run.opened is not None else self._as_opened(run)
        if model is None:
            return
        on = model.computes_on
        job = EvaluateJob(run.number, self._events, model, dataset, self.data_dir,
                          self.allow_download, limit,
                          self.runtime_ready if on == "runtime" else self.kernels_ready)
        self._evaluating = job
        job.start()

    @property
    def evaluation_waits_on(self) -> str:
        """"runtime" or "engine" while the evaluation waits for those kernels, else ""."""
        job = getattr(self, "_evaluating", None)
        return job.model.computes_on if job is not None and job.alive and job.waiting else ""

    def _on_EvaluateJob_waiting(self, job, waiting: bool) -> None:
        job.waiting = waiting
        self.version += 1

    def _as_opened(self, run: Run):
        """A trained run's latest weights as an opened model (to evaluate it like one)."""
        from ..core.model import model_from_state
        from ..data import dataset_info
        from .models import OpenedModel

        s = run.snapshot
        if s is None:
            self._emit("error", "Nothing to evaluate", "Train the run first, then evaluate it.")
            return None
        return OpenedModel.from_model(
            model_from_state(s.model_config, s.model_state), run.title,
            input_scale=run.scene.input_scale,
            class_names=dataset_info(run.scene.dataset).class_names,
            dataset=run.scene.dataset, seed=run.scene.seed)

    @property
    def evaluating(self) -> bool:
        job = getattr(self, "_evaluating", None)
        return job is not None and job.alive

    def cancel_evaluation(self) -> None:
        job = getattr(self, "_evaluating", None)
        if job is not None:
            job.cancel.set()

    def _on_EvaluateJob_progress(self, job, done: int, total: int) -> None:
        self._emit("progress", "evaluating", done, total)

    def _on_EvaluateJob_evaluated(self, job, evaluation) -> None:
        run = self.run_by_number(job.tag)
        if run is not None:
            run.evaluation = evaluation
            self.version += 1

    def _on_EvaluateJob_failed(self, job, message: str) -> None:
        self._emit("error", "Cannot evaluate the model", message)

    def _on_EvaluateJob_ended(self, job) -> None:
        self._emit("progress", "evaluating", 0, 0)
        self.version += 1

    # ------------------------------------------------------------------ export
    @staticmethod
    def export_run(run: Run, path: str | os.PathLike) -> tuple[int, int]:
        """Write ``run``'s latest weights as a ``.bnn`` file with its input encoding, class
        names, dataset and seed; returns (bytes written, bytes of the weights in float32).
        Raises ``bnnlab.deploy.ExportError`` for a model with no ``.bnn`` form."""
        from ..core.summary import profile_model
        from ..data import dataset_info
        from ..deploy import export_model
        from ..deploy.fold import input_spec_for

        s = run.snapshot
        if s is None or run.opened is not None and not run.opened.has_latent_weights:
            raise ValueError(f"{run.title} has no weights to export; train it first")
        model = OpenedModels.run_model(run)
        info = dataset_info(run.scene.dataset)
        spec = input_spec_for(model.input_shape, run.scene.input_scale, info.kind)
        names = info.class_names if model.output_shape == (len(info.class_names),) else ()
        meta = {"name": run.scene.name, "dataset": info.name, "seed": str(run.scene.seed),
                "source": "bnnlab app"}
        h = s.history
        if len(h.val_accuracy) and h.val_accuracy[-1] == h.val_accuracy[-1]:
            meta["test_accuracy"] = repr(float(h.val_accuracy[-1]))
        size = export_model(model, path, spec, names, meta)
        return size, int(profile_model(model).float32_kib * 1024)

    @staticmethod
    def run_model(run: Run):
        """``run``'s latest weights as a model (the opened model itself for an opened run).
        Raises ``ValueError`` for a run that has not trained a batch yet."""
        from ..core.model import model_from_state

        s = run.snapshot
        if s is None and run.opened is not None and run.opened.model is None:
            raise ValueError(f"{run.title} has no layer-by-layer form to export: "
                             f"{run.opened.engine_error}")
        if s is None:
            raise ValueError(f"{run.title} has no weights to export; train it first")
        return model_from_state(s.model_config, s.model_state)

    @staticmethod
    def export_run_h5(run: Run, path: str | os.PathLike) -> int:
        """Write ``run``'s latest weights as a Keras 2 / Larq ``.h5`` model, atomically;
        returns the bytes written. Every failure is a ``ValueError`` whose message is one
        line naming the file or folder and the reason: a folder that does not exist or
        cannot be written, a layer or quantizer Larq has no counterpart for, h5py missing.
        An opened ``.bnn`` file has no latent weights: its kernels go out as their signs
        (+-1) with the folded batch-norm statistics, which predict the same in Larq."""
        from ..deploy.larq_export import LarqExportError, write_larq_h5
        from ..io.outputs import output_problem

        model = OpenedModels.run_model(run)
        if problem := output_problem(path):
            raise ValueError(problem)
        try:
            return write_larq_h5(model, path)
        except LarqExportError as exc:
            raise ValueError(f"{run.title}: {exc}") from None
        except OSError as exc:
            raise ValueError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ fine-tuning
    def fine_tune(self, run: Run) -> None:
        """Continue training ``run``'s opened model with the current scene's training
        settings, as a new run."""
        if self._job is not None:
            self._emit("error", "A run is in progress", "Stop or finish it before fine-tuning.")
            return
        if run.opened is None:
            self._emit("error", "Nothing to fine-tune", "Open a model file (.npz or .h5) first.")
            return
        self._launch(self.scene, paused=False, tune=run.opened)
