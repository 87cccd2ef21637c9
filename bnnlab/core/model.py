"""A Sequential model and softmax cross-entropy (checkpoint files: :mod:`bnnlab.io.checkpoints`)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .layers import Layer, Param, _QuantBase, layer_from_config

__all__ = ["MAX_WEIGHT_BYTES", "ModelTooLarge", "Sequential", "softmax", "softmax_cross_entropy", "model_from_state"]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and d loss / d logits."""
    n = logits.shape[0]
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(logsum - z[np.arange(n), labels]))
    grad = np.exp(z - logsum[:, None])
    grad[np.arange(n), labels] -= 1.0
    return loss, (grad / n).astype(np.float32)


#: Largest model built, in bytes of float32 weights (250 million numbers). Training holds
#: about four times this (weights, gradients and two optimizer slots).
MAX_WEIGHT_BYTES = 1 << 30


class ModelTooLarge(ValueError):
    """A model whose weights would exceed :data:`MAX_WEIGHT_BYTES`; found before allocating."""


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class Sequential:
    """A stack of layers. ``forward`` returns logits; a final softmax lives in the loss."""

    def __init__(self, layers: Iterable[Layer], input_shape: tuple[int, ...], name="sequential",
                 seed: int = 0, max_weight_bytes: int = MAX_WEIGHT_BYTES):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a model needs at least one layer")
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"the input shape must be positive sizes, got {self.input_shape}")
        self.name = name
        self._check_softmax()
        self._name_layers()
        self._check_size(max_weight_bytes)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        shape = self.input_shape
        for layer in self.layers:
            try:
                shape = layer.build(shape, rng)
            except ValueError as exc:
                raise ValueError(f"layer {layer.name}: {exc}") from None
        self.output_shape = shape
        # The first layer's input is data: computing its gradient would be wasted work.
        self.layers[0].need_input_grad = False

    def _check_size(self, max_weight_bytes: int) -> None:
        """Refuse a model too large for memory from its shapes alone, before any allocation."""
        shape, count = self.input_shape, 0
        for layer in self.layers:
            try:
                count += layer.weight_count(shape)
                shape = layer.compute_output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"layer {layer.name}: {exc}") from None
        nbytes = 4 * count
        if nbytes > max_weight_bytes:
            raise ModelTooLarge(
                f"the model has {count:,} weights, {_gb(nbytes)} as float32 (training needs "
                f"about {_gb(4 * nbytes)}); the limit is {_gb(max_weight_bytes)} of weights: "
                f"make its layers smaller")

    def _check_softmax(self):
        for i, layer in enumerate(self.layers):
            if getattr(layer, "activation", None) == "softmax" and i != len(self.layers) - 1:
                raise ValueError(f"softmax is only allowed on the last layer (found on layer {i})")

    def _name_layers(self):
        counts: dict[str, int] = {}
        taken = {layer.name for layer in self.layers if layer.name}
        for layer in self.layers:
            if layer.name:
                continue
            stem = layer.keras_name
            while True:
                k = counts.get(stem, 0)
                counts[stem] = k + 1
                name = stem if k == 0 else f"{stem}_{k}"
                if name not in taken:
                    break
            layer.name = name
            taken.add(name)

    # -- structure
    @property
    def quant_layers(self) -> list[_QuantBase]:
        return [layer for layer in self.layers if isinstance(layer, _QuantBase)]

    def params(self) -> list[tuple[str, Param]]:
        return [(f"{layer.name}/{p.name}", p) for layer in self.layers for p in layer.params()]

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "layers": [dict(layer.config(), name=layer.name) for layer in self.layers],
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], seed: int = 0) -> "Sequential":
        layers = []
        for i, lc in enumerate(cfg["layers"]):
            try:
                layers.append(layer_from_config(lc))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"model layer {i}: {exc}") from None
        return cls(layers, tuple(cfg["input_shape"]), name=cfg.get("name", "sequential"), seed=seed)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"{layer.name}/{k}": v for layer in self.layers for k, v in layer.state().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for layer in self.layers:
            prefix = layer.name + "/"
            layer.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # -- computation
    def forward(self, x: np.ndarray, training: bool = False, rng=None) -> np.ndarray:
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"model expects input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        for layer in self.layers:
            x = layer.forward(x, training=training, rng=rng)
        return x

    def backward(self, dlogits: np.ndarray) -> None:
        g = dlogits
        for layer in reversed(self.layers):
            g = layer.backward(g)
            if g is None:
                break

    def predict_logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, *self.output_shape), np.float32)

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return softmax(self.predict_logits(x, batch_size).astype(np.float64)).astype(np.float32)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
        """(mean loss, accuracy) in inference mode (running batch-norm statistics)."""
        logits = self.predict_logits(x, batch_size)
        loss, _ = softmax_cross_entropy(logits, y)
        return loss, float(np.mean(logits.argmax(axis=1) == y))


def model_from_state(config: dict[str, Any], state: dict[str, np.ndarray]) -> Sequential:
    """A fresh model with a snapshot's weights (for inference off the training thread)."""
    model = Sequential.from_config(config)
    model.load_state_dict(state)
    return model
