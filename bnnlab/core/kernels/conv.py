"""Float convolution: im2col and its adjoint, the direct forward product, and the
backward pass (dense products, or sparse scatters of the non-zero output gradients),
with their NumPy twins.

The float convolution kernels read a flat NHWC input that already holds its padding
(``pad_input``), so every patch lies inside it and is addressed as origin + tap offset.
For one output pixel and one kernel row, the kw taps are kw*C contiguous floats in the
input and in the (F, kh, kw, C) weights, which is what the sparse row sums run over.

``threads`` in the wrappers: see :func:`~.threads.chunks`.
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np

from . import threads as _threads
from .float_gemm import gemm_offsets, sparse_rows
from .jit import JIT, JIT_FLOAT, JIT_PAR
from .sign import ste_gate, ste_gate_rows
from .simd import ld, vadd, vload, vstore

__all__ = ["im2col", "col2im", "pad_input", "padded_extent", "offset_tables",
           "conv_forward_direct", "conv_backward", "im2col_ref", "conv2d_ref",
           "padded_input_ref", "conv_backward_ref"]


@nb.njit(**JIT_FLOAT)
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


@nb.njit(**JIT_FLOAT)
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


# --------------------------------------------------------------------------- direct convolution


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


def padded_extent(size, k, stride, pad, out):
    """Padded input extent along one axis: room for the input after ``pad`` and for
    every window of ``out`` outputs."""
    return max(size + pad, (out - 1) * stride + k)


@functools.lru_cache(maxsize=64)
def offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride):
    """(pixel origins, tap offsets) for a geometry; cached, and never written to."""
    return _pixel_origins(n, hp, wp, c, ho, wo, stride), _tap_offsets(kh, kw, c, wp)


@nb.njit(**JIT)
def _tap_offsets(kh, kw, c, wp):
    t = np.empty(kh * kw * c, np.int64)
    for dy in range(kh):
        for dx in range(kw):
            for cc in range(c):
                t[(dy * kw + dx) * c + cc] = (dy * wp + dx) * c + cc
    return t


@nb.njit(**JIT)
def _pixel_origins(n, hp, wp, c, ho, wo, stride):
    o = np.empty(n * ho * wo, np.int64)
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                o[(img * ho + oy) * wo + ox] = ((img * hp + oy * stride) * wp + ox * stride) * c
    return o


@nb.njit(**JIT_FLOAT)
def _conv_forward_rows(xp, orig, toff, w, f_, out, r0, r1):
    gemm_offsets(xp, orig[r0:r1], toff, w, 0, f_, f_, out, r0 * f_, np.arange(r1 - r0) * f_,
                  False)


@nb.njit(**JIT_PAR)
def _conv_forward_par(xp, orig, toff, w, f_, out, nch):
    m = orig.shape[0]
    per = (m + nch - 1) // nch
    per += (-per) % 4
    for ch in nb.prange(nch):
        r0 = min(m, ch * per)
        _conv_forward_rows(xp, orig, toff, w, f_, out, r0, min(m, r0 + per))


def conv_forward_direct(x, w, stride, pad_top, pad_left, pad_value, out, threads=None):
    """Direct float convolution: x (N, H, W, C), w (kh, kw, C, F) -> out (N, Ho, Wo, F).

    All float32. A register-tiled product (pixels x taps) @ (taps x filters) that reads
    the patches straight from the (padded) input, without an im2col copy; padded taps
    hold ``pad_value``.
    """
    n, h, wd, c = x.shape
    kh, kw, _, f_ = w.shape
    ho, wo = out.shape[1], out.shape[2]
    xp = pad_input(x, pad_top, pad_left, padded_extent(h, kh, stride, pad_top, ho),
                   padded_extent(wd, kw, stride, pad_left, wo), float(pad_value))
    hp, wp = xp.shape[1], xp.shape[2]
    orig, toff = offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride)
    w1 = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    nch = _threads.chunks(n * ho * wo // 4, out.size * kh * kw * c // 8, threads)
    if nch == 1:
        _conv_forward_rows(xp.reshape(-1), orig, toff, w1, f_, out.reshape(-1), 0, orig.shape[0])
    else:
        _conv_forward_par(xp.reshape(-1), orig, toff, w1, f_, out.reshape(-1), nch)
    return out


@nb.njit(**JIT_FLOAT)
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
                g = ld(dz, zr + f)
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
                    sparse_rows(dxp, o + dy * row, w, ent_o, ent_g, start[p], start[p + 1],
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
                    sparse_rows(dw, f * taps + dy * span, xp, pos, gs, f * npos,
                                 f * npos + cnt[f], dy * row, span)


@nb.njit(**JIT_FLOAT)
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
        gemm_offsets(dz, ia, ka, wm, 0, taps, taps, tile, 0, ic[:rows], False)
        for p in range(rows):
            o = orig[r0 + p]
            for dy in range(kh):
                d = o + dy * row
                t = p * taps + dy * span
                k = 0
                while k + 8 <= span:
                    vstore(dxp, d + k, vadd(vload(dxp, d + k), vload(tile, t + k)))
                    k += 8
                while k < span:
                    dxp[d + k] += tile[t + k]
                    k += 1


# The dense input-gradient product runs on groups of images whose (pixels x taps) tile
# holds about this many floats (256 KiB: it stays in L2 for the col2im that follows).
DX_TILE_FLOATS = 1 << 16


@nb.njit(**JIT_FLOAT)
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
        gemm_offsets(xp, toff, orig[i0 * npos:i1 * npos], dz, i0 * npos * f_, f_, f_, part, 0,
                      np.arange(kh * span) * f_, True)
    if need_dx and not sparse_dx:
        _conv_dx_dense(wm, dz, orig, i0, i1, npos, f_, kh, span, row, dxp)
    if need_dx and clip >= 0:
        # The input quantizer's straight-through gate, while these images are in cache.
        img = dxp.shape[0] // n
        ste_gate_rows(gate[i0 * img:i1 * img], dxp[i0 * img:i1 * img], clip,
                       dxp[i0 * img:i1 * img])


@nb.njit(**JIT_FLOAT)
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


@nb.njit(**JIT_PAR)
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
                  method="auto", gate=None, clip=1.0, threads=None):
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
    xp = pad_input(x, pad_top, pad_left, padded_extent(h, kh, stride, pad_top, ho),
                   padded_extent(w, kw, stride, pad_left, wo), float(pad_value))
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
    nparts = _threads.reduce_parts(n)
    nch = min(nparts, _threads.chunks(n, dz.size * taps // 8, threads))
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
            *offset_tables(n, hp, wp, c, kh, kw, ho, wo, stride))
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


# --------------------------------------------------------------------------- twins


def _tf_window(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    # TensorFlow's rule, stated on its own so the twins do not share the layers' helper:
    # 'same' has ceil(size / stride) outputs, the odd padding pixel after the input.
    if padding == "valid":
        return (size - k) // stride + 1, 0
    out = -(-size // stride)
    return out, max((out - 1) * stride + k - size, 0) // 2


def _pad_nhwc(x: np.ndarray, kh: int, kw: int, stride: int, padding: str, value: float):
    n, h, w, c = x.shape
    ho, pt = _tf_window(h, kh, stride, padding)
    wo, pl = _tf_window(w, kw, stride, padding)
    need_h = (ho - 1) * stride + kh
    need_w = (wo - 1) * stride + kw
    xp = np.full((n, max(need_h, h + pt), max(need_w, w + pl), c), value, dtype=np.float32)
    xp[:, pt:pt + h, pl:pl + w, :] = x
    return xp, ho, wo


def im2col_ref(x, kh, kw, stride, padding, pad_value=0.0):
    """Patches (N*Ho*Wo, kh*kw*C) with taps in (dy, dx, c) order."""
    xp, ho, wo = _pad_nhwc(x, kh, kw, stride, padding, pad_value)
    n, c = x.shape[0], x.shape[3]
    cols = np.empty((n, ho, wo, kh, kw, c), np.float32)
    for dy in range(kh):
        for dx in range(kw):
            cols[:, :, :, dy, dx, :] = xp[:, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride, :]
    return cols.reshape(n * ho * wo, kh * kw * c)


def conv2d_ref(x, w, stride=1, padding="valid", pad_value=0.0):
    """Direct NHWC convolution (cross-correlation) with kernel (kh, kw, cin, cout), float64."""
    kh, kw, cin, cout = w.shape
    xp, ho, wo = _pad_nhwc(x, kh, kw, stride, padding, pad_value)
    n = x.shape[0]
    y = np.zeros((n, ho, wo, cout), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride, :].astype(np.float64)
            y += np.einsum("nhwc,co->nhwo", patch, w[dy, dx].astype(np.float64))
    return y


def padded_input_ref(x, kh, kw, stride, pad_top, pad_left, ho, wo, value):
    """x inside a block of ``value`` big enough for every (ho, wo) window, float64."""
    n, h, w, c = x.shape
    hp = max(h + pad_top, (ho - 1) * stride + kh)
    wp = max(w + pad_left, (wo - 1) * stride + kw)
    xp = np.full((n, hp, wp, c), value, np.float64)
    xp[:, pad_top:pad_top + h, pad_left:pad_left + w] = x
    return xp


def conv_backward_ref(x, w, dz, stride, pad_top, pad_left, pad_value=0.0):
    """Dense float64 convolution gradients: (dw (kh, kw, C, F), dx (N, H, W, C)).

    w is the (kh, kw, C, F) kernel of the forward pass; padded taps hold pad_value,
    so with ±1 padding they add to dw; dx has the input's shape.
    """
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = dz.shape[1], dz.shape[2]
    xp = padded_input_ref(x, kh, kw, stride, pad_top, pad_left, ho, wo, pad_value)
    dz = dz.astype(np.float64)
    dw = np.zeros((kh, kw, c, f))
    dxp = np.zeros(xp.shape)
    for dy in range(kh):
        for dx in range(kw):
            win = (slice(None), slice(dy, dy + stride * (ho - 1) + 1, stride),
                   slice(dx, dx + stride * (wo - 1) + 1, stride))
            dw[dy, dx] = np.einsum("nhwc,nhwf->cf", xp[win], dz)
            dxp[win] += np.einsum("nhwf,cf->nhwc", dz, w[dy, dx].astype(np.float64))
    return dw, dxp[:, pad_top:pad_top + h, pad_left:pad_left + wd]
