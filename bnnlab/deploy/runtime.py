"""Run a ``.bnn`` model: integer XNOR-popcount blocks with per-channel thresholds.

Activations between blocks are bits, one group of 64-bit words per pixel
(``(N, H*W, ceil(C/64))`` uint64, bit 1 = -1, channel c at bit c % 64 of word c // 64, tail
bits zero). Every block computes its accumulator, max-pools it, then either compares it
with its thresholds (bits out) or maps it to logits with a float scale and offset. Only a
first block on float input and the final logits touch floating point.

The kernels are plain compiled loops that release the GIL; :meth:`Runtime.logits` runs
pieces of a batch on the calling thread and Python threads of a pool kept for the
process, each piece through the whole network, claimed by whichever thread is free
(Numba's ``prange`` stopped LLVM from vectorizing the loop bodies and was slower here;
the serial kernels inside never start threads of their own). The NumPy oracle of all
this is :mod:`bnnlab.deploy.reference`.

A graph file (version 2) runs its nodes in order: blocks as above (a block reading a float
tensor packs its signs first), and the float operations between them (add, concatenate,
max pooling) on float32 (N, H, W, C) arrays.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..core.kernels import (gemm_panels, offset_tables, pad_input, padded_extent,
                            xnor_gemm_prepared)
from .format import MODE_GE, MODE_LE, MODE_PLUS, Block, ModelFile, ModelFileError, read_file
from .limits import check_runtime_cost
from .runtime_chain import chain_for
from .runtime_kernels import (_CHUNK_BYTES, _conv_bits, _conv_c1_pm1, _conv_raw,
                              _conv_raw_exact_f32, _dense_raw, _scale_offset, _threshold_pack)

__all__ = ["Runtime", "available_cpus", "load_runtime", "pack_activations", "raw_from_unit",
           "unpack_activations"]

_UINT8 = np.dtype(np.uint8)


def pack_activations(signs: np.ndarray) -> np.ndarray:
    """(N, P, C) signs (negative = -1) -> (N, P, ceil(C/64)) uint64 words, bit 1 = -1."""
    n, p, c = signs.shape
    cw = -(-c // 64)
    bits = np.zeros((n, p, cw * 64), np.uint8)
    bits[..., :c] = signs < 0
    return np.packbits(bits, axis=-1, bitorder="little").view("<u8").astype(np.uint64).reshape(n, p, cw)


def unpack_activations(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of :func:`pack_activations`: int8 ±1 of shape (N, P, c)."""
    n, p, cw = words.shape
    b = np.unpackbits(words.astype("<u8").view(np.uint8).reshape(n, p, cw * 8), axis=-1,
                      bitorder="little")[..., :c]
    return (1 - 2 * b.astype(np.int8))


# Filters unpacked to one byte per weight at a time: about this many weights, so that
# preparing a block costs a bounded amount of memory beyond its packed kernel.
_GROUP_WEIGHTS = 1 << 22


def _filter_groups(b: Block):
    """(f0, f1, int8 ±1 signs (f1 - f0, K)) for consecutive groups of a bit kernel's filters."""
    k = b.fan_in
    step = max(1, _GROUP_WEIGHTS // k)
    for f0 in range(0, b.out_channels, step):
        f1 = min(b.out_channels, f0 + step)
        start, stop = f0 * k, f1 * k
        bits = np.unpackbits(b.kernel_data[start // 8:-(-stop // 8)], bitorder="little")
        bits = bits[start % 8:start % 8 + stop - start].reshape(f1 - f0, k)
        signs = bits.view(np.int8)
        signs *= -2
        signs += 1
        yield f0, f1, signs


def _tap_words(signs: np.ndarray, taps: int, c: int) -> np.ndarray:
    """(F, taps*c) signs -> (taps*CW, F) uint64 in the activation word layout."""
    f = signs.shape[0]
    return np.ascontiguousarray(pack_activations(signs.reshape(f, taps, c)).reshape(f, -1).T)


def raw_from_unit(x01: np.ndarray, encoding: str) -> np.ndarray:
    """Dataset images in [0, 1] (uint8 / 255) -> the raw pixels a model file reads."""
    pixels = np.rint(np.asarray(x01, np.float64) * 255.0)
    return pixels.astype(np.uint8) if encoding == "uint8" else pixels.astype(np.float32)


# --------------------------------------------------------------------------- the runtime


class _Prepared:
    """A block's arrays in the layout its kernel wants."""

    def __init__(self, b: Block):
        self.b = b
        self.k = b.fan_in
        self.ho, self.wo, _ = b.conv_shape
        self.hp, self.wp, self.f = b.out_shape
        self.ps, self.pst = b.pool if b.pool[0] else (1, 1)
        taps = self.k // b.in_shape[2] if b.kind == "conv2d" else b.in_shape[0] * b.in_shape[1]
        dtype = np.int32 if b.acc == "int32" else np.float32
        if b.input == "raw" and b.acc == "int32" and 255 * self.k <= 0x7FFF:
            dtype = np.int16  # twice the SIMD lanes; pixel sums this small cannot overflow
        if b.input == "bits" and b.kind == "conv2d":
            # One word row per filter of K bits; the padding table needs per-tap sums.
            self.wt = np.empty((-(-self.k // 64), self.f), np.uint64)
            per_tap = np.empty((self.f, taps), np.int64)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = pack_activations(signs[:, None, :]).reshape(f1 - f0, -1).T
                per_tap[f0:f1] = signs.reshape(f1 - f0, taps, -1).sum(axis=2, dtype=np.int64)
            self.pad_bit = 1 if b.pad_value == -1 else 0
            self.corr = self._zero_pad_correction(b, per_tap) if b.pad_value == 0 else \
                np.zeros((0, self.f), np.int32)
            self.chunk = max(1, _CHUNK_BYTES // (4 * self.ho * self.wo * self.f))
        elif b.input == "bits":
            c = b.in_shape[2]
            self.wt = np.empty((taps * -(-c // 64), self.f), np.uint64)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = _tap_words(signs, taps, c)
        elif b.kernel == "bits":  # (K, F): filters innermost, for the vectorized loops
            self.wt = np.empty((self.k, self.f), dtype)
            for f0, f1, signs in _filter_groups(b):
                self.wt[:, f0:f1] = signs.T
        else:
            self.wt = np.ascontiguousarray(b.kernel_data.T.astype(dtype))
        # The binary GEMM's nibble panels of the weights, made once (maybe empty).
        self.bp = gemm_panels(self.wt) if b.input == "bits" else np.zeros(0, np.uint64)
        self.dtype = dtype
        # Empty stand-ins for the arrays a block's kernel takes but does not use.
        self._no_bits = np.empty((0, 0, 1), np.uint64)
        self._no_acc = np.empty((0, 0, self.f), np.int32 if b.input == "bits" else dtype)
        self._no_sgn = np.zeros(0, np.int32)
        if b.output == "logits":  # scale and offset per accumulator of the flat output
            pos = self.hp * self.wp
            self.scale = np.ascontiguousarray(np.broadcast_to(
                np.asarray(b.scale, np.float32), (pos, self.f)).reshape(-1))
            self.offset = np.ascontiguousarray(np.broadcast_to(
                np.asarray(b.offset, np.float32), (pos, self.f)).reshape(-1))
        if b.output == "bits":
            m = b.modes
            sgn = np.select([m == MODE_GE, m == MODE_LE], [1, -1], 0)
            thr = np.select([m == MODE_GE, m == MODE_LE, m == MODE_PLUS],
                            [b.thresholds.astype(np.float64), -b.thresholds.astype(np.float64), 0.0],
                            1.0)
            if b.acc == "int32":
                # |accumulator| < 2**31, so clipping a threshold to int32 keeps every result.
                lim = np.iinfo(np.int32)
                self.sgn = sgn.astype(np.int32)
                self.thr = np.clip(np.ceil(thr), lim.min, lim.max).astype(np.int32)
            else:
                self.sgn, self.thr = sgn.astype(np.float64), thr
        # One-channel integer pixels with ±1 kernels three taps wide (a binary first
        # layer on images) share signed row sums between filters; see _conv_c1_pm1.
        self.c1_pm1 = (b.kind == "conv2d" and b.input == "raw" and b.output == "bits"
                       and dtype == np.int16 and b.in_shape[2] == 1
                       and tuple(b.kernel_size)[1] == 3 and b.stride == 1
                       and (self.ps, self.pst) in ((1, 1), (2, 2))
                       and float(b.pad_value).is_integer() and abs(float(b.pad_value)) <= 255
                       and bool(np.all(np.abs(self.wt) == 1)))
        if self.c1_pm1:
            kh = b.kernel_size[0]
            neg = (self.wt.T.reshape(self.f, kh, 3) < 0).astype(np.int64)
            self.pat = np.ascontiguousarray(neg[:, :, 0] | neg[:, :, 1] << 1 | neg[:, :, 2] << 2)
        # Integer pixels and weights whose sums stay below 2**24 run on float32 tiles,
        # exactly; real-valued inputs keep the tap order of the C code instead.
        self.exact_f32 = (b.kind == "conv2d" and b.input == "raw" and dtype != np.float32
                          and not self.c1_pm1
                          and 255 * self.k * int(np.abs(self.wt).max(initial=0)) < (1 << 24))
        if self.exact_f32:
            self.w1 = self.wt.astype(np.float32).reshape(-1)
            self.chunk = max(1, _CHUNK_BYTES // (4 * self.ho * self.wo * self.f))
            if b.output == "bits":  # exact: |accumulator| < 2**24
                self.sgn_f32, self.thr_f32 = self.sgn.astype(np.float32), self.thr.astype(np.float32)

    @staticmethod
    def _zero_pad_correction(b: Block, per_tap: np.ndarray) -> np.ndarray:
        """(ho*wo, F): what the padding taps add when packed as +1, to subtract again.

        per_tap: (F, kh*kw) the sum of each filter's signs at each tap.
        """
        h, w, c = b.in_shape
        kh, kw = b.kernel_size
        pt, pb, pl, pr = b.pads
        if not any(b.pads):
            return np.zeros((0, b.out_channels), np.int32)
        ho, wo, _ = b.conv_shape
        s = b.stride
        outside = np.ones((h + pt + pb, w + pl + pr), np.int64)
        outside[pt:pt + h, pl:pl + w] = 0
        taps = np.stack([outside[dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
                         for dy in range(kh) for dx in range(kw)], axis=-1)  # (ho, wo, taps)
        return np.ascontiguousarray((taps.reshape(ho * wo, -1) @ per_tap.T).astype(np.int32))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The block's output for a batch: bit words (N, P, ceil(F/64)), or float32 logits."""
        b, n = self.b, x.shape[0]
        bits_out = b.output == "bits"
        acc_dtype = np.int32 if b.input == "bits" else self.dtype
        if b.kind == "dense":
            acc = np.empty((n, 1, self.f), acc_dtype)
            if b.input == "bits":
                xnor_gemm_prepared(np.ascontiguousarray(x.reshape(n, -1)), self.wt, self.bp,
                                   self.k, acc.reshape(n, self.f))
            else:
                _dense_raw(np.ascontiguousarray(x.reshape(n, -1)), self.wt, acc)
            if bits_out:
                return _threshold_pack(acc, self.sgn, self.thr, self._new_bits(n))
            out_acc = acc
        else:
            out_bits = self._new_bits(n) if bits_out else self._no_bits
            out_acc = self._no_acc if bits_out else np.empty((n, self.hp * self.wp, self.f),
                                                             acc_dtype)
            sgn = self.sgn if bits_out else self._no_sgn
            thr = self.thr if bits_out else self._no_sgn
            h, w, c = b.in_shape
            kh, kw = b.kernel_size
            pt, _, pl, _ = b.pads
            if b.input == "bits":
                _conv_bits(x, self.wt, self.bp, self.k, h, w, c, kh, kw, b.stride, pt, pl,
                           self.pad_bit, self.corr, self.ho, self.wo, self.ps, self.pst, self.hp, self.wp,
                           min(self.chunk, n), sgn, thr, bits_out, out_bits, out_acc)
            elif self.c1_pm1:
                _conv_c1_pm1(self.c1_input(x), self.pat, self.ho, self.wo, self.ps == 2,
                             self.hp, self.wp, self.sgn, self.thr, out_bits)
            elif self.exact_f32:
                ho, wo = self.ho, self.wo
                xp = pad_input(x, pt, pl, padded_extent(h, kh, b.stride, pt, ho),
                               padded_extent(w, kw, b.stride, pl, wo), float(b.pad_value))
                orig, toff = offset_tables(n, xp.shape[1], xp.shape[2], c, kh, kw, ho, wo,
                                            b.stride)
                _conv_raw_exact_f32(xp.reshape(-1), orig, toff, self.w1, self.f, ho, wo,
                                    self.ps, self.pst, self.hp, self.wp, min(self.chunk, n),
                                    self.sgn_f32 if bits_out else np.zeros(0, np.float32),
                                    self.thr_f32 if bits_out else np.zeros(0, np.float32),
                                    bits_out, out_bits, out_acc)
            else:
                _conv_raw(x, self.wt, kh, kw, b.stride, pt, pl, self.dtype(b.pad_value),
                          self.ho, self.wo, self.ps, self.pst, self.hp, self.wp, sgn, thr,
                          bits_out, out_bits, out_acc)
            if bits_out:
                return out_bits
        # Float32 multiply then add, unfused, as the engine's batch norm and the C do it;
        # a logit beyond float32 becomes infinite there as here, without a warning.
        acc2 = out_acc.reshape(n, -1)
        return _scale_offset(acc2, self.scale, self.offset, np.empty(acc2.shape, np.float32))

    def c1_extent(self) -> tuple[int, int]:
        """(Hp, Wp): the padded input :func:`_conv_c1_pm1` reads."""
        b = self.b
        h, w, _ = b.in_shape
        kh, kw = b.kernel_size
        pt, _, pl, _ = b.pads
        return (max(padded_extent(h, kh, 1, pt, self.ho), h + pt),
                max(padded_extent(w, kw, 1, pl, self.wo), w + pl))

    def c1_input(self, x: np.ndarray) -> np.ndarray:
        """(N, Hp, Wp) int16 padded pixels for :func:`_conv_c1_pm1` from (N, h, w, 1)."""
        b, n = self.b, x.shape[0]
        h, w, _ = b.in_shape
        pt, _, pl, _ = b.pads
        hp_in, wp_in = self.c1_extent()
        if (hp_in, wp_in) == (h, w):
            return np.ascontiguousarray(x.reshape(n, h, w), dtype=np.int16)
        xp = np.full((n, hp_in, wp_in), int(b.pad_value), np.int16)
        xp[:, pt:pt + h, pl:pl + w] = x.reshape(n, h, w)
        return xp

    def _new_bits(self, n: int) -> np.ndarray:
        return np.empty((n, self.hp * self.wp, -(-self.f // 64)), np.uint64)


class Runtime:
    """Inference on a :class:`~bnnlab.deploy.format.ModelFile`.

    Inputs are *raw*: what the file's input record reads (uint8 pixels 0..255 for image
    models, float32 values otherwise); :func:`raw_from_unit` converts dataset images.
    """

    def __init__(self, mf: ModelFile, file_bytes: int | None = None,
                 max_memory: int | None = None, max_work: int | None = None):
        # Refuse, before allocating, a model that would take too much memory or time
        # (limits in bnnlab.deploy.limits; None takes the default or the environment's).
        self.cost = check_runtime_cost(mf, file_bytes, max_memory, max_work)
        self.model_file = mf
        self.input = mf.input
        self.class_names = mf.class_names
        self.metadata = dict(mf.metadata)
        # A block on the signs of a float tensor runs as one on bits, once they are packed.
        self._blocks = [_Prepared(dataclasses.replace(b, input="bits") if b.input == "signs"
                                  else b) for b in mf.blocks]
        # A stack's binary blocks run in one compiled call (after any first block that
        # cannot be part of it); see runtime_chain.
        self._lead, self._chain = (len(self._blocks), None) if mf.nodes else \
            chain_for(self._blocks)
        self._n_outputs = mf.n_outputs
        self._input_shape = tuple(mf.input.shape)
        per_image = max(4 * (np.prod(b.conv_shape) + np.prod(b.in_shape)) for b in mf.blocks)
        # Keep a slice's buffers near 64 MiB however large the model's activations are.
        self.batch_size = int(max(1, min(1024, (64 << 20) // max(int(per_image), 1))))

    @property
    def n_outputs(self) -> int:
        return self._n_outputs

    def _check_input(self, raw: np.ndarray) -> None:
        spec = self.input
        if raw.shape[1:] != tuple(spec.shape):
            raise ValueError(f"the model reads inputs of shape {spec.shape}, got {raw.shape[1:]}")
        if spec.encoding == "uint8" and raw.dtype != np.uint8:
            raise ValueError(f"the model reads uint8 pixels, got {raw.dtype}")

    def _normalize(self, raw: np.ndarray, b0: _Prepared | None = None) -> np.ndarray:
        spec = self.input
        self._check_input(raw)
        b0 = b0 or self._blocks[0]
        if b0.dtype != np.float32:
            x = raw.astype(b0.dtype)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                x = raw.astype(np.float32) * np.float32(spec.scale)
                x += np.float32(spec.offset)
        shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
        return np.ascontiguousarray(x.reshape(raw.shape[0], *shape))

    def _run(self, raw: np.ndarray, trace: list | None = None) -> np.ndarray:
        if self.model_file.nodes:
            if trace is not None:
                raise ValueError("a graph model has no chain of blocks to trace")
            return self._run_graph(raw)
        if self._chain is not None and trace is None:
            out = np.empty((raw.shape[0], self.n_outputs), np.float32)
            if self._chain.starts_with_pixels:  # uint8 pixels, converted in the chain
                if raw.dtype is not _UINT8 or raw.shape[1:] != self._input_shape:
                    self._check_input(raw)  # raises unless only the dtype object differs
                if not raw.flags.c_contiguous:
                    raw = np.ascontiguousarray(raw)
                return self._chain.run(raw, out)
            x = self._normalize(raw)
            for pb in self._blocks[:self._lead]:
                x = pb.run(x)
            return self._chain.run(x, out)
        x = self._normalize(raw)
        for pb in self._blocks:
            x = pb.run(x)
            if trace is not None:
                trace.append(x if pb.b.output == "logits" else
                             unpack_activations(x, pb.f).reshape(x.shape[0], -1))
        return x

    def _run_graph(self, raw: np.ndarray, nodes: list | None = None) -> np.ndarray:
        """The logits of a graph model; ``nodes``, a list, receives every node's output
        (a block's bits as packed words, float tensors as they are)."""
        n = raw.shape[0]
        mf = self.model_file
        tensors: list = [None]  # 0: the input, normalized by each block that reads it
        for node in mf.nodes:
            src = [tensors[s] for s in node.sources]
            if node.op == "block":
                b, pb = mf.blocks[node.block], self._blocks[node.block]
                if b.input == "raw":
                    x = self._normalize(raw, pb)
                elif b.input == "signs":  # +1 where v >= 0 (NaN: -1), as the format says
                    v = src[0]
                    x = pack_activations(np.where(v >= 0, 1, -1).astype(np.int8)
                                         .reshape(n, -1, v.shape[-1]))
                else:
                    x = src[0]
                y = pb.run(x)
                if b.output == "logits":
                    y = y.reshape(n, *b.out_shape)
            elif node.op == "add":
                with np.errstate(over="ignore", invalid="ignore"):
                    y = src[0] + src[1]
                    for t in src[2:]:
                        y += t
            elif node.op == "concatenate":
                y = np.concatenate(src, axis=-1)
            else:
                y = _max_pool(src[0], *node.pool)
            tensors.append(y)
        if nodes is not None:
            nodes.extend(tensors[1:])
        return tensors[-1].reshape(n, -1)

    def logits(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, n_outputs) float32 logits of raw inputs (N, *input shape).

        ``threads`` (default: every CPU this process may use) share the batch in pieces
        (:meth:`_shared`); the kernels release the GIL, so plain Python threads do.
        """
        raw = np.asarray(raw)
        if len(raw) == 1:  # one image: no slicing, threads or copies (latency)
            return self._run(raw)
        threads = available_cpus() if threads is None else max(1, int(threads))
        n = len(raw)
        # Slices of at most 256 images (the batch size that keeps a block's data small).
        step = max(1, min(self.batch_size, 256))
        if threads == 1 or n < 2:
            outs = [self._run(raw[i:i + step]) for i in range(0, n, step)]
            if len(outs) == 1:
                return outs[0]
            return np.concatenate(outs) if outs else np.zeros((0, self.n_outputs), np.float32)
        return self._shared(raw, min(threads, n), step)

    def _shared(self, raw: np.ndarray, threads: int, step: int) -> np.ndarray:
        """The logits of ``raw`` by ``threads`` threads (this one and pool workers), each
        claiming the next piece of the batch whenever it is free.

        Handing each thread one equal slice would make the batch wait for the slowest:
        a pool worker woken while another process holds its CPU may start a millisecond
        or more late, and the other slice then ran alone (on a 2-CPU machine with a
        niced process busy, two slices of 128 images took as long as one thread). With
        pieces claimed as threads come free, a late thread just takes fewer.
        """
        n = len(raw)
        piece = max(1, min(step, -(-n // (threads * 8))))  # about 8 pieces per thread
        if self._chain is not None and not self.model_file.nodes:
            group = self._chain.group
            piece = min(step, -(-piece // group) * group)  # whole groups of the chain
        out = np.empty((n, self.n_outputs), np.float32)
        claim = itertools.count()  # next() of it is atomic under the GIL

        def work() -> None:
            while True:
                i = next(claim) * piece
                if i >= n:
                    return
                out[i:i + piece] = self._run(raw[i:i + piece])

        pool = _pool(threads - 1)
        helpers = [pool.submit(work) for _ in range(threads - 1)]
        try:
            work()
        finally:
            for h in helpers:  # one not started yet has nothing left to do
                if not h.cancel():
                    h.result()  # wait for its pieces (and re-raise its error)
        return out

    def predict(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Class index per input (first maximum, like ``numpy.argmax``)."""
        return self.logits(raw, threads).argmax(axis=1)

    def trace(self, raw: np.ndarray) -> list[np.ndarray]:
        """Every block's output for a small batch: int8 ±1 (N, elements), then the logits."""
        out: list[np.ndarray] = []
        self._run(np.asarray(raw), out)
        return out

    def node_outputs(self, raw: np.ndarray) -> list[np.ndarray]:
        """Every node's output of a graph model (version 2) for a small batch, in node
        order: int8 ±1 (N, H, W, C) where a block outputs bits, float32 (N, H, W, C)
        otherwise (the last block's logits (N, H, W, C) too)."""
        if not self.model_file.nodes:
            raise ValueError("a stack of blocks has no graph nodes; use trace")
        raw = np.asarray(raw)
        self._normalize(raw, self._blocks[0])  # the input's shape and type, checked
        outs: list = []
        self._run_graph(raw, outs)
        n = raw.shape[0]
        mf = self.model_file
        shaped = []
        for node, y in zip(mf.nodes, outs):
            if node.op == "block" and mf.blocks[node.block].output == "bits":
                b = mf.blocks[node.block]
                y = unpack_activations(y, b.out_channels).reshape(n, *b.out_shape)
            elif node.op == "block":
                y = np.asarray(y, np.float32).reshape(n, *mf.blocks[node.block].out_shape)
            shaped.append(y)
        return shaped

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) the kernels this model uses."""
        shape = (1, *self.input.shape)
        self.logits(np.zeros(shape, np.uint8 if self.input.encoding == "uint8" else np.float32))


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, started once per process and kept: starting and
    joining threads on every call costs a noticeable part of a batch's time. Keyed by
    process id too, since a forked child inherits the pool but not its threads."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="bnn-runtime")
        return pool


def _max_pool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """'valid' max pooling of float32 (N, H, W, C); a window holding NaN pools to NaN."""
    n, h, w, c = x.shape
    hp, wp = (h - size) // stride + 1, (w - size) // stride + 1
    y = None
    for dy in range(size):
        for dx in range(size):
            t = x[:, dy:dy + stride * (hp - 1) + 1:stride, dx:dx + stride * (wp - 1) + 1:stride]
            y = t.copy() if y is None else np.maximum(y, t)
    return y


def available_cpus() -> int:
    """CPUs this process may run on: the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_runtime(path: str | os.PathLike, max_memory: int | None = None,
                 max_work: int | None = None) -> Runtime:
    """A :class:`Runtime` for a ``.bnn`` file; every refusal is a ModelFileError naming it."""
    mf = read_file(path)
    try:
        return Runtime(mf, os.path.getsize(path), max_memory, max_work)
    except ModelFileError as exc:
        raise ModelFileError(f"{os.fspath(path)}: {exc}") from None
