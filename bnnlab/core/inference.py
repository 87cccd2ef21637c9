"""The fused inference pass: a model's forward pass in inference mode, with the steps
between two binary layers run as one kernel per block of images.

Layer by layer, the values between a binary layer and the next one (a convolution's
output, max pooling, batch norm with running statistics, flatten) are written to memory
as float arrays, and the second layer's sign then makes ±1 floats and packs their bits.
Only those bits matter. :func:`fused_forward` finds each such *chain* in the model and
computes the bits directly (:mod:`bnnlab.core.kernels.chains`); when the layer that
produces the chain's input is a convolution read by nothing else, it is fused too, so
its output never leaves the cache. Everything else runs as the layers' own ``forward``.

A chain ends at a *binary consumer*: a ``QuantConv2D`` or ``QuantDense`` whose input
and kernel are binarized and whose input binarizer is a plain sign (no randomness).
Walking back from it, the chain takes layers read by nothing else: at most one
``MaxPool2D`` (the first), at most one ``BatchNorm`` in inference mode with running
statistics, and any ``Flatten``. The result has the same bits as the layer-by-layer pass
(``Sequential.forward(..., fused=False)``): the kernels do the same float operations in
the same order, and each layer draws from ``rng`` at its own turn, as before.

The layers whose input is never made as floats do not update ``last_input`` (which the
training telemetry reads from the last *training* batch).

Each binary layer's kernel is packed and split into the GEMM's nibble panels
(``kernels.gemm_panels``) once and kept in the plan, for every call until its bits
change (:meth:`_Plan.kernel`): a kernel binarized by a plain sign is checked on every
call by comparing its latent weights' signs with the bits the kept panels were made
from (``signs_differ``). So a training step, an optimizer, a
loaded checkpoint or any code that writes the weights is seen at the next call, with
nothing to notify. A kernel with another binarizer (a stochastic one draws at its
layer's turn) is packed, and its panels made, on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels.chains import ChainGeometry, binary_conv_chain, chain_bits, float_conv_chain
from .kernels.sign import signs_differ
from .layers import PackedKernel, QuantConv2D, QuantDense, _is_plain_sign
from .plain_layers import BatchNorm, Flatten, MaxPool2D

__all__ = ["Chain", "find_chains", "fused_forward"]


@dataclass
class Chain:
    """The chain ending at binary consumer ``consumer``: ``members`` (pool, batch norm,
    flatten, in order), ``source`` (the layer whose float output the chain reads; -1:
    the model input) and whether that source is a convolution ``fused`` into it."""

    consumer: int
    members: list[int]
    source: int
    fused: bool


def _binary_consumer(layer) -> bool:
    return (isinstance(layer, (QuantConv2D, QuantDense)) and layer.binary
            and _is_plain_sign(layer.input_quantizer))


def _chain_layer(layer) -> bool:
    return (isinstance(layer, (MaxPool2D, Flatten))
            or (isinstance(layer, BatchNorm) and not layer.inference_batch_stats))


def find_chains(model) -> dict[int, Chain]:
    """The chains of ``model`` keyed by consumer index (see the module docstring)."""
    layers, sources, readers = model.layers, model.sources, model._readers
    chains: dict[int, Chain] = {}
    for i, layer in enumerate(layers):
        if not _binary_consumer(layer):
            continue
        members: list[int] = []
        s = sources[i][0]
        seen_bn = False
        while s >= 0 and readers[s] == 1 and _chain_layer(layers[s]):
            if isinstance(layers[s], BatchNorm):
                if seen_bn:
                    break
                seen_bn = True
            members.insert(0, s)
            s = sources[s][0]
            if isinstance(layers[members[0]], MaxPool2D):
                break  # pooling comes first in a chain
        producer = layers[s] if s >= 0 else None
        fused = (producer is not None and readers[s] == 1 and isinstance(producer, QuantConv2D)
                 and producer.activation in ("linear", "relu")
                 and (not producer.binary or _binary_consumer(producer)))
        chains[i] = Chain(i, members, s, fused)
    return chains


class _Plan:
    """What :func:`fused_forward` does per layer, worked out once per model and kept
    while the model's switches (binarizers, batch-norm modes) stay as they were."""

    def __init__(self, model):
        layers, sources = model.layers, model.sources
        self.kernels: dict[int, PackedKernel] = {}  # see kernel()
        self.chains = find_chains(model)
        self.member = {j for c in self.chains.values() for j in c.members}
        self.fused_into = {c.source: c.consumer for c in self.chains.values() if c.fused}
        # Which float values each step reads, to drop each after its last reader.
        self.reads: dict[int, list[int]] = {}
        for i in range(len(layers)):
            if i in self.member:
                continue
            if i in self.chains:
                c = self.chains[i]
                self.reads[i] = [] if c.fused else [c.source]
            elif i in self.fused_into and not layers[i].binary:
                self.reads[i] = [sources[i][0]]
            else:
                self.reads[i] = list(sources[i])
        last_use: dict[int, int] = {}
        for i, keys in self.reads.items():
            for k in keys:
                last_use[k] = i
        self.drop = {i: [k for k in dict.fromkeys(keys) if k >= 0 and last_use[k] == i]
                     for i, keys in self.reads.items()}
        # Per chain: (h, w, c) of its input per image, pooling, batch-norm layer, rlen.
        self.shapes = {}
        for i, c in self.chains.items():
            src = layers[c.source].output_shape if c.source >= 0 else model.input_shape
            shape = tuple(src) if len(src) == 3 else (1, 1, int(np.prod(src)))
            pool = stride = 0
            bn = None
            for j in c.members:
                if isinstance(layers[j], MaxPool2D):
                    pool, stride = layers[j].pool_size, layers[j].strides
                elif isinstance(layers[j], BatchNorm):
                    bn = layers[j]
            rlen = layers[i].input_shape[-1]
            self.shapes[i] = (shape, pool, stride, bn, rlen, np.ones(rlen, np.float32),
                              np.zeros(rlen, np.float32))

    @staticmethod
    def key(model) -> tuple:
        """The switches a plan depends on besides the model's structure."""
        return tuple((getattr(layer, "inference_batch_stats", None),
                      type(getattr(layer, "input_quantizer", None)),
                      type(getattr(layer, "kernel_quantizer", None)))
                     for layer in model.layers)

    def kernel(self, i: int, layer, rng) -> PackedKernel:
        """Binary layer i's kernel with its nibble panels, at the layer's turn. Kept while
        the latent weights' sign bits stay those it was made from (checked on every call:
        the kept one is never stale); packed anew on every call, drawing from ``rng``,
        unless the kernel's binarizer is a plain sign."""
        if not _is_plain_sign(layer.kernel_quantizer):
            return layer.product_kernel(*layer._packed_kernel(rng), panels=True)
        w = layer.kernel.value
        kept = self.kernels.get(i)
        if kept is None or signs_differ(w.reshape(-1, w.shape[-1]), kept.bt):
            # Made from the weights as they are now (if they changed since the check, the
            # next call sees it); one assignment, so a concurrent call reads one or the other.
            kept = self.kernels[i] = layer.product_kernel(*layer._packed_kernel(None),
                                                          panels=True)
        return kept

    def geometry(self, i: int) -> ChainGeometry:
        """Chain i's steps as kernel arguments, with the batch norm's current numbers."""
        shape, pool, stride, bn, rlen, ones, zeros = self.shapes[i]
        if bn is None:
            return ChainGeometry(*shape, pool, stride, ones, zeros)
        a, b = bn.scale_offset()
        if a.shape[0] != rlen:  # per channel, repeated over the flattened pixels
            a, b = np.tile(a, rlen // a.shape[0]), np.tile(b, rlen // b.shape[0])
        return ChainGeometry(*shape, pool, stride, a, b)


def _plan(model) -> _Plan:
    key = _Plan.key(model)
    cached = getattr(model, "_inference_plan", None)
    if cached is None or cached[0] != key:
        cached = model._inference_plan = (key, _Plan(model))
    return cached[1]


def _bias_relu(layer):
    return (None if layer.bias is None else layer.bias.value), layer.activation == "relu"


def fused_forward(model, x: np.ndarray, rng=None) -> np.ndarray:
    """``model.forward(x, training=False, rng=rng)`` with its chains fused; x is a
    contiguous float32 batch of the model's input shape."""
    layers, sources = model.layers, model.sources
    n = x.shape[0]
    plan = _plan(model)
    outs: dict[int, np.ndarray] = {-1: x}
    bits: dict[int, np.ndarray] = {}
    ready: dict[int, tuple] = {}  # a fused producer's weights (and float input)
    for i, layer in enumerate(layers):
        if i in plan.member:
            continue
        if i in plan.chains:
            bits[i] = _chain_step(model, plan, plan.chains[i], outs, bits, ready, n)
        if i in plan.fused_into:
            # Draw from rng now, at this layer's turn; the product runs with the chain.
            if layer.binary:
                ready[i] = plan.kernel(i, layer, rng)
            else:
                wq = layer.quantized_kernel(rng)
                xq = np.ascontiguousarray(layer._quantize_input(outs[sources[i][0]], rng),
                                          dtype=np.float32)
                ready[i] = (wq, xq)
        elif i in plan.chains:
            z = layer.binary_product(bits.pop(i), n, plan.kernel(i, layer, rng))
            outs[i] = layer._epilogue(z.reshape(n, *layer.output_shape))
        elif isinstance(layer, (QuantConv2D, QuantDense)) and layer.binary:
            # A binarizer of its own on the input (stochastic, say): the layer's forward
            # pass, drawing for its kernel and then its input, with the kept kernel.
            x = outs[sources[i][0]]
            kernel = plan.kernel(i, layer, rng)
            layer.last_input = x
            _, xbits = layer._sign_and_pack(x, rng)
            z = layer.binary_product(xbits, n, kernel)
            outs[i] = layer._epilogue(z.reshape(n, *layer.output_shape))
        else:
            xs = [outs[s] for s in sources[i]]
            outs[i] = (layer.forward_many(xs, training=False, rng=rng) if layer.merge
                       else layer.forward(xs[0], training=False, rng=rng))
        for k in plan.drop[i]:
            del outs[k]
    return outs[len(layers) - 1]


def _chain_step(model, plan: _Plan, chain: Chain, outs, bits, ready, n) -> np.ndarray:
    """The packed input bits of ``chain.consumer``."""
    geo = plan.geometry(chain.consumer)
    if not chain.fused:
        return chain_bits(outs[chain.source], geo)
    p = model.layers[chain.source]
    bias, relu = _bias_relu(p)
    if p.binary:
        kernel = ready.pop(chain.source)
        kh, kw = p.kernel_size
        return binary_conv_chain(bits.pop(chain.source), n, p.input_shape, p.kernel_size,
                                 p.strides, (p._pt, p._pl), p.pad_bit, kernel.bt,
                                 kh * kw * p.input_shape[2], kernel.corr, bias, relu, geo,
                                 panels=kernel.panels)
    wq, xq = ready.pop(chain.source)
    return float_conv_chain(xq, np.ascontiguousarray(wq, dtype=np.float32), p.strides, p._pt,
                            p._pl, np.float32(p.pad_values), bias, relu, geo)

