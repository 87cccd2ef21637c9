"""Import a Keras/Larq model saved as HDF5 (``model.save("m.h5")``) as a bnnlab model.

The file's root attribute ``model_config`` holds the Keras JSON configuration; weights
live under ``model_weights/<layer>/`` with the names listed in each group's
``weight_names`` attribute. ``Sequential`` models and ``Functional`` ones (one input, one
output, each layer called once, so branches joined by ``Add`` or ``Concatenate``) of the
layer types bnnlab has are accepted; anything else is named in the error. ``h5py`` is an optional dependency (the
``larq`` extra) and is imported only here.
"""

from __future__ import annotations

import json
import os
from typing import Any

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
from ..core.layer_types import keras_names
from ..core.model import Sequential

__all__ = ["SUPPORTED_LAYERS", "LarqImportError", "import_larq"]

SUPPORTED_LAYERS = (*keras_names(), "InputLayer")

# Larq quantizer classes (and their registered string names) with a bnnlab twin.
_QUANTIZERS = {"SteSign": "ste_sign", "ste_sign": "ste_sign", "ApproxSign": "approx_sign",
               "approx_sign": "approx_sign", "SwishSign": "swish_sign", "swish_sign": "swish_sign"}
_ACTIVATIONS = ("linear", "relu", "softmax")
# Larq models may cap the weights at another bound; inference does not depend on it.
_MAX_WEIGHT_BYTES = 1 << 30
# A Keras configuration is a few kilobytes per layer.
_MAX_CONFIG_CHARS = 16 << 20


class LarqImportError(ValueError):
    """An HDF5 file that is not a Keras model bnnlab can rebuild; the message says why."""


def _fail(path, msg):
    raise LarqImportError(f"{path}: {msg}")


def _quantizer(spec, where: str, path) -> Any:
    if spec is None:
        return None
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict):
        name = spec.get("class_name")
        params = dict(spec.get("config") or {})
    else:
        _fail(path, f"{where}: cannot read quantizer {spec!r}")
    if name not in _QUANTIZERS:
        _fail(path, f"{where}: quantizer {name!r} is not supported; supported: "
                    f"{', '.join(sorted(set(_QUANTIZERS)))}")
    ours = _QUANTIZERS[name]
    if ours == "ste_sign":
        return {"name": ours, "clip_value": params.get("clip_value", 1.0)}
    if ours == "swish_sign":
        return {"name": ours, "beta": params.get("beta", 5.0)}
    return {"name": ours}


def _sizes(v, where: str, path) -> tuple:
    """A kernel size as Keras stores it, [kh, kw] (or one number), left for the layer to check."""
    if isinstance(v, list) and len(v) == 2:
        return tuple(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    _fail(path, f"{where}: kernel_size must be a pair of sizes, got {v!r}")


def _pair(v, what: str, where: str, path) -> int:
    """Keras stores sizes as [a, a]; bnnlab layers take one square size."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if not isinstance(v, list) or len(v) != 2 or v[0] != v[1]:
        _fail(path, f"{where}: only square {what} are supported, got {v!r}")
    return v[0]


def _constraint(spec) -> str | None:
    if isinstance(spec, dict) and spec.get("class_name") in ("weight_clip", "WeightClip"):
        return "weight_clip"
    if spec == "weight_clip":
        return "weight_clip"
    return None


def _layer(cls: str, cfg: dict, last: bool, path) -> Layer | None:
    name = cfg.get("name")
    where = f"layer {name!r} ({cls})"
    if name is not None and not isinstance(name, str):
        _fail(path, f"{where}: the layer name must be a string")
    if cfg.get("data_format", "channels_last") != "channels_last":
        _fail(path, f"{where}: only channels_last data is supported")
    act = cfg.get("activation", "linear")
    if cls not in ("InputLayer",) and act not in _ACTIVATIONS:
        _fail(path, f"{where}: activation {act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
    if act == "softmax" and not last:
        _fail(path, f"{where}: softmax is only supported on the last layer")
    if cls in ("QuantConv2D", "Conv2D"):
        if _pair(cfg.get("dilation_rate", 1), "dilations", where, path) != 1 or cfg.get("groups", 1) != 1:
            _fail(path, f"{where}: dilated or grouped convolutions are not supported")
        args = dict(filters=cfg["filters"], kernel_size=_sizes(cfg["kernel_size"], where, path),
                    strides=_pair(cfg.get("strides", 1), "strides", where, path),
                    padding=cfg.get("padding", "valid"), use_bias=bool(cfg.get("use_bias", True)),
                    activation=act, name=name)
        if args["padding"] not in ("valid", "same"):
            _fail(path, f"{where}: padding {args['padding']!r} is not supported")
        if cls == "Conv2D":
            return Conv2D(**args)
        return QuantConv2D(**args, pad_values=float(cfg.get("pad_values", 0.0)),
                           input_quantizer=_quantizer(cfg.get("input_quantizer"), where, path),
                           kernel_quantizer=_quantizer(cfg.get("kernel_quantizer"), where, path),
                           kernel_constraint=_constraint(cfg.get("kernel_constraint")))
    if cls in ("QuantDense", "Dense"):
        args = dict(units=cfg["units"], use_bias=bool(cfg.get("use_bias", True)),
                    activation=act, name=name)
        if cls == "Dense":
            return Dense(**args)
        return QuantDense(**args,
                          input_quantizer=_quantizer(cfg.get("input_quantizer"), where, path),
                          kernel_quantizer=_quantizer(cfg.get("kernel_quantizer"), where, path),
                          kernel_constraint=_constraint(cfg.get("kernel_constraint")))
    if cls == "BatchNormalization":  # its axis is checked once the input's rank is known
        return BatchNorm(momentum=float(cfg.get("momentum", 0.99)), epsilon=float(cfg.get("epsilon", 1e-3)),
                         center=bool(cfg.get("center", True)), scale=bool(cfg.get("scale", True)),
                         name=name)
    if cls == "MaxPooling2D":
        if cfg.get("padding", "valid") != "valid":
            _fail(path, f"{where}: only 'valid' pooling is supported")
        size = _pair(cfg.get("pool_size", 2), "pools", where, path)
        strides = cfg.get("strides")
        return MaxPool2D(size, _pair(strides, "strides", where, path) if strides else size, name=name)
    if cls == "Flatten":
        return Flatten(name=name)
    if cls == "Activation":
        return Activation(act, name=name)
    if cls == "Add":
        return Add(name=name)
    if cls == "Concatenate":  # its axis is checked once the input's rank is known
        return Concatenate(name=name)
    if cls == "InputLayer":
        return None
    _fail(path, f"{where}: layer type {cls!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_LAYERS)}")


def _input_shape(layers_cfg: list, path) -> tuple[int, ...]:
    for lc in layers_cfg:
        cfg = lc.get("config") if isinstance(lc, dict) else None
        if not isinstance(cfg, dict):
            continue
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if shape:
            dims = shape[1:] if isinstance(shape, list) else None
            if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                   for d in dims):
                _fail(path, f"the input shape {shape!r} must list positive sizes after the batch "
                            "size (only the batch size may be null)")
            return tuple(dims)
    _fail(path, "the model configuration has no input shape (build the model before saving)")


def _read_weights(f, layer: Layer, path) -> dict[str, np.ndarray]:
    """The layer's arrays by bnnlab name, shapes checked before anything is read."""
    group = f.get(f"model_weights/{layer.name}")
    own = layer.state()
    if not own:
        return {}
    if group is None or not hasattr(group, "keys"):
        _fail(path, f"layer {layer.name!r}: no weights group in model_weights/")
    raw_names = group.attrs.get("weight_names", [])
    if isinstance(raw_names, (str, bytes)) or not hasattr(raw_names, "__iter__"):
        _fail(path, f"layer {layer.name!r}: weight_names must be a list of names, got {raw_names!r}")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw_names]
    found = {}
    for full in names:
        key = full.rsplit("/", 1)[-1].split(":")[0]
        key = {"gamma": "gamma", "beta": "beta", "kernel": "kernel", "bias": "bias",
               "moving_mean": "moving_mean", "moving_variance": "moving_variance"}.get(key)
        if key is None:
            continue
        ds = group.get(full)
        if ds is None or not hasattr(ds, "shape"):
            _fail(path, f"layer {layer.name!r}: weight {full!r} is missing")
        if key not in own or tuple(ds.shape) != own[key].shape:
            _fail(path, f"layer {layer.name!r}: weight {full!r} has shape {tuple(ds.shape)}, "
                        f"expected {own[key].shape if key in own else 'none'}")
        if ds.dtype.kind not in "fiu":
            _fail(path, f"layer {layer.name!r}: weight {full!r} holds {ds.dtype} values, not real "
                        "numbers")
        arr = np.asarray(ds[()], dtype=np.float32)
        if not np.isfinite(arr).all():
            _fail(path, f"layer {layer.name!r}: weight {full!r} holds NaN or infinity")
        found[key] = arr
    missing = sorted(set(own) - set(found))
    if missing:
        _fail(path, f"layer {layer.name!r}: weights {', '.join(missing)} are missing")
    return found


def import_larq(path: str | os.PathLike) -> Sequential:
    """A bnnlab :class:`Sequential` with the weights of a Keras/Larq ``.h5`` model."""
    path = os.fspath(path)
    try:
        import h5py
    except ImportError:
        raise LarqImportError("reading .h5 models needs h5py: pip install 'bnnlab[larq]'") from None
    if not os.path.isfile(path):
        _fail(path, "no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        _fail(path, f"not an HDF5 file ({exc})")
    try:
        with f:
            return _import(f, path)
    except OSError as exc:  # HDF5 reports damage inside the file when a part is read
        _fail(path, f"damaged HDF5 file ({exc})")
    except (RecursionError, MemoryError):
        _fail(path, "model_config is nested too deeply or too large to read")


def _import(f, path: str) -> Sequential:
    raw = f.attrs.get("model_config")
    if raw is None:
        _fail(path, "no model_config attribute: this is a weights-only file; save the whole "
                    "model with model.save('model.h5')")
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if not isinstance(raw, (str, bytes)):
        _fail(path, f"model_config must be a JSON string, not {type(raw).__name__}")
    if len(raw) > _MAX_CONFIG_CHARS:
        _fail(path, f"model_config holds {len(raw):,} characters; the limit is {_MAX_CONFIG_CHARS:,}")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(path, f"model_config is not valid JSON ({exc})")
    kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
    if kind not in ("Sequential", "Functional", "Model"):
        _fail(path, f"only Sequential and Functional models are supported, this is {kind!r}")
    body = config.get("config", {})
    if not isinstance(body, dict):
        _fail(path, f"model_config: the {kind}'s config must be an object, not "
                    f"{type(body).__name__}")
    layers_cfg = body.get("layers", [])
    if not isinstance(layers_cfg, list) or not layers_cfg:
        _fail(path, "the model has no layers")
    for i, lc in enumerate(layers_cfg):
        if not isinstance(lc, dict) or not isinstance(lc.get("class_name"), str) \
                or not isinstance(lc.get("config", {}), dict):
            _fail(path, f"layer {i}: malformed configuration (expected an object with a "
                        "class_name and a config object)")
    shape = _input_shape(layers_cfg, path)
    real = [lc for lc in layers_cfg if lc["class_name"] != "InputLayer"]
    wiring = _functional_wiring(body, layers_cfg, path) if kind != "Sequential" else None
    if wiring is not None:  # the output goes last: bnnlab's model output is its last layer
        real.sort(key=lambda lc: lc.get("name") == wiring[1])
    layers, axes = [], {}
    for i, lc in enumerate(real):
        cfg = dict(lc.get("config") or {})
        try:
            layer = _layer(lc["class_name"], cfg, i == len(real) - 1, path)
        except LarqImportError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            _fail(path, f"layer {cfg.get('name')!r} ({lc['class_name']}): {exc}")
        if layer is not None:
            if wiring is not None:
                layer.inputs = wiring[0][lc.get("name")]
            layers.append(layer)
            if isinstance(layer, (BatchNorm, Concatenate)):
                axes[id(layer)] = cfg.get("axis", -1)
    name = body.get("name") or "sequential"
    try:
        # The size limit is checked from the shapes, before any weight is allocated.
        model = Sequential(layers, shape, name=str(name), max_weight_bytes=_MAX_WEIGHT_BYTES)
    except ValueError as exc:
        _fail(path, str(exc))
    for layer in model.layers:
        if id(layer) in axes:
            _check_axis(layer, axes[id(layer)], path)
    for layer in model.layers:
        arrays = _read_weights(f, layer, path)
        if arrays:
            layer.load_state(arrays)
    return model


def _check_axis(layer: BatchNorm | Concatenate, axis, path) -> None:
    """bnnlab normalizes and concatenates over the last (channel) axis; Keras counts the
    batch axis as 0."""
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    last = len(layer.input_shape)  # the channel axis, counting the batch axis
    keras = "BatchNormalization" if isinstance(layer, BatchNorm) else "Concatenate"
    if axis not in (-1, last):
        _fail(path, f"layer {layer.name!r} ({keras}): axis {axis!r} of a "
                    f"{last + 1}-D tensor; only the channel axis ({last} or -1) is supported")


def _functional_wiring(body: dict, layers_cfg: list, path) -> tuple[dict[str, tuple[str, ...]], str]:
    """({layer name: names of its inputs}, output name) of a Functional configuration.

    Keras 2 lists each layer's calls in ``inbound_nodes``: one list per call of
    ``[layer name, call index, output index, keyword arguments]``, one per input tensor.
    bnnlab models have one input and one output, and call every layer once.
    """
    def ends(key):
        v = body.get(key)
        if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
            v = [v]  # Keras writes a single tensor without the outer list
        if not isinstance(v, list) or len(v) != 1 or not isinstance(v[0], list) \
                or not v[0] or not isinstance(v[0][0], str):
            _fail(path, f"model_config: {key} must name exactly one layer, got {v!r}")
        return v[0][0]

    source, output = ends("input_layers"), ends("output_layers")
    inputs: dict[str, tuple[str, ...]] = {}
    for lc in layers_cfg:
        name = lc.get("name", (lc.get("config") or {}).get("name"))
        if not isinstance(name, str):
            _fail(path, f"a {lc['class_name']} layer has no name")
        nodes = lc.get("inbound_nodes")
        if lc["class_name"] == "InputLayer":
            if name != source:
                _fail(path, f"input layer {name!r} is not the model input {source!r}; only "
                            "models with one input are supported")
            continue
        if not isinstance(nodes, list) or len(nodes) != 1 or not isinstance(nodes[0], list) \
                or not nodes[0]:
            _fail(path, f"layer {name!r}: it must be called exactly once (shared layers are not "
                        f"supported), its inbound_nodes are {nodes!r}")
        names = []
        for t in nodes[0]:
            if not isinstance(t, list) or len(t) < 3 or not isinstance(t[0], str) \
                    or t[1:3] != [0, 0]:
                _fail(path, f"layer {name!r}: cannot read the inbound tensor {t!r}")
            names.append(INPUT if t[0] == source else t[0])
        inputs[name] = tuple(names)
    if output not in inputs:
        _fail(path, f"model_config: the output layer {output!r} is not among the layers")
    return inputs, output
