"""Layers with forward and backward side by side, in NHWC layout with Keras kernel layouts.

Binary layers (both input and kernel binarized) run their forward pass on bit-packed
XNOR-popcount kernels; the backward pass uses the straight-through estimators of the
binarizers and float BLAS products. Kernels are stored as *latent* real-valued weights:
conv ``(kh, kw, cin, cout)``, dense ``(in, out)``, exactly as Keras/Larq store them.

The base class lives in :mod:`.layer_base` and the layers that are never binarized
(batch norm, pooling, flatten, activation) in :mod:`.plain_layers`; this module holds the
convolution and dense layers and makes any layer from its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels as K
from .binarizers import ApproxSign, Binarizer, Sign, SteSign, SwishSign, get_binarizer
from .layer_types import canonical_type
from .layer_base import ACTIVATIONS, CONSTRAINTS, Layer, Param, _count  # noqa: F401 (re-exported)
from .graph import check_inputs_value
from .merge_layers import Add, Concatenate
from .plain_layers import Activation, BatchNorm, Flatten, MaxPool2D
from .shapes import conv_output_size

__all__ = [
    "Param",
    "Layer",
    "PackedKernel",
    "QuantConv2D",
    "Conv2D",
    "QuantDense",
    "Dense",
    "BatchNorm",
    "MaxPool2D",
    "Flatten",
    "Activation",
    "Add",
    "Concatenate",
    "layer_from_config",
    "layer_types",
]

# Binarizers whose forward pass is exactly ``binarizers.sign``: for these the layers fuse
# the sign with the bit packing. Subclasses that override ``forward`` are not included.
_SIGN_FORWARDS = frozenset(cls.forward for cls in (Sign, SteSign, ApproxSign, SwishSign))


def _is_plain_sign(q: Binarizer | None) -> bool:
    return q is not None and type(q).forward in _SIGN_FORWARDS


def _is_plain_ste(q: Binarizer | None) -> bool:
    """True when ``q.backward(x, dy)`` is exactly ``dy * (|x| <= q.clip_value)``."""
    t = type(q)
    return (q is not None and isinstance(q, SteSign) and t.grad is SteSign.grad
            and t.backward is Binarizer.backward)


@dataclass(frozen=True)
class PackedKernel:
    """A binary layer's kernel as its binary product reads it: the packed signs ``bt``
    ((words_for(fan_in), units), the B of ``xnor_gemm``), their nibble ``panels``
    (``kernels.gemm_panels``, made once for many products; None: the GEMM decides per
    call) and, for a convolution with zero padding, the ``corr`` to subtract (else None)."""

    bt: np.ndarray
    panels: np.ndarray | None = None
    corr: np.ndarray | None = None


def _glorot_uniform(shape, fan_in, fan_out, rng):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


class _QuantBase(Layer):
    """Shared logic of the quantized conv and dense layers."""

    def __init__(self, input_quantizer=None, kernel_quantizer=None, kernel_constraint=None,
                 use_bias=True, activation=None, name=None):
        super().__init__(name)
        self.input_quantizer: Binarizer | None = get_binarizer(input_quantizer)
        self.kernel_quantizer: Binarizer | None = get_binarizer(kernel_quantizer)
        if kernel_constraint not in (None, *CONSTRAINTS):
            raise ValueError(
                f"unknown kernel_constraint {kernel_constraint!r}; valid: {', '.join(CONSTRAINTS)}"
            )
        self.kernel_constraint = kernel_constraint
        self.use_bias = bool(use_bias)
        activation = activation or "linear"
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.kernel: Param | None = None
        self.bias: Param | None = None

    @property
    def binary(self) -> bool:
        """True when both operands are binary, so the forward pass uses XNOR-popcount."""
        iq, kq = self.input_quantizer, self.kernel_quantizer
        return iq is not None and iq.binary and kq is not None and kq.binary

    @property
    def kernel_binary(self) -> bool:
        return self.kernel_quantizer is not None and self.kernel_quantizer.binary

    def _make_params(self, shape, fan_in, fan_out, rng):
        w = _glorot_uniform(shape, fan_in, fan_out, rng)
        self.fans = (int(fan_in), int(fan_out))
        clip = 1.0 if self.kernel_constraint == "weight_clip" else None
        self.kernel = Param("kernel", w, np.zeros_like(w), binary=self.kernel_binary, clip=clip)
        if self.use_bias:
            b = np.zeros(shape[-1], np.float32)
            self.bias = Param("bias", b, np.zeros_like(b))

    def params(self):
        return [p for p in (self.kernel, self.bias) if p is not None]

    def quantized_kernel(self, rng=None) -> np.ndarray:
        kq = self.kernel_quantizer
        w = self.kernel.value
        return w if kq is None else kq.forward(w, rng)

    def _quantize_input(self, x, rng):
        iq = self.input_quantizer
        return x if iq is None else iq.forward(x, rng)

    def _epilogue(self, z):
        if self.bias is not None:
            z += self.bias.value
        if self.activation == "relu":
            self._relu_mask = z > 0
            z *= self._relu_mask
        return z

    def _epilogue_backward(self, dz):
        if self.activation == "relu":
            dz = dz * self._relu_mask
        if self.bias is not None:
            self.bias.grad[...] = dz.reshape(-1, dz.shape[-1]).sum(axis=0)
        return dz

    def _kernel_grad(self, dwq):
        kq = self.kernel_quantizer
        if kq is None:
            self.kernel.grad[...] = dwq
        elif _is_plain_ste(kq) and kq.clip_value is not None:
            self.kernel.grad[...] = K.ste_gate(self.kernel.value, dwq, kq.clip_value)
        else:
            self.kernel.grad[...] = kq.backward(self.kernel.value, dwq)

    def _packed_kernel(self, rng):
        """(wq_t, bt): the binarized kernel as (out, fan_in) float32 and its packed bits.

        bt is the (words_for(fan_in), out) layout of ``xnor_gemm``. For a plain sign the
        latent kernel is binarized and packed in one pass, already transposed.
        """
        w = self.kernel.value
        units = w.shape[-1]
        if _is_plain_sign(self.kernel_quantizer):
            wq_t, bits = K.sign_pack(np.ascontiguousarray(w.reshape(-1, units).T))
            return wq_t, np.ascontiguousarray(bits.T)
        wq = self.quantized_kernel(rng)
        wq_t = np.ascontiguousarray(wq.reshape(-1, units).T, dtype=np.float32)
        return wq_t, K.pack_weights(np.ascontiguousarray(wq_t.T))

    def product_kernel(self, wq_t, bt, panels: bool = False) -> PackedKernel:
        """:meth:`_packed_kernel`'s (wq_t, bt) as :meth:`binary_product` takes them, with
        bt's nibble panels when ``panels`` (worth it for a kernel used more than once)."""
        return PackedKernel(bt, K.gemm_panels(bt) if panels else None, self._correction(wq_t))

    def _correction(self, wq_t):
        return None

    def _input_grad(self, dxq):
        iq = self.input_quantizer
        if iq is None:
            return dxq
        if _is_plain_ste(iq) and iq.clip_value is not None:
            return K.ste_gate(self.last_input, dxq, iq.clip_value)
        return iq.backward(self.last_input, dxq)

    def _sign_and_pack(self, x, rng):
        """(xq, bits): the binarized input and its packed sign bits, last axis packed."""
        if _is_plain_sign(self.input_quantizer):
            return K.sign_pack(x)
        xq = np.ascontiguousarray(self._quantize_input(x, rng), dtype=np.float32)
        c = xq.shape[-1]
        bits = np.empty((xq.size // c, K.words_for(c)), np.uint64)
        K.pack_rows(xq.reshape(-1, c), bits)
        return xq, bits

    def config(self):
        def q(b):
            return None if b is None else b.config()

        return {
            "type": self.type_name,
            "input_quantizer": q(self.input_quantizer),
            "kernel_quantizer": q(self.kernel_quantizer),
            "kernel_constraint": self.kernel_constraint,
            "use_bias": self.use_bias,
            "activation": self.activation,
        }


class QuantConv2D(_QuantBase):
    """2-D convolution with optional input and kernel binarizers (Larq's ``QuantConv2D``).

    Input (N, H, W, C) float32; kernel (kh, kw, C, filters); output (N, Ho, Wo, filters).
    ``pad_values`` is the value "same" padding takes (0, or ±1 for binary inputs).
    """

    type_name = "QuantConv2D"
    keras_name = "quant_conv2d"

    def __init__(self, filters: int, kernel_size=3, strides=1, padding="valid",
                 pad_values=0.0, input_quantizer=None, kernel_quantizer=None,
                 kernel_constraint=None, use_bias=True, activation=None, name=None):
        super().__init__(input_quantizer, kernel_quantizer, kernel_constraint, use_bias,
                         activation, name)
        ks = kernel_size if isinstance(kernel_size, (list, tuple)) else (kernel_size, kernel_size)
        if len(ks) != 2:
            raise ValueError(f"kernel_size must be a positive int or pair, got {kernel_size!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if isinstance(pad_values, (bool, str)) or float(pad_values) not in (0.0, 1.0, -1.0):
            raise ValueError(f"pad_values must be 0, 1 or -1, got {pad_values!r}")
        self.filters = _count("filters", filters)
        self.kernel_size = (_count("kernel_size", ks[0]), _count("kernel_size", ks[1]))
        self.strides = _count("strides", strides)
        self.padding = padding
        self.pad_values = float(pad_values)

    def compute_output_shape(self, s):
        if len(s) != 3:
            raise ValueError(f"{self.type_name} needs (H, W, C) input, got {s}")
        ho, self._pt = conv_output_size(s[0], self.kernel_size[0], self.strides, self.padding)
        wo, self._pl = conv_output_size(s[1], self.kernel_size[1], self.strides, self.padding)
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.type_name}: input {s} is smaller than kernel {self.kernel_size}")
        return (ho, wo, self.filters)

    def weight_count(self, input_shape):
        kh, kw = self.kernel_size
        return kh * kw * int(input_shape[-1]) * self.filters + (self.filters if self.use_bias else 0)

    def build(self, input_shape, rng):
        out = super().build(input_shape, rng)
        kh, kw = self.kernel_size
        cin = self.input_shape[2]
        self._make_params((kh, kw, cin, self.filters), kh * kw * cin, kh * kw * self.filters, rng)
        self._pad_correction_cache = None
        return out

    @property
    def fan_in(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.input_shape[2]

    def _geometry(self):
        h, w, c = self.input_shape
        ho, wo, _ = self.output_shape
        return h, w, c, ho, wo

    def _has_padding(self):
        h, w, c, ho, wo = self._geometry()
        kh, kw = self.kernel_size
        return self.padding == "same" and ((ho - 1) * self.strides + kh > h or
                                           (wo - 1) * self.strides + kw > w)

    def _pad_correction(self, wm):
        # The packed path treats zero padding as +1; subtract what those taps added.
        # Which taps are padding depends only on the geometry, so that mask is kept.
        h, w, c, ho, wo = self._geometry()
        kh, kw = self.kernel_size
        key = (h, w, c, kh, kw, self.strides, self._pt, self._pl)
        cache = getattr(self, "_pad_correction_cache", None)
        if cache is None or cache[0] != key:
            mask = np.zeros((1, h, w, c), np.float32)
            cols = np.empty((ho * wo, kh * kw * c), np.float32)
            K.im2col(mask, kh, kw, self.strides, self._pt, self._pl, ho, wo, np.float32(1.0), cols)
            cache = self._pad_correction_cache = (key, cols)
        return K.matmul(cache[1], wm)  # (Ho*Wo, F)

    def forward(self, x, training=False, rng=None):
        n = x.shape[0]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.name}: expected input (N, {self.input_shape}), got {x.shape}")
        h, w, c, ho, wo = self._geometry()
        kh, kw = self.kernel_size
        self.last_input = x
        if self.binary:
            wq_t, bt = self._packed_kernel(rng)
            xq, pix = self._sign_and_pack(x, rng)
            z = self.binary_product(pix, n, self.product_kernel(wq_t, bt))
        else:
            # Direct convolution reading patches in place: no im2col copy and no BLAS.
            wq = self.quantized_kernel(rng)
            wq_t = np.ascontiguousarray(wq.reshape(kh * kw * c, self.filters).T, dtype=np.float32)
            xq = np.ascontiguousarray(self._quantize_input(x, rng), dtype=np.float32)
            z = np.empty((n, ho, wo, self.filters), np.float32)
            K.conv_forward_direct(xq, np.ascontiguousarray(wq, dtype=np.float32), self.strides,
                                  self._pt, self._pl, np.float32(self.pad_values), z)
        if training:
            # The binarized kernel is kept filter-major, (F, kh, kw, C), as backward reads it.
            self._xq = xq
            self._wt = wq_t.reshape(self.filters, kh, kw, c)
        return self._epilogue(z.reshape(n, ho, wo, self.filters))

    @property
    def pad_bit(self) -> int:
        """The packed value of a padded tap: 1 (-1) with ``pad_values=-1``, else 0 (+1)."""
        return 1 if self.pad_values == -1.0 else 0

    def _correction(self, wq_t) -> np.ndarray | None:
        # (Ho*Wo, F) to subtract from the packed product, or None: with zero padding the
        # packed path counts padded taps as +1 (see _pad_correction).
        if self.pad_values == 0.0 and self._has_padding():
            return self._pad_correction(wq_t.T)
        return None

    def binary_product(self, pix, n, kernel: PackedKernel) -> np.ndarray:
        """The binary convolution before the epilogue, (N*Ho*Wo, F) float32, from packed
        input pixels ``pix`` (N*H*W, words_for(C)) and the kernel (:meth:`product_kernel`)."""
        h, w, c, ho, wo = self._geometry()
        kh, kw = self.kernel_size
        a = K.pack_patches_parallel(pix, n, h, w, c, kh, kw, self.strides, self._pt,
                                    self._pl, ho, wo, self.pad_bit)
        z = np.empty((n * ho * wo, self.filters), np.float32)
        K.xnor_gemm(a, kernel.bt, kh * kw * c, out=z, panels=kernel.panels)
        corr = kernel.corr
        if corr is not None:
            z = z.reshape(n, ho * wo, self.filters)
            z -= corr[None]
        return z

    def backward(self, dy):
        n = dy.shape[0]
        h, w, c, ho, wo = self._geometry()
        kh, kw = self.kernel_size
        dz = np.ascontiguousarray(self._epilogue_backward(dy), dtype=np.float32)
        need_dx = self.need_input_grad
        # Padded taps hold pad_values, so with ±1 padding they feed the weight gradient.
        wt = self._wt
        dwt = np.empty_like(wt)
        dxq = np.empty((n, h, w, c), np.float32) if need_dx else None
        iq = self.input_quantizer
        fuse_gate = need_dx and _is_plain_ste(iq) and iq.clip_value is not None
        K.conv_backward(self._xq, wt, dz, self.strides, self._pt, self._pl, need_dx, dwt, dxq,
                        pad_value=self.pad_values, gate=self.last_input if fuse_gate else None,
                        clip=iq.clip_value if fuse_gate else 1.0)
        self._kernel_grad(dwt.transpose(1, 2, 3, 0))
        if not need_dx:
            return None
        return dxq if fuse_gate else self._input_grad(dxq)

    def config(self):
        d = super().config()
        d.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=self.strides,
                 padding=self.padding, pad_values=self.pad_values)
        return d


class Conv2D(QuantConv2D):
    """Full-precision 2-D convolution (a ``QuantConv2D`` without binarizers)."""

    type_name = "Conv2D"
    keras_name = "conv2d"

    def __init__(self, filters, kernel_size=3, strides=1, padding="valid", use_bias=True,
                 activation=None, name=None, pad_values=0.0):
        super().__init__(filters, kernel_size, strides, padding, pad_values, None, None, None,
                         use_bias, activation, name)

    def config(self):
        d = super().config()
        for key in ("input_quantizer", "kernel_quantizer", "kernel_constraint"):
            d.pop(key)
        return d


class QuantDense(_QuantBase):
    """Fully connected layer with optional binarizers (Larq's ``QuantDense``).

    Input (N, in) float32; kernel (in, units); output (N, units).
    """

    type_name = "QuantDense"
    keras_name = "quant_dense"

    def __init__(self, units: int, input_quantizer=None, kernel_quantizer=None,
                 kernel_constraint=None, use_bias=True, activation=None, name=None):
        super().__init__(input_quantizer, kernel_quantizer, kernel_constraint, use_bias,
                         activation, name)
        self.units = _count("units", units)

    def compute_output_shape(self, s):
        if len(s) != 1:
            raise ValueError(f"{self.type_name} needs a flat input, got {s}; add a Flatten layer")
        return (self.units,)

    def weight_count(self, input_shape):
        return int(input_shape[0]) * self.units + (self.units if self.use_bias else 0)

    def build(self, input_shape, rng):
        out = super().build(input_shape, rng)
        self._make_params((self.input_shape[0], self.units), self.input_shape[0], self.units, rng)
        return out

    @property
    def fan_in(self) -> int:
        return self.input_shape[0]

    def forward(self, x, training=False, rng=None):
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.name}: expected input (N, {self.input_shape}), got {x.shape}")
        self.last_input = x
        if self.binary:
            wq_t, bt = self._packed_kernel(rng)
            xq, a = self._sign_and_pack(x, rng)
            z = self.binary_product(a, x.shape[0], self.product_kernel(wq_t, bt))
        else:
            wq = self.quantized_kernel(rng)
            wq_t = np.ascontiguousarray(np.transpose(wq), dtype=np.float32)
            xq = self._quantize_input(x, rng)
            z = K.matmul(xq, wq)
        self._wq_t = wq_t  # (units, in): backward needs dz @ wq.T
        self._xq = xq
        return self._epilogue(z)

    def binary_product(self, bits, n, kernel: PackedKernel) -> np.ndarray:
        """The binary product before the epilogue, (N, units) float32, from the packed
        input rows ``bits`` (N, words_for(in)) and the kernel (:meth:`product_kernel`)."""
        z = np.empty((n, self.units), np.float32)
        K.xnor_gemm(bits, kernel.bt, self.input_shape[0], out=z, panels=kernel.panels)
        return z

    def backward(self, dy):
        dz = self._epilogue_backward(dy)
        self._kernel_grad(K.matmul(self._xq, dz, trans_a=True))
        if not self.need_input_grad:
            return None
        return self._input_grad(K.matmul(dz, self._wq_t))

    def config(self):
        d = super().config()
        d["units"] = self.units
        return d


class Dense(QuantDense):
    """Full-precision fully connected layer."""

    type_name = "Dense"
    keras_name = "dense"

    def __init__(self, units, use_bias=True, activation=None, name=None):
        super().__init__(units, None, None, None, use_bias, activation, name)

    def config(self):
        d = super().config()
        for key in ("input_quantizer", "kernel_quantizer", "kernel_constraint"):
            d.pop(key)
        return d


_LAYERS = {
    cls.type_name: cls
    for cls in (QuantConv2D, Conv2D, QuantDense, Dense, BatchNorm, MaxPool2D, Flatten, Activation,
                Add, Concatenate)
}


def layer_types() -> list[str]:
    return list(_LAYERS)


def layer_from_config(cfg: dict[str, Any]) -> Layer:
    """Make a layer from ``{"type": name, "inputs": [...], **arguments}``; errors name the
    bad field. ``inputs`` (optional) names the layers it reads (:mod:`bnnlab.core.graph`)."""
    cfg = dict(cfg)
    inputs = check_inputs_value(cfg.pop("inputs", None))
    t = cfg.pop("type", None)
    if t is None:
        raise ValueError(f"layer {cfg!r} has no 'type'")
    t = canonical_type(t) or t
    if t == "ReLU":
        t, cfg = "Activation", {"activation": "relu", **cfg}
    if t not in _LAYERS:
        raise ValueError(f"unknown layer type {t!r}; valid: {', '.join(sorted(_LAYERS))}")
    try:
        layer = _LAYERS[t](**cfg)
    except TypeError as exc:
        raise ValueError(f"layer {t}: {exc}") from None
    layer.inputs = inputs
    return layer
