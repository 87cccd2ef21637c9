"""A ``.bnn`` model taken apart for display: bit planes, thresholds, the file's byte map,
activation maps, and one output unit computed step by step.

Plain data only (NumPy arrays, dataclasses, strings); the app's Bits panel draws it.

* :func:`kernel_bits`: a binary block's packed kernel as a (filters x taps) bit plane,
  bit 1 meaning -1, with each tap's (dy, dx, c) and the byte and bit that hold it;
* :func:`thresholds`: the folded per-channel rule that turns an accumulator into a bit;
* :func:`file_layout`: which bytes of the file hold what, recorded by the decoder itself
  while it reads the file (:func:`bnnlab.deploy.format.decode` with ``layout``), so the
  map cannot disagree with the reader;
* :func:`activation_maps`: every block's output for one input, from the runtime;
* :func:`block_inputs`: every block's input as the block reads it (the raw input, or ±1);
* :func:`explain_unit`: one output of one block: its input bits and weight bits, their
  XNOR, the popcount of the disagreements, ``dot = K - 2 * popcount``, max pooling, the
  threshold and the output bit, checked against the bit the runtime computed;
* :func:`graph_links`: in a graph model (version 2), where a block's input comes from and
  where its output goes, and for one unit, the sum an ``add`` node makes of it.

In a graph, a block may read the signs of a float tensor (``input == "signs"``: +1 where
the value is >= 0) and give float values (``scale * m + offset``) to the float nodes
after it, e.g. an ``add`` with a real-valued shortcut.

The arithmetic (``docs/bnn-format.md`` and ``docs/thresholds.md`` explain it): with
signs stored as bits (0 = +1, 1 = -1), two signs agree exactly when their bits are
equal, so for K taps ``sum(x * w) = (K - d) - d = K - 2 d`` where ``d`` is the number of
disagreeing taps, the popcount of ``x XOR w``. Padding taps of a block whose pad value is
0 take no part (they are not counted in K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import MODE_GE, MODE_LE, MODE_MINUS, MODE_PLUS, Block, ModelFile, decode

__all__ = [
    "ActivationMap",
    "KernelBits",
    "Span",
    "Threshold",
    "AddTerms",
    "GraphLinks",
    "UnitExplanation",
    "Window",
    "activation_maps",
    "add_terms",
    "block_inputs",
    "explain_unit",
    "graph_links",
    "file_layout",
    "kernel_bits",
    "tap_labels",
    "thresholds",
]

MODE_NAMES = {MODE_GE: ">=", MODE_LE: "<=", MODE_PLUS: "always +1", MODE_MINUS: "always -1"}


# --------------------------------------------------------------------------- kernels


def tap_labels(b: Block) -> list[tuple[int, int, int]]:
    """(dy, dx, c) of each of the block's K taps, in the file's order.

    For a convolution, tap ``k = (dy * kw + dx) * C + c``; for a dense block, the taps
    run over its input in NHWC order, (y, x, c).
    """
    h, w, c = b.in_shape
    kh, kw = b.kernel_size if b.kind == "conv2d" else (h, w)
    return [(dy, dx, ch) for dy in range(kh) for dx in range(kw) for ch in range(c)]


@dataclass(frozen=True, eq=False)
class KernelBits:
    """A binary block's kernel as stored.

    ``bits[f, k]`` is 1 where filter ``f``'s weight at tap ``k`` is -1. The file packs
    these bits filter after filter, tap after tap, eight to a byte, least significant bit
    first: weight (f, k) is bit ``(f * K + k) % 8`` of kernel byte ``(f * K + k) // 8``.
    """

    block: int
    bits: np.ndarray  # (F, K) uint8
    taps: list[tuple[int, int, int]]
    kernel_size: tuple[int, int]
    in_channels: int

    @property
    def filters(self) -> int:
        return self.bits.shape[0]

    @property
    def fan_in(self) -> int:
        return self.bits.shape[1]

    def position(self, f: int, k: int) -> tuple[int, int]:
        """(byte within the kernel data, bit within that byte) of weight (f, k)."""
        i = f * self.fan_in + k
        return i // 8, i % 8

    def grid(self) -> np.ndarray:
        """The bits as (F, C, kh, kw): one kh x kw tile per filter and input channel."""
        kh, kw = self.kernel_size
        return np.ascontiguousarray(
            self.bits.reshape(self.filters, kh, kw, self.in_channels).transpose(0, 3, 1, 2))


def kernel_bits(mf: ModelFile, block: int) -> KernelBits:
    """The bit plane of block ``block``; ``ValueError`` for a block with a float kernel."""
    b = mf.blocks[block]
    if b.kernel != "bits":
        raise ValueError(f"block {block} has a float32 kernel, not bits")
    bits = (b.signs() < 0).astype(np.uint8)
    ks = b.kernel_size if b.kind == "conv2d" else b.in_shape[:2]
    return KernelBits(block, bits, tap_labels(b), tuple(ks), b.in_shape[2])


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Threshold:
    """How channel ``channel`` of a block turns its (pooled) accumulator ``m`` into a bit."""

    channel: int
    mode: str  # ">=", "<=", "always +1", "always -1"
    threshold: float  # an integer for integer accumulators

    def output(self, m) -> int:
        if self.mode == ">=":
            return 1 if m >= self.threshold else -1
        if self.mode == "<=":
            return 1 if m <= self.threshold else -1
        return 1 if self.mode == "always +1" else -1

    def rule(self) -> str:
        if self.mode in (">=", "<="):
            t = int(self.threshold) if float(self.threshold).is_integer() else self.threshold
            return f"+1 if m {self.mode} {t}, else -1"
        return self.mode


def thresholds(mf: ModelFile, block: int) -> list[Threshold]:
    """The folded rule of every output channel of a block that outputs bits."""
    b = mf.blocks[block]
    if b.output != "bits":
        raise ValueError(f"block {block} outputs logits (scale * m + offset), not bits")
    t = b.thresholds
    return [Threshold(i, MODE_NAMES[int(m)], int(t[i]) if b.acc == "int32" else float(t[i]))
            for i, m in enumerate(b.modes)]


# --------------------------------------------------------------------------- file layout


@dataclass(frozen=True)
class Span:
    """``size`` bytes at ``offset`` hold ``what``; ``block`` is the block index, or None."""

    offset: int
    size: int
    what: str
    block: int | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size


def file_layout(data: bytes) -> list[Span]:
    """The byte map of a ``.bnn`` file: every byte belongs to exactly one span, in order.

    The spans are the fields the decoder reads (neighbouring fields with the same name,
    such as a class name's length byte and its text, are merged).
    """
    raw: list[tuple[int, int, str]] = []
    decode(data, layout=raw)
    spans: list[Span] = []
    for off, size, what in sorted(raw):
        if size == 0:
            continue
        words = what.split()
        block = int(words[1]) if words[0] == "block" and words[1].isdigit() else None
        if spans and spans[-1].what == what and spans[-1].end == off:
            last = spans.pop()
            spans.append(Span(last.offset, last.size + size, what, block))
        else:
            spans.append(Span(off, size, what, block))
    return spans


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True, eq=False)
class ActivationMap:
    """One block's output for one input: ±1 int8 (H, W, C), or the logits (n,) of the
    last block of a stack; in a graph, float values (H, W, C) for a block that outputs
    them."""

    block: int
    values: np.ndarray
    bits: bool


def _block_outputs(runtime, raw: np.ndarray) -> tuple[list[np.ndarray], list | None]:
    """(each block's output for one raw input, flattened; every node's output of a graph
    for that input (None for a stack))."""
    mf = runtime.model_file
    if not mf.nodes:
        return [t[0] for t in runtime.trace(raw[None])], None
    nodes = [t[0] for t in runtime.node_outputs(raw[None])]
    return [nodes[j].reshape(-1) for j, nd in enumerate(mf.nodes) if nd.op == "block"], nodes


def activation_maps(runtime, raw: np.ndarray) -> list[ActivationMap]:
    """Every block's output for one raw input (what the file reads, e.g. uint8 pixels)."""
    raw = np.asarray(raw)
    outs, nodes = _block_outputs(runtime, raw)
    out = []
    for i, (b, t) in enumerate(zip(runtime.model_file.blocks, outs)):
        if b.output == "bits":
            out.append(ActivationMap(i, t.reshape(b.out_shape).astype(np.int8), True))
        elif nodes is not None and b.kind == "conv2d":
            out.append(ActivationMap(i, np.asarray(t, np.float32).reshape(b.out_shape), False))
        else:
            out.append(ActivationMap(i, np.asarray(t, np.float32), False))
    return out


def block_inputs(runtime, raw: np.ndarray) -> list[np.ndarray]:
    """Every block's input for one raw input, (H, W, C) as the block reads it: the raw
    input (integers, or floats scaled as the file says) for a block on the model input,
    ±1 for a block on bits or on the signs of a float tensor."""
    raw = np.asarray(raw)
    outs, nodes = _block_outputs(runtime, raw)
    return [_input_of(runtime.model_file, i, raw, outs, nodes)
            for i in range(len(runtime.model_file.blocks))]


# --------------------------------------------------------------------------- one unit


@dataclass(frozen=True, eq=False)
class Window:
    """One accumulator: the taps of one convolution position (or of the dense input).

    ``inputs`` are the tap values (±1 for binary input, pixels or floats for the raw
    input; 0 for a padding tap that takes no part), ``weights`` ±1 (or float), ``counted``
    which taps take part. For binary input, ``input_bits``/``weight_bits`` hold the stored
    bits, ``xnor`` is 1 where they agree, ``popcount`` counts the disagreeing taps, and
    ``dot = K - 2 * popcount`` with ``K = counted.sum()``.
    """

    position: tuple[int, int]  # (row, column) before pooling
    inputs: np.ndarray
    weights: np.ndarray
    counted: np.ndarray
    input_bits: np.ndarray | None
    weight_bits: np.ndarray | None
    xnor: np.ndarray | None
    k: int
    popcount: int | None
    dot: float


@dataclass(frozen=True, eq=False)
class UnitExplanation:
    """How the runtime computes output ``(row, column, channel)`` of one block.

    ``windows`` are the accumulators the max pool compares (one when the block has no
    pool); ``m`` is their maximum. A block that outputs bits compares ``m`` with its
    threshold (``rule``) and gives ``output`` ±1; the last block gives the logit
    ``scale * m + offset``. ``runtime_output`` is what the runtime computed for the same
    unit, and ``agrees`` says whether both are the same.
    """

    block: int
    unit: tuple[int, int, int]
    kind: str  # "xnor" (binary input), "integer" (raw pixels) or "float"
    taps: list[tuple[int, int, int]]
    windows: list[Window]
    m: float
    rule: str
    output: float
    runtime_output: float
    agrees: bool


def _block_node(mf: ModelFile, block: int) -> int:
    """The 1-based node number of ``block`` in a graph."""
    return next(j for j, nd in enumerate(mf.nodes, 1) if nd.op == "block" and nd.block == block)


def _input_of(mf: ModelFile, block: int, raw: np.ndarray, outs: list, nodes: list | None):
    """The block's input as the runtime sees it, (H, W, C): raw values or ±1."""
    b = mf.blocks[block]
    if nodes is not None and b.input != "raw":
        src = nodes[mf.nodes[_block_node(mf, block) - 1].sources[0] - 1]
        if b.input == "signs":  # +1 where v >= 0, -1 elsewhere (NaN too), as the runtime packs
            return np.where(np.asarray(src) >= 0, 1, -1).astype(np.int64).reshape(b.in_shape)
        return np.asarray(src).astype(np.int64).reshape(b.in_shape)
    if nodes is None and block > 0:
        return outs[block - 1].reshape(b.in_shape).astype(np.int64)
    spec = mf.input
    if b.acc == "int32":
        return np.asarray(raw, np.int64).reshape(b.in_shape)
    x = np.asarray(raw, np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    return x.astype(np.float32).reshape(b.in_shape)


def _window(b: Block, x: np.ndarray, f: int, oy: int, ox: int) -> Window:
    taps = tap_labels(b)
    w = b.weights()[f]
    binary_in = b.input in ("bits", "signs")
    vals = np.zeros(len(taps), x.dtype)
    counted = np.ones(len(taps), bool)
    if b.kind == "dense":
        vals[:] = x.reshape(-1)
    else:
        pt, _, pl, _ = b.pads
        h, wd, _ = b.in_shape
        for k, (dy, dx, c) in enumerate(taps):
            iy, ix = oy * b.stride - pt + dy, ox * b.stride - pl + dx
            if 0 <= iy < h and 0 <= ix < wd:
                vals[k] = x[iy, ix, c]
            elif b.pad_value == 0:
                counted[k] = False  # a zero contributes nothing: the tap is skipped
            else:
                vals[k] = b.pad_value
    if binary_in:
        ib = (vals < 0).astype(np.uint8)
        wb = (w < 0).astype(np.uint8)
        xnor = (1 - (ib ^ wb)).astype(np.uint8)
        k_eff = int(counted.sum())
        pop = int(((ib ^ wb) & counted).sum())
        return Window((oy, ox), vals, w, counted, ib, wb, xnor, k_eff, pop, float(k_eff - 2 * pop))
    if b.acc == "int32":
        dot = float(np.sum(vals.astype(np.int64) * w.astype(np.int64)))
    else:  # float32, one tap at a time in the file's order, as the runtime sums
        acc = np.float32(0)
        for k in range(len(taps)):
            acc = np.float32(acc + np.float32(vals[k]) * np.float32(w[k]))
        dot = float(acc)
    return Window((oy, ox), vals, w, counted, None, None, None, int(counted.sum()), None, dot)


def explain_unit(runtime, raw: np.ndarray, block: int, unit: tuple[int, int, int]) -> UnitExplanation:
    """Compute output ``unit = (row, column, channel)`` of ``block`` for one raw input by
    hand, and compare it with the runtime's own result for the same unit.

    For a dense block the unit is ``(0, 0, channel)``. Raises ``IndexError`` for a unit
    outside the block's output.
    """
    mf = runtime.model_file
    if not 0 <= block < len(mf.blocks):
        raise IndexError(f"block {block} of {len(mf.blocks)}")
    b = mf.blocks[block]
    y, x, c = (int(v) for v in unit)
    hp, wp, f = b.out_shape
    if not (0 <= y < hp and 0 <= x < wp and 0 <= c < f):
        raise IndexError(f"unit {tuple(unit)} is outside block {block}'s output {b.out_shape}")
    raw = np.asarray(raw)
    outs, nodes = _block_outputs(runtime, raw)
    xin = _input_of(mf, block, raw, outs, nodes)
    size, stride = b.pool if b.pool[0] else (1, 1)
    windows = [_window(b, xin, c, y * stride + dy, x * stride + dx)
               for dy in range(size) for dx in range(size)]
    m = max(wd.dot for wd in windows)
    kind = "xnor" if b.input in ("bits", "signs") else ("integer" if b.acc == "int32" else "float")
    got = outs[block]
    if b.output == "bits":
        rule = thresholds(mf, block)[c]
        out = float(rule.output(m))
        runtime_out = float(got[(y * wp + x) * f + c])
        text = rule.rule()
    else:
        scale, offset = np.float32(b.scale[c]), np.float32(b.offset[c])
        out = float(np.float32(np.float32(m) * scale) + offset)
        runtime_out = float(got[(y * wp + x) * f + c])
        what = "logit" if block == len(mf.blocks) - 1 else "value"
        sign = "-" if offset < 0 else "+"
        text = f"{what} = {float(scale):.6g} * m {sign} {abs(float(offset)):.6g}"
    return UnitExplanation(block, (y, x, c), kind, tap_labels(b), windows, m, text, out,
                           runtime_out, out == runtime_out)


# --------------------------------------------------------------------------- graphs

_OP_NAMES = {"add": "add", "concatenate": "concatenate", "maxpool": "max pool"}


def _node_name(mf: ModelFile, j: int) -> str:
    """How the text names tensor ``j`` of a graph: the input, or node j and what it is."""
    if j == 0:
        return "the model input"
    nd = mf.nodes[j - 1]
    return f"node {j} ({f'block {nd.block}' if nd.op == 'block' else _OP_NAMES[nd.op]})"


@dataclass(frozen=True)
class GraphLinks:
    """Where a block of a graph sits: its node, the tensor it reads and who reads its
    output (each as text, e.g. ``node 3 (add)``)."""

    block: int
    node: int
    source: str
    readers: tuple[str, ...]


@dataclass(frozen=True)
class AddTerms:
    """One ``add`` node's sum at one position: its terms (tensor name, value) in order,
    and the float32 sum the runtime computed."""

    node: int
    terms: tuple[tuple[str, float], ...]
    total: float


def graph_links(mf: ModelFile, block: int) -> GraphLinks:
    """Where ``block`` of a graph model reads from and writes to."""
    if not mf.nodes:
        raise ValueError("a stack of blocks has no graph links")
    j = _block_node(mf, block)
    readers = tuple(_node_name(mf, k) for k, nd in enumerate(mf.nodes, 1) if j in nd.sources)
    return GraphLinks(block, j, _node_name(mf, mf.nodes[j - 1].sources[0]), readers)


def add_terms(runtime, raw: np.ndarray, block: int, unit: tuple[int, int, int]) -> list[AddTerms]:
    """For one raw input, every ``add`` node that reads ``block``'s output directly, at the
    position ``unit`` of that output: the values it adds (e.g. the block's value and the
    real-valued shortcut's) and their sum. Empty for a stack."""
    mf = runtime.model_file
    if not mf.nodes:
        return []
    j = _block_node(mf, block)
    nodes = [t[0] for t in runtime.node_outputs(np.asarray(raw)[None])]
    y, x, c = (int(v) for v in unit)
    found = []
    for k, nd in enumerate(mf.nodes, 1):
        if nd.op != "add" or j not in nd.sources:
            continue
        terms = tuple((_node_name(mf, s), float(nodes[s - 1][y, x, c])) for s in nd.sources)
        found.append(AddTerms(k, terms, float(nodes[k - 1][y, x, c])))
    return found
