"""How a model's layers are wired: each layer names its inputs, the model runs them in
topological order.

A layer without ``inputs`` takes the output of the layer listed before it (the first layer
takes the model input), so a plain stack needs no names at all. ``inputs = ["a", "b"]``
names other layers; :data:`INPUT` names the model input. The last layer listed is the
model output, and every other layer's output must be used by some layer.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["INPUT", "assign_names", "check_inputs_value", "wire"]

#: The name by which a layer's ``inputs`` refer to the model input.
INPUT = "input"


def check_inputs_value(value: Any) -> tuple[str, ...] | None:
    """A layer config's ``inputs``: None (the previous layer) or a non-empty list of names."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ValueError(f"inputs must be a non-empty list of layer names, got {value!r}")
    return tuple(value)


def assign_names(layers: Sequence[Any]) -> None:
    """Give unnamed layers Keras-style names (``conv2d``, ``conv2d_1``, ...) not yet taken."""
    counts: dict[str, int] = {}
    taken = {layer.name for layer in layers if layer.name}
    for layer in layers:
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


def wire(layers: Sequence[Any]) -> tuple[list[int], list[tuple[int, ...]]]:
    """(order, sources) of named layers, each with ``inputs`` (names or None) and ``merge``.

    ``order`` lists the layer indices in a topological order that keeps the listed order
    wherever the wiring allows it; ``sources[i]`` are the indices of layer i's inputs in
    the listed order, -1 for the model input. Raises ValueError with one line naming the
    fault: a duplicate or reserved name, an unknown input, a wrong number of inputs, a
    cycle, or an output nothing uses.
    """
    index: dict[str, int] = {}
    for i, layer in enumerate(layers):
        if layer.name == INPUT:
            raise ValueError(f"layer {i}: the name {INPUT!r} is reserved for the model input")
        if layer.name in index:
            raise ValueError(f"two layers are named {layer.name!r}")
        index[layer.name] = i
    sources: list[tuple[int, ...]] = []
    for i, layer in enumerate(layers):
        names = layer.inputs if layer.inputs is not None else (
            (layers[i - 1].name,) if i else (INPUT,))
        src = []
        for name in names:
            if name != INPUT and name not in index:
                raise ValueError(f"layer {layer.name}: unknown input {name!r}; known: "
                                 f"{', '.join([INPUT, *index])}")
            if name == layer.name:
                raise ValueError(f"layer {layer.name}: takes its own output as input (a cycle)")
            src.append(-1 if name == INPUT else index[name])
        if layer.merge and len(src) < 2:
            raise ValueError(f"layer {layer.name}: {layer.type_name} joins branches and needs "
                             f"inputs naming at least two layers, got {list(names)}")
        if not layer.merge and len(src) != 1:
            raise ValueError(f"layer {layer.name}: {layer.type_name} takes one input, "
                             f"got {list(names)}")
        sources.append(tuple(src))
    return _topological(layers, sources), sources


def _topological(layers, sources) -> list[int]:
    n = len(layers)
    consumers: list[list[int]] = [[] for _ in range(n)]
    waiting = [0] * n
    for i, src in enumerate(sources):
        for s in set(src):
            if s >= 0:
                consumers[s].append(i)
                waiting[i] += 1
    unused = [layers[i].name for i in range(n - 1) if not consumers[i]]
    if unused:
        raise ValueError(f"the output of layer {unused[0]} is not used by any layer (the last "
                         f"layer, {layers[-1].name}, is the model output)")
    if consumers[n - 1]:
        raise ValueError(f"the last layer, {layers[-1].name}, is the model output; layer "
                         f"{layers[consumers[n - 1][0]].name} cannot take it as input")
    order: list[int] = []
    ready = sorted(i for i in range(n) if waiting[i] == 0)
    while ready:
        i = ready.pop(0)  # the earliest listed ready layer: a listed order that works stays
        order.append(i)
        for c in consumers[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
                ready.sort()
    if len(order) < n:
        stuck = [layers[i].name for i in range(n) if waiting[i] > 0]
        raise ValueError(f"the layers {', '.join(stuck)} are in or behind a cycle of inputs")
    return order
