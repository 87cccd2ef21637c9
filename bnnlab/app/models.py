"""An opened model file, and everything a panel or a command does with it.

:class:`OpenedModel` wraps a ``.bnn`` model, a Keras/Larq ``.h5`` or a bnnlab checkpoint
``.npz`` (opened by :func:`bnnlab.app.opening.open_any`) behind one interface:

* what it is: :attr:`~OpenedModel.kind`, :attr:`~OpenedModel.path`,
  :attr:`~OpenedModel.input_shape`, :attr:`~OpenedModel.num_classes`,
  :attr:`~OpenedModel.class_names`, :attr:`~OpenedModel.dataset`;
* :meth:`~OpenedModel.profile` / :meth:`~OpenedModel.summary_text` (the Larq-style table,
  memory, MACs, energy), :meth:`~OpenedModel.filters` (duplicate binary 3x3 filters),
  :meth:`~OpenedModel.describe` and :meth:`~OpenedModel.report` (sizes and blocks);
* :meth:`~OpenedModel.predict_proba` / :meth:`~OpenedModel.predict` on inputs as the
  datasets hand them out (images in [0, 1], points as they are): on the packed integer
  runtime for a ``.bnn`` file, on the engine for the others;
* :meth:`~OpenedModel.latent_weights` when the file holds latent weights (``.npz``, ``.h5``);
* :meth:`~OpenedModel.evaluate` on a dataset's test set, with a progress callback:
  accuracy and confusion matrix;
* :meth:`~OpenedModel.fine_tune`: a trainable copy with a scene's training settings;
* :meth:`~OpenedModel.model_file`: the ``.bnn`` record (the file's own, or the model
  folded), and for the Bits view :meth:`~OpenedModel.bnn_layout`,
  :meth:`~OpenedModel.activation_maps` and :meth:`~OpenedModel.explain_unit` (see
  :mod:`bnnlab.deploy.explain` for bit planes and thresholds).

A model whose input shape or class count differs from a dataset's or a scene's raises
:class:`IncompatibleModel`, which names both shapes. Nothing here imports Qt; the
methods that take long (:meth:`evaluate`, :meth:`fine_tune`) are meant to run off the
GUI thread and touch no shared state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["EngineUnavailable", "Evaluation", "FineTune", "IncompatibleModel", "LatentLayer",
           "NoLatentWeights", "OpenedModel"]


class IncompatibleModel(ValueError):
    """The model does not fit a dataset or scene (input shape or class count)."""


class EngineUnavailable(ValueError):
    """A ``.bnn`` file the float engine cannot represent (e.g. padding that is neither Keras
    'valid' nor 'same'): the packed runtime runs it, the engine-based views cannot."""


class NoLatentWeights(ValueError):
    """The file holds no latent (real-valued) weights: a ``.bnn`` keeps only their signs."""


@dataclass(frozen=True, eq=False)
class LatentLayer:
    """The latent kernel of one conv/dense layer, flattened, with its clip bound."""

    name: str
    type_name: str
    binary_kernel: bool
    values: np.ndarray
    clip: float | None

    @property
    def frac_at_clip(self) -> float:
        """Fraction of weights at the clip bound (at |w| >= 1 when the layer has no clip)."""
        bound = self.clip if self.clip is not None else 1.0
        return float(np.mean(np.abs(self.values) >= bound * (1 - 1e-6))) if self.values.size else 0.0

    def histogram(self, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over a symmetric range that shows the clip bounds."""
        amax = float(np.max(np.abs(self.values))) if self.values.size else 0.0
        r = max(1.25, amax * 1.05)
        return np.histogram(self.values, bins=bins, range=(-r, r))


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A model scored on a dataset's test set.

    ``confusion[i, j]`` counts images of true class ``i`` predicted as ``j``. When the
    evaluation was stopped early, ``complete`` is False and the figures cover the first
    ``n`` images.
    """

    dataset: str
    n: int
    total: int
    accuracy: float
    confusion: np.ndarray
    class_names: tuple[str, ...]
    predictions: np.ndarray
    labels: np.ndarray
    computed_on: str  # "runtime" (packed integers) or "engine"
    seconds: float
    complete: bool = True

    @property
    def per_class_accuracy(self) -> np.ndarray:
        rows = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, np.diag(self.confusion) / np.maximum(rows, 1), np.nan)


@dataclass(frozen=True, eq=False)
class FineTune:
    """What :meth:`OpenedModel.fine_tune` prepares: iterate ``trainer`` to train ``model``."""

    scene: Any  # the scene used, with the model's input scaling
    model: Any  # a trainable copy; the opened model is left as it was
    data: Any  # bnnlab.experiment.Prepared
    trainer: Any  # bnnlab.core.trainer.Trainer


@dataclass(eq=False)
class OpenedModel:
    """A model opened from a file; see the module docstring. Build it with
    :func:`bnnlab.app.opening.open_any` (or :meth:`load` when the kind is known), or wrap
    a model trained in the app with :meth:`from_model` (kind ``"run"``, no file)."""

    path: str  # the file; for kind "run", the run's label
    kind: str  # "bnn" | "keras" | "checkpoint" | "run"
    model: Any  # bnnlab.core.model.Sequential (for a .bnn: the file unfolded; None when the
    # engine cannot represent the file, see engine_error)
    input_spec: Any  # bnnlab.deploy.format.InputSpec: how raw inputs map to model inputs
    input_scale: str  # "unit" or "symmetric": how images in [0, 1] were scaled in training
    class_names: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    bnn: Any = None  # bnnlab.deploy.format.ModelFile of a .bnn file
    engine_error: str | None = None  # why ``model`` is None (a .bnn the engine cannot build)
    _runtime: Any = field(default=None, repr=False)
    _folded: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def load(cls, path: str | os.PathLike, kind: str, *, input_scale: str | None = None) -> "OpenedModel":
        """Read ``path`` as ``kind``. Raises the reader's own error (``ModelFileError``,
        ``LarqImportError``, ``CheckpointError``, ``ExportError``), which names the file;
        :func:`~bnnlab.app.opening.open_any` turns them into one ``OpenError``."""
        from ..deploy.fold import input_spec_for
        from ..deploy.format import ModelFileError, read_file
        from ..deploy.larq_import import import_larq
        from ..deploy.limits import check_runtime_cost
        from ..deploy.unfold import model_from_file
        from ..io.checkpoints import load_checkpoint

        path = os.fspath(path)
        if kind not in ("bnn", "keras", "checkpoint"):
            raise ValueError(f"{kind!r} is not a model kind (bnn, keras, checkpoint)")
        meta: dict[str, Any] = {}
        mf = engine_error = None
        if kind == "bnn":
            mf = read_file(path)
            try:
                check_runtime_cost(mf)
            except ModelFileError as exc:  # beyond the runtime limits: name the file
                raise ModelFileError(f"{path}: {exc}") from None
            try:
                model = model_from_file(mf, name=mf.metadata.get("name") or Path(path).stem)
            except ModelFileError as exc:  # the runtime runs it; the engine cannot
                model, engine_error = None, str(exc)
            meta = dict(mf.metadata)
        elif kind == "keras":
            model = import_larq(path)
            meta = {"source": Path(path).name}
        else:
            model, meta = load_checkpoint(path)
            meta = dict(meta)
        if mf is not None:
            spec = mf.input
            scale = "symmetric" if spec.encoding == "uint8" and spec.offset == -1.0 else "unit"
            names = tuple(mf.class_names)
        else:
            scale = input_scale or meta.get("input_scale") or "unit"
            spec = input_spec_for(model.input_shape, scale)
            names = ()
            if meta.get("dataset"):
                from ..data import DatasetError, dataset_info

                try:
                    info = dataset_info(meta["dataset"])
                    if model.output_shape == (len(info.class_names),):
                        names = tuple(info.class_names)
                except DatasetError:
                    pass
        return cls(path, kind, model, spec, scale, names, meta, mf, engine_error)

    @classmethod
    def from_model(cls, model, label: str, *, input_scale: str = "unit", class_names=(),
                   dataset: str | None = None, seed: int = 0) -> "OpenedModel":
        """A model that lives in memory (a run's weights), with the same interface.

        ``label`` names it in messages; ``input_scale``, ``class_names``, ``dataset`` and
        ``seed`` are what its scene used. The model is used as it is, not copied.
        """
        from ..deploy.fold import input_spec_for

        meta = {"name": model.name, "seed": seed, "input_scale": input_scale}
        if dataset:
            meta["dataset"] = dataset
        spec = input_spec_for(model.input_shape, input_scale)
        return cls(str(label), "run", model, spec, input_scale, tuple(class_names), meta)

    # ------------------------------------------------------------------ what it is
    @property
    def source(self) -> str:
        """The file's name, for labels ("opened: model.bnn"); a run's label."""
        return self.path if self.kind == "run" else Path(self.path).name

    @property
    def name(self) -> str:
        if self.model is None:
            return self.metadata.get("name") or Path(self.path).stem
        return self.model.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.model is None:
            return tuple(int(v) for v in self.input_spec.shape)
        return tuple(self.model.input_shape)

    @property
    def num_classes(self) -> int:
        if self.model is None:
            return int(self.bnn.blocks[-1].out_channels)
        return int(np.prod(self.model.output_shape))

    def require_engine(self, what: str) -> None:
        """Raise :class:`EngineUnavailable` (saying what needs it and why) when the float
        engine cannot represent the file."""
        if self.model is None:
            raise EngineUnavailable(
                f"{what} needs the float engine, which cannot represent {self.source}: "
                f"{self.engine_error}. The packed runtime runs it: the summary, Bits, "
                "Try it and Evaluate work.")

    @property
    def input_kind(self) -> str:
        """"image" for (H, W, C) inputs, "points" for flat ones."""
        return "image" if len(self.input_shape) == 3 else "points"

    @property
    def dataset(self) -> str | None:
        """The dataset the file says the model was trained on, if it says."""
        d = self.metadata.get("dataset")
        return str(d) if d else None

    @property
    def seed(self) -> int:
        """The seed recorded with the model (built-in datasets are drawn from it), else 0."""
        try:
            return int(self.metadata.get("seed", 0))
        except (TypeError, ValueError):
            return 0

    @property
    def has_latent_weights(self) -> bool:
        return self.kind != "bnn"

    @property
    def is_binary(self) -> bool:
        """True when some conv/dense layer has a binary kernel."""
        if self.model is None:
            return any(b.kernel == "bits" for b in self.bnn.blocks)
        return any(q.kernel_binary for q in self.model.quant_layers)

    def label(self) -> str:
        return self.source if self.kind == "run" else f"opened: {self.source}"

    # ------------------------------------------------------------------ reports
    def profile(self):
        """The Larq-style summary (:class:`bnnlab.core.summary.ModelProfile`)."""
        if self.model is None:  # counted from the file's blocks
            from ..deploy.profile import profile_from_file

            return profile_from_file(self.bnn, name=self.name)
        from ..core.summary import profile_model

        return profile_model(self.model)

    def twin_profile(self):
        """For a ``.bnn`` file, the summary of the same network with every weight and MAC in
        float32 (counted from its blocks); None for the other kinds (their twin is built
        from the model's layers)."""
        if self.bnn is None:
            return None
        from ..deploy.profile import profile_from_file

        return profile_from_file(self.bnn, float_twin=True, name=self.name)

    def summary_text(self) -> str:
        from ..core.summary import format_summary

        return format_summary(self.profile())

    def filters(self, top: int = 16):
        """Duplicate binary 3x3 filters per layer (:class:`bnnlab.core.filters.FilterReport`)."""
        from ..core.filters import analyze_filters

        self.require_engine("Filters")
        return analyze_filters(self.model, top=top)

    def describe(self) -> dict[str, Any]:
        """Plain data for display: ``path``, ``kind``, ``file_bytes`` (None for a run), ``bnn_bytes`` (the file
        itself, or what exporting it would write; None with ``export_error`` when it cannot
        be exported), ``float32_bytes``, ``compression``, ``summary``, ``blocks``, ``input``,
        ``class_names``, ``metadata``."""
        from ..deploy import describe_model

        if self.bnn is not None:
            info = describe_model(self.model, model_file=self.bnn)
            info["bnn_bytes"] = os.path.getsize(self.path)
            info["compression"] = info["bnn_bytes"] / max(info["float32_bytes"], 1)
        else:
            info = describe_model(self.model, self.input_spec, self.class_names)
        spec = self.input_spec
        size = None if self.kind == "run" else os.path.getsize(self.path)
        info.update(path=self.path, kind=self.kind, file_bytes=size,
                    input={"shape": list(spec.shape), "encoding": spec.encoding,
                           "scale": spec.scale, "offset": spec.offset},
                    class_names=list(self.class_names), metadata=dict(self.metadata))
        return info

    def report(self) -> str:
        """A plain-text report: sizes, the summary table and the duplicate filters."""
        info = self.describe()
        if info["bnn_bytes"]:
            size = (f".bnn size: {info['bnn_bytes']:,} bytes; float-32 equivalent: "
                    f"{info['float32_bytes']:,} bytes "
                    f"({info['float32_bytes'] / max(info['bnn_bytes'], 1):.1f}x larger)")
        else:
            size = f"cannot be exported as .bnn: {info['export_error']}"
        lines = [self.path, size, "", self.summary_text(), ""]
        if self.model is None:
            lines.append(f"duplicate filters: not counted ({self.engine_error})")
        for r in (self.filters() if self.model is not None else []):
            lines.append(f"{r.layer}: {r.unique} unique 3x3 patterns of {r.total} filters "
                         f"({r.unique_up_to_sign} up to sign); reuse would save "
                         f"{100 * r.saving:.1f}% of the work")
        return "\n".join(lines)

    # ------------------------------------------------------------------ the .bnn record
    def model_file(self):
        """The ``.bnn`` record: the file's own, or this model folded (raises
        ``bnnlab.deploy.ExportError`` naming the layer that has no ``.bnn`` form)."""
        if self.bnn is not None:
            return self.bnn
        if self._folded is None:
            from ..deploy import to_model_file

            self._folded = to_model_file(self.model, self.input_spec, self.class_names,
                                         {"name": self.name, "source": self.source})
        return self._folded

    def runtime(self):
        """The packed integer runtime of :meth:`model_file` (built once)."""
        if self._runtime is None:
            from ..deploy.runtime import Runtime

            self._runtime = Runtime(self.model_file())
        return self._runtime

    def bnn_layout(self):
        """The byte map of the ``.bnn`` file (:func:`bnnlab.deploy.explain.file_layout`):
        of the file itself, or of what exporting this model would write."""
        from ..deploy.explain import file_layout
        from ..deploy.format import encode

        data = Path(self.path).read_bytes() if self.bnn is not None else encode(self.model_file())
        return file_layout(data)

    def activation_maps(self, x: np.ndarray):
        """Every block's output on the runtime for one dataset input ``x`` (*input_shape)."""
        from ..deploy.explain import activation_maps

        return activation_maps(self.runtime(), self.raw_inputs(np.asarray(x)[None])[0])

    def explain_unit(self, x: np.ndarray, block: int, unit: tuple[int, int, int]):
        """Output ``unit`` of ``block`` for one dataset input, step by step
        (:func:`bnnlab.deploy.explain.explain_unit`), checked against the runtime."""
        from ..deploy.explain import explain_unit

        return explain_unit(self.runtime(), self.raw_inputs(np.asarray(x)[None])[0], block, unit)

    # ------------------------------------------------------------------ inference
    def check_fits(self, input_shape, num_classes: int | None = None, what: str = "the data") -> None:
        """Raise :class:`IncompatibleModel` unless inputs of ``input_shape`` (and, if given,
        ``num_classes`` classes) suit the model; ``what`` names the other side."""
        shape = tuple(int(s) for s in input_shape)
        if shape != self.input_shape:
            raise IncompatibleModel(f"{self.source} reads inputs of shape {self.input_shape}, "
                                    f"{what} has {shape}")
        if num_classes is not None and num_classes != self.num_classes:
            raise IncompatibleModel(f"{self.source} has {self.num_classes} outputs, {what} has "
                                    f"{num_classes} classes")

    def incompatibility(self, scene) -> str | None:
        """Why the model cannot be trained or evaluated on ``scene``'s dataset, or None.

        For the app to say so next to the model instead of failing later.
        """
        from ..data import DatasetError, dataset_info

        try:
            info = dataset_info(scene.dataset)
            self.check_fits(info.input_shape, len(info.class_names),
                            f"scene {scene.name!r} (dataset {info.name!r})")
        except (DatasetError, IncompatibleModel) as exc:
            return str(exc)
        return None

    @property
    def computes_on(self) -> str:
        """"runtime" for a ``.bnn`` file (packed integers), "engine" otherwise."""
        return "runtime" if self.bnn is not None else "engine"

    def raw_inputs(self, x: np.ndarray) -> np.ndarray:
        """Dataset inputs -> what the ``.bnn`` runtime reads (uint8 pixels for images)."""
        from ..deploy.runtime import raw_from_unit

        x = np.asarray(x, np.float32)
        self.check_fits(x.shape[1:], what="the input")
        return raw_from_unit(x, self.input_spec.encoding) if self.input_kind == "image" else x

    def engine_inputs(self, x: np.ndarray) -> np.ndarray:
        """Dataset inputs -> the engine model's inputs (the training-time scaling)."""
        from ..experiment import scale_inputs

        self.require_engine("The engine")
        x = np.asarray(x, np.float32)
        self.check_fits(x.shape[1:], what="the input")
        return scale_inputs(x, self.input_scale, self.input_kind)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) float32 logits of dataset inputs ``x`` (N, *input_shape)."""
        if self.bnn is not None:
            return self.runtime().logits(self.raw_inputs(x))
        return self.model.predict_logits(self.engine_inputs(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) class probabilities (softmax of :meth:`logits`)."""
        from ..core.model import softmax

        return softmax(self.logits(x).astype(np.float64)).astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) class indices (first maximum, as ``bnnlab run`` counts)."""
        return self.logits(x).argmax(axis=1)

    # ------------------------------------------------------------------ latent weights
    def latent_weights(self) -> list[LatentLayer]:
        """The latent kernel of every conv/dense layer, in order; raises
        :class:`NoLatentWeights` for a ``.bnn`` file."""
        if not self.has_latent_weights:
            raise NoLatentWeights(f"{self.source}: a .bnn file keeps only the signs of the "
                                  "weights; open the .npz or .h5 it came from to see latent weights")
        return [LatentLayer(q.name, q.type_name, q.kernel_binary,
                            np.array(q.kernel.value, np.float32).reshape(-1), q.kernel.clip)
                for q in self.model.quant_layers]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, dataset: str | None = None, *, data_dir=None, limit: int | None = None,
                 seed: int | None = None, download: bool = True,
                 progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 batch_size: int = 1024,
                 download_progress: Callable[[int, int], None] | None = None) -> Evaluation:
        """Score the model on a dataset's test set (default: the one the file names).

        ``progress(done, total)`` is called after each batch of images (and
        ``download_progress(bytes, total)`` while a missing dataset downloads); when
        ``should_stop()`` turns true the evaluation ends early (``complete=False``).
        Built-in datasets are drawn from ``seed`` (default: the model's recorded seed).
        Raises ``DatasetError`` for data that cannot be loaded and
        :class:`IncompatibleModel` when the shapes or class counts differ.
        """
        from ..data import DatasetError, dataset_info, load_dataset

        name = dataset or self.dataset
        if not name:
            raise DatasetError(f"{self.source} does not say which dataset it was trained on; "
                               "choose one")
        info = dataset_info(name)
        self.check_fits(info.input_shape, len(info.class_names), f"dataset {info.name!r}")
        ds = load_dataset(name, data_dir, download=download, progress=download_progress,
                          limit_test=limit, seed=self.seed if seed is None else seed,
                          splits=("test",))
        x, y = ds.x_test, ds.y_test
        total = len(x)
        preds = np.empty(total, np.int64)
        start = time.perf_counter()
        done = 0
        while done < total:
            if should_stop is not None and should_stop():
                break
            end = min(total, done + batch_size)
            preds[done:end] = self.predict(x[done:end])
            done = end
            if progress is not None:
                progress(done, total)
        preds, labels = preds[:done], y[:done]
        c = len(ds.class_names)
        confusion = np.zeros((c, c), np.int64)
        np.add.at(confusion, (labels, preds), 1)
        acc = float(np.mean(preds == labels)) if done else float("nan")
        return Evaluation(ds.name, done, total, acc, confusion, tuple(ds.class_names), preds,
                          labels, self.computes_on, time.perf_counter() - start, done == total)

    # ------------------------------------------------------------------ fine-tuning
    def fine_tune(self, scene, *, data_dir=None, download: bool = True,
                  progress: Callable[[int, int], None] | None = None,
                  telemetry: bool = True, epochs: int | None = None) -> FineTune:
        """A trainable copy of the model with ``scene``'s training settings.

        The copy keeps the model's own layers, binarizers and weights; the scene gives
        the dataset, optimizer, learning rate, schedule, batch size, epochs and seed. Its
        images are scaled as the model was trained (``input_scale``), whatever the scene
        says. Raises :class:`NoLatentWeights` for a ``.bnn`` file,
        :class:`IncompatibleModel` when the scene's data does not fit, ``DatasetError``
        when the data cannot be loaded. ``progress`` reports downloads.
        """
        from ..core.model import model_from_state
        from ..data import dataset_info
        from ..experiment import make_trainer, prepare_data

        if not self.has_latent_weights:
            raise NoLatentWeights(f"{self.source}: a .bnn file keeps only the signs of the weights, "
                                  "not the latent weights training needs; fine-tune from the "
                                  ".npz or .h5 it came from")
        info = dataset_info(scene.dataset)
        self.check_fits(info.input_shape, len(info.class_names),
                        f"scene {scene.name!r} (dataset {info.name!r})")
        tuned = scene.copy()
        tuned.name = f"{self.name}-finetuned"
        tuned.input_scale = self.input_scale
        data = prepare_data(tuned, data_dir, progress=progress, download=download)
        state = {k: np.array(v, copy=True) for k, v in self.model.state_dict().items()}
        model = model_from_state(self.model.config(), state)
        model.name = tuned.name
        trainer = make_trainer(tuned, model, data, epochs=epochs, telemetry=telemetry)
        return FineTune(tuned, model, data, trainer)
