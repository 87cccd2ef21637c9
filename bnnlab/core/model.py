"""The model (a stack of layers, or a graph of them) and softmax cross-entropy (checkpoint
files: :mod:`bnnlab.io.checkpoints`)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .graph import INPUT, assign_names, wire
from .inference import fused_forward
from .layers import Layer, Param, _QuantBase, layer_from_config
from .layerstats import grad_norm

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
    """Layers run in order; ``forward`` returns logits (a final softmax lives in the loss).

    Despite its Keras name the model may be a graph: a layer whose ``inputs`` name other
    layers (:mod:`bnnlab.core.graph`) reads their outputs, merge layers (``Add``,
    ``Concatenate``) join branches. ``layers`` holds them in the order they run (a
    topological order that keeps the listed order where it can); ``sources[i]`` are the
    indices in ``layers`` of layer i's inputs, -1 for the model input. Backward sums the
    gradients of an output read by several layers.
    """

    def __init__(self, layers: Iterable[Layer], input_shape: tuple[int, ...], name="sequential",
                 seed: int = 0, max_weight_bytes: int = MAX_WEIGHT_BYTES):
        layers = list(layers)
        if not layers:
            raise ValueError("a model needs at least one layer")
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"the input shape must be positive sizes, got {self.input_shape}")
        self.name = name
        assign_names(layers)
        order, sources = wire(layers)
        position = {old: new for new, old in enumerate(order)}
        self.layers = [layers[i] for i in order]
        self.sources = [tuple(-1 if s < 0 else position[s] for s in sources[i]) for i in order]
        self._check_softmax()
        self._check_size(max_weight_bytes)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        shapes: list[tuple[int, ...]] = []
        for layer, src in zip(self.layers, self.sources):
            try:
                ins = [self.input_shape if s < 0 else shapes[s] for s in src]
                shapes.append(layer.build_many(ins, rng) if layer.merge else layer.build(ins[0], rng))
            except ValueError as exc:
                raise ValueError(f"layer {layer.name}: {exc}") from None
        self.output_shape = shapes[-1]
        # A layer reading only the data: computing its input gradient would be wasted work.
        for layer, src in zip(self.layers, self.sources):
            if all(s < 0 for s in src):
                layer.need_input_grad = False
        # how many layers read each output, so forward can drop what no one needs anymore
        self._readers = [0] * len(self.layers)
        for src in self.sources:
            for s in src:
                if s >= 0:
                    self._readers[s] += 1

    @property
    def is_graph(self) -> bool:
        """True unless each layer reads the one before it (the first, the model input)."""
        return any(src != (i - 1,) for i, src in enumerate(self.sources))

    def input_names(self, i: int) -> tuple[str, ...]:
        """The names of layer i's inputs (:data:`bnnlab.core.graph.INPUT` for the data)."""
        return tuple(INPUT if s < 0 else self.layers[s].name for s in self.sources[i])

    def _check_size(self, max_weight_bytes: int) -> None:
        """Refuse a model too large for memory from its shapes alone, before any allocation."""
        shapes: list[tuple[int, ...]] = []
        count = 0
        for layer, src in zip(self.layers, self.sources):
            ins = [self.input_shape if s < 0 else shapes[s] for s in src]
            try:
                if layer.merge:
                    shapes.append(layer.compute_output_shape_many(ins))
                else:
                    count += layer.weight_count(ins[0])
                    shapes.append(layer.compute_output_shape(ins[0]))
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
            "layers": [self._layer_config(i) for i in range(len(self.layers))],
        }

    def _layer_config(self, i: int) -> dict[str, Any]:
        d = dict(self.layers[i].config(), name=self.layers[i].name)
        if self.sources[i] != (i - 1,):  # the default: the layer before (or the data)
            d["inputs"] = list(self.input_names(i))
        return d

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
    def forward(self, x: np.ndarray, training: bool = False, rng=None,
                fused: bool = True) -> np.ndarray:
        """Logits of the batch x. In inference mode (``training`` False) the layers
        between two binary layers run fused (:mod:`bnnlab.core.inference`), with the same
        bits as running them one by one, which ``fused=False`` does."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"model expects input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if fused and not training:
            return fused_forward(self, x, rng)
        outs: dict[int, np.ndarray] = {}
        left = list(self._readers)
        for i, (layer, src) in enumerate(zip(self.layers, self.sources)):
            xs = [x if s < 0 else outs[s] for s in src]
            for s in src:
                if s >= 0:
                    left[s] -= 1
                    if not left[s]:
                        del outs[s]  # its last reader has it
            outs[i] = (layer.forward_many(xs, training=training, rng=rng) if layer.merge
                       else layer.forward(xs[0], training=training, rng=rng))
        return outs[len(self.layers) - 1]

    def backward(self, dlogits: np.ndarray, output_grad_norms: dict | None = None) -> None:
        """Gradients into every parameter; an output read by several layers gets their sum.

        ``output_grad_norms``, a dict, receives the L2 norm of the gradient of the loss with
        respect to each layer's output (all its readers summed), keyed by layer index, for
        the layers a gradient reaches.
        """
        grads: dict[int, np.ndarray] = {len(self.layers) - 1: dlogits}
        for i in range(len(self.layers) - 1, -1, -1):
            g = grads.pop(i, None)
            if g is None:
                continue  # nothing downstream needs this layer (no trainable path)
            if output_grad_norms is not None:
                output_grad_norms[i] = grad_norm(g)
            layer = self.layers[i]
            gin = layer.backward_many(g) if layer.merge else [layer.backward(g)]
            for s, gs in zip(self.sources[i], gin):
                if s < 0 or gs is None:
                    continue
                grads[s] = grads[s] + gs if s in grads else gs

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
