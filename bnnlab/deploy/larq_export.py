"""Write a bnnlab model as a Keras 2 / Larq HDF5 model file, without TensorFlow.

The file has the layout ``model.save("m.h5")`` gives in Keras 2.15 with Larq 0.14: the
root attribute ``model_config`` holds the model's JSON configuration (Larq's layer,
quantizer and constraint classes by their registered names), and the arrays lie under
``model_weights/<layer>/<layer>/<name>:0``, listed in Keras's order in each group's
``weight_names`` attribute. ``tf.keras.models.load_model(path)`` rebuilds it once larq is
imported (Larq registers its classes with Keras), and ``import_larq`` reads it back.

Kernels are written as bnnlab holds them: the latent float32 weights in Keras layout,
conv ``(kh, kw, cin, cout)`` and dense ``(in, out)``. A model read from a ``.bnn`` file has
only the signs of its binary kernels (as +-1) and folded batch-norm statistics, which
predict the same in Larq. The model takes its inputs as bnnlab's does, already scaled as
the scene says (pixels in [0, 1] for ``input_scale = "unit"``).

Only what Larq has a counterpart for is written; anything else (``stochastic_sign``,
``hard_tanh``, the zero-gradient ``sign``) is refused with the layer's name.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from ..core.graph import INPUT
from ..core.layers import (
    Activation,
    Add,
    Concatenate,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    QuantConv2D,
    QuantDense,
)
from ..core.model import Sequential
from ..io.atomic import write_atomic

__all__ = ["KERAS_VERSION", "LarqExportError", "keras_config", "write_larq_h5"]

KERAS_VERSION = "2.15.0"  # the Keras 2 release the files are written for


class LarqExportError(ValueError):
    """A model that has no Keras/Larq form; the message names the layer and the reason."""


def _object(module: str, class_name: str, config: dict, registered: str | None = None) -> dict:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": registered}


def _initializer(name: str) -> dict:
    return _object("keras.initializers", name, {"seed": None} if name == "GlorotUniform" else {})


class _Names:
    """Unique names for the quantizer sub-layers, as Keras numbers them (ste_sign, ste_sign_1)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


def _quantizer(q, layer: Layer, names: _Names) -> dict | None:
    if q is None or q.name == "identity":
        return None  # Keras without a quantizer is the identity, forward and backward
    common = {"trainable": True, "dtype": "float32"}
    if q.name == "ste_sign":
        cfg = {"name": names("ste_sign"), **common, "clip_value": q.clip_value}
        return _object("larq.quantizers", "SteSign", cfg, "SteSign")
    if q.name == "approx_sign":
        return _object("larq.quantizers", "ApproxSign",
                       {"name": names("approx_sign"), **common}, "ApproxSign")
    if q.name == "swish_sign":
        cfg = {"name": names("swish_sign"), **common, "beta": float(q.beta)}
        return _object("larq.quantizers", "SwishSign", cfg, "SwishSign")
    raise LarqExportError(f"layer {layer.name!r}: the quantizer {q.name!r} has no Larq "
                          "counterpart; use ste_sign, approx_sign, swish_sign or identity")


def _base(layer: Layer) -> dict:
    return {"name": layer.name, "trainable": True, "dtype": "float32"}


def _conv_or_dense(layer, names: _Names) -> tuple[str, str, dict]:
    quant = layer.type_name in ("QuantConv2D", "QuantDense")  # Conv2D, Dense are subclasses
    cfg = _base(layer)
    if isinstance(layer, (QuantConv2D, Conv2D)):
        cls = "QuantConv2D" if quant else "Conv2D"
        cfg.update(filters=layer.filters, kernel_size=list(layer.kernel_size),
                   strides=[layer.strides, layer.strides] if isinstance(layer.strides, int)
                   else list(layer.strides),
                   padding=layer.padding, data_format="channels_last", dilation_rate=[1, 1],
                   groups=1)
    else:
        cls = "QuantDense" if quant else "Dense"
        cfg.update(units=layer.units)
    cfg.update(activation=layer.activation, use_bias=layer.use_bias,
               kernel_initializer=_initializer("GlorotUniform"),
               bias_initializer=_initializer("Zeros"), kernel_regularizer=None,
               bias_regularizer=None, activity_regularizer=None)
    clip = layer.kernel.clip if quant else None
    cfg["kernel_constraint"] = (None if clip is None else _object(
        "larq.constraints", "weight_clip", {"clip_value": clip}, "weight_clip"))
    cfg["bias_constraint"] = None
    if quant:
        if cls == "QuantConv2D":
            cfg["pad_values"] = float(layer.pad_values)
        # Keras names the kernel's quantizer first, as Larq builds it first.
        kernel_q = _quantizer(layer.kernel_quantizer, layer, names)
        cfg["input_quantizer"] = _quantizer(layer.input_quantizer, layer, names)
        cfg["kernel_quantizer"] = kernel_q
        return "larq.layers", cls, cfg
    return "keras.layers", cls, cfg


def _layer_config(layer: Layer, names: _Names) -> dict:
    if isinstance(layer, (QuantConv2D, Conv2D, QuantDense, Dense)):
        module, cls, cfg = _conv_or_dense(layer, names)
        return _object(module, cls, cfg, cls if module == "larq.layers" else None)
    cfg = _base(layer)
    if isinstance(layer, BatchNorm):
        cfg.update(axis=[len(layer.input_shape)], momentum=layer.momentum,
                   epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
                   beta_initializer=_initializer("Zeros"), gamma_initializer=_initializer("Ones"),
                   moving_mean_initializer=_initializer("Zeros"),
                   moving_variance_initializer=_initializer("Ones"), beta_regularizer=None,
                   gamma_regularizer=None, beta_constraint=None, gamma_constraint=None)
        return _object("keras.layers", "BatchNormalization", cfg)
    if isinstance(layer, MaxPool2D):
        cfg.update(pool_size=[layer.pool_size] * 2, padding="valid",
                   strides=[layer.strides] * 2, data_format="channels_last")
        return _object("keras.layers", "MaxPooling2D", cfg)
    if isinstance(layer, Flatten):
        cfg["data_format"] = "channels_last"
        return _object("keras.layers", "Flatten", cfg)
    if isinstance(layer, Activation):
        cfg["activation"] = layer.activation
        return _object("keras.layers", "Activation", cfg)
    if isinstance(layer, Add):
        return _object("keras.layers", "Add", cfg)
    if isinstance(layer, Concatenate):
        cfg["axis"] = -1
        return _object("keras.layers", "Concatenate", cfg)
    raise LarqExportError(f"layer {layer.name!r}: {layer.type_name} has no Keras counterpart here")


# Keras's order of each layer's variables (it loads them by position).
_WEIGHT_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def _weights(layer: Layer) -> list[tuple[str, np.ndarray]]:
    state = layer.state()
    unknown = set(state) - set(_WEIGHT_ORDER)
    if unknown:
        raise LarqExportError(f"layer {layer.name!r}: arrays {sorted(unknown)} have no Keras place")
    return [(k, np.ascontiguousarray(state[k], dtype=np.float32)) for k in _WEIGHT_ORDER
            if k in state]


def keras_config(model: Sequential) -> dict:
    """The Keras 2 configuration of ``model`` as ``model.save`` stores it in ``model_config``."""
    if model.is_graph:
        return _functional_config(model)
    names = _Names()
    first = model.layers[0].name if model.layers else "input"
    shape = [None, *model.input_shape]
    layers = [_object("keras.layers", "InputLayer", {
        "batch_input_shape": shape, "dtype": "float32", "sparse": False, "ragged": False,
        "name": f"{first}_input"})]
    for i, layer in enumerate(model.layers):
        cfg = _layer_config(layer, names)
        if i == 0:
            cfg["config"]["batch_input_shape"] = shape
        layers.append(cfg)
    return {"class_name": "Sequential", "config": {"name": model.name, "layers": layers}}


def _functional_config(model: Sequential) -> dict:
    """A graph model as a Keras 2 Functional configuration: each layer lists the layers it
    is called on in ``inbound_nodes`` (one call, single-output layers: indices 0, 0)."""
    names = _Names()
    taken = {layer.name for layer in model.layers}
    source = next(n for n in ("input_1", *(f"input_{k}" for k in range(2, len(taken) + 3)))
                  if n not in taken)
    layers = [dict(_object("keras.layers", "InputLayer", {
        "batch_input_shape": [None, *model.input_shape], "dtype": "float32", "sparse": False,
        "ragged": False, "name": source}), name=source, inbound_nodes=[])]
    for i, layer in enumerate(model.layers):
        calls = [[source if n == INPUT else n, 0, 0, {}] for n in model.input_names(i)]
        layers.append(dict(_layer_config(layer, names), name=layer.name, inbound_nodes=[calls]))
    return {"class_name": "Functional", "config": {
        "name": model.name, "trainable": True, "layers": layers,
        "input_layers": [[source, 0, 0]], "output_layers": [[model.layers[-1].name, 0, 0]]}}


def _check_names(model: Sequential) -> None:
    seen = set()
    for layer in model.layers:
        if not layer.name or "/" in layer.name or layer.name in seen:
            raise LarqExportError(f"layer name {layer.name!r} is empty, repeated or holds '/'")
        seen.add(layer.name)


def h5_bytes(model: Sequential) -> bytes:
    """The whole ``.h5`` file for ``model``, in memory."""
    try:
        import h5py
    except ImportError:
        raise LarqExportError("writing .h5 models needs h5py: pip install 'bnnlab[larq]'") from None
    _check_names(model)
    config = keras_config(model)
    per_layer = [(layer.name, _weights(layer)) for layer in model.layers]
    for name, weights in per_layer:
        for key, arr in weights:
            if not np.isfinite(arr).all():
                raise LarqExportError(f"layer {name!r}: {key} holds NaN or infinity")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["model_config"] = json.dumps(config)
        group = f.create_group("model_weights")
        group.attrs["backend"] = "tensorflow"
        group.attrs["keras_version"] = KERAS_VERSION
        group.attrs["layer_names"] = [name.encode() for name, _ in per_layer]
        for name, weights in per_layer:
            g = group.create_group(name)
            full = [f"{name}/{key}:0" for key, _ in weights]
            g.attrs["weight_names"] = [n.encode() for n in full] if full else np.zeros(0)
            for n, (_, arr) in zip(full, weights):
                g.create_dataset(n, data=arr)
    return buf.getvalue()


def write_larq_h5(model: Sequential, path: str | os.PathLike) -> int:
    """Write ``model`` as a Keras/Larq ``.h5`` file (atomically); returns its size in bytes."""
    data = h5_bytes(model)
    write_atomic(path, lambda f: f.write(data), suffix=".h5")
    return len(data)
