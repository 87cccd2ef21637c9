"""Layers that are never binarized: batch normalization, max pooling, flatten and
activations, in NHWC layout as Keras computes them."""

from __future__ import annotations

import numpy as np

from . import kernels as K
from .layer_base import ACTIVATIONS, Layer, Param, _count

__all__ = ["Activation", "BatchNorm", "Flatten", "MaxPool2D"]


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
        # Only training needs the winning taps (for backward); inference skips them.
        arg = np.empty(out.shape, np.int32) if training else None
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


