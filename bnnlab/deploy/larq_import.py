"""Import a Keras/Larq model saved as HDF5 (``model.save("m.h5")``) as a bnnlab model.

The file's root attribute ``model_config`` holds the Keras JSON configuration; weights
live under ``model_weights/<layer>/`` with the names listed in each group's
``weight_names`` attribute. Only ``Sequential`` models of the layer types bnnlab has are
accepted; anything else is named in the error. ``h5py`` is an optional dependency (the
``larq`` extra) and is imported only here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..core.layers import (
    Activation,
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


def _pair(v, what: str, where: str, path) -> int:
    """Keras stores sizes as [a, a]; bnnlab layers take one square size."""
    if isinstance(v, int):
        return v
    v = list(v)
    if len(v) != 2 or v[0] != v[1]:
        _fail(path, f"{where}: only square {what} are supported, got {v}")
    return int(v[0])


def _constraint(spec) -> str | None:
    if isinstance(spec, dict) and spec.get("class_name") in ("weight_clip", "WeightClip"):
        return "weight_clip"
    if spec == "weight_clip":
        return "weight_clip"
    return None


def _layer(cls: str, cfg: dict, last: bool, path) -> Layer | None:
    name = cfg.get("name")
    where = f"layer {name!r} ({cls})"
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
        args = dict(filters=int(cfg["filters"]), kernel_size=tuple(cfg["kernel_size"]),
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
        args = dict(units=int(cfg["units"]), use_bias=bool(cfg.get("use_bias", True)),
                    activation=act, name=name)
        if cls == "Dense":
            return Dense(**args)
        return QuantDense(**args,
                          input_quantizer=_quantizer(cfg.get("input_quantizer"), where, path),
                          kernel_quantizer=_quantizer(cfg.get("kernel_quantizer"), where, path),
                          kernel_constraint=_constraint(cfg.get("kernel_constraint")))
    if cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 1, 3):  # the last axis of a flat (1) or NHWC (3) tensor
            _fail(path, f"{where}: only normalization over the channel axis is supported")
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
    if cls == "InputLayer":
        return None
    _fail(path, f"{where}: layer type {cls!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_LAYERS)}")


def _input_shape(layers_cfg: list[dict], path) -> tuple[int, ...]:
    for lc in layers_cfg:
        cfg = lc.get("config", {})
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if shape:
            return tuple(int(s) for s in shape[1:])
    _fail(path, "the model configuration has no input shape (build the model before saving)")


def _read_weights(f, layer: Layer, path) -> dict[str, np.ndarray]:
    """The layer's arrays by bnnlab name, shapes checked before anything is read."""
    group = f.get(f"model_weights/{layer.name}")
    own = layer.state()
    if not own:
        return {}
    if group is None:
        _fail(path, f"layer {layer.name!r}: no weights in model_weights/")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
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
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            _fail(path, "no model_config attribute: this is a weights-only file; save the whole "
                        "model with model.save('model.h5')")
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValueError, UnicodeDecodeError) as exc:
            _fail(path, f"model_config is not valid JSON ({exc})")
        if not isinstance(config, dict) or config.get("class_name") != "Sequential":
            kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
            _fail(path, f"only Sequential models are supported, this is {kind!r}")
        layers_cfg = config.get("config", {}).get("layers", [])
        if not isinstance(layers_cfg, list) or not layers_cfg:
            _fail(path, "the model has no layers")
        shape = _input_shape(layers_cfg, path)
        real = [lc for lc in layers_cfg if lc.get("class_name") != "InputLayer"]
        layers = []
        for i, lc in enumerate(real):
            if not isinstance(lc, dict) or "class_name" not in lc:
                _fail(path, f"layer {i}: malformed configuration")
            try:
                layer = _layer(lc["class_name"], dict(lc.get("config") or {}), i == len(real) - 1, path)
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, LarqImportError):
                    raise
                _fail(path, f"layer {lc.get('config', {}).get('name')!r} ({lc['class_name']}): {exc}")
            if layer is not None:
                layers.append(layer)
        name = config.get("config", {}).get("name") or "sequential"
        try:
            model = Sequential(layers, shape, name=name)
        except ValueError as exc:
            _fail(path, str(exc))
        total = sum(a.nbytes for layer in model.layers for a in layer.state().values())
        if total > _MAX_WEIGHT_BYTES:
            _fail(path, f"the model holds {total} bytes of weights; the limit is {_MAX_WEIGHT_BYTES}")
        for layer in model.layers:
            arrays = _read_weights(f, layer, path)
            if arrays:
                layer.load_state(arrays)
    return model
