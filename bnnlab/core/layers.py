"""Layers with forward and backward side by side, in NHWC layout with Keras kernel layouts.

Binary layers (both input and kernel binarized) run their forward pass on bit-packed
XNOR-popcount kernels; the backward pass uses the straight-through estimators of the
binarizers and float BLAS products. Kernels are stored as *latent* real-valued weights:
conv ``(kh, kw, cin, cout)``, dense ``(in, out)``, exactly as Keras/Larq store them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels as K
from .binarizers import ApproxSign, Binarizer, Sign, SteSign, SwishSign, get_binarizer
from .layer_types import canonical_type
from .shapes import conv_output_size

__all__ = [
    "Param",
    "Layer",
    "QuantConv2D",
    "Conv2D",
    "QuantDense",
    "Dense",
    "BatchNorm",
    "MaxPool2D",
    "Flatten",
    "Activation",
    "layer_from_config",
    "layer_types",
]

CONSTRAINTS = ("weight_clip",)
ACTIVATIONS = ("linear", "relu", "softmax")


@dataclass
class Param:
    """A trainable array, its gradient, and what the optimizer must know about it."""

    name: str
    value: np.ndarray
    grad: np.ndarray
    binary: bool = False  # latent weights of a binarized kernel (Bop flips these)
    clip: float | None = None  # weight_clip bound applied after each update
    lr_scale: float = 1.0  # this array's learning rate is the optimizer's times this

    def apply_constraint(self) -> None:
        if self.clip is not None:
            np.clip(self.value, -self.clip, self.clip, out=self.value)


def _count(name: str, value: Any) -> int:
    """A positive whole number from a config; 16.5, True or "16" are refused, never rounded."""
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not whole and isinstance(value, (float, np.floating)) and float(value).is_integer():
        whole = True
    if not whole or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Layer:
    """Base layer: ``build`` fixes shapes, ``forward``/``backward`` move data and gradients."""

    type_name = "Layer"
    keras_name = "layer"  # the name stem Keras gives such a layer, for summaries

    def __init__(self, name: str | None = None):
        self.name = name
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.need_input_grad = True
        self.last_input: np.ndarray | None = None

    # -- structure
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def weight_count(self, input_shape: tuple[int, ...]) -> int:
        """How many numbers ``state()`` will hold once built on ``input_shape`` (no allocation)."""
        return 0

    def params(self) -> list[Param]:
        return []

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved in checkpoints (e.g. running statistics)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        d = {p.name: p.value for p in self.params()}
        d.update(self.buffers())
        return d

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        own = self.state()
        for key, arr in own.items():
            if key not in state:
                raise ValueError(f"layer {self.name}: checkpoint lacks array {key!r}")
            new = np.asarray(state[key])
            if new.shape != arr.shape:
                raise ValueError(
                    f"layer {self.name}: array {key!r} has shape {new.shape}, expected {arr.shape}"
                )
            arr[...] = new

    def config(self) -> dict[str, Any]:
        return {"type": self.type_name}

    # -- computation
    def forward(self, x: np.ndarray, training: bool = False, rng=None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def __repr__(self):
        return f"{self.type_name}({self.name})"


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
            pad_bit = 1 if self.pad_values == -1.0 else 0
            wq_t, bt = self._packed_kernel(rng)
            xq, pix = self._sign_and_pack(x, rng)
            a = K.pack_patches_parallel(pix, n, h, w, c, kh, kw, self.strides, self._pt,
                                        self._pl, ho, wo, pad_bit)
            z = np.empty((n * ho * wo, self.filters), np.float32)
            K.xnor_gemm(a, bt, kh * kw * c, out=z)
            if self.pad_values == 0.0 and self._has_padding():
                z = z.reshape(n, ho * wo, self.filters)
                z -= self._pad_correction(wq_t.T)[None]
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
            z = np.empty((x.shape[0], self.units), np.float32)
            K.xnor_gemm(a, bt, self.input_shape[0], out=z)
        else:
            wq = self.quantized_kernel(rng)
            wq_t = np.ascontiguousarray(np.transpose(wq), dtype=np.float32)
            xq = self._quantize_input(x, rng)
            z = K.matmul(xq, wq)
        self._wq_t = wq_t  # (units, in): backward needs dz @ wq.T
        self._xq = xq
        return self._epilogue(z)

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


class BatchNorm(Layer):
    """Batch normalization over the last axis (Keras ``BatchNormalization`` semantics).

    Training uses batch statistics and updates running ones with ``momentum``; inference
    uses the running statistics. ``center``/``scale`` switch beta/gamma on or off.

    Like Keras 2 (the Keras Larq runs on), the running variance of an image batch
    (N, H, W, C) takes the unbiased batch variance, times n / (n - 1) with n = N*H*W:
    Keras hands 4-D inputs to TensorFlow's fused batch norm, which corrects it. Other
    inputs take the biased variance, as Keras's unfused path does. Normalization itself
    always divides by the biased variance.

    Two switches serve honest evaluation (see :mod:`bnnlab.core.evaluation`): while
    ``reestimating`` is on, training forwards replace the running statistics by the plain
    average of the batch statistics seen so far instead of the momentum update; while
    ``inference_batch_stats`` is on, inference forwards normalize each batch by its own
    statistics and leave the running ones untouched.
    """

    type_name = "BatchNorm"
    keras_name = "batch_normalization"

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True, name=None):
        super().__init__(name)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if float(epsilon) <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.reestimating = False
        self.inference_batch_stats = False
        self._batches_averaged = 0

    def start_reestimate(self) -> None:
        """From the next training forward on, average batch statistics from scratch."""
        self.reestimating = True
        self._batches_averaged = 0

    def stop_reestimate(self) -> None:
        self.reestimating = False

    def weight_count(self, input_shape):
        return int(input_shape[-1]) * (2 + self.center + self.scale)

    def build(self, input_shape, rng):
        out = super().build(input_shape, rng)
        c = self.input_shape[-1]
        self.gamma = Param("gamma", np.ones(c, np.float32), np.zeros(c, np.float32)) if self.scale else None
        self.beta = Param("beta", np.zeros(c, np.float32), np.zeros(c, np.float32)) if self.center else None
        self.moving_mean = np.zeros(c, np.float32)
        self.moving_variance = np.ones(c, np.float32)
        return out

    @property
    def channels(self) -> int:
        return self.input_shape[-1]

    def params(self):
        return [p for p in (self.gamma, self.beta) if p is not None]

    def buffers(self):
        return {"moving_mean": self.moving_mean, "moving_variance": self.moving_variance}

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Inference-time per-channel (a, b) with y = a * x + b."""
        g = self.gamma.value if self.gamma is not None else 1.0
        b = self.beta.value if self.beta is not None else 0.0
        a = g / np.sqrt(self.moving_variance + self.epsilon)
        return (a * np.ones(self.channels)).astype(np.float32), (b - a * self.moving_mean).astype(np.float32)

    def forward(self, x, training=False, rng=None):
        c = x.shape[-1]
        x2 = x.reshape(-1, c)
        if training:
            x2 = np.ascontiguousarray(x2, dtype=np.float32)
            scale = self.gamma.value if self.gamma is not None else self._ones(c)
            offset = self.beta.value if self.beta is not None else self._zeros(c)
            # Statistics are summed in float64; everything else stays float32.
            y, mean, var, mean32, inv = K.bn_forward_train(x2, scale, offset, self.epsilon)
            mean = mean.astype(np.float32)
            var = var.astype(np.float32)
            # backward recomputes xhat = (x - mean) * inv from these instead of storing it
            self._x2, self._mean32, self._inv = x2, mean32, inv
            m = self.momentum
            if self.reestimating:  # cumulative average: batch k weighs 1/k
                self._batches_averaged += 1
                m = 1.0 - 1.0 / self._batches_averaged
            self.moving_mean *= m
            self.moving_mean += (1 - m) * mean
            if x.ndim == 4:
                n = x2.shape[0]
                var = var * np.float32(n / max(n - 1, 1))
            self.moving_variance *= m
            self.moving_variance += (1 - m) * var
            return y.reshape(x.shape)
        if self.inference_batch_stats:
            return self._forward_batch_stats(x2).reshape(x.shape)
        a, b = self.scale_offset()
        return K.scale_shift(x2, a, b).reshape(x.shape)

    def _forward_batch_stats(self, x2):
        """Normalize by this batch's own (biased) statistics, as training does."""
        x64 = x2.astype(np.float64)
        mean = x64.mean(axis=0)
        var = x64.var(axis=0)
        g = self.gamma.value if self.gamma is not None else 1.0
        b = self.beta.value if self.beta is not None else 0.0
        a = g / np.sqrt(var + self.epsilon)
        return (x64 * a + (b - a * mean)).astype(np.float32)

    def backward(self, dy):
        c = dy.shape[-1]
        dy2 = np.ascontiguousarray(dy.reshape(-1, c), dtype=np.float32)
        gamma = self.gamma.value if self.gamma is not None else self._ones(c)
        dx, sdy, sdyx = K.bn_backward_train(dy2, self._x2, self._mean32, self._inv, gamma)
        if self.beta is not None:
            self.beta.grad[...] = sdy
        if self.gamma is not None:
            self.gamma.grad[...] = sdyx
        return dx.reshape(dy.shape)

    def _ones(self, c):
        if getattr(self, "_ones_c", None) is None or self._ones_c.shape[0] != c:
            self._ones_c = np.ones(c, np.float32)
        return self._ones_c

    def _zeros(self, c):
        if getattr(self, "_zeros_c", None) is None or self._zeros_c.shape[0] != c:
            self._zeros_c = np.zeros(c, np.float32)
        return self._zeros_c

    def config(self):
        return {"type": self.type_name, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class MaxPool2D(Layer):
    """Max pooling, 'valid' padding; ``strides`` defaults to ``pool_size``."""

    type_name = "MaxPool2D"
    keras_name = "max_pooling2d"

    def __init__(self, pool_size=2, strides=None, name=None):
        super().__init__(name)
        self.pool_size = _count("pool_size", pool_size)
        self.strides = _count("strides", strides) if strides is not None else self.pool_size

    def compute_output_shape(self, s):
        if len(s) != 3:
            raise ValueError(f"MaxPool2D needs (H, W, C) input, got {s}")
        p, st = self.pool_size, self.strides
        ho, wo = (s[0] - p) // st + 1, (s[1] - p) // st + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"MaxPool2D: input {s} is smaller than the pool {p}")
        return (ho, wo, s[2])

    def forward(self, x, training=False, rng=None):
        n = x.shape[0]
        out = np.empty((n, *self.output_shape), np.float32)
        arg = np.empty(out.shape, np.int32)
        K.maxpool_forward(np.ascontiguousarray(x, dtype=np.float32), self.pool_size, self.strides, out, arg)
        self._arg = arg
        return out

    def backward(self, dy):
        dx = np.empty((dy.shape[0], *self.input_shape), np.float32)
        return K.maxpool_backward(np.ascontiguousarray(dy, dtype=np.float32), self._arg,
                                  self.pool_size, self.strides, dx)

    def config(self):
        return {"type": self.type_name, "pool_size": self.pool_size, "strides": self.strides}


class Flatten(Layer):
    """Flatten (H, W, C) to (H*W*C,), in NHWC (channels-last) order like Keras."""

    type_name = "Flatten"
    keras_name = "flatten"

    def compute_output_shape(self, s):
        return (int(np.prod(s)),)

    def forward(self, x, training=False, rng=None):
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], *self.input_shape)


class Activation(Layer):
    """Element-wise activation: 'relu', 'linear', or 'softmax' (last layer only).

    A final softmax is folded into the loss: the model's forward pass returns logits
    and :meth:`bnnlab.core.model.Sequential.predict_proba` applies the softmax.
    """

    type_name = "Activation"
    keras_name = "activation"

    def __init__(self, activation="relu", name=None):
        super().__init__(name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.activation = activation

    def forward(self, x, training=False, rng=None):
        if self.activation == "relu":
            self._mask = x > 0
            return x * self._mask
        return x

    def backward(self, dy):
        if self.activation == "relu":
            return dy * self._mask
        return dy

    def config(self):
        return {"type": self.type_name, "activation": self.activation}


_LAYERS = {
    cls.type_name: cls
    for cls in (QuantConv2D, Conv2D, QuantDense, Dense, BatchNorm, MaxPool2D, Flatten, Activation)
}


def layer_types() -> list[str]:
    return list(_LAYERS)


def layer_from_config(cfg: dict[str, Any]) -> Layer:
    """Make a layer from ``{"type": name, **arguments}``; errors name the bad field."""
    cfg = dict(cfg)
    t = cfg.pop("type", None)
    if t is None:
        raise ValueError(f"layer {cfg!r} has no 'type'")
    t = canonical_type(t) or t
    if t == "ReLU":
        t, cfg = "Activation", {"activation": "relu", **cfg}
    if t not in _LAYERS:
        raise ValueError(f"unknown layer type {t!r}; valid: {', '.join(sorted(_LAYERS))}")
    try:
        return _LAYERS[t](**cfg)
    except TypeError as exc:
        raise ValueError(f"layer {t}: {exc}") from None
