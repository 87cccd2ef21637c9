"""Rebuild an engine model from a ``.bnn`` file, so summaries, filter analysis and the app
work on deployed models too.

Each block becomes its conv/dense layer (with the stored ±1 or float weights), its max
pool, and one batch norm that reproduces the block's epilogue. The batch norm uses
``epsilon = 2**-10`` and ``moving_variance = 1 - 2**-10`` so that its inference scale is
exactly ``gamma``; a threshold on an integer accumulator is placed half-way between two
integers, where no float rounding can move a value across it.
"""

from __future__ import annotations

import numpy as np

from ..core.layers import (Activation, Add, BatchNorm, Concatenate, Flatten, MaxPool2D,
                           QuantConv2D, QuantDense)
from ..core.model import Sequential
from ..core.shapes import conv_output_size
from .format import MODE_GE, MODE_PLUS, Block, ModelFile, ModelFileError

__all__ = ["model_from_file"]

_EPS = 2.0 ** -10


def _padding(b: Block) -> str:
    h, w, _ = b.in_shape
    kh, kw = b.kernel_size
    ho, wo, _ = b.conv_shape
    for mode in ("valid", "same"):
        oy, pt = conv_output_size(h, kh, b.stride, mode)
        ox, pl = conv_output_size(w, kw, b.stride, mode)
        if (oy, ox) == (ho, wo) and (pt, pl) == (b.pads[0], b.pads[2]):
            return mode
    raise ModelFileError(f"padding {b.pads} is neither Keras 'valid' nor 'same'; the runtime can "
                         "run this file but the engine cannot represent it")


def _bn_arrays(gamma: np.ndarray, beta: np.ndarray) -> dict[str, np.ndarray]:
    n = len(gamma)
    return {"gamma": np.asarray(gamma, np.float32), "beta": np.asarray(beta, np.float32),
            "moving_mean": np.zeros(n, np.float32),
            "moving_variance": np.full(n, 1.0 - _EPS, np.float32)}


def _kernel_sign(mf: ModelFile, b: Block, first: bool) -> float:
    """-1 where the engine's layer must hold the negated kernel, else 1.

    An integer first block accumulates raw pixels; the engine sums ``x = s * raw + o``,
    which decreases with the accumulator when ``s < 0``. The runtime max-pools the
    accumulator, so the engine, which max-pools its values, gets the negated kernel:
    its value then increases with the accumulator and both pools pick the same tap.
    """
    return -1.0 if first and b.acc == "int32" and b.pool[0] and mf.input.scale < 0 else 1.0


def _value_map(mf: ModelFile, b: Block, first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta): the engine's pre-batch-norm value is alpha * accumulator + beta."""
    n = b.out_channels
    if first and b.acc == "int32":
        s, o = float(mf.input.scale), float(mf.input.offset)
        sigma = _kernel_sign(mf, b, first)
        return np.full(n, sigma * s), sigma * o * b.weights().sum(axis=1, dtype=np.float64)
    return np.ones(n), np.zeros(n)


def _epilogue(mf: ModelFile, b: Block, first: bool) -> dict[str, np.ndarray]:
    alpha, beta = _value_map(mf, b, first)
    if b.output == "logits":
        # logits = scale * m + offset with m = (v - beta) / alpha
        gamma = b.scale.astype(np.float64) / alpha
        return _bn_arrays(gamma, b.offset.astype(np.float64) - gamma * beta)
    m = b.modes
    t = b.thresholds.astype(np.float64)
    half = 0.5 if b.acc == "int32" else 0.0
    # GE: +1 iff acc >= t, i.e. v >= value(t - half); LE: +1 iff v <= value(t + half).
    cut = np.where(m == MODE_GE, t - half, t + half)
    direction = np.where(m == MODE_GE, 1.0, -1.0) * np.sign(alpha)
    g = np.where(m >= MODE_PLUS, 0.0, direction)
    c = alpha * cut + beta
    bias = np.where(m >= MODE_PLUS, np.where(m == MODE_PLUS, 1.0, -1.0), -g * c)
    return _bn_arrays(g, bias)


def _block_layers(mf: ModelFile, b: Block, first: bool, flat: bool, tag: str = "",
                  source: str | None = None) -> tuple[list, list]:
    """The engine layers of one block (conv or dense, max pool, a batch norm computing its
    epilogue) and their arrays. With ``tag`` the layers are named after it and the first
    reads ``source`` (a graph); otherwise they are unnamed and read the layer before."""
    def named(layer, suffix, inputs=None):
        if tag:
            layer.name = f"{tag}_{suffix}"
            layer.inputs = inputs
        return layer

    spec = mf.input
    layers, states = [], []
    src = (source,) if tag else None
    quant = dict(input_quantizer=None if first else "ste_sign",
                 kernel_quantizer="ste_sign" if b.kernel == "bits" else None, use_bias=False)
    w = b.weights() * np.float32(_kernel_sign(mf, b, first))
    if b.kind == "conv2d":
        pad = float(b.pad_value)
        if first and b.acc == "int32":
            pad = float(spec.offset)  # a raw zero, in model units
            if pad not in (0.0, 1.0, -1.0):
                if any(b.pads):
                    raise ModelFileError(f"a first block pads with {pad}, which the engine cannot")
                pad = 0.0
        layer = named(QuantConv2D(b.out_channels, b.kernel_size, b.stride, _padding(b), pad,
                                  **quant), "conv", src)
        kh, kw = b.kernel_size
        kernel = w.reshape(b.out_channels, kh, kw, b.in_shape[2]).transpose(1, 2, 3, 0)
    else:
        if not flat:
            layers.append(named(Flatten(), "flatten", src))
            src = None
        layer = named(QuantDense(b.out_channels, **quant), "dense", src)
        kernel = w.T
    layers.append(layer)
    states.append((layer, {"kernel": np.ascontiguousarray(kernel)}))
    if b.pool[0]:
        layers.append(named(MaxPool2D(b.pool[0], b.pool[1]), "pool"))
    bn = named(BatchNorm(epsilon=_EPS, center=True, scale=True), "bn")
    layers.append(bn)
    states.append((bn, _epilogue(mf, b, first)))
    return layers, states


def _graph_layers(mf: ModelFile) -> tuple[list, list]:
    """The engine layers of a graph (version 2), named after their nodes (n1_conv, n2_add...)."""
    names, flats = ["input"], [len(mf.input.shape) == 1]
    layers, states = [], []
    for j, node in enumerate(mf.nodes, start=1):
        src = [names[s] for s in node.sources]
        tag = f"n{j}"
        if node.op == "block":
            b = mf.blocks[node.block]
            more, st = _block_layers(mf, b, b.input == "raw", flats[node.sources[0]], tag, src[0])
            states += st
            flat = b.kind == "dense"
        else:
            if node.op == "add":
                more = [Add(name=f"{tag}_add")]
            elif node.op == "concatenate":
                more = [Concatenate(name=f"{tag}_concatenate")]
            else:
                more = [MaxPool2D(node.pool[0], node.pool[1], name=f"{tag}_pool")]
            more[0].inputs = tuple(src)
            flat = flats[node.sources[0]]
        layers += more
        names.append(more[-1].name)
        flats.append(flat)
    return layers, states


def model_from_file(mf: ModelFile, name: str | None = None) -> Sequential:
    """An engine :class:`Sequential` that computes what the file's runtime computes.

    A model beyond the runtime's memory or work limits (:mod:`bnnlab.deploy.limits`) is
    refused with :class:`ModelFileError` before any layer is built.
    """
    from .limits import check_runtime_cost

    check_runtime_cost(mf)
    spec = mf.input
    if mf.nodes:
        layers, states = _graph_layers(mf)
    else:
        layers, states = [], []
        flat = len(spec.shape) == 1
        for i, b in enumerate(mf.blocks):
            more, st = _block_layers(mf, b, i == 0, flat)
            layers += more
            states += st
            flat = b.kind == "dense"
    layers.append(Activation("softmax"))
    model = Sequential(layers, tuple(spec.shape), name=name or mf.metadata.get("name", "bnn-model"))
    for layer, state in states:
        layer.load_state(state)
    return model
