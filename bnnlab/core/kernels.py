"""Numba kernels: bit packing, XNOR-popcount GEMM, float GEMM and convolution (forward,
sparse and dense backward), pooling, batch norm and the straight-through gate.

Conventions (as in Larq Compute Engine): bit 1 means -1, bit 0 means +1; element i of a
row goes to bit ``i % 64`` of word ``i // 64`` (least-significant bit first). Rows are
padded with zero bits in *both* operands, so padding never changes ``popcount(a ^ w)``
and ``dot(a, w) = K - 2 * popcount(a ^ w)`` with the true length K.

Every kernel here has a slow NumPy twin in :mod:`bnnlab.core.reference`; the tests
compare them exactly. All kernels release the GIL (``nogil=True``) so a worker thread
can train while the GUI thread paints.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time

import numpy as np
import numba as nb
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .settings import popcount_setting

_JIT = dict(nogil=True, cache=True, error_model="numpy")
_JIT_FLOAT = dict(_JIT, fastmath=True)
_JIT_PAR = dict(_JIT_FLOAT, parallel=True)
# Helpers called from hot loops are inlined in Numba's IR: a real call passes each array
# as a struct and costs atomic reference-count updates.
_JIT_INLINE = dict(_JIT_FLOAT, inline="always")

# Performance notes for these kernels:
# - Slicing a view inside a hot loop costs an atomic reference-count update, so loops
#   index flat 2-D arrays instead; compare-and-select loops keep every lane 32 bits wide
#   so LLVM can vectorize them without branches.
# - ``a[base + k]`` with a signed index that Numba cannot prove non-negative gets a
#   per-element negative-wraparound select, which stops vectorization: index 2-D rows
#   with ``range`` columns, or use the raw ``_ld``/``_vload`` intrinsics below.
# - In a ``parallel=True`` function every array expression (``s[:] = 0``, ``.sum()``)
#   becomes a parallel region of its own; those functions hold one ``prange`` only.
# - ``nb.get_num_threads()`` (a ctypes call) inside a jitted function makes it
#   uncacheable; the chunk count is chosen in Python and passed in.
# - fastmath lets LLVM assume no NaNs; kernels whose result must follow NumPy on NaN
#   (sign, the STE gate) are compiled without it.

# Below this many output rows a parallel region costs more than it saves.
PARALLEL_MIN_ROWS = 512

# Below about this much work (multiply-adds, or element visits) one thread beats two.
PARALLEL_MIN_WORK = 1 << 18


def _keep_freed_memory_mapped() -> None:
    """Ask glibc to keep freed large blocks instead of returning them to the kernel.

    A training step allocates and frees some 25 MB of arrays. By default glibc gives
    blocks above its (adaptive) mmap threshold back at once and trims the heap top, so
    the next step takes a page fault for every 4 KiB it touches again: about a tenth of
    the step. Its MALLOC_* variables are read at process start only, hence mallopt here.
    Set BNNLAB_KEEP_MALLOC=1, or any MALLOC_MMAP_THRESHOLD_ yourself, to leave it alone.
    """
    if os.environ.get("BNNLAB_KEEP_MALLOC") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # the largest value glibc accepts on 64-bit
    mallopt(m_trim_threshold, 256 << 20)


_keep_freed_memory_mapped()


class _Contention:
    """Whether other processes kept the CPUs busy lately (Linux; sampled every 0.25 s).

    An OpenMP parallel region ends only when every worker has run its chunk. When another
    process holds one of two cores, each region waits for the worker's next time slice,
    and a step took 17-19 ms where one thread takes 12.4 ms; sleeping workers avoid that
    but cost ~3 ms of wake-ups per step on an idle machine. So the workers spin (see
    bnnlab/__init__.py) and the kernels go serial while others use over half a core:
    CPU time of the whole machine (including time stolen by the hypervisor) minus this
    process's own.
    """

    PERIOD = 0.25
    THRESHOLD = 0.5  # cores used by others

    def __init__(self):
        self.contended = False
        self._last = None
        try:
            self._hz = os.sysconf("SC_CLK_TCK") if os.path.exists("/proc/stat") else None
        except (ValueError, AttributeError, OSError):
            self._hz = None

    def _sample(self):
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # not idle
        t = os.times()
        return time.monotonic(), busy / self._hz, t.user + t.system

    def check(self) -> bool:
        if self._hz is None:
            return False
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.PERIOD:
            return self.contended
        try:
            s = self._sample()
        except (OSError, ValueError):
            return self.contended
        if self._last is not None:
            others = (s[1] - self._last[1]) - (s[2] - self._last[2])
            self.contended = others / max(s[0] - self._last[0], 1e-9) > self.THRESHOLD
        self._last = s
        return self.contended


_contention = _Contention()


def _chunks(items: int, work: int) -> int:
    """Number of equal chunks to split ``items`` into for a parallel kernel."""
    if work < PARALLEL_MIN_WORK or _contention.check():
        return 1
    return max(1, min(int(items), nb.get_num_threads()))


# Sums over the batch (weight gradients, batch-norm statistics) are split into this many
# partial sums whatever the thread count, and the partials are added in a fixed order.
# A chunk of a parallel kernel computes whole partials, so the result has the same bits
# on one thread or many, busy machine or idle: a seed makes a run repeatable.
REDUCE_PARTS = 8


def _reduce_parts(items: int) -> int:
    return max(1, min(int(items), REDUCE_PARTS))


@intrinsic
def popcount64(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (compiles to ``popcnt``, or vector code in loops)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


def words_for(k: int) -> int:
    """Number of 64-bit words that hold k bits."""
    return (int(k) + 63) // 64


# --------------------------------------------------------------------------- packing


@nb.njit(**_JIT)
def pack_rows(x, out):
    """Pack the signs of a float matrix row by row.

    x: (M, K) float32; out: (M, words_for(K)) uint64, overwritten. Bit = 1 where x < 0.
    """
    m, k = x.shape
    kw = out.shape[1]
    for i in range(m):
        for w in range(kw):
            word = np.uint64(0)
            base = w * 64
            n = min(64, k - base)
            for b in range(n):
                if x[i, base + b] < 0:
                    word |= np.uint64(1) << np.uint64(b)
            out[i, w] = word
    return out


@nb.njit(**_JIT)
def _pack_pixels(x, out):
    # x: (P, C) float32 -> out (P, CW) uint64; the channel bits of each pixel.
    return pack_rows(x, out)


@nb.njit(**_JIT)
def _or_bits(out, r, off, val, nbits):
    # OR the low `nbits` of `val` into row r of `out`, starting at bit `off`.
    w = off >> 6
    s = off & 63
    out[r, w] |= val << np.uint64(s)
    if s != 0 and s + nbits > 64:
        out[r, w + 1] |= val >> np.uint64(64 - s)


@nb.njit(**_JIT)
def pack_patches(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out):
    """Packed im2col: one bit row per output pixel, taps in (dy, dx, channel) order.

    pix: (n*h*w, words_for(c)) uint64, each pixel's channel bits (see ``pack_rows``).
    out: (n*ho*wo, words_for(kh*kw*c)) uint64, overwritten. Taps that fall in the
    padding get ``pad_bit`` (0 = +1, 1 = -1) in all their channel bits.
    """
    if c % 64 == 0 or 64 % c == 0:
        return _pack_patches_aligned(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo,
                                     pad_bit, out)
    cw = (c + 63) // 64
    tail = c - (cw - 1) * 64
    full = np.uint64(0xFFFFFFFFFFFFFFFF)
    out[:] = 0
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                off = 0
                for dy in range(kh):
                    iy = oy * stride + dy - pad_top
                    for dx in range(kw):
                        ix = ox * stride + dx - pad_left
                        inside = 0 <= iy < h and 0 <= ix < w
                        p = (img * h + iy) * w + ix
                        for cc in range(cw):
                            nb_ = 64 if cc < cw - 1 else tail
                            if inside:
                                val = pix[p, cc]
                            elif pad_bit:
                                val = full if nb_ == 64 else (np.uint64(1) << np.uint64(nb_)) - np.uint64(1)
                            else:
                                val = np.uint64(0)
                            if val != 0:
                                _or_bits(out, r, off, val, nb_)
                            off += nb_
    return out


@nb.njit(**_JIT)
def _pack_patches_aligned(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit,
                          out):
    # C a multiple of 64 (whole words per tap) or a divisor of 64 (64/C taps per word):
    # the bits of a tap never straddle a word, so each output word is built in a
    # register and stored once, with no read-modify-write of the output row.
    cw = (c + 63) // 64
    per = 64 // c if c < 64 else 1
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if c >= 64 else (np.uint64(1) << np.uint64(c)) - np.uint64(1)
    padv = mask if pad_bit else np.uint64(0)
    ntap = kh * kw
    nwo = out.shape[1]
    tdy = np.empty(ntap, np.int64)
    tdx = np.empty(ntap, np.int64)
    poff = np.empty(ntap, np.int64)
    for t in range(ntap):
        tdy[t] = t // kw - pad_top
        tdx[t] = t % kw - pad_left
        poff[t] = (t // kw) * w + t % kw
    pix1 = pix[:, 0]
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                if c >= 64:
                    for t in range(ntap):
                        iy = oy * stride + tdy[t]
                        ix = ox * stride + tdx[t]
                        if 0 <= iy < h and 0 <= ix < w:
                            p = (img * h + iy) * w + ix
                            for cc in range(cw):
                                out[r, t * cw + cc] = pix[p, cc]
                        else:
                            for cc in range(cw):
                                out[r, t * cw + cc] = padv
                elif (oy * stride - pad_top >= 0 and oy * stride - pad_top + kh <= h
                      and ox * stride - pad_left >= 0 and ox * stride - pad_left + kw <= w):
                    # The whole patch is inside: no bounds checks per tap.
                    b = (img * h + oy * stride - pad_top) * w + ox * stride - pad_left
                    if per == 2:  # 32 channels: two taps per word, spelled out
                        for wd in range(nwo):
                            lo = pix1[b + poff[2 * wd]]
                            hi = pix1[b + poff[2 * wd + 1]] if 2 * wd + 1 < ntap else np.uint64(0)
                            out[r, wd] = lo | (hi << np.uint64(32))
                        continue
                    t = 0
                    for wd in range(nwo):
                        word = np.uint64(0)
                        for q in range(min(per, ntap - t)):
                            word |= pix1[b + poff[t]] << np.uint64(q * c)
                            t += 1
                        out[r, wd] = word
                else:
                    t = 0
                    for wd in range(nwo):
                        word = np.uint64(0)
                        for q in range(min(per, ntap - t)):
                            iy = oy * stride + tdy[t]
                            ix = ox * stride + tdx[t]
                            v = padv
                            if 0 <= iy < h and 0 <= ix < w:
                                v = pix[(img * h + iy) * w + ix, 0]
                            word |= v << np.uint64(q * c)
                            t += 1
                        out[r, wd] = word
    return out


@nb.njit(**_JIT_PAR)
def _pack_patches_par(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out,
                      nch):
    per = (n + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(n, ch * per)
        i1 = min(n, i0 + per)
        pack_patches(pix[i0 * h * w:i1 * h * w], i1 - i0, h, w, c, kh, kw, stride, pad_top,
                     pad_left, ho, wo, pad_bit, out[i0 * ho * wo:i1 * ho * wo])


def pack_patches_parallel(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit):
    """:func:`pack_patches` into a new array, images split over threads."""
    out = np.empty((n * ho * wo, words_for(kh * kw * c)), np.uint64)
    nch = _chunks(n, out.size * 8)
    if nch == 1:
        return pack_patches(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit,
                            out)
    _pack_patches_par(pix, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, pad_bit, out,
                      nch)
    return out


def pack_conv_input(xq: np.ndarray, kh: int, kw: int, stride: int, pads: tuple[int, int],
                    out_hw: tuple[int, int], pad_bit: int) -> np.ndarray:
    """Packed patches of a binarized NHWC input: (N*Ho*Wo, words_for(kh*kw*C)) uint64."""
    n, h, w, c = xq.shape
    pix = np.empty((n * h * w, words_for(c)), np.uint64)
    pack_rows(np.ascontiguousarray(xq.reshape(n * h * w, c), dtype=np.float32), pix)
    ho, wo = out_hw
    out = np.empty((n * ho * wo, words_for(kh * kw * c)), np.uint64)
    return pack_patches(pix, n, h, w, c, kh, kw, stride, pads[0], pads[1], ho, wo, pad_bit, out)


def pack_weights(wq: np.ndarray) -> np.ndarray:
    """Pack a (K, N) ±1 weight matrix column-wise into the (KW, N) layout of ``xnor_gemm``."""
    k, n = wq.shape
    rows = np.empty((n, words_for(k)), np.uint64)
    pack_rows(np.ascontiguousarray(wq.T, dtype=np.float32), rows)
    return np.ascontiguousarray(rows.T)


# --------------------------------------------------------------------------- float im2col


@nb.njit(**_JIT_FLOAT)
def im2col(x, kh, kw, stride, pad_top, pad_left, ho, wo, pad_value, out):
    """Float im2col of an NHWC input: out (N*Ho*Wo, kh*kw*C), taps (dy, dx, c)."""
    n, h, w, c = x.shape
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                col = 0
                for dy in range(kh):
                    iy = oy * stride + dy - pad_top
                    for dx in range(kw):
                        ix = ox * stride + dx - pad_left
                        if 0 <= iy < h and 0 <= ix < w:
                            for cc in range(c):
                                out[r, col + cc] = x[img, iy, ix, cc]
                        else:
                            for cc in range(c):
                                out[r, col + cc] = pad_value
                        col += c
    return out


@nb.njit(**_JIT_FLOAT)
def col2im(cols, n, h, w, c, kh, kw, stride, pad_top, pad_left, ho, wo, out):
    """Adjoint of :func:`im2col`: scatter-add column gradients back to NHWC ``out``."""
    out[:] = 0
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (img * ho + oy) * wo + ox
                col = 0
                for dy in range(kh):
                    iy = oy * stride + dy - pad_top
                    for dx in range(kw):
                        ix = ox * stride + dx - pad_left
                        if 0 <= iy < h and 0 <= ix < w:
                            for cc in range(c):
                                out[img, iy, ix, cc] += cols[r, col + cc]
                        col += c
    return out




# --------------------------------------------------------------------------- SIMD values
#
# LLVM's loop vectorizer keeps accumulators in memory (it cannot prove the output does not
# alias the inputs), so a loop like ``c[j] += a * b[j]`` costs a load and a store per
# vector. To keep GEMM tiles and sparse row sums in registers, the kernels below use an
# 8 x float32 value type (one AVX2 register) with a handful of intrinsics. The raw loads
# and stores do no bounds or wraparound checks: callers index only inside their arrays.

_V8 = ir.VectorType(ir.FloatType(), 8)
_I32 = ir.IntType(32)


class _Float32x8(types.Type):
    def __init__(self):
        super().__init__(name="float32x8")


float32x8 = _Float32x8()


@register_model(_Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _is_f32c(ary):
    return isinstance(ary, types.Array) and ary.dtype == types.float32 and ary.layout == "C"


def _addr(context, builder, aryty, ary, idx, ptr_type):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), ptr_type.as_pointer())


@intrinsic
def _vload(typingctx, ary, idx):
    """Eight floats ary.flat[idx:idx+8] (unaligned)."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1], _V8), align=4)

    return float32x8(ary, idx), codegen


@intrinsic
def _vstore(typingctx, ary, idx, v):
    """ary.flat[idx:idx+8] = v."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer) and v == float32x8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _addr(context, builder, sig.args[0], args[0], args[1], _V8),
                      align=4)
        return context.get_dummy_value()

    return types.void(ary, idx, v), codegen


@intrinsic
def _ld(typingctx, ary, idx):
    """ary.flat[idx] as float32, without Numba's negative-index wraparound select."""
    if not (_is_f32c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1],
                                  ir.FloatType()), align=4)

    return types.float32(ary, idx), codegen


@intrinsic
def _vsplat(typingctx, x):
    """Eight copies of a float32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

    return float32x8(x), codegen


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8, [0.0] * 8)

    return float32x8(), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c, fused."""
    if not (a == b == c == float32x8):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * 3),
                                            "llvm.fma.v8f32")
        return builder.call(fn, args)

    return float32x8(a, b, c), codegen


@intrinsic
def _vadd(typingctx, a, b):
    if not (a == b == float32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return float32x8(a, b), codegen


# --------------------------------------------------------------------------- XNOR GEMM
#
# A <4 x i64> value type for the binary GEMM: XOR four packed words at once and count
# their bits. How the bits are counted depends on the CPU, chosen once at import:
#
# - "lanes" (AVX-512 VPOPCNTDQ with VL): one ``vpopcntq`` per vector, counts added as
#   64-bit lanes.
# - "bytes" (everything else): count bits per byte (LLVM lowers a byte-wise ctpop to a
#   nibble table lookup, vpshufb on AVX2) and add the byte counts in registers. A byte
#   holds at most 8 per word, so up to 31 words are summed before the bytes are folded
#   into 64-bit lane totals.
#
# Both are the same LLVM vector operations with different element widths, so either
# runs correctly on any x86-64 CPU; ``BNNLAB_POPCOUNT=bytes|lanes`` overrides the choice
# (the tests run each). Numba's cache stores whichever was compiled first: the choice is
# part of the cache directory's contents, so set NUMBA_CACHE_DIR when switching.

_U4 = ir.VectorType(ir.IntType(64), 4)
_B32 = ir.VectorType(ir.IntType(8), 32)
_HOST_FEATURES = llvm_binding.get_host_cpu_features()
_HOST_AVX2 = bool(_HOST_FEATURES.get("avx2", False))


def _popcount_mode() -> str:
    forced = popcount_setting()
    if forced != "auto":
        return forced
    has = all(_HOST_FEATURES.get(f, False) for f in ("avx512vpopcntdq", "avx512vl"))
    return "lanes" if has else "bytes"


POPCOUNT_MODE = _popcount_mode()
_LANES = POPCOUNT_MODE == "lanes"


class _Uint64x4(types.Type):
    def __init__(self):
        super().__init__(name="uint64x4")


uint64x4 = _Uint64x4()


@register_model(_Uint64x4)
class _Uint64x4Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _U4)


def _is_u64c(ary):
    return isinstance(ary, types.Array) and ary.dtype == types.uint64 and ary.layout == "C"


@intrinsic
def _uload(typingctx, ary, idx):
    """Four words ary.flat[idx:idx+4]."""
    if not (_is_u64c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1], _U4), align=8)

    return uint64x4(ary, idx), codegen


@intrinsic
def _uld(typingctx, ary, idx):
    """ary.flat[idx] as uint64, without wraparound handling."""
    if not (_is_u64c(ary) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_addr(context, builder, sig.args[0], args[0], args[1],
                                  ir.IntType(64)), align=8)

    return types.uint64(ary, idx), codegen


@intrinsic
def _usplat(typingctx, x):
    if x != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_U4, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_U4, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 4), [0] * 4))

    return uint64x4(x), codegen


@intrinsic
def _uzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_U4, [0] * 4)

    return uint64x4(), codegen


@intrinsic
def _uadd(typingctx, a, b):
    """Lane-wise 64-bit add."""
    if not (a == b == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return uint64x4(a, b), codegen


@intrinsic
def _uxor_popadd(typingctx, acc, a, b):
    """acc + popcount(a ^ b): per byte of acc ("bytes" mode) or per 64-bit lane ("lanes")."""
    if not (acc == a == b == uint64x4):
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_U4, [_U4]),
                                                "llvm.ctpop.v4i64")
            return builder.add(args[0], builder.call(fn, [builder.xor(args[1], args[2])]))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B32, [_B32]),
                                            "llvm.ctpop.v32i8")
        x = builder.bitcast(builder.xor(args[1], args[2]), _B32)
        s = builder.add(builder.bitcast(args[0], _B32), builder.call(fn, [x]))
        return builder.bitcast(s, _U4)

    return uint64x4(acc, a, b), codegen


@intrinsic
def _ubytesum(typingctx, v):
    """Sum of the eight bytes of each 64-bit lane (in "lanes" mode, v itself)."""
    if v != uint64x4:
        return None

    def codegen(context, builder, sig, args):
        if _LANES:
            return args[0]
        if _HOST_AVX2:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_U4, [_B32, _B32]), "llvm.x86.avx2.psad.bw")
            return builder.call(fn, [builder.bitcast(args[0], _B32), ir.Constant(_B32, [0] * 32)])

        def splat(c):
            return ir.Constant(_U4, [c] * 4)

        x = args[0]
        x = builder.add(builder.and_(x, splat(0x00FF00FF00FF00FF)),
                        builder.and_(builder.lshr(x, splat(8)), splat(0x00FF00FF00FF00FF)))
        x = builder.add(builder.and_(x, splat(0x0000FFFF0000FFFF)),
                        builder.and_(builder.lshr(x, splat(16)), splat(0x0000FFFF0000FFFF)))
        return builder.add(builder.and_(x, splat(0xFFFFFFFF)), builder.lshr(x, splat(32)))

    return uint64x4(v), codegen


@nb.njit(**_JIT_INLINE)
def _xnor_tile2x16(a, i0, i1, bt, j0, n, nw):
    # Bit counts of rows i0, i1 of a against columns j0..j0+15 of bt, as 8 lane vectors.
    t00 = _uzero()
    t01 = _uzero()
    t02 = _uzero()
    t03 = _uzero()
    t10 = _uzero()
    t11 = _uzero()
    t12 = _uzero()
    t13 = _uzero()
    for w0 in range(0, nw, 31):
        c00 = _uzero()
        c01 = _uzero()
        c02 = _uzero()
        c03 = _uzero()
        c10 = _uzero()
        c11 = _uzero()
        c12 = _uzero()
        c13 = _uzero()
        for w in range(w0, min(nw, w0 + 31)):
            p = w * n + j0
            b0 = _uload(bt, p)
            b1 = _uload(bt, p + 4)
            b2 = _uload(bt, p + 8)
            b3 = _uload(bt, p + 12)
            s = _usplat(_uld(a, i0 * nw + w))
            c00 = _uxor_popadd(c00, s, b0)
            c01 = _uxor_popadd(c01, s, b1)
            c02 = _uxor_popadd(c02, s, b2)
            c03 = _uxor_popadd(c03, s, b3)
            s = _usplat(_uld(a, i1 * nw + w))
            c10 = _uxor_popadd(c10, s, b0)
            c11 = _uxor_popadd(c11, s, b1)
            c12 = _uxor_popadd(c12, s, b2)
            c13 = _uxor_popadd(c13, s, b3)
        t00 = _uadd(t00, _ubytesum(c00))
        t01 = _uadd(t01, _ubytesum(c01))
        t02 = _uadd(t02, _ubytesum(c02))
        t03 = _uadd(t03, _ubytesum(c03))
        t10 = _uadd(t10, _ubytesum(c10))
        t11 = _uadd(t11, _ubytesum(c11))
        t12 = _uadd(t12, _ubytesum(c12))
        t13 = _uadd(t13, _ubytesum(c13))
    return t00, t01, t02, t03, t10, t11, t12, t13


@intrinsic
def _ustore_dots(typingctx, out, idx, t, k):
    """out.flat[idx:idx+4] = k - 2*t, as out's dtype (int32 or float32)."""
    if not (isinstance(out, types.Array) and out.layout == "C" and t == uint64x4
            and out.dtype in (types.int32, types.float32) and isinstance(idx, types.Integer)
            and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i4 = ir.VectorType(_I32, 4)
        kk = builder.trunc(args[3], _I32)
        kv = builder.shuffle_vector(
            builder.insert_element(ir.Constant(i4, ir.Undefined), kk, ir.Constant(_I32, 0)),
            ir.Constant(i4, ir.Undefined), ir.Constant(i4, [0] * 4))
        cnt = builder.trunc(args[2], i4)
        v = builder.sub(kv, builder.shl(cnt, ir.Constant(i4, [1] * 4)))
        if sig.args[0].dtype == types.float32:
            v = builder.sitofp(v, ir.VectorType(ir.FloatType(), 4))
        builder.store(v, _addr(context, builder, sig.args[0], args[0], args[1], v.type), align=4)
        return context.get_dummy_value()

    return types.void(out, idx, t, k), codegen


@nb.njit(**_JIT_INLINE)
def _put_dots(out, at, k, t0, t1, t2, t3):
    _ustore_dots(out, at, t0, k)
    _ustore_dots(out, at + 4, t1, k)
    _ustore_dots(out, at + 8, t2, k)
    _ustore_dots(out, at + 12, t3, k)


@nb.njit(**_JIT)
def _xnor_gemm_simd_rows(a, bt, k, out, r0, r1):
    nw = bt.shape[0]
    n = bt.shape[1]
    n16 = n - n % 16
    a1 = a.reshape(-1)
    b1 = bt.reshape(-1)
    o1 = out.reshape(-1)
    for i in range(r0, r1, 2):
        i1 = min(i + 1, r1 - 1)  # an odd last row is computed twice, stored once
        for j0 in range(0, n16, 16):
            t00, t01, t02, t03, t10, t11, t12, t13 = _xnor_tile2x16(a1, i, i1, b1, j0, n, nw)
            _put_dots(o1, i * n + j0, k, t00, t01, t02, t03)
            if i1 != i:
                _put_dots(o1, i1 * n + j0, k, t10, t11, t12, t13)
        for j in range(n16, n):
            acc = 0
            for w in range(nw):
                acc += popcount64(a[i, w] ^ bt[w, j])
            out[i, j] = k - 2 * acc
            if i1 != i:
                acc = 0
                for w in range(nw):
                    acc += popcount64(a[i1, w] ^ bt[w, j])
                out[i1, j] = k - 2 * acc


@nb.njit(**_JIT)
def xnor_gemm_serial(a, bt, k, out):
    """out[i, j] = K - 2 * popcount(a[i] ^ b[j]), the ±1 dot product of packed rows.

    a: (M, KW) uint64 packed rows; bt: (KW, N) uint64, packed B rows stored transposed
    (word-major) so that four output columns share one vector load; out: (M, N) int32
    (or float32, to feed float layers without a conversion pass).
    """
    _xnor_gemm_simd_rows(a, bt, k, out, 0, a.shape[0])
    return out


@nb.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def xnor_gemm_parallel(a, bt, k, out):
    """Same as :func:`xnor_gemm_serial`, rows split in equal blocks over threads."""
    # Fixed blocks of rows: asking Numba for the thread count inside a cached parallel
    # function would make it uncacheable (the call goes through a ctypes pointer).
    m = a.shape[0]
    for b in nb.prange((m + 63) // 64):
        _xnor_gemm_simd_rows(a, bt, k, out, b * 64, min(m, b * 64 + 64))
    return out


def xnor_gemm(a: np.ndarray, bt: np.ndarray, k: int, out: np.ndarray | None = None,
              parallel: bool | None = None) -> np.ndarray:
    """Binary GEMM on packed operands; see :func:`xnor_gemm_serial` for shapes."""
    if a.shape[1] != bt.shape[0]:
        raise ValueError(f"packed widths differ: A has {a.shape[1]} words, B has {bt.shape[0]}")
    if out is None:
        out = np.empty((a.shape[0], bt.shape[1]), np.int32)
    if out.dtype not in (np.int32, np.float32):
        raise ValueError(f"xnor_gemm writes int32 or float32, not {out.dtype}")
    a = np.ascontiguousarray(a, dtype=np.uint64)
    bt = np.ascontiguousarray(bt, dtype=np.uint64)
    if parallel is None:
        parallel = (a.shape[0] >= PARALLEL_MIN_ROWS and nb.get_num_threads() > 1
                    and not _contention.check())
    if parallel:
        return xnor_gemm_parallel(a, bt, np.int64(k), out)
    return xnor_gemm_serial(a, bt, np.int64(k), out)


# --------------------------------------------------------------------------- float GEMM
#
# One register-tiled product serves every dense float product of training:
#     c[ic[i] + j] (+)= sum_k a[ia[i] + ka[k]] * b[bo + k*ldb + j]
# for i < len(ia), k < len(ka), j < n. The offset tables let A be a plain matrix, its
# transpose, or the patches of an NHWC image (ia = pixel origins, ka = tap offsets), so
# no im2col copy is made. Tiles are 4 rows x 16 columns: eight accumulators, two loads
# of B and four broadcasts of A per eight fused multiply-adds.


@nb.njit(**_JIT_INLINE)
def _tile4x16(a, a0, a1, a2, a3, ka, b, bo, ldb):
    c00 = _vzero()
    c01 = _vzero()
    c10 = _vzero()
    c11 = _vzero()
    c20 = _vzero()
    c21 = _vzero()
    c30 = _vzero()
    c31 = _vzero()
    for k in range(ka.shape[0]):
        q = ka[k]
        p = bo + k * ldb
        b0 = _vload(b, p)
        b1 = _vload(b, p + 8)
        s = _vsplat(_ld(a, a0 + q))
        c00 = _vfma(s, b0, c00)
        c01 = _vfma(s, b1, c01)
        s = _vsplat(_ld(a, a1 + q))
        c10 = _vfma(s, b0, c10)
        c11 = _vfma(s, b1, c11)
        s = _vsplat(_ld(a, a2 + q))
        c20 = _vfma(s, b0, c20)
        c21 = _vfma(s, b1, c21)
        s = _vsplat(_ld(a, a3 + q))
        c30 = _vfma(s, b0, c30)
        c31 = _vfma(s, b1, c31)
    return c00, c01, c10, c11, c20, c21, c30, c31


@nb.njit(**_JIT_INLINE)
def _put16(c, at, v0, v1, acc):
    if acc:
        v0 = _vadd(v0, _vload(c, at))
        v1 = _vadd(v1, _vload(c, at + 8))
    _vstore(c, at, v0)
    _vstore(c, at + 8, v1)


@nb.njit(**_JIT_INLINE)
def _tile1x16(a, a0, ka, b, bo, ldb):
    c0 = _vzero()
    c1 = _vzero()
    for k in range(ka.shape[0]):
        p = bo + k * ldb
        s = _vsplat(_ld(a, a0 + ka[k]))
        c0 = _vfma(s, _vload(b, p), c0)
        c1 = _vfma(s, _vload(b, p + 8), c1)
    return c0, c1


@nb.njit(**_JIT_FLOAT)
def _gemm_block(a, ia, ka, b, bo, ldb, n, c, co, ic, acc):
    m = ia.shape[0]
    nk = ka.shape[0]
    n16 = n - n % 16
    m4 = m - m % 4
    for i in range(0, m4, 4):
        a0 = ia[i]
        a1 = ia[i + 1]
        a2 = ia[i + 2]
        a3 = ia[i + 3]
        for j in range(0, n16, 16):
            c00, c01, c10, c11, c20, c21, c30, c31 = _tile4x16(a, a0, a1, a2, a3, ka, b,
                                                               bo + j, ldb)
            _put16(c, co + ic[i] + j, c00, c01, acc)
            _put16(c, co + ic[i + 1] + j, c10, c11, acc)
            _put16(c, co + ic[i + 2] + j, c20, c21, acc)
            _put16(c, co + ic[i + 3] + j, c30, c31, acc)
    for i in range(m4, m):
        for j in range(0, n16, 16):
            c0, c1 = _tile1x16(a, ia[i], ka, b, bo + j, ldb)
            _put16(c, co + ic[i] + j, c0, c1, acc)
    # Columns past the last multiple of 16: a plain loop.
    for i in range(m):
        for j in range(n16, n):
            s = np.float32(0)
            for k in range(nk):
                s += _ld(a, ia[i] + ka[k]) * _ld(b, bo + k * ldb + j)
            if acc:
                c[co + ic[i] + j] += s
            else:
                c[co + ic[i] + j] = s


@nb.njit(**_JIT_FLOAT)
def _gemm_offsets(a, ia, ka, b, bo, ldb, n, c, co, ic, acc):
    # Blocks of K sized so that the rows of B they touch (about 16 KiB) stay in L1 while
    # every tile of C passes over them; otherwise each tile would stream all of B again.
    nk = ka.shape[0]
    kb = max(16, 4096 // max(n, 1))
    if nk <= kb:
        _gemm_block(a, ia, ka, b, bo, ldb, n, c, co, ic, acc)
        return
    for k0 in range(0, nk, kb):
        k1 = min(nk, k0 + kb)
        _gemm_block(a, ia, ka[k0:k1], b, bo + k0 * ldb, ldb, n, c, co, ic, acc or k0 > 0)


@nb.njit(**_JIT_PAR)
def _gemm_par(a, ia, ka, b, ldb, n, c, ic, acc, nch):
    m = ia.shape[0]
    per = (m + nch - 1) // nch
    per += (-per) % 4
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _gemm_offsets(a, ia[i0:i1], ka, b, 0, ldb, n, c, 0, ic[i0:i1], acc)


def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """a @ b (or a.T @ b) in float32 with the Numba GEMM, for the products of training.

    Multi-threaded OpenBLAS leaves its workers spinning after each call, which starves
    the Numba threads of the next kernel on a two-core machine (a 576x64 @ 64x64 product
    measured 12 ms that way, 0.06 ms on one BLAS thread); these products are small, so
    training stays off BLAS altogether.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if trans_a:
        k, m = a.shape
        ia, ka = np.arange(m, dtype=np.int64), np.arange(k, dtype=np.int64) * m
    else:
        m, k = a.shape
        ia, ka = np.arange(m, dtype=np.int64) * k, np.arange(k, dtype=np.int64)
    if b.shape[0] != k:
        raise ValueError(f"matmul: inner sizes differ ({k} and {b.shape[0]})")
    n = b.shape[1]
    out = np.empty((m, n), np.float32)
    ic = np.arange(m, dtype=np.int64) * n
    nch = _chunks(m // 4, m * n * k // 8)
    if nch == 1:
        _gemm_offsets(a.reshape(-1), ia, ka, b.reshape(-1), 0, n, n, out.reshape(-1), 0, ic, False)
    else:
        _gemm_par(a.reshape(-1), ia, ka, b.reshape(-1), n, n, out.reshape(-1), ic, False, nch)
    return out


# --------------------------------------------------------------------------- sparse rows


@nb.njit(**_JIT_INLINE)
def _sparse_rows(dst, d, src, offs, gs, j0, j1, e, m):
    """dst[d:d+m] += sum_j gs[j] * src[offs[j]+e : offs[j]+e+m] for j0 <= j < j1.

    The row is summed over all j in registers, in blocks of 96 floats (twelve
    accumulators: enough independent chains to hide the FMA latency), then 32 and 8,
    and stored once per block.
    """
    k = 0
    while k + 96 <= m:
        p = d + k
        v0 = _vload(dst, p)
        v1 = _vload(dst, p + 8)
        v2 = _vload(dst, p + 16)
        v3 = _vload(dst, p + 24)
        v4 = _vload(dst, p + 32)
        v5 = _vload(dst, p + 40)
        v6 = _vload(dst, p + 48)
        v7 = _vload(dst, p + 56)
        v8 = _vload(dst, p + 64)
        v9 = _vload(dst, p + 72)
        v10 = _vload(dst, p + 80)
        v11 = _vload(dst, p + 88)
        for j in range(j0, j1):
            s = _vsplat(gs[j])
            q = offs[j] + e + k
            v0 = _vfma(s, _vload(src, q), v0)
            v1 = _vfma(s, _vload(src, q + 8), v1)
            v2 = _vfma(s, _vload(src, q + 16), v2)
            v3 = _vfma(s, _vload(src, q + 24), v3)
            v4 = _vfma(s, _vload(src, q + 32), v4)
            v5 = _vfma(s, _vload(src, q + 40), v5)
            v6 = _vfma(s, _vload(src, q + 48), v6)
            v7 = _vfma(s, _vload(src, q + 56), v7)
            v8 = _vfma(s, _vload(src, q + 64), v8)
            v9 = _vfma(s, _vload(src, q + 72), v9)
            v10 = _vfma(s, _vload(src, q + 80), v10)
            v11 = _vfma(s, _vload(src, q + 88), v11)
        _vstore(dst, p, v0)
        _vstore(dst, p + 8, v1)
        _vstore(dst, p + 16, v2)
        _vstore(dst, p + 24, v3)
        _vstore(dst, p + 32, v4)
        _vstore(dst, p + 40, v5)
        _vstore(dst, p + 48, v6)
        _vstore(dst, p + 56, v7)
        _vstore(dst, p + 64, v8)
        _vstore(dst, p + 72, v9)
        _vstore(dst, p + 80, v10)
        _vstore(dst, p + 88, v11)
        k += 96
    while k + 32 <= m:
        p = d + k
        v0 = _vload(dst, p)
        v1 = _vload(dst, p + 8)
        v2 = _vload(dst, p + 16)
        v3 = _vload(dst, p + 24)
        for j in range(j0, j1):
            s = _vsplat(gs[j])
            q = offs[j] + e + k
            v0 = _vfma(s, _vload(src, q), v0)
            v1 = _vfma(s, _vload(src, q + 8), v1)
            v2 = _vfma(s, _vload(src, q + 16), v2)
            v3 = _vfma(s, _vload(src, q + 24), v3)
        _vstore(dst, p, v0)
        _vstore(dst, p + 8, v1)
        _vstore(dst, p + 16, v2)
        _vstore(dst, p + 24, v3)
        k += 32
    while k + 8 <= m:
        p = d + k
        v0 = _vload(dst, p)
        for j in range(j0, j1):
            v0 = _vfma(_vsplat(gs[j]), _vload(src, offs[j] + e + k), v0)
        _vstore(dst, p, v0)
        k += 8
    while k < m:
        t = np.float32(0)
        for j in range(j0, j1):
            t += gs[j] * _ld(src, offs[j] + e + k)
        dst[d + k] += t
        k += 1


# --------------------------------------------------------------------------- pooling


@nb.njit(**_JIT_FLOAT)
def _maxpool_forward_rows(x2, q0, q1, h, w, p, s, ho, wo, out2, arg2):
    # Output rows q = (image, oy) in [q0, q1); x2/out2/arg2 are (pixels, C). A 2x2 window
    # reads its four taps in one channel loop, so the loop is entered once per pixel.
    c = x2.shape[1]
    for q in range(q0, q1):
        img = q // ho
        oy = q - img * ho
        for ox in range(wo):
            r = q * wo + ox
            b0 = (img * h + oy * s) * w + ox * s
            if p == 2:
                b1 = b0 + 1
                b2 = b0 + w
                b3 = b2 + 1
                for cc in range(c):
                    m = x2[b0, cc]
                    a = np.int32(0)
                    v = x2[b1, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(1) if t else a
                    v = x2[b2, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(2) if t else a
                    v = x2[b3, cc]
                    t = v > m
                    m = v if t else m
                    a = np.int32(3) if t else a
                    out2[r, cc] = m
                    arg2[r, cc] = a
            else:
                for cc in range(c):
                    out2[r, cc] = x2[b0, cc]
                    arg2[r, cc] = 0
                for k in range(1, p * p):
                    src = b0 + (k // p) * w + k % p
                    kk = np.int32(k)
                    for cc in range(c):
                        v = x2[src, cc]
                        t = v > out2[r, cc]
                        out2[r, cc] = v if t else out2[r, cc]
                        arg2[r, cc] = kk if t else arg2[r, cc]


@nb.njit(**_JIT_PAR)
def _maxpool_forward_par(x2, n, h, w, p, s, ho, wo, out2, arg2, nch):
    rows = n * ho
    per = (rows + nch - 1) // nch
    for ch in nb.prange(nch):
        _maxpool_forward_rows(x2, min(rows, ch * per), min(rows, ch * per + per), h, w, p, s,
                              ho, wo, out2, arg2)


def maxpool_forward(x, p, s, out, arg):
    """Max pooling, 'valid': x (N, H, W, C) float32 -> out (N, Ho, Wo, C) float32.

    arg (N, Ho, Wo, C) int32 receives the winning tap ``dy * p + dx``; ties go to the
    first tap in row-major order.
    """
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    args = (x.reshape(n * h * w, c), n, h, w, p, s, ho, wo, out.reshape(n * ho * wo, c),
            arg.reshape(n * ho * wo, c))
    nch = _chunks(n * ho, x.size)
    if nch == 1:
        _maxpool_forward_rows(args[0], 0, n * ho, *args[2:])
    else:
        _maxpool_forward_par(*args, nch)
    return out


@nb.njit(**_JIT_FLOAT)
def _maxpool_backward_images(dy2, arg2, i0, i1, h, w, p, s, ho, wo, dx2):
    c = dy2.shape[1]
    if s == p:
        # The windows tile the input, so each input element is written exactly once (its
        # gradient or zero): no zeroing pass and no read-modify-write.
        for img in range(i0, i1):
            for oy in range(ho):
                for pr in range(p):
                    row = (img * h + oy * p + pr) * w
                    for ox in range(wo):
                        r = (img * ho + oy) * wo + ox
                        for pc in range(p):
                            t = np.int32(pr * p + pc)
                            b = row + ox * p + pc
                            for cc in range(c):
                                g = dy2[r, cc]
                                dx2[b, cc] = g if arg2[r, cc] == t else np.float32(0)
                    for b in range(row + wo * p, row + w):
                        for cc in range(c):
                            dx2[b, cc] = 0
            for b in range((img * h + ho * p) * w, (img + 1) * h * w):
                for cc in range(c):
                    dx2[b, cc] = 0
    else:
        for b in range(i0 * h * w, i1 * h * w):
            for cc in range(c):
                dx2[b, cc] = 0
        for img in range(i0, i1):
            for oy in range(ho):
                for ox in range(wo):
                    r = (img * ho + oy) * wo + ox
                    base = (img * h + oy * s) * w + ox * s
                    for cc in range(c):
                        t = arg2[r, cc]
                        dx2[base + (t // p) * w + t % p, cc] += dy2[r, cc]


@nb.njit(**_JIT_PAR)
def _maxpool_backward_par(dy2, arg2, n, h, w, p, s, ho, wo, dx2, nch):
    per = (n + nch - 1) // nch
    for ch in nb.prange(nch):
        _maxpool_backward_images(dy2, arg2, min(n, ch * per), min(n, ch * per + per), h, w, p,
                                 s, ho, wo, dx2)


def maxpool_backward(dy, arg, p, s, dx):
    """Route each pooled gradient to its winning input; dx (N, H, W, C) is overwritten."""
    n, ho, wo, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    dy2, arg2, dx2 = dy.reshape(n * ho * wo, c), arg.reshape(n * ho * wo, c), dx.reshape(-1, c)
    nch = _chunks(n, dx.size)
    if nch == 1:
        _maxpool_backward_images(dy2, arg2, 0, n, h, w, p, s, ho, wo, dx2)
    else:
        _maxpool_backward_par(dy2, arg2, n, h, w, p, s, ho, wo, dx2, nch)
    return dx


# --------------------------------------------------------------------------- float conv
#
# The float convolution kernels read a flat NHWC input that already holds its padding
# (``pad_input``), so every patch lies inside it and is addressed as origin + tap offset.
# For one output pixel and one kernel row, the kw taps are kw*C contiguous floats in the
# input and in the (F, kh, kw, C) weights, which is what the sparse row sums run over.


def pad_input(x: np.ndarray, pad_top: int, pad_left: int, hp: int, wp: int,
              value: float) -> np.ndarray:
    """x (N, H, W, C) placed at (pad_top, pad_left) in an (N, hp', wp', C) array of ``value``.

    hp' and wp' are at least hp, wp and large enough to hold x; x itself (as contiguous
    float32) comes back when no padding is needed.
    """
    n, h, w, c = x.shape
    if pad_top == 0 and pad_left == 0 and hp <= h and wp <= w:
        return np.ascontiguousarray(x, dtype=np.float32)
    hp, wp = max(hp, h + pad_top), max(wp, w + pad_left)
    xp = np.full((n, hp, wp, c), value, np.float32)
    xp[:, pad_top:pad_top + h, pad_left:pad_left + w] = x
    return xp


def _padded_extent(size, k, stride, pad, out):
    return max(size + pad, (out - 1) * stride + k)


@functools.lru_cache(maxsize=64)
def _offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride):
    """(pixel origins, tap offsets) for a geometry; cached, and never written to."""
    return _pixel_origins(n, hp, wp, c, ho, wo, stride), _tap_offsets(kh, kw, c, wp)


@nb.njit(**_JIT)
def _tap_offsets(kh, kw, c, wp):
    t = np.empty(kh * kw * c, np.int64)
    for dy in range(kh):
        for dx in range(kw):
            for cc in range(c):
                t[(dy * kw + dx) * c + cc] = (dy * wp + dx) * c + cc
    return t


@nb.njit(**_JIT)
def _pixel_origins(n, hp, wp, c, ho, wo, stride):
    o = np.empty(n * ho * wo, np.int64)
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                o[(img * ho + oy) * wo + ox] = ((img * hp + oy * stride) * wp + ox * stride) * c
    return o


@nb.njit(**_JIT_FLOAT)
def _conv_forward_rows(xp, orig, toff, w, f_, out, r0, r1):
    _gemm_offsets(xp, orig[r0:r1], toff, w, 0, f_, f_, out, r0 * f_, np.arange(r1 - r0) * f_,
                  False)


@nb.njit(**_JIT_PAR)
def _conv_forward_par(xp, orig, toff, w, f_, out, nch):
    m = orig.shape[0]
    per = (m + nch - 1) // nch
    per += (-per) % 4
    for ch in nb.prange(nch):
        r0 = min(m, ch * per)
        _conv_forward_rows(xp, orig, toff, w, f_, out, r0, min(m, r0 + per))


def conv_forward_direct(x, w, stride, pad_top, pad_left, pad_value, out):
    """Direct float convolution: x (N, H, W, C), w (kh, kw, C, F) -> out (N, Ho, Wo, F).

    All float32. A register-tiled product (pixels x taps) @ (taps x filters) that reads
    the patches straight from the (padded) input, without an im2col copy; padded taps
    hold ``pad_value``.
    """
    n, h, wd, c = x.shape
    kh, kw, _, f_ = w.shape
    ho, wo = out.shape[1], out.shape[2]
    xp = pad_input(x, pad_top, pad_left, _padded_extent(h, kh, stride, pad_top, ho),
                   _padded_extent(wd, kw, stride, pad_left, wo), float(pad_value))
    hp, wp = xp.shape[1], xp.shape[2]
    orig, toff = _offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride)
    w1 = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    nch = _chunks(n * ho * wo // 4, out.size * kh * kw * c // 8)
    if nch == 1:
        _conv_forward_rows(xp.reshape(-1), orig, toff, w1, f_, out.reshape(-1), 0, orig.shape[0])
    else:
        _conv_forward_par(xp.reshape(-1), orig, toff, w1, f_, out.reshape(-1), nch)
    return out


@nb.njit(**_JIT_FLOAT)
def _conv_backward_sparse(xp, w, dz, orig, i0, i1, npos, f_, kh, span, row, need_dw, need_dx,
                          dw, dxp):
    # Per image, one branch-free pass lists the non-zero dz of each output pixel (filter,
    # value), as compressed rows. dx sums each pixel's list of filters into its patch;
    # dw first regroups the entries by filter, then sums each filter's list of patches.
    # Both sums run in registers over one kernel row (kw*C floats) at a time.
    taps = kh * span
    ent_f = np.empty(npos * f_, np.int64)
    ent_o = np.empty(npos * f_, np.int64)
    ent_g = np.empty(npos * f_, np.float32)
    start = np.empty(npos + 1, np.int64)
    pos = np.empty(f_ * npos, np.int64)
    gs = np.empty(f_ * npos, np.float32)
    cnt = np.empty(f_, np.int64)
    for img in range(i0, i1):
        r0 = img * npos
        n_ent = 0
        for p in range(npos):
            start[p] = n_ent
            zr = (r0 + p) * f_
            for f in range(f_):
                g = _ld(dz, zr + f)
                ent_f[n_ent] = f
                ent_g[n_ent] = g
                n_ent += 0 if g == 0 else 1
        start[npos] = n_ent
        if need_dx:
            for p in range(npos):
                if start[p + 1] == start[p]:
                    continue
                o = orig[r0 + p]
                for j in range(start[p], start[p + 1]):
                    ent_o[j] = ent_f[j] * taps
                for dy in range(kh):
                    _sparse_rows(dxp, o + dy * row, w, ent_o, ent_g, start[p], start[p + 1],
                                 dy * span, span)
        if need_dw:
            cnt[:] = 0
            for p in range(npos):
                o = orig[r0 + p]
                for j in range(start[p], start[p + 1]):
                    f = ent_f[j]
                    k = f * npos + cnt[f]
                    pos[k] = o
                    gs[k] = ent_g[j]
                    cnt[f] += 1
            for f in range(f_):
                if cnt[f] == 0:
                    continue
                for dy in range(kh):
                    _sparse_rows(dw, f * taps + dy * span, xp, pos, gs, f * npos,
                                 f * npos + cnt[f], dy * row, span)


@nb.njit(**_JIT_FLOAT)
def _conv_dx_dense(wm, dz, orig, i0, i1, npos, f_, kh, span, row, dxp):
    # Per group of images: cols = dz @ W (pixels x taps) in a scratch tile of about
    # DX_TILE_FLOATS, then added into the patches of dxp (col2im), one contiguous kernel
    # row at a time. Grouping images keeps the product tall when an image has few pixels.
    taps = kh * span
    group = max(1, min(i1 - i0, DX_TILE_FLOATS // (npos * taps)))
    tile = np.empty(group * npos * taps, np.float32)
    ka = np.arange(f_)
    ic = np.arange(group * npos) * taps
    for g0 in range(i0, i1, group):
        g1 = min(i1, g0 + group)
        r0 = g0 * npos
        rows = (g1 - g0) * npos
        ia = np.arange(r0, r0 + rows) * f_
        _gemm_offsets(dz, ia, ka, wm, 0, taps, taps, tile, 0, ic[:rows], False)
        for p in range(rows):
            o = orig[r0 + p]
            for dy in range(kh):
                d = o + dy * row
                t = p * taps + dy * span
                k = 0
                while k + 8 <= span:
                    _vstore(dxp, d + k, _vadd(_vload(dxp, d + k), _vload(tile, t + k)))
                    k += 8
                while k < span:
                    dxp[d + k] += tile[t + k]
                    k += 1


# The dense input-gradient product runs on groups of images whose (pixels x taps) tile
# holds about this many floats (256 KiB: it stays in L2 for the col2im that follows).
DX_TILE_FLOATS = 1 << 16


@nb.njit(**_JIT_FLOAT)
def _conv_backward_images(xp, w, wm, dz, orig, toff, i0, i1, n, npos, f_, kh, span, row,
                          sparse_dw, sparse_dx, need_dx, part, dxp, gate, clip):
    part[:] = 0
    if need_dx:
        img = dxp.shape[0] // n
        dxp[i0 * img:i1 * img] = 0
    if sparse_dw or (need_dx and sparse_dx):
        _conv_backward_sparse(xp, w, dz, orig, i0, i1, npos, f_, kh, span, row, sparse_dw,
                              need_dx and sparse_dx, part, dxp)
    if not sparse_dw:
        # (taps x F) = patches.T @ dz over these images' pixels.
        _gemm_offsets(xp, toff, orig[i0 * npos:i1 * npos], dz, i0 * npos * f_, f_, f_, part, 0,
                      np.arange(kh * span) * f_, True)
    if need_dx and not sparse_dx:
        _conv_dx_dense(wm, dz, orig, i0, i1, npos, f_, kh, span, row, dxp)
    if need_dx and clip >= 0:
        # The input quantizer's straight-through gate, while these images are in cache.
        img = dxp.shape[0] // n
        _ste_gate_rows(gate[i0 * img:i1 * img], dxp[i0 * img:i1 * img], clip,
                       dxp[i0 * img:i1 * img])


@nb.njit(**_JIT_FLOAT)
def _conv_backward_parts(xp, w, wm, dz, orig, toff, n, npos, f_, kh, span, row, sparse_dw,
                         sparse_dx, need_dx, parts, dxp, gate, clip, p0, p1, nparts):
    # Part p owns images [i0, i1) of dxp and slice p of `parts`, so no two parts write
    # the same element; the weight-gradient slices are summed by the caller.
    per = (n + nparts - 1) // nparts
    size = parts.shape[0] // nparts
    for p in range(p0, p1):
        i0 = min(n, p * per)
        _conv_backward_images(xp, w, wm, dz, orig, toff, i0, min(n, i0 + per), n, npos, f_, kh,
                              span, row, sparse_dw, sparse_dx, need_dx,
                              parts[p * size:(p + 1) * size], dxp, gate, clip)


@nb.njit(**_JIT_PAR)
def _conv_backward_par(xp, w, wm, dz, orig, toff, n, npos, f_, kh, span, row, sparse_dw,
                       sparse_dx, need_dx, parts, dxp, gate, clip, nparts, nch):
    for ch in nb.prange(nch):
        _conv_backward_parts(xp, w, wm, dz, orig, toff, n, npos, f_, kh, span, row, sparse_dw,
                             sparse_dx, need_dx, parts, dxp, gate, clip, ch * nparts // nch,
                             (ch + 1) * nparts // nch, nparts)


def _sum_parts(parts: np.ndarray) -> np.ndarray:
    """Rows of ``parts`` added one after another, in row order."""
    acc = parts[0].copy()
    for row in parts[1:]:
        acc += row
    return acc


def _density(dz: np.ndarray) -> float:
    """Fraction of non-zeros in dz, estimated from up to four whole images."""
    n = dz.shape[0]
    pick = dz[:: max(1, n // 4)][:4]
    # count_nonzero on this strided view is some 8x slower than comparing first
    return np.count_nonzero(pick != 0) / max(1, pick.size)


# The sparse scatter pays off while at most this fraction of dz is non-zero (max pooling
# leaves about a quarter) and a kernel row (kw*C floats) fills a few SIMD registers.
SPARSE_MAX_DENSITY = 0.5
SPARSE_MIN_SPAN = 32


def conv_backward(x, wt, dz, stride, pad_top, pad_left, need_dx, dw, dx, pad_value=0.0,
                  method="auto", gate=None, clip=1.0):
    """Convolution backward: weight gradient and (if need_dx) input gradient.

    x: (N, H, W, C) float32 layer input as used in the forward pass (e.g. ±1);
    wt: (F, kh, kw, C) float32 weights as used in the forward pass, filter-major;
    dz: (N, Ho, Wo, F) float32 gradient of the conv output; pads: 'same' padding before.
    Writes dw: (F, kh, kw, C) and, if need_dx, dx: (N, H, W, C) (both overwritten).
    Padded taps hold ``pad_value``: with 0 they add nothing to dw, with ±1 they do.

    ``method`` "sparse" scatters only the non-zero output gradients (after max pooling
    three in four are zero, so this does a quarter of the work of the dense products);
    "dense" runs register-tiled products ``patches.T @ dz`` and ``dz @ W`` + col2im;
    "auto" picks per gradient from the density of dz and the kernel-row length.

    With ``gate`` (shaped like x), dx is multiplied by ``|gate| <= clip``: the
    straight-through gradient of a ste_sign input quantizer, applied while dx is in cache.
    """
    n, h, w, c = x.shape
    f_, kh, kw, _ = wt.shape
    ho, wo = dz.shape[1], dz.shape[2]
    xp = pad_input(x, pad_top, pad_left, _padded_extent(h, kh, stride, pad_top, ho),
                   _padded_extent(w, kw, stride, pad_left, wo), float(pad_value))
    hp, wp = xp.shape[1], xp.shape[2]
    padded = (hp, wp) != (h, w)
    span = kw * c
    taps = kh * span
    dz = np.ascontiguousarray(dz, dtype=np.float32)
    if method == "auto":
        sparse_dw = sparse_dx = span >= SPARSE_MIN_SPAN and _density(dz) <= SPARSE_MAX_DENSITY
    elif method in ("sparse", "dense"):
        sparse_dw = sparse_dx = method == "sparse"
    else:
        raise ValueError(f"method must be 'auto', 'sparse' or 'dense', got {method!r}")
    wt = np.ascontiguousarray(wt, dtype=np.float32)
    nparts = _reduce_parts(n)
    nch = min(nparts, _chunks(n, dz.size * taps // 8))
    parts = np.empty(nparts * f_ * taps, np.float32)
    if need_dx:
        dxp = np.empty((n, hp, wp, c), np.float32) if padded else dx
    else:
        dxp = np.empty((n, 1, 1, 1), np.float32)
    fused_gate = need_dx and gate is not None and not padded
    gate1 = (np.ascontiguousarray(gate, dtype=np.float32).reshape(-1) if fused_gate
             else np.empty(1, np.float32))
    clip1 = np.float32(clip if fused_gate else -1.0)
    args = (xp.reshape(-1), wt.reshape(-1), wt.reshape(-1), dz.reshape(-1),
            *_offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride))
    rest = (n, ho * wo, f_, kh, span, wp * c, sparse_dw, sparse_dx, bool(need_dx), parts,
            dxp.reshape(-1), gate1, clip1)
    if nch == 1:
        _conv_backward_parts(*args, *rest, 0, nparts, nparts)
    else:
        _conv_backward_par(*args, *rest, nparts, nch)
    acc = _sum_parts(parts.reshape(nparts, -1))
    if sparse_dw:
        dw[...] = acc.reshape(f_, kh, kw, c)
    else:
        dw[...] = acc.reshape(kh, kw, c, f_).transpose(3, 0, 1, 2)
    if need_dx and padded:
        dx[...] = dxp[:, pad_top:pad_top + h, pad_left:pad_left + w]
        if gate is not None:
            dx[...] = ste_gate(gate, dx, clip)
    return dw


# --------------------------------------------------------------------------- elementwise


# No fastmath for the comparisons below: it lets LLVM assume there are no NaNs, and
# "not (x >= 0)" would then become "x < 0", turning NaN into +1.
@nb.njit(**_JIT)
def _sign_pack_rows(xs, qs, bs):
    c = xs.shape[1]
    for i in range(xs.shape[0]):
        for wd in range(bs.shape[1]):
            base = wd * 64
            word = np.uint64(0)
            for b in range(min(64, c - base)):
                # "not >= 0" so that NaN, as in ``binarizers.sign``, becomes -1.
                neg = not (xs[i, base + b] >= 0)
                qs[i, base + b] = np.float32(-1) if neg else np.float32(1)
                word |= np.uint64(neg) << np.uint64(b)
            bs[i, wd] = word


@nb.njit(parallel=True, **_JIT)
def _sign_pack_par(x2, xq2, bits, nch):
    p = x2.shape[0]
    per = (p + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(p, ch * per)
        i1 = min(p, i0 + per)
        _sign_pack_rows(x2[i0:i1], xq2[i0:i1], bits[i0:i1])


def sign_pack(x: np.ndarray):
    """``binarizers.sign`` and ``pack_rows`` of the last axis in one pass.

    x: (..., C) float32. Returns (xq, bits): xq shaped like x, +1 where x >= 0 and -1
    elsewhere (NaN too); bits (prod(...), words_for(C)) uint64, bit 1 where xq is -1.
    """
    c = x.shape[-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, c)
    xq = np.empty(x.shape, np.float32)
    bits = np.empty((x2.shape[0], words_for(c)), np.uint64)
    nch = _chunks(x2.shape[0], x2.size)
    if nch == 1:
        _sign_pack_rows(x2, xq.reshape(-1, c), bits)
    else:
        _sign_pack_par(x2, xq.reshape(-1, c), bits, nch)
    return xq, bits


@nb.njit(**_JIT)
def _ste_gate_rows(xs, ds, clip, os_):
    for i in range(xs.shape[0]):
        os_[i] = ds[i] * (np.float32(1) if abs(xs[i]) <= clip else np.float32(0))


@nb.njit(parallel=True, **_JIT)
def _ste_gate_par(x, dy, clip, out, nch):
    m = x.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _ste_gate_rows(x[i0:i1], dy[i0:i1], clip, out[i0:i1])


def ste_gate(x: np.ndarray, dy: np.ndarray, clip: float) -> np.ndarray:
    """``dy * (|x| <= clip)`` as float32: the straight-through gradient of ``ste_sign``."""
    x1 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    dy1 = np.ascontiguousarray(dy, dtype=np.float32).reshape(-1)
    if x1.shape != dy1.shape:
        raise ValueError(f"ste_gate: x has {x1.size} elements, dy {dy1.size}")
    out = np.empty(np.shape(dy), np.float32)
    nch = _chunks(x1.shape[0], x1.shape[0])
    if nch == 1:
        _ste_gate_rows(x1, dy1, np.float32(clip), out.reshape(-1))
    else:
        _ste_gate_par(x1, dy1, np.float32(clip), out.reshape(-1), nch)
    return out


# --------------------------------------------------------------------------- batch norm
#
# Column statistics of an (M, C) matrix, accumulated in float64 per chunk of rows: the
# row loop is outside, the channel loop inside, so it vectorizes over channels. The
# statistics are shifted by the first row and summed in one pass: with float64 sums of
# (x - x[0]) and its square the variance keeps full float32 accuracy unless the spread is
# some 1e-5 of the distance to x[0], and the data is read once instead of twice.


@nb.njit(**_JIT_FLOAT)
def _col_sums(xs, shift, s):
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            d = np.float64(xs[i, cc]) - shift[cc]
            s[0, cc] += d
            s[1, cc] += d * d


@nb.njit(**_JIT_FLOAT)
def _col_sums_parts(x2, shift, s, p0, p1):
    # Partial sum p (of s.shape[0]) covers the p-th block of rows.
    m = x2.shape[0]
    per = (m + s.shape[0] - 1) // s.shape[0]
    for p in range(p0, p1):
        _col_sums(x2[min(m, p * per):min(m, p * per + per)], shift, s[p])


@nb.njit(**_JIT_PAR)
def _col_sums_par(x2, shift, s, nch):
    # Only the prange loop here: in a parallel function, array expressions (even `s[:] =
    # 0` or `.sum()`) become parallel regions of their own.
    nparts = s.shape[0]
    for ch in nb.prange(nch):
        _col_sums_parts(x2, shift, s, ch * nparts // nch, (ch + 1) * nparts // nch)


# xhat = (x - mean) * inv is recomputed where it is needed (here and in backward) with
# the same float32 operations, rather than stored: that saves writing and reading back a
# full-size array in every step.


@nb.njit(**_JIT_FLOAT)
def _bn_normalize_rows(xs, mean, inv, scale, offset, ys):
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            ys[i, cc] = ((xs[i, cc] - mean[cc]) * inv[cc]) * scale[cc] + offset[cc]


@nb.njit(**_JIT_PAR)
def _bn_normalize_par(x2, mean, inv, scale, offset, y, nch):
    m = x2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _bn_normalize_rows(x2[i0:i1], mean, inv, scale, offset, y[i0:i1])


@nb.njit(**_JIT)
def _scale_shift_rows(xs, a, b, ys):
    # No fastmath: x * a and + b each round to float32, never fused into one FMA, so
    # inference matches the folded thresholds of the exported model.
    for i in range(xs.shape[0]):
        for cc in range(xs.shape[1]):
            ys[i, cc] = xs[i, cc] * a[cc] + b[cc]


@nb.njit(parallel=True, **_JIT)
def _scale_shift_par(x2, a, b, y, nch):
    m = x2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _scale_shift_rows(x2[i0:i1], a, b, y[i0:i1])


def scale_shift(x2: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel ``x * a + b`` of an (M, C) float32 array (inference batch norm)."""
    x2 = np.ascontiguousarray(x2, dtype=np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    y = np.empty_like(x2)
    nch = _chunks(x2.shape[0], x2.size)
    if nch == 1:
        _scale_shift_rows(x2, a, b, y)
    else:
        _scale_shift_par(x2, a, b, y, nch)
    return y


@nb.njit(**_JIT_FLOAT)
def _col_dot_sums(a, xs, mean, inv, s):
    # Column sums of a and of a * xhat, xhat = (xs - mean) * inv.
    for i in range(a.shape[0]):
        for cc in range(a.shape[1]):
            v = np.float64(a[i, cc])
            s[0, cc] += v
            s[1, cc] += v * ((xs[i, cc] - mean[cc]) * inv[cc])


@nb.njit(**_JIT_FLOAT)
def _col_dot_sums_parts(dy2, x2, mean, inv, s, p0, p1):
    m = dy2.shape[0]
    per = (m + s.shape[0] - 1) // s.shape[0]
    for p in range(p0, p1):
        i0 = min(m, p * per)
        i1 = min(m, i0 + per)
        _col_dot_sums(dy2[i0:i1], x2[i0:i1], mean, inv, s[p])


@nb.njit(**_JIT_PAR)
def _col_dot_sums_par(dy2, x2, mean, inv, s, nch):
    nparts = s.shape[0]
    for ch in nb.prange(nch):
        _col_dot_sums_parts(dy2, x2, mean, inv, s, ch * nparts // nch, (ch + 1) * nparts // nch)


@nb.njit(**_JIT)
def _bn_dx_rows(dys, xs, mean, g, md, mdx, inv, os_):
    # In the textbook order, so that e.g. a batch of one gives zero up to rounding.
    for i in range(dys.shape[0]):
        for cc in range(dys.shape[1]):
            xh = (xs[i, cc] - mean[cc]) * inv[cc]
            os_[i, cc] = (dys[i, cc] * g[cc] - md[cc] - xh * mdx[cc]) * inv[cc]


@nb.njit(parallel=True, **_JIT)
def _bn_dx_par(dy2, x2, mean, g, md, mdx, inv, out, nch):
    m = dy2.shape[0]
    per = (m + nch - 1) // nch
    for ch in nb.prange(nch):
        i0 = min(m, ch * per)
        i1 = min(m, i0 + per)
        _bn_dx_rows(dy2[i0:i1], x2[i0:i1], mean, g, md, mdx, inv, out[i0:i1])


@nb.njit(**_JIT_FLOAT)
def _bn_train_forward(x2, scale, offset, eps, nparts, nch, y, mean, var, mean32, inv):
    # One call for the whole training-mode forward: statistics (shifted by row 0, in
    # float64, as `nparts` partial sums), then y. mean32 and inv are the float32 values
    # that define xhat.
    m, c = x2.shape
    shift = np.empty(c, np.float64)
    for cc in range(c):
        shift[cc] = x2[0, cc]
    s = np.zeros((nparts, 2, c), np.float64)
    if nch == 1:
        _col_sums_parts(x2, shift, s, 0, nparts)
    else:
        _col_sums_par(x2, shift, s, nch)
    for cc in range(c):
        s0 = 0.0
        s1 = 0.0
        for ch in range(nparts):
            s0 += s[ch, 0, cc]
            s1 += s[ch, 1, cc]
        d = s0 / m
        mean[cc] = shift[cc] + d
        var[cc] = max(s1 / m - d * d, 0.0)
        mean32[cc] = np.float32(mean[cc])
        inv[cc] = np.float32(1) / np.sqrt(np.float32(var[cc]) + eps)
    if nch == 1:
        _bn_normalize_rows(x2, mean32, inv, scale, offset, y)
    else:
        _bn_normalize_par(x2, mean32, inv, scale, offset, y, nch)


def bn_forward_train(x2, scale, offset, eps):
    """Batch-norm training forward of x2 (M, C) float32 with per-column scale and offset.

    Returns (y, mean, var, mean32, inv): y = xhat * scale + offset with xhat = (x2 -
    mean32) * inv (float32); mean and biased var are float64 (sums shifted by the first
    row); mean32 is mean as float32 and inv = 1 / sqrt(var + eps) in float32.
    """
    m, c = x2.shape
    y = np.empty((m, c), np.float32)
    mean = np.empty(c, np.float64)
    var = np.empty(c, np.float64)
    mean32 = np.empty(c, np.float32)
    inv = np.empty(c, np.float32)
    nparts = _reduce_parts(m)
    _bn_train_forward(x2, scale, offset, np.float32(eps), nparts,
                      min(nparts, _chunks(m, x2.size)), y, mean, var, mean32, inv)
    return y, mean, var, mean32, inv


@nb.njit(**_JIT_FLOAT)
def _bn_train_backward(dy2, x2, mean32, inv, gamma, nparts, nch, dx, sums):
    # dx = (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma*xhat)) * inv; sums receives
    # sum(dy) and sum(dy * xhat), accumulated in float64 as `nparts` partial sums.
    m, c = dy2.shape
    s = np.zeros((nparts, 2, c), np.float64)
    if nch == 1:
        _col_dot_sums_parts(dy2, x2, mean32, inv, s, 0, nparts)
    else:
        _col_dot_sums_par(dy2, x2, mean32, inv, s, nch)
    md = np.empty(c, np.float32)
    mdx = np.empty(c, np.float32)
    for cc in range(c):
        sdy = 0.0
        sdyx = 0.0
        for ch in range(nparts):
            sdy += s[ch, 0, cc]
            sdyx += s[ch, 1, cc]
        sums[0, cc] = sdy
        sums[1, cc] = sdyx
        md[cc] = np.float64(gamma[cc]) * sdy / m
        mdx[cc] = np.float64(gamma[cc]) * sdyx / m
    if nch == 1:
        _bn_dx_rows(dy2, x2, mean32, gamma, md, mdx, inv, dx)
    else:
        _bn_dx_par(dy2, x2, mean32, gamma, md, mdx, inv, dx, nch)


def bn_backward_train(dy2, x2, mean32, inv, gamma):
    """Batch-norm training backward from the forward's input and statistics.

    Returns (dx, sum(dy), sum(dy * xhat)); xhat = (x2 - mean32) * inv as in forward.
    """
    m, c = dy2.shape
    dx = np.empty((m, c), np.float32)
    sums = np.empty((2, c), np.float64)
    nparts = _reduce_parts(m)
    _bn_train_backward(dy2, x2, mean32, inv, gamma, nparts, min(nparts, _chunks(m, dy2.size)),
                       dx, sums)
    return dx, sums[0], sums[1]


# --------------------------------------------------------------------------- optimizer


@nb.njit(**_JIT)
def adam_update(w, g, m, v, b1, b2, lr_t, eps, clip):
    """One Adam step in Keras's form, in place and in one pass over float32 arrays:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr_t m / (sqrt(v) + eps)

    then, when ``clip`` > 0, w is clipped to [-clip, clip] (``weight_clip``). Each
    operation rounds to float32 in that order, as the NumPy expression does (no FMA).
    """
    w1 = w.reshape(-1)
    g1 = g.reshape(-1)
    m1 = m.reshape(-1)
    v1 = v.reshape(-1)
    b1f = np.float32(b1)
    b2f = np.float32(b2)
    c1 = np.float32(1.0 - b1)
    c2 = np.float32(1.0 - b2)
    lr = np.float32(lr_t)
    e = np.float32(eps)
    cl = np.float32(clip)
    for i in range(w1.shape[0]):
        gi = g1[i]
        mi = m1[i] * b1f + c1 * gi
        vi = v1[i] * b2f + c2 * (gi * gi)
        m1[i] = mi
        v1[i] = vi
        wi = w1[i] - lr * mi / (np.sqrt(vi) + e)
        if cl > 0:
            wi = min(max(wi, -cl), cl)
        w1[i] = wi


def warm_up(progress=None) -> None:
    """Compile (or load from cache) every kernel on tiny inputs.

    The GUI calls this from a background thread at start-up; ``progress(i, total)``
    reports each kernel done. Both the serial and the parallel variants are touched.
    """
    steps = []
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 3)).astype(np.float32)
    steps.append(lambda: pack_conv_input(x, 3, 3, 1, (1, 1), (5, 5), 0))
    w4 = np.zeros(4, np.float32)
    for nch in (1, 2):
        steps.append(lambda nch=nch: _with_chunks(nch, scale_shift, xb.reshape(-1, 64),
                                                  w4.repeat(16), w4.repeat(16)))
    steps.append(lambda: adam_update(w4, w4.copy(), w4.copy(), w4.copy(), 0.9, 0.999, 1e-3,
                                     1e-7, 1.0))
    a = np.zeros((4, 1), np.uint64)
    bt = np.zeros((1, 3), np.uint64)
    steps.append(lambda: xnor_gemm(a, bt, 9, parallel=False))
    steps.append(lambda: xnor_gemm(a, bt, 9, parallel=True))
    steps.append(lambda: xnor_gemm(a, bt, 9, out=np.empty((4, 3), np.float32), parallel=False))
    steps.append(lambda: xnor_gemm(a, bt, 9, out=np.empty((4, 3), np.float32), parallel=True))
    cols = np.empty((25, 27), np.float32)
    steps.append(lambda: im2col(x, 3, 3, 1, 1, 1, 5, 5, np.float32(0), cols))
    steps.append(lambda: col2im(cols, 1, 5, 5, 3, 3, 3, 1, 1, 1, 5, 5, np.empty_like(x)))
    xb = np.random.default_rng(1).standard_normal((4, 9, 9, 64)).astype(np.float32)
    wt = np.zeros((16, 3, 3, 64), np.float32)
    for nch in (1, 2):
        for method in ("sparse", "dense"):
            dz = np.ones((4, 7, 7, 16), np.float32)
            steps.append(lambda nch=nch, method=method, dz=dz: _with_chunks(
                nch, conv_backward, xb, wt, dz, 1, 0, 0, True, np.empty_like(wt),
                np.empty_like(xb), method=method))
        steps.append(lambda nch=nch: _with_chunks(
            nch, conv_forward_direct, x, np.zeros((3, 3, 3, 16), np.float32), 1, 1, 1,
            np.float32(0), np.empty((1, 5, 5, 16), np.float32)))
        steps.append(lambda nch=nch: _with_chunks(nch, sign_pack, xb))
        steps.append(lambda nch=nch: _with_chunks(nch, ste_gate, xb, xb, 1.0))
        steps.append(lambda nch=nch: _with_chunks(nch, matmul, xb.reshape(-1, 64), wt.reshape(-1, 64)[:64]))
        steps.append(lambda nch=nch: _with_chunks(nch, bn_forward_train, xb.reshape(-1, 64),
                                                  np.ones(64, np.float32),
                                                  np.zeros(64, np.float32), 1e-3))
        steps.append(lambda nch=nch: _with_chunks(nch, bn_backward_train, xb.reshape(-1, 64),
                                                  xb.reshape(-1, 64), np.zeros(64, np.float32),
                                                  np.ones(64, np.float32), np.ones(64, np.float32)))
        steps.append(lambda nch=nch: _with_chunks(nch, pack_patches_parallel, np.zeros((4 * 81, 1), np.uint64),
                                                  4, 9, 9, 64, 3, 3, 1, 0, 0, 7, 7, 0))
        out = np.empty((4, 4, 4, 64), np.float32)
        arg = np.empty((4, 4, 4, 64), np.int32)
        steps.append(lambda nch=nch, out=out, arg=arg: _with_chunks(nch, maxpool_forward, xb, 2, 2, out, arg))
        steps.append(lambda nch=nch, out=out, arg=arg: _with_chunks(nch, maxpool_backward, out, arg, 2, 2,
                                                                    np.empty_like(xb)))
    for i, step in enumerate(steps):
        step()
        if progress is not None:
            progress(i + 1, len(steps))


def _with_chunks(nch, fn, *args, **kwargs):
    # Runs fn with the work threshold moved so that kernels take the serial (nch=1) or the
    # parallel path, whatever the input size.
    global PARALLEL_MIN_WORK
    old = PARALLEL_MIN_WORK
    PARALLEL_MIN_WORK = 1 << 62 if nch == 1 else 0
    try:
        return fn(*args, **kwargs)
    finally:
        PARALLEL_MIN_WORK = old
