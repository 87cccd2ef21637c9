"""Run a ``.bnn`` model: integer XNOR-popcount blocks with per-channel thresholds.

Activations between blocks are bits, one group of 64-bit words per pixel
(``(N, H*W, ceil(C/64))`` uint64, bit 1 = -1, channel c at bit c % 64 of word c // 64, tail
bits zero). Every block computes its accumulator, max-pools it, then either compares it
with its thresholds (bits out) or maps it to logits with a float scale and offset. Only a
first block on float input and the final logits touch floating point.

The kernels are plain compiled loops that release the GIL; :meth:`Runtime.logits` runs
slices of a batch on Python threads (Numba's ``prange`` stopped LLVM from vectorizing the
loop bodies and was slower here). The NumPy oracle of all this is
:mod:`bnnlab.deploy.reference`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .format import MODE_GE, MODE_LE, MODE_PLUS, Block, ModelFile, read_file

__all__ = ["Runtime", "available_cpus", "load_runtime", "pack_activations", "raw_from_unit",
           "unpack_activations"]

_JIT = dict(nogil=True, cache=True, error_model="numpy")


@intrinsic
def _popcount(typingctx, x):
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


# --------------------------------------------------------------------------- kernels


@nb.njit(**_JIT)
def _or_bits(row, off, val, nbits):
    # OR the low `nbits` of `val` into the bit row starting at bit `off`.
    w = off >> 6
    s = off & 63
    row[w] |= val << np.uint64(s)
    if s != 0 and s + nbits > 64:
        row[w + 1] |= val >> np.uint64(64 - s)


@nb.njit(**_JIT)
def _pool_planes(planes, wo, ps, pst, hp, wp, out, n):
    """Max-pool channel planes (F, ho*wo) into out[n] (hp*wp, F)."""
    f_n = planes.shape[0]
    if ps == 1 and pst == 1:  # no pooling
        for f in range(f_n):
            for q in range(hp * wp):
                out[n, q, f] = planes[f, q]
    elif ps == 2 and pst == 2:
        # Spelled out: tiny loops with run-time bounds cost more than the maxima themselves.
        for f in range(f_n):
            for py in range(hp):
                for px in range(wp):
                    p0 = 2 * py * wo + 2 * px
                    top = max(planes[f, p0], planes[f, p0 + 1])
                    bottom = max(planes[f, p0 + wo], planes[f, p0 + wo + 1])
                    out[n, py * wp + px, f] = max(top, bottom)
    else:
        for f in range(f_n):
            for py in range(hp):
                for px in range(wp):
                    p0 = py * pst * wo + px * pst
                    m = planes[f, p0]
                    for wy in range(ps):
                        for wx in range(ps):
                            m = max(m, planes[f, p0 + wy * wo + wx])
                    out[n, py * wp + px, f] = m


@nb.njit(**_JIT)
def _conv_bits(x, wt, k, h, w, c, kh, kw, stride, pt, pl, pad_minus, corr, ho, wo, ps, pst,
               hp, wp, out):
    """Binary convolution + max pool of packed pixels.

    x: (N, h*w, CW) uint64 pixel words; wt: (KW, F) uint64, filter rows of K = kh*kw*c bits
    in (dy, dx, c) order stored word-major; pad_minus: padding taps are -1 (else +1);
    corr: (ho*wo, F) int32 subtracted from every dot (zero padding), or (0, F) for none;
    out: (N, hp*wp, F) int32, the pooled dot products.
    """
    row = np.zeros(wt.shape[0], np.uint64)
    pop = np.zeros(wt.shape[1], np.int64)
    planes = np.empty((wt.shape[1], ho * wo), np.int32)
    for n in range(x.shape[0]):
        _conv_bits_image(x, n, wt, k, h, w, c, kh, kw, stride, pt, pl, pad_minus, corr, ho, wo,
                         row, pop, planes)
        _pool_planes(planes, wo, ps, pst, hp, wp, out, n)
    return out


@nb.njit(**_JIT)
def _conv_bits_image(x, n, wt, k, h, w, c, kh, kw, stride, pt, pl, pad_minus, corr, ho, wo,
                     row, pop, planes):
    # Each output pixel's patch is packed into one dense bit row, so no word is wasted on
    # a channel tail (a 32-channel pixel fills half a word).
    cw_n = x.shape[2]
    kw_n, f_n = wt.shape
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    has_corr = corr.shape[0] > 0
    for oy in range(ho):
        for ox in range(wo):
            row[:] = 0
            off = 0
            for dy in range(kh):
                iy = oy * stride + dy - pt
                for dx in range(kw):
                    ix = ox * stride + dx - pl
                    inside = 0 <= iy < h and 0 <= ix < w
                    p = iy * w + ix
                    for cw in range(cw_n):
                        nbits = min(64, c - cw * 64)
                        if inside:
                            val = x[n, p, cw]
                        elif pad_minus:
                            val = ones if nbits == 64 else (np.uint64(1) << np.uint64(nbits)) - np.uint64(1)
                        else:
                            val = np.uint64(0)
                        if val != 0:
                            _or_bits(row, off, val, nbits)
                        off += nbits
            pop[:] = 0
            for j in range(kw_n):
                a = row[j]
                for f in range(f_n):
                    pop[f] += _popcount(a ^ wt[j, f])
            q = oy * wo + ox
            for f in range(f_n):
                planes[f, q] = k - 2 * pop[f]
            if has_corr:
                for f in range(f_n):
                    planes[f, q] -= corr[q, f]


@nb.njit(**_JIT)
def _conv_raw(x, wt, kh, kw, stride, pt, pl, pad, ho, wo, ps, pst, hp, wp, out):
    """Convolution + max pool of real-valued (or integer) input with a dense kernel matrix.

    x: (N, h, w, C) int16/int32/float32; wt: (F, kh*kw*C) same dtype; pad: value of a tap
    outside the image; out: (N, hp*wp, F) same dtype.
    """
    cols = np.empty((wt.shape[1], ho * wo), wt.dtype)
    planes = np.empty((wt.shape[0], ho * wo), wt.dtype)
    for n in range(x.shape[0]):
        _conv_raw_image(x, n, wt, kh, kw, stride, pt, pl, pad, ho, wo, cols, planes)
        _pool_planes(planes, wo, ps, pst, hp, wp, out, n)
    return out


@nb.njit(**_JIT)
def _conv_raw_image(x, n, wt, kh, kw, stride, pt, pl, pad, ho, wo, cols, planes):
    # One row of patch values per tap, so the inner loop runs over output pixels
    # (vectorized); each output still sums its taps in (dy, dx, c) order, as the generated
    # C does, so float results match it exactly.
    _, h, w, c = x.shape
    f_n, k_n = wt.shape
    p_n = ho * wo
    for dy in range(kh):
        for dx in range(kw):
            # Output columns whose tap lands inside the image: ox0 <= ox < ox1.
            ox0 = min(wo, max(0, (pl - dx + stride - 1) // stride))
            ox1 = max(ox0, min(wo, (w + pl - dx + stride - 1) // stride))
            for cc in range(c):
                t = (dy * kw + dx) * c + cc
                for oy in range(ho):
                    iy = oy * stride + dy - pt
                    base = oy * wo
                    if iy < 0 or iy >= h:
                        for ox in range(wo):
                            cols[t, base + ox] = pad
                        continue
                    for ox in range(ox0):
                        cols[t, base + ox] = pad
                    for ox in range(ox0, ox1):
                        cols[t, base + ox] = x[n, iy, ox * stride + dx - pl, cc]
                    for ox in range(ox1, wo):
                        cols[t, base + ox] = pad
    planes[:] = 0
    for f in range(f_n):
        for t in range(k_n):
            wv = wt[f, t]
            for q in range(p_n):
                planes[f, q] += wv * cols[t, q]


@nb.njit(**_JIT)
def _dense_bits(x, wt, k, out):
    """x: (N, KW) uint64; wt: (KW, F) uint64; out[n, 0, f] = k - 2 popcount(x[n] ^ w[f])."""
    for n in range(x.shape[0]):
        _dense_bits_image(x, n, wt, k, out)
    return out


@nb.njit(**_JIT)
def _dense_bits_image(x, n, wt, k, out):
    kw_n, f_n = wt.shape
    pop = np.zeros(f_n, np.int64)
    for j in range(kw_n):
        a = x[n, j]
        for f in range(f_n):
            pop[f] += _popcount(a ^ wt[j, f])
    for f in range(f_n):
        out[n, 0, f] = k - 2 * pop[f]


@nb.njit(**_JIT)
def _dense_raw(x, wt, out):
    """x: (N, K) int32/float32; wt: (K, F) same dtype; sums in ascending k, as the C does."""
    for n in range(x.shape[0]):
        _dense_raw_image(x, n, wt, out)
    return out


@nb.njit(**_JIT)
def _dense_raw_image(x, n, wt, out):
    k_n, f_n = wt.shape
    acc = np.zeros(f_n, wt.dtype)
    for j in range(k_n):
        v = x[n, j]
        for f in range(f_n):
            acc[f] += wt[j, f] * v
    for f in range(f_n):
        out[n, 0, f] = acc[f]


@nb.njit(**_JIT)
def _threshold_pack(acc, sgn, thr, out):
    """Bits of the comparison ``sgn[f] * acc >= thr[f]`` (true means +1, bit 0).

    acc: (N, P, F) int32/float32; sgn: (F,) -1/0/+1 and thr: (F,) int64 or float64, which
    encode the four threshold modes; out: (N, P, ceil(F/64)) uint64.
    """
    for n in range(acc.shape[0]):
        _threshold_pack_image(acc, n, sgn, thr, out)
    return out


@nb.njit(**_JIT)
def _threshold_pack_image(acc, n, sgn, thr, out):
    _, p_n, f_n = acc.shape
    fw_n = out.shape[2]
    for p in range(p_n):
        for fw in range(fw_n):
            word = np.uint64(0)
            top = min(64, f_n - fw * 64)
            for b in range(top):
                f = fw * 64 + b
                if not sgn[f] * acc[n, p, f] >= thr[f]:
                    word |= np.uint64(1) << np.uint64(b)
            out[n, p, fw] = word


# --------------------------------------------------------------------------- packing helpers


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
            signs = b.signs()
            self.wt = np.ascontiguousarray(pack_activations(signs[:, None, :]).reshape(self.f, -1).T)
            self.pad_minus = b.pad_value == -1
            self.corr = self._zero_pad_correction(b, signs) if b.pad_value == 0 else \
                np.zeros((0, self.f), np.int32)
        elif b.input == "bits":
            self.wt = _tap_words(b.signs(), taps, b.in_shape[2])
        elif b.kind == "conv2d":
            self.wt = np.ascontiguousarray(b.weights().astype(dtype))
        else:
            self.wt = np.ascontiguousarray(b.weights().T.astype(dtype))
        self.dtype = dtype
        if b.output == "bits":
            m = b.modes
            sgn = np.select([m == MODE_GE, m == MODE_LE], [1, -1], 0)
            thr = np.select([m == MODE_GE, m == MODE_LE, m == MODE_PLUS],
                            [b.thresholds.astype(np.float64), -b.thresholds.astype(np.float64), 0.0],
                            1.0)
            if b.acc == "int32":
                self.sgn, self.thr = sgn.astype(np.int64), thr.astype(np.int64)
            else:
                self.sgn, self.thr = sgn.astype(np.float64), thr

    @staticmethod
    def _zero_pad_correction(b: Block, signs: np.ndarray) -> np.ndarray:
        """(ho*wo, F): what the padding taps add when packed as +1, to subtract again."""
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
        per_tap = signs.reshape(b.out_channels, kh * kw, c).sum(axis=2, dtype=np.int64)
        return np.ascontiguousarray((taps.reshape(ho * wo, -1) @ per_tap.T).astype(np.int32))

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        b, n = self.b, x.shape[0]
        out = np.empty((n, self.hp * self.wp, self.f), np.int32 if b.input == "bits" else self.dtype)
        if b.kind == "dense":
            if b.input == "bits":
                return _dense_bits(np.ascontiguousarray(x.reshape(n, -1)), self.wt, self.k, out)
            return _dense_raw(np.ascontiguousarray(x.reshape(n, -1)), self.wt, out)
        h, w, c = b.in_shape
        kh, kw = b.kernel_size
        pt, _, pl, _ = b.pads
        if b.input == "bits":
            return _conv_bits(x, self.wt, self.k, h, w, c, kh, kw, b.stride, pt, pl, self.pad_minus,
                              self.corr, self.ho, self.wo, self.ps, self.pst, self.hp, self.wp,
                              out)
        return _conv_raw(x, self.wt, kh, kw, b.stride, pt, pl, self.dtype(b.pad_value),
                         self.ho, self.wo, self.ps, self.pst, self.hp, self.wp, out)

    def epilogue(self, acc: np.ndarray) -> np.ndarray:
        b = self.b
        if b.output == "bits":
            out = np.empty((acc.shape[0], acc.shape[1], -(-self.f // 64)), np.uint64)
            return _threshold_pack(acc, self.sgn, self.thr, out)
        # Float32 multiply then add, unfused, as the engine's batch norm and the C do it.
        z = acc.astype(np.float32) * b.scale
        z += b.offset
        return z.reshape(acc.shape[0], -1)


class Runtime:
    """Inference on a :class:`~bnnlab.deploy.format.ModelFile`.

    Inputs are *raw*: what the file's input record reads (uint8 pixels 0..255 for image
    models, float32 values otherwise); :func:`raw_from_unit` converts dataset images.
    """

    def __init__(self, mf: ModelFile):
        self.model_file = mf
        self.input = mf.input
        self.class_names = mf.class_names
        self.metadata = dict(mf.metadata)
        self._blocks = [_Prepared(b) for b in mf.blocks]
        per_image = max(4 * (np.prod(b.conv_shape) + np.prod(b.in_shape)) for b in mf.blocks)
        # Keep a slice's buffers near 64 MiB however large the model's activations are.
        self.batch_size = int(max(1, min(1024, (64 << 20) // max(int(per_image), 1))))

    @property
    def n_outputs(self) -> int:
        return self.model_file.n_outputs

    def _normalize(self, raw: np.ndarray) -> np.ndarray:
        spec = self.input
        if raw.shape[1:] != tuple(spec.shape):
            raise ValueError(f"the model reads inputs of shape {spec.shape}, got {raw.shape[1:]}")
        if spec.encoding == "uint8" and raw.dtype != np.uint8:
            raise ValueError(f"the model reads uint8 pixels, got {raw.dtype}")
        b0 = self._blocks[0]
        if b0.dtype != np.float32:
            x = raw.astype(b0.dtype)
        else:
            x = raw.astype(np.float32) * np.float32(spec.scale)
            x += np.float32(spec.offset)
        shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
        return np.ascontiguousarray(x.reshape(raw.shape[0], *shape))

    def _run(self, raw: np.ndarray, trace: list | None = None) -> np.ndarray:
        x = self._normalize(raw)
        for pb in self._blocks:
            acc = pb.accumulate(x)
            x = pb.epilogue(acc)
            if trace is not None:
                trace.append(x if pb.b.output == "logits" else
                             unpack_activations(x, pb.f).reshape(x.shape[0], -1))
        return x

    def logits(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, n_outputs) float32 logits of raw inputs (N, *input shape).

        ``threads`` (default: every CPU this process may use) run slices of the batch at
        once; the kernels release the GIL, so plain Python threads share the work.
        """
        raw = np.asarray(raw)
        threads = available_cpus() if threads is None else max(1, int(threads))
        step = max(1, min(self.batch_size, 256))
        slices = [raw[i:i + step] for i in range(0, len(raw), step)]
        if threads == 1 or len(slices) < 2:
            outs = [self._run(s) for s in slices]
        else:
            with ThreadPoolExecutor(max_workers=min(threads, len(slices))) as pool:
                outs = list(pool.map(self._run, slices))
        return np.concatenate(outs) if outs else np.zeros((0, self.n_outputs), np.float32)

    def predict(self, raw: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Class index per input (first maximum, like ``numpy.argmax``)."""
        return self.logits(raw, threads).argmax(axis=1)

    def trace(self, raw: np.ndarray) -> list[np.ndarray]:
        """Every block's output for a small batch: int8 ±1 (N, elements), then the logits."""
        out: list[np.ndarray] = []
        self._run(np.asarray(raw), out)
        return out

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) the kernels this model uses."""
        shape = (1, *self.input.shape)
        self.logits(np.zeros(shape, np.uint8 if self.input.encoding == "uint8" else np.float32))


def available_cpus() -> int:
    """CPUs this process may run on: the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_runtime(path: str | os.PathLike) -> Runtime:
    return Runtime(read_file(path))
