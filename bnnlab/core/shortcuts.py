"""Shortcuts of residual models, and what they do to the gradients.

A *shortcut* is an input of an ``Add`` that carries an earlier tensor around a branch with
weights, through nothing but parameter-free layers (identity, max pooling, the same
channels concatenated): in a Bi-Real-style block, ``Add(bn(conv(sign(x))), x)``, the
second input is the shortcut and the first the residual branch.

* :func:`find_shortcuts` names them: for each ``Add``, which inputs are shortcuts and
  which are kept;
* :func:`without_shortcuts` is the model's configuration with every shortcut cut: each
  ``Add`` keeps only its residual branches (an ``Add`` left with one input disappears and
  its readers read that branch), and layers that fed only shortcuts go. The layers with
  weights keep their names, so the same weights load into it;
* :func:`gradient_norms` runs training batches forward (batch statistics, as training
  does) and backward, and gives every quantized layer's latent-weight gradient norm and
  the norm of the gradient reaching the tensor it reads;
* :func:`compare_shortcuts` does that for the model as it is and with its shortcuts cut,
  from the same weights on the same batches.

Cutting the shortcuts changes the function the weights compute: the figures compare how
the gradient reaches each layer through either graph at one point of weight space, not
how well either network would train (train both for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .layers import _QuantBase
from .layerstats import grad_norm
from .model import Sequential, softmax_cross_entropy

__all__ = ["LayerGradients", "NoShortcuts", "Shortcut", "ShortcutEffect", "compare_shortcuts",
           "find_shortcuts", "gradient_norms", "without_shortcuts"]


class NoShortcuts(ValueError):
    """The model has no shortcut to cut (a plain stack, or branches without one)."""


@dataclass(frozen=True)
class Shortcut:
    """One ``Add``: the inputs that are shortcuts (cut) and those kept (residual branches);
    ``origin`` names the tensor a shortcut carries (``input`` for the model input)."""

    add: str
    cut: tuple[str, ...]
    kept: tuple[str, ...]
    origins: tuple[str, ...]


def _free(layer) -> bool:
    """A layer the signal passes without weights: no parameters, one input or a
    concatenation (an ``Add`` joins branches and ends a shortcut)."""
    return not layer.params() and layer.type_name != "Add"


def _origin(model: Sequential, i: int) -> int:
    """Where the tensor of layer ``i`` comes from through parameter-free layers only (-1:
    the model input). A concatenation passes when all its inputs come from one place."""
    while i >= 0 and _free(model.layers[i]):
        src = model.sources[i]
        if len(src) > 1:
            origins = {_origin(model, s) for s in src}
            if len(origins) != 1:
                return i
            return origins.pop()
        i = src[0]
    return i


def _ancestors(model: Sequential, i: int) -> set[int]:
    """Every layer index (and -1 for the input) whose output reaches layer ``i``."""
    seen: set[int] = set()
    todo = [i]
    while todo:
        j = todo.pop()
        for s in (model.sources[j] if j >= 0 else ()):
            if s not in seen:
                seen.add(s)
                todo.append(s)
    return seen


def _name(model: Sequential, i: int) -> str:
    return "input" if i < 0 else model.layers[i].name


def find_shortcuts(model: Sequential) -> list[Shortcut]:
    """The shortcuts of every ``Add`` of ``model``, in the order the layers run.

    An input of an ``Add`` is a shortcut when it reaches back, through parameter-free
    layers only, to a tensor that another input of the same ``Add`` is computed from
    through at least one layer with weights.
    """
    found = []
    for a, layer in enumerate(model.layers):
        if layer.type_name != "Add":
            continue
        src = model.sources[a]
        origins = [_origin(model, s) for s in src]
        cut = []
        for p, o in enumerate(origins):
            if any(q != p and origins[q] != o and o in _ancestors(model, src[q])
                   for q in range(len(src))):
                cut.append(p)
        if cut and len(cut) < len(src):
            found.append(Shortcut(layer.name, tuple(_name(model, src[p]) for p in cut),
                                  tuple(_name(model, s) for p, s in enumerate(src) if p not in cut),
                                  tuple(_name(model, origins[p]) for p in cut)))
    return found


def without_shortcuts(model: Sequential) -> dict:
    """``model``'s configuration with every shortcut cut (see the module's doc); raises
    :class:`NoShortcuts` when there is none."""
    cuts = find_shortcuts(model)
    if not cuts:
        raise NoShortcuts(f"model {model.name!r} has no shortcut: no Add joins a branch with "
                          "weights and a parameter-free path around it")
    cfg = model.config()
    layers = [dict(lc, inputs=list(model.input_names(i))) for i, lc in enumerate(cfg["layers"])]
    replace: dict[str, str] = {}
    for c in cuts:
        lc = next(lc for lc in layers if lc["name"] == c.add)
        if len(c.kept) > 1:
            lc["inputs"] = list(c.kept)
        else:
            replace[c.add] = c.kept[0]

    def resolve(name: str) -> str:
        while name in replace:
            name = replace[name]
        return name

    for lc in layers:
        lc["inputs"] = [resolve(n) for n in lc["inputs"]]
    by_name = {lc["name"]: lc for lc in layers}
    output = resolve(layers[-1]["name"])
    needed, todo = set(), [output]
    while todo:  # the layers the output still depends on
        n = todo.pop()
        if n in needed or n not in by_name:
            continue
        needed.add(n)
        todo.extend(by_name[n]["inputs"])
    kept = [lc for lc in layers if lc["name"] in needed and lc["name"] != output]
    kept.append(by_name[output])  # the output is listed last
    return {**cfg, "name": f"{model.name} without shortcuts", "layers": kept}


@dataclass(frozen=True)
class LayerGradients:
    """One quantized layer's gradients over the measured batches.

    ``weight``: per batch, the L2 norm of the gradient of the batch's mean loss with
    respect to the layer's latent weights (what the optimizer receives). ``input``: per
    batch, the L2 norm of the gradient with respect to the tensor the layer reads (summed
    over all its readers, before the layer's binarizer); None for a layer reading the data.
    """

    name: str
    type_name: str
    binary_input: bool
    weight: tuple[float, ...]
    input: tuple[float, ...] | None

    @property
    def weight_mean(self) -> float:
        return float(np.mean(self.weight))

    @property
    def input_mean(self) -> float | None:
        return None if self.input is None else float(np.mean(self.input))

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type_name, "binary_input": self.binary_input,
                "weight_grad_norm": self.weight_mean, "input_grad_norm": self.input_mean,
                "weight_grad_norm_per_batch": list(self.weight),
                "input_grad_norm_per_batch": None if self.input is None else list(self.input)}


def gradient_norms(model: Sequential, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                   seed: int = 0) -> tuple[list[LayerGradients], list[float]]:
    """(per quantized layer :class:`LayerGradients`, the loss of each batch) for training
    batches ``(x, y)`` run through ``model`` in training mode.

    Training mode updates batch-norm running statistics: pass a model of your own (see
    :func:`compare_shortcuts`). Batch ``b`` draws stochastic binarizers from a generator
    seeded with ``(seed, b)``, so two models measured alike draw alike.
    """
    quant = [(i, layer) for i, layer in enumerate(model.layers) if isinstance(layer, _QuantBase)]
    weights: list[list[float]] = [[] for _ in quant]
    inputs: list[list[float]] = [[] for _ in quant]
    losses = []
    for b, (x, y) in enumerate(batches):
        logits = model.forward(x, training=True, rng=np.random.default_rng([seed, b]))
        loss, dlogits = softmax_cross_entropy(logits, y)
        losses.append(loss)
        norms: dict[int, float] = {}
        model.backward(dlogits, output_grad_norms=norms)
        for k, (i, q) in enumerate(quant):
            weights[k].append(grad_norm(q.kernel.grad))
            src = model.sources[i][0]
            inputs[k].append(norms.get(src, 0.0) if src >= 0 else float("nan"))
    out = []
    for k, (i, q) in enumerate(quant):
        reads_data = model.sources[i][0] < 0
        out.append(LayerGradients(q.name, q.type_name, q.input_quantizer is not None,
                                  tuple(weights[k]), None if reads_data else tuple(inputs[k])))
    return out, losses


@dataclass(frozen=True)
class ShortcutEffect:
    """Gradients of one model at one set of weights, with its shortcuts and without."""

    shortcuts: tuple[Shortcut, ...]
    with_shortcuts: tuple[LayerGradients, ...]
    without_shortcuts: tuple[LayerGradients, ...]
    loss_with: tuple[float, ...]  # per batch
    loss_without: tuple[float, ...]
    batches: int
    batch_size: int
    seed: int

    def as_dict(self) -> dict:
        return {
            "shortcuts": [{"add": s.add, "cut": list(s.cut), "kept": list(s.kept),
                           "origins": list(s.origins)} for s in self.shortcuts],
            "batches": self.batches, "batch_size": self.batch_size, "seed": self.seed,
            "loss_with_shortcuts": float(np.mean(self.loss_with)),
            "loss_without_shortcuts": float(np.mean(self.loss_without)),
            "with_shortcuts": [g.as_dict() for g in self.with_shortcuts],
            "without_shortcuts": [g.as_dict() for g in self.without_shortcuts],
        }


def compare_shortcuts(model: Sequential, x: np.ndarray, y: np.ndarray, *, batches: int = 4,
                      batch_size: int = 64, seed: int = 0) -> ShortcutEffect:
    """Per-layer gradient norms of ``model`` with its shortcuts and with them cut, from
    the same weights on the same ``batches`` training batches (drawn from ``x``, ``y``
    with ``seed``). ``model`` itself is not changed. Raises :class:`NoShortcuts`."""
    cut_config = without_shortcuts(model)
    if int(batches) < 1 or int(batch_size) < 1:
        raise ValueError("batches and batch_size must be positive")
    if len(x) == 0:
        raise ValueError("no training data to measure the gradients on")
    state = model.state_dict()
    order = np.random.default_rng(seed).permutation(len(x))
    picked = [order[(b * batch_size) % len(x):][:batch_size] for b in range(int(batches))]
    data = [(np.ascontiguousarray(x[idx], np.float32), np.asarray(y[idx], np.int64))
            for idx in picked]
    results = []
    for cfg in (model.config(), cut_config):
        m = Sequential.from_config(cfg)
        m.load_state_dict(state)
        results.append(gradient_norms(m, data, seed))
    (g_with, l_with), (g_without, l_without) = results
    return ShortcutEffect(tuple(find_shortcuts(model)), tuple(g_with), tuple(g_without),
                          tuple(l_with), tuple(l_without), int(batches), int(batch_size),
                          int(seed))
