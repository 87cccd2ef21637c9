"""The records every data source hands out: :class:`Dataset`, :class:`DatasetInfo`, and the
single exception type :class:`DatasetError`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "DatasetError", "DatasetInfo"]


class DatasetError(Exception):
    """Any failure to find, read, verify, download or build a dataset.

    The message is meant to be shown to a person as is: it names the file or dataset concerned
    and says how to fix the problem.
    """


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a registered dataset without loading it."""

    name: str
    title: str
    kind: str  # "image" or "points"
    description: str
    needs_files: bool  # True when the data comes from files (found locally or downloaded)
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]


# eq=False: the generated __eq__ would compare arrays element-wise and fail on truth testing.
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split ready for training.

    Images are float32 ``(N, H, W, 1)`` holding ``uint8 / 255``; points are float32 ``(N, 2)``.
    Labels are int64 ``(N,)`` in ``range(num_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    kind: str
    source: str

    def __post_init__(self) -> None:
        # Cheap invariants checked once here, so no consumer has to re-check them.
        if self.kind not in ("image", "points"):
            raise DatasetError(f"{self.name}: unknown kind {self.kind!r}")
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise DatasetError(
                    f"{self.name}: {split} arrays must be float32/int64, got {x.dtype}/{y.dtype}"
                )
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise DatasetError(
                    f"{self.name}: {split} has {x.shape[0]} inputs but labels of shape {y.shape}"
                )
            expected_ndim = 4 if self.kind == "image" else 2
            if x.ndim != expected_ndim:
                raise DatasetError(f"{self.name}: {split} inputs have shape {x.shape}")
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise DatasetError(
                    f"{self.name}: {split} labels fall outside 0..{len(self.class_names) - 1}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DatasetError(
                f"{self.name}: train inputs {self.x_train.shape[1:]} and test inputs "
                f"{self.x_test.shape[1:]} differ in shape"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)`` or ``(2,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, train={self.x_train.shape[0]}, "
            f"test={self.x_test.shape[0]}, input_shape={self.input_shape}, "
            f"classes={self.num_classes}, source={self.source!r})"
        )
