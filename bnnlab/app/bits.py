"""What the Bits panel draws, without Qt: activation maps laid out as mosaics, which unit a
pixel of a mosaic is, the receptive field of a unit, and one unit's computation as text.

* :class:`Mosaic` lays a block's output (H, W, C) out as one image: one H x W tile per
  channel, tiles in rows, separated by a gap (:meth:`Mosaic.gaps`, which the view
  colours apart from every value); a dense block's output (1, 1, C) becomes a strip of
  C one-pixel cells, 32 to a row. :meth:`Mosaic.unit_at` turns a pixel of that
  image into the output unit ``(row, column, channel)`` it shows, :meth:`Mosaic.cell` does
  the reverse;
* :func:`receptive_field`: the input positions one output unit reads (its pooling windows'
  taps), to frame them in the block's input;
* :func:`probe`: for one input, every block's activations and inputs and one unit
  explained (:class:`Probe`); in a graph model, also the sums the ``add`` nodes make of
  that unit's value (e.g. with a real-valued shortcut);
* :func:`unit_text`: :class:`bnnlab.deploy.explain.UnitExplanation` as the step-by-step
  text the panel shows: input bits, weight bits, XNOR, popcount, ``K - 2 * popcount``,
  pooling, threshold, output bit, and whether the runtime computed the same bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GAP_VALUE", "Mosaic", "Probe", "block_input", "block_output", "input_labels",
           "output_labels", "output_scale", "probe", "receptive_field", "unit_text"]

GAP_VALUE = 0.5  # grey between tiles; -1 is black and +1 white
STRIP_WIDTH = 32  # cells per row of a dense block's strip


@dataclass(frozen=True)
class Mosaic:
    """The layout of one activation tensor (H, W, C) as a single image."""

    shape: tuple[int, int, int]
    columns: int  # tiles per row
    gap: int

    @classmethod
    def for_shape(cls, shape, *, aspect: float = 1.6) -> "Mosaic":
        """A layout for ``shape`` (H, W, C) about ``aspect`` times wider than high."""
        h, w, c = (int(v) for v in shape)
        if h == 1 and w == 1:  # a dense output: a strip of cells
            return cls((1, 1, c), min(c, STRIP_WIDTH), 0)
        gap = 1
        best = 1
        for cols in range(1, c + 1):
            rows = math.ceil(c / cols)
            width, height = cols * (w + gap), rows * (h + gap)
            if width / height > aspect:
                break
            best = cols
        return cls((h, w, c), best, gap)

    @property
    def rows(self) -> int:
        return math.ceil(self.shape[2] / self.columns)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image in pixels."""
        h, w, _ = self.shape
        g = self.gap
        return self.rows * (h + g) + g, self.columns * (w + g) + g

    def cell(self, y: int, x: int, c: int) -> tuple[int, int]:
        """(row, column) of the pixel that shows output unit (y, x, c)."""
        h, w, _ = self.shape
        g = self.gap
        tr, tc = divmod(int(c), self.columns)
        return g + tr * (h + g) + int(y), g + tc * (w + g) + int(x)

    def unit_at(self, py: float, px: float) -> tuple[int, int, int] | None:
        """The unit (y, x, c) shown at pixel (``py`` down, ``px`` across), or None for a
        gap or a point outside the image. Pixel (i, j) covers [i, i+1) x [j, j+1)."""
        if py < 0 or px < 0:
            return None
        h, w, c = self.shape
        g = self.gap
        iy, ix = int(math.floor(py)) - g, int(math.floor(px)) - g
        if iy < 0 or ix < 0:
            return None
        tr, y = divmod(iy, h + g)
        tc, x = divmod(ix, w + g)
        ch = tr * self.columns + tc
        if y >= h or x >= w or tc >= self.columns or ch >= c:
            return None
        return y, x, ch

    def gaps(self) -> np.ndarray:
        """(height, width) bool: the pixels between and around the tiles (no unit)."""
        h, w, c = self.shape
        mask = np.ones(self.size, bool)
        for ch in range(c):
            r0, c0 = self.cell(0, 0, ch)
            mask[r0:r0 + h, c0:c0 + w] = False
        return mask

    def image(self, values: np.ndarray) -> np.ndarray:
        """``values`` (H, W, C) of ±1 as the mosaic in [0, 1]: -1 black, +1 white."""
        h, w, c = self.shape
        v = np.asarray(values, np.float32).reshape(h, w, c)
        out = np.full(self.size, GAP_VALUE, np.float32)
        for ch in range(c):
            r0, c0 = self.cell(0, 0, ch)
            out[r0:r0 + h, c0:c0 + w] = (v[:, :, ch] + 1.0) * 0.5
        return out


def receptive_field(block, unit: tuple[int, int, int]) -> list[tuple[int, int]]:
    """The (row, column) positions of the block's input that output ``unit`` reads (over
    all of its pooling window), inside the input; for a dense block, every position."""
    h, w, _ = block.in_shape
    if block.kind != "conv2d":
        return [(y, x) for y in range(h) for x in range(w)]
    kh, kw = block.kernel_size
    pt, _, pl, _ = block.pads
    size, stride = block.pool if block.pool[0] else (1, 1)
    oy, ox = int(unit[0]), int(unit[1])
    seen = set()
    for py in range(size):
        for px in range(size):
            cy, cx = oy * stride + py, ox * stride + px
            for dy in range(kh):
                for dx in range(kw):
                    iy, ix = cy * block.stride - pt + dy, cx * block.stride - pl + dx
                    if 0 <= iy < h and 0 <= ix < w:
                        seen.add((iy, ix))
    return sorted(seen)


@dataclass(frozen=True, eq=False)
class Probe:
    """One input through a ``.bnn`` model: what the runtime reads (``raw``), every block's
    output (:class:`bnnlab.deploy.explain.ActivationMap`) and input (as the block reads
    it), one unit explained, and the ``add`` sums of that unit in a graph
    (:class:`bnnlab.deploy.explain.AddTerms`)."""

    raw: np.ndarray
    maps: list
    explanation: object  # bnnlab.deploy.explain.UnitExplanation
    inputs: list = ()
    adds: list = ()


def probe(opened, x: np.ndarray, block: int, unit: tuple[int, int, int]) -> Probe:
    """Run dataset input ``x`` (one input, e.g. (28, 28, 1) in [0, 1]) through the packed
    runtime of ``opened`` (:class:`bnnlab.app.models.OpenedModel`), and explain output
    ``unit`` = (row, column, channel) of ``block`` step by step."""
    from ..deploy.explain import activation_maps, add_terms, block_inputs, explain_unit

    rt = opened.runtime()
    raw = opened.raw_inputs(np.asarray(x)[None])[0]
    e = explain_unit(rt, raw, block, unit)
    return Probe(raw, activation_maps(rt, raw), e, block_inputs(rt, raw),
                 add_terms(rt, raw, block, e.unit))


def block_input(p: Probe, mf, block: int) -> np.ndarray:
    """The input of ``block`` as (H, W, C) values in [-1, 1] for drawing: the ±1 it reads
    (bits of the block before, or signs of a graph's float tensor), or the raw input
    (pixels 0..255 mapped to -1..1, floats clipped)."""
    b = mf.blocks[block]
    v = np.asarray(p.inputs[block], np.float32).reshape(b.in_shape)
    if b.input != "raw":
        return v
    raw = np.asarray(p.raw, np.float32).reshape(b.in_shape)
    if mf.input.encoding == "uint8":
        return raw / 127.5 - 1.0
    return np.clip(raw, -1.0, 1.0)


def block_output(p: Probe, mf, block: int) -> np.ndarray:
    """The output of ``block`` as (H, W, C) in [-1, 1]: its bits, or its float values
    (a graph's real-valued maps, or the logits as a strip) divided by their largest
    magnitude (:func:`output_scale`)."""
    m = p.maps[block]
    if m.bits:
        return np.asarray(m.values, np.float32)
    v = np.asarray(m.values, np.float32)
    v = v if v.ndim == 3 else v.reshape(1, 1, -1)
    top = output_scale(p, block)
    return v / top if top > 0 else v


def output_scale(p: Probe, block: int) -> float:
    """The largest magnitude of a block's float output: drawn black at -it, white at
    +it (1.0 for bits)."""
    m = p.maps[block]
    if m.bits:
        return 1.0
    v = np.asarray(m.values, np.float32)
    return float(np.max(np.abs(v))) if v.size else 0.0


def input_labels(p: Probe, mf, block: int, source: str | None = None) -> tuple[str, str]:
    """(title, caption) of a block's input map: what it is, and what its grey levels mean
    as :func:`block_input` draws them. ``source`` names the tensor a graph block reads."""
    b = mf.blocks[block]
    h, w, c = b.in_shape
    if b.input == "raw" and mf.input.encoding == "uint8":
        what, scale = "pixels", "black 0 · white 255"
    elif b.input == "raw":
        what, scale = "inputs", "black −1 or less · white +1 or more"
    else:
        kind = "signs" if b.input == "signs" else "bits"
        what = f"{kind} of {source}" if source else f"bits of block {block - 1}"
        scale = "black −1 · white +1"
    return f"input: {what} ({c} × {h}×{w}); shaded: receptive field", scale


def output_labels(p: Probe, mf, block: int) -> tuple[str, str]:
    """(title, caption) of a block's output map: what it is, and what its grey levels
    mean as :func:`block_output` draws them."""
    b = mf.blocks[block]
    oh, ow, oc = b.out_shape
    if b.output == "bits":
        shape = f"a strip of {oc} bits" if (oh, ow) == (1, 1) else f"{oc} channels of {oh}×{ow}"
        return f"output: {shape}; click one", "black −1 · white +1"
    top = output_scale(p, block)
    scale = f"black −{top:.3g} · grey 0 · white +{top:.3g}" if top > 0 else "all 0 (grey)"
    if block == len(mf.blocks) - 1 and b.output == "logits":
        what = f"{oc} logits" if (oh, ow) == (1, 1) else f"logits, {oc} × {oh}×{ow}"
    else:
        what = f"{oc} × {oh}×{ow} real values"
    return f"output: {what}; click one", scale


# --------------------------------------------------------------------------- text


def _bits(a) -> str:
    s = "".join("1" if v else "0" for v in np.asarray(a).ravel())
    return " ".join(s[i:i + 8] for i in range(0, len(s), 8))


def _rows(e, w, values, name: str) -> list[str]:
    """``values`` (one per tap) in lines of one kernel position each (channels across)."""
    lines = [f"  {name}"]
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (dy, dx, _c) in enumerate(e.taps):
        groups.setdefault((dy, dx), []).append(k)
    for (dy, dx), ks in groups.items():
        for start in range(0, len(ks), 32):
            part = ks[start:start + 32]
            vals = ["·" if not w.counted[k] else ("1" if values[k] else "0") for k in part]
            s = "".join(vals)
            s = " ".join(s[i:i + 8] for i in range(0, len(s), 8))
            chans = f"c{e.taps[part[0]][2]}-{e.taps[part[-1]][2]}"
            lines.append(f"    ({dy},{dx}) {chans:>8}  {s}")
    return lines


def unit_text(e, *, detail: bool = True, adds=()) -> str:
    """The step-by-step computation of one output unit, as plain text.

    ``detail`` writes every tap's input bit, weight bit and XNOR (one line per kernel
    position, channels across, ``·`` for a padding tap that takes no part) for the window
    that gives the maximum, after the summary (every pooling window in one line each).
    ``adds`` (:class:`bnnlab.deploy.explain.AddTerms`) follow the value into the graph's
    ``add`` nodes.
    """
    y, x, c = e.unit
    kinds = {"xnor": "binary inputs: XNOR and popcount",
             "integer": "integer pixels times ±1 weights", "float": "float inputs"}
    lines = [f"block {e.block}, unit (row {y}, column {x}, channel {c})", f"{kinds[e.kind]}"]
    best = max(range(len(e.windows)), key=lambda i: e.windows[i].dot)
    if len(e.windows) > 1:
        lines.append(f"max pool of {len(e.windows)} dot products, at (row, column) "
                     "before pooling:")
    for i, w in enumerate(e.windows):
        where = f"  at ({w.position[0]},{w.position[1]})" if len(e.windows) > 1 else "dot"
        if w.input_bits is not None:
            head = f"{where}: K={w.k} d={w.popcount} dot=K-2d={w.dot:g}"
        else:
            head = f"{where}: K={w.k} dot=sum(input*weight)={w.dot:g}"
        lines.append(head + ("   <- max" if len(e.windows) > 1 and i == best else ""))
    if len(e.windows) > 1:
        lines.append(f"max pool: m = {e.m:g}")
    else:
        lines.append(f"m = {e.m:g}")
    lines.append(f"threshold: {e.rule}" if e.rule.startswith(("+1", "always")) else
                 f"scale and offset: {e.rule}")
    lines.append(f"output {e.output:+g}")
    verdict = "the same" if e.agrees else "DIFFERENT (a bug: please report it)"
    lines.append(f"the runtime computed {e.runtime_output:+g}: {verdict}")
    for a in adds:
        lines.append(f"node {a.node} adds it to the other branch (float32):")
        for name, v in a.terms:
            mine = "   <- this unit" if name.endswith(f"(block {e.block})") else ""
            lines.append(f"  {v:+12.6g}  {name}{mine}")
        lines.append(f"  = {a.total:+.6g}, sign {'+1' if a.total >= 0 else '-1'}")
    w = e.windows[best]
    if detail:
        lines.append("")
        lines.append("step by step" + (f", the maximum at ({w.position[0]},{w.position[1]})"
                                       if len(e.windows) > 1 else ""))
        if w.input_bits is not None:
            lines += ["  bit 1 = -1, bit 0 = +1; a row per kernel",
                      "  position (dy,dx), channels across"]
            lines += _rows(e, w, w.input_bits, "input bits (the receptive field)")
            lines += _rows(e, w, w.weight_bits, "weight bits")
            lines += _rows(e, w, w.xnor, "XNOR (1 = signs agree)")
            lines += [f"  popcount of disagreements d = {w.popcount} of K = {w.k} taps",
                      f"  dot = K - 2d = {w.k} - 2*{w.popcount} = {w.dot:g}"]
        else:
            shown = np.asarray(w.inputs)[w.counted][:16]
            vals = " ".join(f"{v:g}" for v in shown)
            more = " …" if int(w.counted.sum()) > 16 else ""
            lines.append(f"  inputs {vals}{more}")
            lines.append(f"  weight bits {_bits((np.asarray(w.weights) < 0)[w.counted][:64])}"
                         + (" …" if int(w.counted.sum()) > 64 else ""))
    return "\n".join(lines)
