"""From a scene to a model and a trainer: the glue the CLI and the GUI share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .core.model import ModelTooLarge, Sequential
from .core.optimizers import glorot_lr_scale, make_optimizer, make_schedule
from .core.trainer import Trainer
from .data import Dataset, load_dataset
from .io.scenes import Scene, SceneError

__all__ = ["Prepared", "build_model", "prepare_data", "make_trainer", "scale_inputs",
           "apply_layer_lr_scale", "epoch_record"]


def scale_inputs(x: np.ndarray, input_scale: str, kind: str) -> np.ndarray:
    """Scale images in [0, 1] as a scene's ``input_scale`` says ("unit" keeps them, "symmetric"
    maps them to [-1, 1]); points pass unchanged."""
    if kind == "image" and input_scale == "symmetric":
        return (x * 2.0 - 1.0).astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def build_model(scene: Scene, input_shape: tuple[int, ...], num_classes: int) -> Sequential:
    """The scene's model, checked against the data's input shape and class count."""
    where = f"scene {scene.name!r}" + (f" ({scene.source})" if scene.source else "")
    try:
        model = Sequential.from_config(
            {"name": scene.name, "input_shape": list(input_shape), "layers": scene.resolved_layers()},
            seed=scene.seed,
        )
    except ModelTooLarge as exc:
        raise SceneError(f"{where}: on data of shape {input_shape}, {exc}") from None
    except ValueError as exc:
        raise SceneError(f"{where}: the model does not fit the data {input_shape}: {exc}") from None
    if model.output_shape != (num_classes,):
        raise SceneError(f"{where}: the model outputs {model.output_shape} but the "
                         f"dataset has {num_classes} classes; make the last layer's units {num_classes}")
    return model


@dataclass(frozen=True)
class Prepared:
    """Data ready for training: scaled arrays plus the dataset's description."""

    dataset: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def prepare_data(scene: Scene, data_dir=None, progress: Callable[[int, int], None] | None = None,
                 download: bool = True) -> Prepared:
    ds = load_dataset(scene.dataset, data_dir, download=download, progress=progress,
                      seed=scene.seed, limit_train=scene.limit_train or None,
                      limit_test=scene.limit_test or None)
    return Prepared(ds, scale_inputs(ds.x_train, scene.input_scale, ds.kind), ds.y_train,
                    scale_inputs(ds.x_test, scene.input_scale, ds.kind), ds.y_test)


def apply_layer_lr_scale(scene: Scene, model: Sequential) -> None:
    """Set each binary kernel's learning-rate factor from ``scene.layer_lr_scale``."""
    for q in model.quant_layers:
        if q.kernel.binary:
            q.kernel.lr_scale = (glorot_lr_scale(*q.fans) if scene.layer_lr_scale == "glorot"
                                 else 1.0)


def make_trainer(scene: Scene, model: Sequential, data: Prepared, *, epochs: int | None = None,
                 telemetry: bool = True) -> Trainer:
    epochs = scene.epochs if epochs is None else epochs
    apply_layer_lr_scale(scene, model)
    opt = make_optimizer(scene.optimizer, learning_rate=scene.learning_rate, **scene.optimizer_options)
    steps = epochs * -(-len(data.x_train) // scene.batch_size)
    target = opt.fp if scene.optimizer == "bop" else opt
    target.schedule = make_schedule(scene.schedule, scene.learning_rate, steps,
                                    steps_per_epoch=-(-len(data.x_train) // scene.batch_size))
    return Trainer(model, data.x_train, data.y_train, data.x_test, data.y_test, optimizer=opt,
                   epochs=epochs, batch_size=scene.batch_size, seed=scene.seed,
                   snapshot_every=scene.snapshot_every, telemetry=telemetry,
                   bn_reestimate_batches=scene.bn_reestimate_batches)


def epoch_record(snap, seconds: float, n_train: int) -> dict:
    """The plain-data record of a finished epoch (one line of ``bnnlab train --json``).

    ``val_*`` use running batch-norm statistics, ``val_*_batch_stats`` batch statistics;
    ``layers`` holds each quantized layer's weight, flip and gating fractions."""
    return {
        "epoch": snap.epoch, "loss": snap.loss, "accuracy": snap.accuracy,
        "val_loss": snap.val_loss, "val_accuracy": snap.val_accuracy,
        "val_loss_batch_stats": snap.val_loss_batch_stats,
        "val_accuracy_batch_stats": snap.val_accuracy_batch_stats,
        "bn_reestimated": snap.bn_reestimated,
        "seconds": round(seconds, 3),
        "train_seconds": round(seconds - snap.val_seconds, 3),
        "val_seconds": round(snap.val_seconds, 3),
        "images_per_second": round(n_train / seconds, 1) if seconds else None,
        "layers": [ls.as_dict() for ls in snap.epoch_layers],
    }
