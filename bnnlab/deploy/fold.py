"""Fold a trained :class:`~bnnlab.core.model.Sequential` into ``.bnn`` blocks.

A block is one conv or dense layer with everything up to the next one folded into it:
bias, batch norms, a max pool, flatten, and the sign that the next layer applies to its
input. Sign of an affine function of an integer accumulator is a per-channel comparison
with an integer threshold; ``docs/thresholds.md`` gives the algebra.

Rather than solve ``a * m + b >= 0`` with its own rounding, each threshold is found by
binary search on the engine's exact float32 computation (the same numpy operations the
layers perform), which is monotone in ``m``. The folded model therefore agrees with the
engine on every accumulator value, ties included, wherever the accumulator itself is
exact: in every layer whose input is binary. Only a real-valued first layer can differ,
where the engine's float sum rounds differently from the exact one (see docs/bnn-format.md).

Max pooling sits between the accumulator and the batch norm in Larq's networks. Pooling
the integers and then comparing is exact for either direction; when a batch norm with a
negative scale comes *before* the pool, max(a * z + b) = a * min(z) + b, so that
channel's weights are negated (min z = -max(-z)) and the block always max-pools.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..core.layers import Activation, BatchNorm, Flatten, MaxPool2D, QuantConv2D, _QuantBase
from ..core.model import Sequential
from .format import (
    ACC_LIMIT,
    MAX_ELEMENTS,
    MODE_GE,
    MODE_LE,
    MODE_MINUS,
    MODE_PLUS,
    Block,
    InputSpec,
    ModelFile,
    ModelFileError,
    Node,
    pack_signs,
    validate,
)

__all__ = ["ExportError", "default_input_spec", "fold_model", "input_spec_for"]


class ExportError(ValueError):
    """A model the ``.bnn`` format cannot hold; the message names the layer and the reason."""


def default_input_spec(input_shape: tuple[int, ...]) -> InputSpec:
    """Images are uint8 pixels scaled to [0, 1]; flat inputs are float32 as they are."""
    if len(input_shape) == 3:
        return InputSpec(tuple(input_shape), "uint8", float(np.float32(1 / 255)), 0.0)
    return InputSpec(tuple(input_shape), "float32", 1.0, 0.0)


def input_spec_for(input_shape: tuple[int, ...], input_scale: str = "unit",
                   kind: str | None = None) -> InputSpec:
    """The input record for a scene's ``input_scale`` ("unit" or "symmetric")."""
    kind = kind or ("image" if len(input_shape) == 3 else "points")
    if kind != "image":
        return InputSpec(tuple(input_shape), "float32", 1.0, 0.0)
    if input_scale == "symmetric":
        return InputSpec(tuple(input_shape), "uint8", float(np.float32(2 / 255)), -1.0)
    if input_scale != "unit":
        raise ExportError(f"unknown input scale {input_scale!r}; valid: unit, symmetric")
    return default_input_spec(input_shape)


# --------------------------------------------------------------------------- layer walk


@dataclass
class _Segment:
    layer: _QuantBase
    pre: list[BatchNorm] = field(default_factory=list)
    pool: MaxPool2D | None = None
    post: list[BatchNorm] = field(default_factory=list)
    flattened: bool = False


def _deterministic_binary(q) -> bool:
    return q is not None and q.binary and not q.stochastic


def _segments(model: Sequential) -> list[_Segment]:
    segs: list[_Segment] = []
    last_compute = max((i for i, ly in enumerate(model.layers) if isinstance(ly, _QuantBase)),
                       default=-1)
    if last_compute < 0:
        raise ExportError("the model has no conv or dense layer")
    for idx, layer in enumerate(model.layers):
        where = f"layer {layer.name} ({layer.type_name})"
        if isinstance(layer, _QuantBase):
            segs.append(_Segment(layer))
            continue
        if isinstance(layer, Activation):
            if layer.activation == "linear" or (layer.activation == "softmax" and idx > last_compute):
                continue  # softmax does not change the argmax; logits are the output
            raise ExportError(f"{where}: activation {layer.activation!r} cannot be folded into a "
                              "threshold; the .bnn format supports batch norm followed by sign")
        if not segs:
            if isinstance(layer, Flatten):
                continue
            raise ExportError(f"{where} comes before the first conv or dense layer; "
                              "a .bnn model starts with one")
        seg = segs[-1]
        if isinstance(layer, BatchNorm):
            if seg.flattened and _spatial_size(seg) > 1:
                raise ExportError(f"{where}: batch norm after Flatten normalizes every position "
                                  "separately; place it before Flatten")
            (seg.post if seg.pool is not None else seg.pre).append(layer)
        elif isinstance(layer, MaxPool2D):
            if seg.pool is not None or seg.flattened or not isinstance(seg.layer, QuantConv2D):
                raise ExportError(f"{where}: only one max pool after a convolution (before "
                                  "Flatten) can be folded into a block")
            seg.pool = layer
        elif isinstance(layer, Flatten):
            seg.flattened = True
        else:
            raise ExportError(f"{where}: this layer type cannot be exported")
    return segs


def _spatial_size(seg: _Segment) -> int:
    shape = (seg.pool or seg.layer).output_shape
    return shape[0] * shape[1] if len(shape) == 3 else 1


# --------------------------------------------------------------------------- engine chain


def _chain(seg: _Segment, v: np.ndarray) -> np.ndarray:
    """The engine's float32 arithmetic after the accumulator, one value per channel."""
    return _post(seg, _pre(seg, v))


def _quiet(fn):
    # The searches probe accumulators up to the float32 limit on purpose; overflow there is
    # expected and handled, not a warning for the user.
    def wrapped(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    wrapped.__doc__ = fn.__doc__
    return wrapped


def _pre(seg: _Segment, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).copy()
    if seg.layer.bias is not None:
        v += seg.layer.bias.value  # as the layer's epilogue does: z += bias
    for bn in seg.pre:
        a, b = bn.scale_offset()
        v = (v * a + b).astype(np.float32)
    return v


def _post(seg: _Segment, v: np.ndarray) -> np.ndarray:
    for bn in seg.post:
        a, b = bn.scale_offset()
        v = (v * a + b).astype(np.float32)
    return v


def _float_key(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the same order (and -0 == +0)."""
    i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _key_float(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


_MAX_KEY = int(_float_key(np.array([np.finfo(np.float32).max]))[0])


def _search(out, lo: np.ndarray, hi: np.ndarray):
    """Per channel, where the monotone boolean ``out(m)`` changes on the integers [lo, hi].

    Returns (modes, last index at the low side's value, first at the high side's value).
    """
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    at_lo, at_hi = out(lo), out(hi)
    modes = np.where(at_lo == at_hi, np.where(at_hi, MODE_PLUS, MODE_MINUS),
                     np.where(at_hi, MODE_GE, MODE_LE)).astype(np.uint8)
    left, right = lo.copy(), hi.copy()
    active = at_lo != at_hi
    while True:
        busy = active & (right - left > 1)
        if not busy.any():
            break
        mid = left + (right - left) // 2
        flip = out(mid) == at_hi
        right = np.where(busy & flip, mid, right)
        left = np.where(busy & ~flip, mid, left)
    return modes, left, right


# --------------------------------------------------------------------------- folding


def _kernel_matrix(layer: _QuantBase) -> np.ndarray:
    """(out_c, K) in the file's tap order, quantized as the engine's forward pass does."""
    w = np.asarray(layer.quantized_kernel(), np.float32)
    if isinstance(layer, QuantConv2D):
        return np.ascontiguousarray(w.transpose(3, 0, 1, 2).reshape(w.shape[3], -1))
    return np.ascontiguousarray(w.T)


def _geometry(layer: _QuantBase) -> dict:
    if not isinstance(layer, QuantConv2D):
        return {}
    h, w, _ = layer.input_shape
    ho, wo, _ = layer.output_shape
    kh, kw = layer.kernel_size
    s = layer.strides
    pt, pl = layer._pt, layer._pl
    pb = max((ho - 1) * s + kh - h - pt, 0)
    pr = max((wo - 1) * s + kw - w - pl, 0)
    return dict(kernel_size=(kh, kw), stride=s, pads=(pt, pb, pl, pr))


def _check_layer(seg: _Segment, i: int, n: int) -> None:
    layer = seg.layer
    where = f"layer {layer.name} ({layer.type_name})"
    act = layer.activation
    if act not in ("linear", "softmax") or (act == "softmax" and i != n - 1):
        raise ExportError(f"{where}: activation {act!r} cannot be folded into a threshold")
    iq, kq = layer.input_quantizer, layer.kernel_quantizer
    for what, q in (("input", iq), ("kernel", kq)):
        if q is not None and q.stochastic:
            raise ExportError(f"{where}: the {what} quantizer {q.name!r} is random; a deployed "
                              "model must be deterministic")
    if i == 0:
        if iq is not None and iq.binary:
            raise ExportError(f"{where}: the first layer binarizes the raw input; the .bnn format "
                              "reads real-valued input at the first layer")
        return
    if not _deterministic_binary(iq):
        raise ExportError(f"{where}: its input is not binarized; after the first layer every "
                          "conv or dense layer needs a sign input_quantizer (e.g. ste_sign)")
    if not _deterministic_binary(kq):
        raise ExportError(f"{where}: its kernel is not binarized; after the first layer the .bnn "
                          "format holds binary kernels only")


@_quiet
def _fold_segment(seg: _Segment, i: int, n: int, in_shape: tuple[int, int, int],
                  spec: InputSpec) -> Block:
    layer = seg.layer
    where = f"layer {layer.name} ({layer.type_name})"
    for part in (layer, *seg.pre, *seg.post):  # the stored arrays, before any sign or sqrt
        for key, arr in part.state().items():
            arr = np.asarray(arr)
            if arr.dtype.kind not in "fiu":
                raise ExportError(f"layer {part.name} ({part.type_name}): {key} holds {arr.dtype} "
                                  "values, not real numbers")
            if not np.isfinite(arr).all():
                raise ExportError(f"layer {part.name} ({part.type_name}): {key} holds NaN or "
                                  "infinity")
    for bn in (*seg.pre, *seg.post):
        a, b = bn.scale_offset()
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ExportError(f"layer {bn.name} (BatchNorm): non-finite scale or offset "
                              "(negative moving variance?)")
    if layer.bias is not None and not np.isfinite(layer.bias.value).all():
        raise ExportError(f"{where}: the bias holds NaN or infinity")
    w = _kernel_matrix(layer)
    if not np.isfinite(w).all():
        raise ExportError(f"{where}: the kernel holds NaN or infinity")
    out_c, k = w.shape
    bits = _deterministic_binary(layer.kernel_quantizer)
    geo = _geometry(layer)
    pad_value = float(getattr(layer, "pad_values", 0.0))
    padded = any(geo.get("pads", (0,)))
    first = i == 0
    if first:
        int_acc = (bits and spec.encoding == "uint8" and 255 * k <= ACC_LIMIT
                   and (not padded or pad_value == spec.offset))
    else:
        int_acc = True
    # Padding of a raw integer accumulator is a raw zero, i.e. the input offset in model
    # space; the check above makes that equal to the layer's own pad value.
    block_pad = 0 if (first and int_acc) else int(pad_value)

    # value(m): the engine's accumulator (before bias) for stored accumulator m.
    s, o = float(spec.scale), float(spec.offset)
    wsum = w.sum(axis=1, dtype=np.float64)
    if not first:
        lo, hi = -k, k

        def value(m):
            return m.astype(np.float32)
    elif int_acc:
        lo, hi = -255 * k, 255 * k

        def value(m):
            return (s * m.astype(np.float64) + o * wsum).astype(np.float32)
    else:
        lo, hi = -_MAX_KEY, _MAX_KEY

        def value(m):  # float accumulators are searched through their ordered bit patterns
            return _key_float(m)

    lo_a = np.full(out_c, lo, np.int64)
    hi_a = np.full(out_c, hi, np.int64)
    if first and not int_acc:
        # Search only where the engine's arithmetic stays finite: beyond, an overflow to
        # infinity times a zero scale is NaN and would hide the channel's real behaviour.
        # 2**23 keys down halves the magnitude.
        for _ in range(256):
            bad = ~(np.isfinite(_chain(seg, value(hi_a))) & np.isfinite(_chain(seg, value(lo_a))))
            if not bad.any():
                break
            hi_a[bad] -= 1 << 23
            lo_a = -hi_a
    # Negate the channels whose pre-pool map is decreasing, so that max-pooling stays right.
    sigma = np.ones(out_c, np.float64)
    if seg.pool is not None:
        sigma[_pre(seg, value(lo_a)) > _pre(seg, value(hi_a))] = -1.0

    def engine(m):
        return _chain(seg, value((sigma * m).astype(np.int64)))

    common = dict(
        kind="conv2d" if isinstance(layer, QuantConv2D) else "dense",
        input="raw" if first else "bits", kernel="bits" if bits else "float32",
        acc="int32" if int_acc else "float32", in_shape=tuple(in_shape), out_channels=out_c,
        pad_value=block_pad, pool=(seg.pool.pool_size, seg.pool.strides) if seg.pool else (0, 0),
        **geo)
    wf = (w * sigma[:, None].astype(np.float32)).astype(np.float32)
    kdata = pack_signs(wf) if bits else wf
    if i < n - 1:
        modes, left, right = _search(lambda m: engine(m) >= 0, lo_a, hi_a)
        t = np.where(modes == MODE_GE, right, np.where(modes == MODE_LE, left, 0))
        if int_acc:
            thr = t.astype(np.int32)
        else:
            thr = np.where(modes >= MODE_PLUS, np.float32(0), _key_float(t)).astype(np.float32)
        return Block(kernel_data=kdata, output="bits", modes=modes, thresholds=thr, **common)
    # Logits: compose value map, bias and batch norms into one float affine map per channel.
    if not first:
        alpha, beta = sigma.copy(), np.zeros(out_c)
    elif int_acc:
        alpha, beta = sigma * s, o * wsum
    else:
        alpha, beta = sigma.copy(), np.zeros(out_c)
    if layer.bias is not None:
        beta = beta + layer.bias.value.astype(np.float64)
    for bn in (*seg.pre, *seg.post):
        a, b = (x.astype(np.float64) for x in bn.scale_offset())
        alpha, beta = alpha * a, beta * a + b
    with np.errstate(over="ignore"):
        scale, offset = alpha.astype(np.float32), beta.astype(np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(offset).all()):
        raise ExportError(f"{where}: the folded logit scale or offset overflows float32")
    return Block(kernel_data=kdata, output="logits", scale=scale, offset=offset, **common)


def fold_model(model: Sequential, input_spec: InputSpec | None = None,
               class_names=(), metadata: dict[str, str] | None = None) -> ModelFile:
    """The ``.bnn`` record of ``model``; :class:`ExportError` names what cannot be held."""
    spec = input_spec or default_input_spec(model.input_shape)
    if tuple(spec.shape) != tuple(model.input_shape):
        raise ExportError(f"input record shape {spec.shape} differs from the model's "
                          f"{model.input_shape}")
    if model.is_graph:
        return _checked(_fold_graph(model, spec), class_names, metadata)
    segs = _segments(model)
    for i, seg in enumerate(segs):
        _check_layer(seg, i, len(segs))
    shape = tuple(model.input_shape)
    in_shape = shape if len(shape) == 3 else (1, 1, shape[0])
    blocks = []
    for i, seg in enumerate(segs):
        if math.prod(in_shape) > MAX_ELEMENTS:
            raise ExportError(f"layer {seg.layer.name}: input {in_shape} is too large")
        b = _fold_segment(seg, i, len(segs), in_shape, spec)
        blocks.append(b)
        in_shape = b.out_shape
    return _checked(ModelFile(spec, tuple(blocks)), class_names, metadata)


def _checked(mf: ModelFile, class_names, metadata) -> ModelFile:
    names = tuple(str(c) for c in class_names)
    mf = dataclasses.replace(mf, class_names=names,
                             metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    try:
        validate(mf)
    except ModelFileError as exc:
        raise ExportError(str(exc)) from None
    return mf


# --------------------------------------------------------------------------- graphs


def _chain_after(model: Sequential, readers, idx: int, seg: _Segment, absorbed: set) -> int:
    """Fold into ``seg`` the batch norms, max pool and flatten that only it feeds; returns
    the index of the last layer folded (whose output is the block's)."""
    last = idx
    final = len(model.layers) - 1
    while len(readers[last]) == 1:
        nxt = readers[last][0]
        layer = model.layers[nxt]
        if model.sources[nxt] != (last,):
            break
        if isinstance(layer, BatchNorm) and not seg.flattened:
            (seg.post if seg.pool is not None else seg.pre).append(layer)
        elif (isinstance(layer, MaxPool2D) and seg.pool is None and not seg.flattened
              and isinstance(seg.layer, QuantConv2D)):
            seg.pool = layer
        elif isinstance(layer, Flatten):
            seg.flattened = True
        elif isinstance(layer, Activation) and (layer.activation == "linear" or (
                layer.activation == "softmax" and nxt == final)):
            pass
        else:
            break
        absorbed.add(nxt)
        last = nxt
    return last


def _fold_graph(model: Sequential, spec: InputSpec) -> ModelFile:
    """A graph model as version 2 nodes: each conv or dense layer with the batch norms and
    pooling only it feeds is a block, whose output is bits when every reader binarizes it
    and float values otherwise; Add, Concatenate and max pooling of float tensors are
    nodes of their own; Flatten and a final softmax change nothing."""
    n_layers = len(model.layers)
    readers: list[list[int]] = [[] for _ in range(n_layers)]
    for i, src in enumerate(model.sources):
        for s in src:
            if s >= 0:
                readers[s].append(i)
    shape0 = tuple(model.input_shape)
    # per engine layer output: (node number, kind, shape); -1 is the input (node 0)
    out = {-1: (0, "raw", shape0 if len(shape0) == 3 else (1, 1, shape0[0]))}
    nodes: list[Node] = []
    blocks = []
    absorbed: set = set()
    for idx, layer in enumerate(model.layers):
        if idx in absorbed:
            continue
        where = f"layer {layer.name} ({layer.type_name})"
        srcs = [out[s] for s in model.sources[idx]]
        if isinstance(layer, _QuantBase):
            seg = _Segment(layer)
            last = _chain_after(model, readers, idx, seg, absorbed)
            node_src, kind, in_shape = srcs[0]
            bits_out = last != n_layers - 1 and all(
                isinstance(model.layers[r], _QuantBase)
                and _deterministic_binary(model.layers[r].input_quantizer) for r in readers[last])
            pos = 0 if kind == "raw" else 1  # its place as _check_layer and _fold_segment see it
            n = pos + (2 if bits_out else 1)
            _check_layer(seg, pos, n)
            if math.prod(in_shape) > MAX_ELEMENTS:
                raise ExportError(f"{where}: input {in_shape} is too large")
            b = _fold_segment(seg, pos, n, in_shape, spec)
            if kind == "values":
                b = dataclasses.replace(b, input="signs")
            blocks.append(b)
            nodes.append(Node("block", (node_src,), len(blocks) - 1))
            out[last] = (len(nodes), "bits" if bits_out else "values", b.out_shape)
            continue
        if isinstance(layer, Flatten) or (isinstance(layer, Activation) and (
                layer.activation == "linear" or (layer.activation == "softmax"
                                                 and idx == n_layers - 1))):
            out[idx] = srcs[0]  # NHWC order is already the flat order
            continue
        if any(kind != "values" for _, kind, _ in srcs):
            raise ExportError(f"{where}: in a .bnn graph it must read float tensors (outputs of "
                              "conv or dense layers and their batch norms, sums, poolings), "
                              "not the raw input or binary activations")
        shapes = [sh for _, _, sh in srcs]
        if layer.merge:
            op = "add" if layer.type_name == "Add" else "concatenate"
            shape = shapes[0] if op == "add" else (*shapes[0][:2], sum(sh[2] for sh in shapes))
            nodes.append(Node(op, tuple(nd for nd, _, _ in srcs)))
        elif isinstance(layer, MaxPool2D):
            nodes.append(Node("maxpool", (srcs[0][0],), pool=(layer.pool_size, layer.strides)))
            shape = layer.output_shape
        else:
            raise ExportError(f"{where}: this layer type cannot be exported in a graph; "
                              "a .bnn graph holds conv and dense blocks, Add, Concatenate, "
                              "max pooling and Flatten")
        out[idx] = (len(nodes), "values", tuple(shape))
    final = out[n_layers - 1]
    if final[0] != len(nodes) or nodes[-1].op != "block":
        raise ExportError("the model must end with a conv or dense layer (and its batch norms) "
                          "for the logits")
    return ModelFile(spec, tuple(blocks), nodes=tuple(nodes))
