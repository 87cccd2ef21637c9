"""What every layer shares: :class:`Param` (a value with its gradient) and the
:class:`Layer` interface (config, forward, backward, parameters)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "CONSTRAINTS", "Layer", "Param"]

CONSTRAINTS = ("weight_clip",)
ACTIVATIONS = ("linear", "relu", "softmax")


@dataclass
class Param:
    """A trainable array, its gradient, and what the optimizer must know about it."""

    name: str
    value: np.ndarray
    grad: np.ndarray
    binary: bool = False  # latent weights of a binarized kernel (Bop flips these)
    clip: float | None = None  # weight_clip bound applied after each update
    lr_scale: float = 1.0  # this array's learning rate is the optimizer's times this

    def apply_constraint(self) -> None:
        if self.clip is not None:
            np.clip(self.value, -self.clip, self.clip, out=self.value)


def _count(name: str, value: Any) -> int:
    """A positive whole number from a config; 16.5, True or "16" are refused, never rounded."""
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not whole and isinstance(value, (float, np.floating)) and float(value).is_integer():
        whole = True
    if not whole or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Layer:
    """Base layer: ``build`` fixes shapes, ``forward``/``backward`` move data and gradients."""

    type_name = "Layer"
    keras_name = "layer"  # the name stem Keras gives such a layer, for summaries
    merge = False  # True for layers that join several inputs (bnnlab.core.merge_layers)

    def __init__(self, name: str | None = None):
        self.name = name
        # names of the layers this one reads (bnnlab.core.graph); None: the previous layer
        self.inputs: tuple[str, ...] | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.need_input_grad = True
        self.last_input: np.ndarray | None = None

    # -- structure
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def weight_count(self, input_shape: tuple[int, ...]) -> int:
        """How many numbers ``state()`` will hold once built on ``input_shape`` (no allocation)."""
        return 0

    def params(self) -> list[Param]:
        return []

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved in checkpoints (e.g. running statistics)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        d = {p.name: p.value for p in self.params()}
        d.update(self.buffers())
        return d

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        own = self.state()
        for key, arr in own.items():
            if key not in state:
                raise ValueError(f"layer {self.name}: checkpoint lacks array {key!r}")
            new = np.asarray(state[key])
            if new.shape != arr.shape:
                raise ValueError(
                    f"layer {self.name}: array {key!r} has shape {new.shape}, expected {arr.shape}"
                )
            arr[...] = new

    def config(self) -> dict[str, Any]:
        return {"type": self.type_name}

    # -- computation
    def forward(self, x: np.ndarray, training: bool = False, rng=None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def __repr__(self):
        return f"{self.type_name}({self.name})"
