"""Random valid ``.bnn`` records of every block kind, for testing implementations of the format.

:func:`random_model_file` draws a small model: a rank-1 or rank-3 input in either encoding
with any finite input scale (negative ones included), then 1..4 blocks. The first block
is a convolution or a dense layer on the raw input with an int32 accumulator and a bit
kernel, or a float32 accumulator with a bit or float kernel; later blocks are binary
convolutions (any kernel size, stride, padding, pad value and max pool that fit) or
binary dense layers. Thresholds are drawn near the middle of each accumulator's range so
that outputs vary, with some constant channels and some of each comparison direction.

:func:`random_graph_file` draws a graph (version 2) from the same blocks: blocks on the
input, on bits or on the signs of float tensors, with bits or float output, and adds,
concatenations and max pooling of float tensors between them.
"""

from __future__ import annotations

import math

import numpy as np

from .format import (MODE_GE, MODE_LE, MODE_MINUS, MODE_PLUS, Block, InputSpec, ModelFile,
                     Node, pack_signs, validate)

__all__ = ["random_graph_file", "random_inputs", "random_model_file"]


def _f32(x) -> float:
    return float(np.float32(x))


def _input_spec(rng: np.random.Generator) -> InputSpec:
    if rng.random() < 0.65:
        shape = (int(rng.integers(1, 13)), int(rng.integers(1, 13)), int(rng.choice([1, 2, 3, 5, 33])))
    else:
        shape = (int(rng.integers(1, 70)),)
    encoding = "uint8" if rng.random() < 0.7 else "float32"
    if encoding == "uint8":
        scale, offset = rng.choice([(1 / 255, 0.0), (2 / 255, -1.0), (-1 / 255, 1.0), (-2 / 255, 1.0),
                                    (0.5, -3.0)])
    else:
        scale, offset = rng.choice([(1.0, 0.0), (-1.0, 0.0), (0.25, 0.5)])
    return InputSpec(shape, encoding, _f32(scale), _f32(offset))


def _geometry(rng: np.random.Generator, h: int, w: int) -> dict:
    kh = int(rng.integers(1, min(4, h) + 1))
    kw = int(rng.integers(1, min(4, w) + 1))
    pads = tuple(int(rng.integers(0, k)) if rng.random() < 0.5 else 0 for k in (kh, kh, kw, kw))
    stride = int(rng.choice([1, 1, 2, 3]))
    ho = (h + pads[0] + pads[1] - kh) // stride + 1
    wo = (w + pads[2] + pads[3] - kw) // stride + 1
    pool = (0, 0)
    if min(ho, wo) >= 2 and rng.random() < 0.4:
        size = int(rng.integers(2, min(ho, wo, 3) + 1))
        pool = (size, int(rng.integers(1, size + 1)))
    return dict(kernel_size=(kh, kw), stride=stride, pads=pads, pool=pool)


def _epilogue(rng: np.random.Generator, n: int, acc: str, spread: float, last: bool) -> dict:
    if last:
        return dict(output="logits",
                    scale=rng.normal(0, 1, n).astype(np.float32),
                    offset=rng.normal(0, spread, n).astype(np.float32))
    modes = rng.choice([MODE_GE, MODE_LE, MODE_PLUS, MODE_MINUS], n, p=[0.45, 0.45, 0.05, 0.05])
    t = rng.normal(0, spread, n)
    if acc == "int32":
        thr = np.rint(t).astype(np.int32)
    else:
        thr = t.astype(np.float32)
    thr[modes >= MODE_PLUS] = 0
    return dict(output="bits", modes=modes.astype(np.uint8), thresholds=thr)


def _random_block(rng: np.random.Generator, spec: InputSpec, kind: str,
                  shape: tuple[int, int, int], spatial: bool, values: bool,
                  few_outputs: bool = False, same: bool = False) -> Block:
    """A block reading a tensor of ``kind`` ("raw", "bits" or "values") and ``shape``; its
    output is float values when ``values``, else bits; ``few_outputs``: 1..11 channels;
    ``same``: an output of the input's shape (a residual branch)."""
    h, w, c = shape
    if same:
        conv = spatial
        k = int(rng.choice([1, 3]))
        geo = dict(kernel_size=(k, k), stride=1, pads=(k // 2,) * 4, pool=(0, 0)) if conv else {}
        out_c = c
    else:
        conv = spatial and rng.random() < 0.7
        geo = _geometry(rng, h, w) if conv else {}
        out_c = int(rng.choice([1, 2, 3, 7, 16, 31, 32, 33, 40, 64, 65]))
    if few_outputs:
        out_c = int(rng.integers(1, 12))
    k = (geo["kernel_size"][0] * geo["kernel_size"][1] * c) if conv else h * w * c
    if kind == "raw":
        choice = rng.random()
        kernel, acc = (("bits", "int32") if spec.encoding == "uint8" and choice < 0.5 else
                       ("bits", "float32") if choice < 0.75 else ("float32", "float32"))
    else:
        kernel, acc = "bits", "int32"
    pad_value = int(rng.choice([0, 1, -1])) if conv and not (kind == "raw" and acc == "int32") else 0
    kdata = (pack_signs(rng.choice([-1, 1], out_c * k)) if kernel == "bits"
             else rng.normal(0, 1, (out_c, k)).astype(np.float32))
    if kind == "raw" and acc == "int32":
        spread = 128 * math.sqrt(k)  # pixels around 128, random signs
    elif kind == "raw":
        spread = (abs(spec.scale) * (255 if spec.encoding == "uint8" else 1)
                  + abs(spec.offset)) * math.sqrt(k)
    else:
        spread = math.sqrt(k)
    return Block(kind="conv2d" if conv else "dense",
                 input={"raw": "raw", "bits": "bits", "values": "signs"}[kind],
                 kernel=kernel, acc=acc, in_shape=shape, out_channels=out_c, kernel_data=kdata,
                 pad_value=pad_value, **geo, **_epilogue(rng, out_c, acc, spread, values))


def random_model_file(rng: np.random.Generator, max_blocks: int = 4) -> ModelFile:
    """A valid model of 1..``max_blocks`` blocks; see the module's description."""
    spec = _input_spec(rng)
    n_blocks = int(rng.integers(1, max_blocks + 1))
    shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
    spatial = len(spec.shape) == 3
    blocks = []
    for i in range(n_blocks):
        last = i == n_blocks - 1
        b = _random_block(rng, spec, "bits" if i else "raw", shape, spatial, last, last)
        blocks.append(b)
        shape, spatial = b.out_shape, b.kind == "conv2d"
    names = tuple(f"class {j}" for j in range(math.prod(blocks[-1].out_shape))) \
        if rng.random() < 0.5 else ()
    mf = ModelFile(spec, tuple(blocks), names, {"name": "random"})
    validate(mf)
    return mf


def random_inputs(rng: np.random.Generator, mf: ModelFile, n: int) -> np.ndarray:
    """``n`` raw inputs for ``mf``: uint8 pixels, or float32 values of either sign."""
    shape = (n, *mf.input.shape)
    if mf.input.encoding == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.normal(0, 2, shape).astype(np.float32)


def random_graph_file(rng: np.random.Generator, max_nodes: int = 10) -> ModelFile:
    """A valid graph (version 2) of about ``max_nodes`` nodes: blocks reading the input,
    bits or the signs of float tensors, with bits or float output; adds and concatenations
    of float tensors (a source may be named twice), residual branches (a block whose
    values are added to the tensor whose signs it reads) and max pooling; the logits last.
    Nodes whose output nothing reads are dropped, so the graph has every tensor read."""
    while True:
        spec = _input_spec(rng)
        shape = spec.shape if len(spec.shape) == 3 else (1, 1, spec.shape[0])
        tensors = [("raw", tuple(shape), len(spec.shape) == 3)]  # (kind, shape, spatial)
        nodes: list[tuple[str, tuple[int, ...], object]] = []  # (op, sources, block or pool)
        read: set[int] = set()

        def pick(candidates):
            """Mostly a tensor nothing reads yet, so that few nodes are dropped."""
            unread = [j for j in candidates if j not in read]
            j = int(rng.choice(unread if unread and rng.random() < 0.8 else candidates))
            read.add(j)
            return j

        for _ in range(int(rng.integers(1, max_nodes))):
            vals = [j for j, t in enumerate(tensors) if t[0] == "values"]
            op = rng.choice(["block", "add", "concatenate", "maxpool", "residual"]
                            if vals else ["block"],
                            p=[0.3, 0.15, 0.15, 0.15, 0.25] if vals else None)
            if op == "maxpool":
                vals = [j for j in vals if tensors[j][2] and min(tensors[j][1][:2]) >= 2]
                if not vals:
                    continue
            if op == "block":
                s = pick(range(len(tensors)))
                kind, sh, spatial = tensors[s]
                b = _random_block(rng, spec, kind, sh, spatial, rng.random() < 0.5)
                nodes.append(("block", (s,), b))
                tensors.append(("bits" if b.output == "bits" else "values", b.out_shape,
                                b.kind == "conv2d"))
                continue
            s = pick(vals)
            _, sh, spatial = tensors[s]
            if op == "residual":  # a block on the signs of s, whose values are added to s
                b = _random_block(rng, spec, "values", sh, spatial, True, same=True)
                nodes.append(("block", (s,), b))
                tensors.append(("values", sh, spatial))
                pair = (s, len(tensors) - 1)
                nodes.append(("add", pair if rng.random() < 0.5 else pair[::-1], None))
                tensors.append(("values", sh, spatial))
                continue
            if op == "maxpool":
                size = int(rng.integers(2, min(sh[0], sh[1], 3) + 1))
                pool = (size, int(rng.integers(1, size + 1)))
                nodes.append(("maxpool", (s,), pool))
                tensors.append(("values", ((sh[0] - size) // pool[1] + 1,
                                           (sh[1] - size) // pool[1] + 1, sh[2]), True))
                continue
            fits = [j for j in vals if (tensors[j][1] == sh if op == "add"
                                        else tensors[j][1][:2] == sh[:2])]
            srcs = (s, *(pick(fits) for _ in range(int(rng.integers(1, 3)))))
            out = sh if op == "add" else (*sh[:2], sum(tensors[j][1][2] for j in srcs))
            nodes.append((str(op), srcs, None))
            tensors.append(("values", out, spatial))
        s = pick(range(1, len(tensors))) if len(tensors) > 1 else 0
        kind, sh, spatial = tensors[s]
        nodes.append(("block", (s,), _random_block(rng, spec, kind, sh, spatial, True, True)))
        mf = _pruned(spec, nodes)
        if mf is not None:
            return mf


def _pruned(spec: InputSpec, nodes: list) -> ModelFile | None:
    """The graph of ``nodes`` without those whose output nothing reads, renumbered; None
    when the model input is then unread."""
    keep = [True] * len(nodes)
    while True:
        read = {s for j, (_, srcs, _) in enumerate(nodes) if keep[j] for s in srcs}
        drop = [j for j in range(len(nodes) - 1) if keep[j] and j + 1 not in read]
        if not drop:
            break
        for j in drop:
            keep[j] = False
    if 0 not in read:
        return None
    number = {0: 0}
    out_nodes, blocks = [], []
    for j, (op, srcs, extra) in enumerate(nodes):
        if not keep[j]:
            continue
        number[j + 1] = len(out_nodes) + 1
        sources = tuple(number[s] for s in srcs)
        if op == "block":
            out_nodes.append(Node("block", sources, len(blocks)))
            blocks.append(extra)
        else:
            out_nodes.append(Node(op, sources, -1, extra if op == "maxpool" else (0, 0)))
    mf = ModelFile(spec, tuple(blocks), (), {"name": "random graph"}, tuple(out_nodes))
    validate(mf)
    return mf
