"""A stack model's binary blocks in one compiled call, a few images at a time.

Calling a compiled kernel from Python costs a couple of microseconds (every array
argument is unboxed), and a block used to take several calls plus the arrays allocated
for them: for one image that overhead was most of the time. Here every block after the
first (and the first too when it is a one-channel ±1 convolution, see
:func:`~.runtime_kernels._conv_c1_pm1`) is described by a row of integers, their arrays
are concatenated into a few flat buffers once per model, and :func:`run_chain` walks
the blocks in one call. It takes a group of images through the whole network before the
next group (depth first), so the activations between blocks stay in the caches and the
buffers it needs are the same size for any batch: each thread allocates them once.

The compiled code is the same for every model: shapes are arguments read from the rows,
never code. Numba keys its disk cache on the text of the file that defines a function,
not on the kernels compiled into it: after changing a kernel that :func:`run_chain`
inlines (from :mod:`.runtime_kernels` or the engine's packing and GEMM), empty
``__pycache__`` or a stale copy keeps running. Results are bit for bit those of the block-by-block path
(:meth:`bnnlab.deploy.runtime._Prepared.run`), which graph models and traces still use.
"""

from __future__ import annotations

import threading

import numba as nb
import numpy as np

from ..core.kernels import ALIGN_WORDS, aligned_words, pack_patches, xnor_gemm_prepared
from .limits import CHAIN_SCRATCH_BYTES
from .runtime_kernels import _CHUNK_BYTES, _JIT, _conv_c1_pm1, _pool_only, _pool_threshold_pack

__all__ = ["Chain", "chain_for"]

# Columns of a block's row.
(KIND, H, W, C, KH, KW, STRIDE, PT, PL, PAD_BIT, HO, WO, PS, PST, HP, WP, F, K, KWN, W_OFF,
 SGN_OFF, THR_OFF, CORR_OFF, CORR_ROWS, LOGITS, SCALE_OFF, OFFSET_OFF, PAT_OFF, H_IN, W_IN,
 PAD_VALUE, NIB_OFF, NIB_LEN, N_COLS) = range(34)
# Kinds of block.
KIND_C1, KIND_CONV, KIND_DENSE = 0, 1, 2

# Images per group: no more than this many, and few enough that the largest block's
# accumulators take about _CHUNK_BYTES.
MAX_GROUP = 64


@nb.njit(**_JIT)
def run_chain(pix8, xbits, desc, w64, nib64, i32c, f32c, x16, s64, s32, n_act, n_z, n_acc,
              i0, i1, group, out):
    """Logits of images [i0, i1) into out[i0:i1] (float32 (N, outputs)).

    pix8: (N, h, w, 1) uint8 pixels when the first row is a one-channel ±1 convolution
    (KIND_C1), else xbits: (N, P, CW) uint64 input bits of the first row;
    desc: (blocks, N_COLS) int64 rows; w64: packed weights (each block's (KWN, F) in
    the GEMM's B layout); nib64: their nibble panels (each block's may be empty); i32c: thresholds, their signs, zero-padding corrections and
    sign patterns; f32c: the last block's scale and offset per output. Scratch, sized
    by :class:`Chain` for ``group`` images: x16 (padded pixels); s64: the bits between
    blocks (twice n_act words), then packed patches; s32: n_z accumulators, n_acc pooled
    ones for the logits, then one pixel's pooled accumulators.
    """
    nl = desc.shape[0]
    act0 = s64[:n_act]
    act1 = s64[n_act:2 * n_act]
    pbuf = s64[2 * n_act:]
    zbuf = s32[:n_z]
    accbuf = s32[n_z:n_z + n_acc]
    m = s32[n_z + n_acc:]
    for g0 in range(i0, i1, group):
        nc = min(group, i1 - g0)
        src = act0
        dst = act1
        if desc[0, KIND] != KIND_C1:
            per = xbits.shape[1] * xbits.shape[2]
            xb = xbits.reshape(-1)
            for j in range(nc * per):
                src[j] = xb[g0 * per + j]
        for li in range(nl):
            kind = desc[li, KIND]
            f = desc[li, F]
            fw = (f + 63) // 64
            hp = desc[li, HP]
            wp = desc[li, WP]
            ho = desc[li, HO]
            wo = desc[li, WO]
            ps = desc[li, PS]
            pst = desc[li, PST]
            so = desc[li, SGN_OFF]
            to = desc[li, THR_OFF]
            sgn = i32c[so:so + f]
            thr = i32c[to:to + f]
            logits = desc[li, LOGITS] != 0
            if kind == KIND_C1:
                kh = desc[li, KH]
                po = desc[li, PAT_OFF]
                pat = i32c[po:po + f * kh].reshape(f, kh)
                ob = dst[:nc * hp * wp * fw].reshape(nc, hp * wp, fw)
                xp = x16[:nc * desc[li, H_IN] * desc[li, W_IN]].reshape(
                    nc, desc[li, H_IN], desc[li, W_IN])
                _pad_pixels(pix8, g0, desc[li, PT], desc[li, PL], desc[li, PAD_VALUE], xp)
                _conv_c1_pm1(xp, pat, ho, wo, ps == 2, hp, wp, sgn, thr, ob)
                src, dst = dst, src
                continue
            kwn = desc[li, KWN]
            wo_ = desc[li, W_OFF]
            wt = w64[wo_:wo_ + kwn * f].reshape(kwn, f)
            if kind == KIND_CONV:
                h = desc[li, H]
                w = desc[li, W]
                c = desc[li, C]
                cw = (c + 63) // 64
                per = ho * wo
                rows = nc * per
                pix = src[:nc * h * w * cw].reshape(nc * h * w, cw)
                pa = pbuf[:rows * kwn].reshape(rows, kwn)
                pack_patches(pix, nc, h, w, c, desc[li, KH], desc[li, KW], desc[li, STRIDE],
                             desc[li, PT], desc[li, PL], ho, wo, desc[li, PAD_BIT], pa)
            else:
                per = 1
                rows = nc
                pa = src[:nc * kwn].reshape(nc, kwn)
            z = zbuf[:rows * f].reshape(rows, f)
            bp = nib64[desc[li, NIB_OFF]:desc[li, NIB_OFF] + desc[li, NIB_LEN]]
            xnor_gemm_prepared(pa, wt, bp, desc[li, K], z)
            co = desc[li, CORR_OFF]
            cr = desc[li, CORR_ROWS]
            corr = i32c[co:co + cr * f].reshape(cr, f)
            if not logits:
                ob = dst[:nc * hp * wp * fw].reshape(nc, hp * wp, fw)
                for i in range(nc):
                    _pool_threshold_pack(z, i * per, ho, wo, corr, ps, pst, hp, wp, sgn, thr,
                                         ob, i, m)
                src, dst = dst, src
                continue
            # The logits: float32 multiply, then add, unfused (as the C and the oracle).
            npos = hp * wp * f
            acc = accbuf[:nc * npos].reshape(nc, hp * wp, f)
            for i in range(nc):
                _pool_only(z, i * per, ho, wo, corr, ps, pst, hp, wp, acc, i, m)
            sc = desc[li, SCALE_OFF]
            of = desc[li, OFFSET_OFF]
            a2 = acc.reshape(nc, npos)
            for i in range(nc):
                for j in range(npos):
                    out[g0 + i, j] = np.float32(a2[i, j]) * f32c[sc + j] + f32c[of + j]
    return out


@nb.njit(**_JIT)
def _pad_pixels(pix8, g0, pt, pl, pad, xp):
    """xp[i] = pixels of image g0 + i as int16 at (pt, pl), ``pad`` around them."""
    nc, hpi, wpi = xp.shape
    h, w = pix8.shape[1], pix8.shape[2]  # pix8: (N, h, w, 1)
    padded = pt > 0 or pl > 0 or hpi > h + pt or wpi > w + pl
    for i in range(nc):
        if padded:
            xp[i] = pad
        for y in range(h):
            for x in range(w):
                xp[i, pt + y, pl + x] = pix8[g0 + i, y, x, 0]


class Chain:
    """The flat arrays of a stack model's binary blocks, and scratch for each thread.

    ``blocks``: the runtime's prepared blocks (:class:`bnnlab.deploy.runtime._Prepared`)
    this chain runs, in order; the first may be a one-channel ±1 convolution on pixels,
    every other reads bits with int32 accumulators, and only the last gives logits.
    """

    def __init__(self, blocks):
        rows, w64, nib64, i32c, f32c = [], [], [], [], []
        n32 = [0]

        def put32(a):
            a = np.ascontiguousarray(a, np.int32).reshape(-1)
            at = n32[0]
            i32c.append(a)
            n32[0] += a.size
            return at

        n64 = nnib = 0
        act = pbuf = zbuf = accbuf = fmax = x16 = 1
        for pb in blocks:
            b = pb.b
            d = np.zeros(N_COLS, np.int64)
            h, w, c = b.in_shape
            d[[H, W, C]] = h, w, c
            d[[HO, WO, PS, PST, HP, WP, F, K]] = (pb.ho, pb.wo, pb.ps, pb.pst, pb.hp, pb.wp,
                                                  pb.f, pb.k)
            d[LOGITS] = b.output == "logits"
            fw = -(-pb.f // 64)
            act = max(act, h * w * -(-c // 64), pb.hp * pb.wp * fw)
            fmax = max(fmax, pb.f)
            if b.output == "bits":
                d[SGN_OFF] = put32(pb.sgn)
                d[THR_OFF] = put32(pb.thr)
            else:
                d[SGN_OFF] = d[THR_OFF] = put32(np.zeros(pb.f, np.int32))
                d[SCALE_OFF] = sum(a.size for a in f32c)
                f32c.append(pb.scale)
                d[OFFSET_OFF] = d[SCALE_OFF] + pb.scale.size
                f32c.append(pb.offset)
                accbuf = max(accbuf, pb.hp * pb.wp * pb.f)
            if getattr(pb, "c1_pm1", False):
                d[KIND] = KIND_C1
                d[KH] = b.kernel_size[0]
                d[PAT_OFF] = put32(pb.pat)
                d[H_IN], d[W_IN] = pb.c1_extent()
                d[PT], d[PL] = b.pads[0], b.pads[2]
                d[PAD_VALUE] = int(b.pad_value)
                x16 = int(d[H_IN] * d[W_IN])
                rows.append(d)
                continue
            d[KWN] = pb.wt.shape[0]
            d[W_OFF] = n64
            w64.append(pb.wt.reshape(-1))
            n64 += pb.wt.size
            nnib = -(-nnib // ALIGN_WORDS) * ALIGN_WORDS  # each block's panels on a cache line
            d[NIB_OFF], d[NIB_LEN] = nnib, pb.bp.size
            nib64.append((nnib, pb.bp))
            nnib += pb.bp.size
            d[CORR_ROWS] = pb.corr.shape[0] if b.kind == "conv2d" else 0
            d[CORR_OFF] = put32(pb.corr) if d[CORR_ROWS] else 0
            if b.kind == "conv2d":
                d[KIND] = KIND_CONV
                d[[KH, KW]] = b.kernel_size
                d[STRIDE] = b.stride
                d[PT], d[PL] = b.pads[0], b.pads[2]
                d[PAD_BIT] = pb.pad_bit
                per = pb.ho * pb.wo
                pbuf = max(pbuf, per * pb.wt.shape[0])
                zbuf = max(zbuf, per * pb.f)
            else:
                d[KIND] = KIND_DENSE
                d[KH] = d[KW] = d[HO] = d[WO] = d[PS] = d[PST] = d[HP] = d[WP] = 1
                zbuf = max(zbuf, pb.f)
            rows.append(d)
        self.desc = np.stack(rows)
        self.w64 = np.concatenate(w64) if w64 else np.zeros(1, np.uint64)
        self.nib64 = aligned_words(max(nnib, 1))
        for at, bp in nib64:
            self.nib64[at:at + bp.size] = bp
        self.i32c = np.concatenate(i32c) if i32c else np.zeros(1, np.int32)
        self.f32c = (np.concatenate(f32c) if f32c else np.zeros(1, np.float32)).astype(np.float32)
        self.starts_with_pixels = bool(self.desc[0, KIND] == KIND_C1)
        # Scratch for a group stays within CHAIN_SCRATCH_BYTES (the figure the runtime's
        # memory limit counts) unless one image needs more.
        per_image = 2 * x16 + 8 * (2 * act + pbuf) + 4 * (zbuf + accbuf)
        self.group = int(max(1, min(MAX_GROUP, _CHUNK_BYTES // (4 * zbuf),
                                    CHAIN_SCRATCH_BYTES // per_image)))
        self._sizes = (x16, act, pbuf, zbuf, accbuf, fmax)
        self._scratch: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self._no_pixels = np.zeros((0, 1, 1, 1), np.uint8)
        self._no_bits = np.zeros((0, 1, 1), np.uint64)

    def __getstate__(self):  # pickled (a runtime sent to another process) without scratch
        state = dict(self.__dict__)
        del state["_scratch"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _scratch={}, _lock=threading.Lock())
        nib = aligned_words(self.nib64.size)  # a new process's copy, aligned again
        nib[:] = self.nib64
        self.nib64 = nib

    def _thread_scratch(self) -> tuple:
        """This thread's scratch arrays and their parts' sizes, allocated at its first call."""
        key = threading.get_ident()
        got = self._scratch.get(key)
        if got is None:
            x16, act, pbuf, zbuf, accbuf, fmax = self._sizes
            g = self.group
            got = (np.empty(g * x16, np.int16), np.empty(g * (2 * act + pbuf), np.uint64),
                   np.empty(g * (zbuf + accbuf) + fmax, np.int32),
                   g * act, g * zbuf, g * accbuf)
            with self._lock:
                self._scratch[key] = got
        return got

    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (N, outputs) float32 for x: uint8 pixels (N, h, w, 1) if the chain starts
        with pixels, else the first block's input bits (N, P, CW)."""
        pix, xb = (x, self._no_bits) if self.starts_with_pixels else (self._no_pixels, x)
        return run_chain(pix, xb, self.desc, self.w64, self.nib64, self.i32c, self.f32c,
                         *self._thread_scratch(), 0, x.shape[0], self.group, out)


def chain_for(blocks) -> tuple[int, Chain | None]:
    """(how many leading blocks run on their own, the chain of the rest or None).

    A chain needs every block it holds to read bits with int32 accumulators (the first
    may instead be a one-channel ±1 convolution on pixels) and only its last to give
    logits; otherwise no chain, and every block runs on its own.
    """
    if not blocks or blocks[-1].b.output != "logits":
        return len(blocks), None
    if any(pb.b.output == "logits" for pb in blocks[:-1]):
        return len(blocks), None
    start = 0 if getattr(blocks[0], "c1_pm1", False) else 1
    on_bits = blocks[1:]
    if not on_bits or any(pb.b.input != "bits" or pb.b.acc != "int32" for pb in on_bits):
        return len(blocks), None
    return start, Chain(blocks[start:])
