"""Graph models (``.bnn`` version 2) in C: where each tensor lives, and the code between blocks.

A graph's tensors are of two kinds: packed bits (the output of a block that thresholds,
or the signs a block packs from a float tensor; 32-bit words, ceil(channels / 32) per
pixel) and float values (the output of a block without thresholds, of an add, a
concatenation or a max pool; one float per element, (H, W, C) order). Each kind has one
static arena, ``bnn_bits`` (uint32_t) and ``bnn_vals`` (float): two arrays of different
types, so no memory is ever read through a pointer of another type.

:func:`plan_graph` places every tensor in its arena for the time it is needed. The node
run p-th runs in two steps: at time 2p a block that reads the signs of a float tensor
packs them (once per tensor: every later block reading the same signs shares the packed
copy), at time 2p + 1 the node computes its output. A tensor is placed when it is written, at the
lowest offset that overlaps no tensor still to be read (first fit), and its place is free
again after its last reader: a float tensor read only through its signs is free as soon
as they are packed, so the block's own output can take its place. An add writes its sum
over a source it is the last reader of (element by element, every source's element is
read before the sum is stored). An add of two tensors whose later source is a block with
float output that nothing else reads is computed by that block as it writes (its values
plus the other source, the same float32 sum), so the block's values need no buffer: a
Bi-Real block (binary convolution, batch norm, shortcut add) writes its sum straight over
the shortcut when the add is the shortcut's last reader. A node's output never overlaps
what it reads otherwise. The arenas' sizes are the peaks of this plan; the last node
writes the caller's logits.

The nodes may run in any order that computes every source before its readers. The plan
is made for the file's order and for a greedy one (of the nodes ready to run, the one
that adds the fewest elements to what is held), and the smaller is kept: in
``bireal-mnist`` the pooled shortcut then runs before the convolution beside it, so the
tensor both read is free as soon as the convolution has packed its signs.

The float operations compute what :mod:`bnnlab.deploy.runtime` and the oracle in
:mod:`bnnlab.deploy.reference` compute, in float32 and in the same order: a sum of the
sources in their order, channels side by side, a max that turns NaN when the window holds
one, and a sign that is +1 for v >= 0 (so -1 for NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .format import ModelFile
from .ckernels import block_call, block_kind

__all__ = ["GraphPlan", "Tensor", "graph_code", "plan_graph"]

# The C of the operations between blocks; only the ones a model uses are emitted.
_HELPERS = {
    "pack": r"""
/* The signs of a float tensor as packed bits: +1 (bit 0) where v >= 0, else -1 (NaN too). */
static void bnn_pack_signs(const float *x, int pixels, int c, uint32_t *out)
{
    int cw = (c + 31) / 32;
    int q, ch;
    for (q = 0; q < pixels; q++) {
        for (ch = 0; ch < c; ch++) {
            bnn_emit_bit(out, q, cw, ch, x[q * c + ch] >= 0.0f);
        }
    }
}
""",
    "add": r"""
/* Element-wise float sum of n_src tensors of n values, in the order of the sources. out may
 * be one of the sources: each element of every source is read before the sum is stored. */
static void bnn_add(const float *const *src, int n_src, int n, float *out)
{
    int i, j;
    for (i = 0; i < n; i++) {
        float s = src[0][i] + src[1][i];
        for (j = 2; j < n_src; j++) {
            s += src[j][i];
        }
        out[i] = s;
    }
}
""",
    "concatenate": r"""
/* The channels of n_src tensors side by side, pixel by pixel; source j has ch[j] channels. */
static void bnn_concat(const float *const *src, const int *ch, int n_src, int pixels,
                       float *out)
{
    int q, j, k;
    for (q = 0; q < pixels; q++) {
        for (j = 0; j < n_src; j++) {
            const float *s = &src[j][q * ch[j]];
            for (k = 0; k < ch[j]; k++) {
                *out++ = s[k];
            }
        }
    }
}
""",
    "maxpool": r"""
/* 'valid' max pooling of a float (h, w, c) tensor to (hp, wp, c); a window holding NaN
 * pools to NaN. */
static void bnn_maxpool(const float *x, int w, int c, int size, int stride, int hp, int wp,
                        float *out)
{
    int py, px, ch, dy, dx;
    for (py = 0; py < hp; py++) {
        for (px = 0; px < wp; px++) {
            for (ch = 0; ch < c; ch++) {
                const float *corner = &x[(py * stride * w + px * stride) * c + ch];
                float m = corner[0];
                for (dy = 0; dy < size; dy++) {
                    for (dx = 0; dx < size; dx++) {
                        float d = corner[(dy * w + dx) * c];
                        if (d > m || d != d) {
                            m = d;
                        }
                    }
                }
                out[(py * wp + px) * c + ch] = m;
            }
        }
    }
}
""",
}


@dataclass
class Tensor:
    """One tensor of the graph in C: what it is, its arena, and when it is needed."""

    what: str  # "node 3 (add)", "signs of node 1"
    arena: str  # "bits" (uint32_t words) or "vals" (floats)
    size: int  # elements of its arena
    shape: tuple[int, int, int]
    first: int  # the time it is written (2p + 1 for the output of the node run p-th, 2p
    #             for the signs that node packs)
    last: int  # the last time it is read
    over: tuple[int, ...] = ()  # tensors it may be written over (an add's sources)
    offset: int = -1

    @property
    def ref(self) -> str:
        return f"&bnn_{self.arena}[{self.offset}]"


@dataclass
class GraphPlan:
    """Every tensor's place: ``tensors[j]`` is node j's output (the last node has none: it
    writes the logits; nor has a block whose sum an add takes over), ``signs[j]`` the
    packed signs of float tensor j; ``fused[t] = (j, o)``: node t adds block j's values
    and tensor o, and block j computes that sum as it writes."""

    tensors: dict[int, Tensor]
    signs: dict[int, Tensor]
    fused: dict[int, tuple[int, int]]
    arena: dict[str, int]  # planned size of each arena, in elements
    order: list[int]  # the nodes in the order they run

    @property
    def ram_bytes(self) -> int:
        return 4 * sum(self.arena.values())

    @property
    def unplanned_bytes(self) -> int:
        """What the graph's tensors would take if each had a buffer of its own (the values
        of a block whose sum an add takes over included)."""
        fused = sum(math.prod(self.tensors[t].shape) for t in self.fused)
        return 4 * (fused + sum(t.size for t in (*self.tensors.values(), *self.signs.values())))


def _shapes(mf: ModelFile) -> list[tuple[int, int, int]]:
    """The shape of every tensor: the input's, then each node's output."""
    spec = mf.input.shape
    shapes = [tuple(spec) if len(spec) == 3 else (1, 1, spec[0])]
    for node in mf.nodes:
        src = [shapes[s] for s in node.sources]
        if node.op == "block":
            shapes.append(tuple(mf.blocks[node.block].out_shape))
        elif node.op == "add":
            shapes.append(src[0])
        elif node.op == "concatenate":
            shapes.append((*src[0][:2], sum(s[2] for s in src)))
        else:
            size, stride = node.pool
            h, w, c = src[0]
            shapes.append(((h - size) // stride + 1, (w - size) // stride + 1, c))
    return shapes


def _words(shape: tuple[int, int, int]) -> int:
    h, w, c = shape
    return h * w * -(-c // 32)


def _fused_adds(mf: ModelFile, pos: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Adds of two tensors whose source computed later (``pos``: each node's place in the
    order the nodes run) is a block with float output read by that add alone: node t ->
    (the block's node j, the other source o)."""
    readers = [0] * (len(mf.nodes) + 1)
    for node in mf.nodes:
        for s in node.sources:
            readers[s] += 1
    fused = {}
    for t, node in enumerate(mf.nodes, 1):
        if node.op != "add" or len(set(node.sources)) != 2 or len(node.sources) != 2:
            continue
        o, j = sorted(node.sources, key=pos.get)
        producer = mf.nodes[j - 1]
        if (readers[j] == 1 and producer.op == "block"
                and mf.blocks[producer.block].output == "logits"):
            fused[t] = (j, o)
    return fused


def _greedy_order(mf: ModelFile, shapes: list) -> list[int]:
    """A topological order of the nodes that runs next, of those whose sources are ready,
    the one adding the fewest elements to what is held (its output and the signs it packs,
    less the tensors it reads for the last time); ties in file order."""
    n = len(mf.nodes)
    left = [0] * (n + 1)  # readers still to run, per tensor
    for node in mf.nodes:
        for s in set(node.sources):
            left[s] += 1
    packed: set[int] = set()
    done, order = {0}, []

    def size(t: int) -> int:
        node = mf.nodes[t - 1]
        bits = node.op == "block" and mf.blocks[node.block].output == "bits"
        return _words(shapes[t]) if bits else math.prod(shapes[t])

    def growth(t: int) -> int:
        node = mf.nodes[t - 1]
        grow = size(t) if t != n else 0
        if node.op == "block" and mf.blocks[node.block].input == "signs":
            grow += 0 if node.sources[0] in packed else _words(shapes[node.sources[0]])
        return grow - sum(size(s) for s in set(node.sources) if s and left[s] == 1)

    while len(order) < n:
        ready = [t for t in range(1, n + 1)
                 if t not in done and all(s in done for s in mf.nodes[t - 1].sources)]
        t = min(ready, key=lambda t: (growth(t), t))
        node = mf.nodes[t - 1]
        if node.op == "block" and mf.blocks[node.block].input == "signs":
            packed.add(node.sources[0])
        for s in set(node.sources):
            left[s] -= 1
        done.add(t)
        order.append(t)
    return order


def plan_graph(mf: ModelFile) -> GraphPlan:
    """Place the tensors of a validated graph model (see the module's description): the
    plan of the nodes in file order or in :func:`_greedy_order`, whichever needs less."""
    shapes = _shapes(mf)
    plans = [_plan(mf, shapes, order) for order in
             (list(range(1, len(mf.nodes) + 1)), _greedy_order(mf, shapes))]
    return min(plans, key=lambda p: p.ram_bytes)  # the file's order on a tie


def _plan(mf: ModelFile, shapes: list, order: list[int]) -> GraphPlan:
    """The tensors' places when the nodes run in ``order``."""
    n = len(mf.nodes)
    pos = {t: i for i, t in enumerate(order, 1)} | {0: 0}
    fused = _fused_adds(mf, pos)
    into = {j: t for t, (j, _) in fused.items()}  # a block -> the add it computes
    tensors: dict[int, Tensor] = {}
    signs: dict[int, Tensor] = {}
    for t in order:
        node = mf.nodes[t - 1]
        step = 2 * pos[t] + 1
        b = mf.blocks[node.block] if node.op == "block" else None
        for s in node.sources:
            if t in fused:  # read as block j writes
                j, o = fused[t]
                if s == o:
                    tensors[o].last = max(tensors[o].last, 2 * pos[j] + 1)
            elif b is not None and b.input == "signs":
                if s not in signs:  # packed at this node's first step, from tensor s
                    signs[s] = Tensor(f"signs of node {s}", "bits", _words(shapes[s]),
                                      shapes[s], step - 1, step)
                    tensors[s].last = max(tensors[s].last, step - 1)
                signs[s].last = step
            elif s:
                tensors[s].last = max(tensors[s].last, step)
        if t != n and t not in into:
            bits = b is not None and b.output == "bits"
            what = f"node {t} ({node.op if b is None else f'block {node.block}'})"
            size = _words(shapes[t]) if bits else math.prod(shapes[t])
            first = 2 * pos[fused[t][0]] + 1 if t in fused else step
            over = (fused[t][1],) if t in fused else node.sources if node.op == "add" else ()
            tensors[t] = Tensor(what, "bits" if bits else "vals", size, shapes[t], first,
                                first, tuple(over))
    live: dict[str, list[Tensor]] = {"bits": [], "vals": []}
    arena = {"bits": 0, "vals": 0}
    for time in range(2, 2 * n + 2):
        for x in [x for x in (*signs.values(), *tensors.values()) if x.first == time]:
            reuse = [s for s in x.over if tensors[s].last == time]
            if reuse:  # a sum goes over a source read for the last time
                old = tensors[reuse[0]]
                live["vals"].remove(old)
                x.offset = old.offset
            else:
                x.offset = _first_fit(live[x.arena], x.size)
            live[x.arena].append(x)
            arena[x.arena] = max(arena[x.arena], x.offset + x.size)
        for kind in live:
            live[kind] = [x for x in live[kind] if x.last > time]
    return GraphPlan(tensors, signs, fused, arena, order)


def _first_fit(live: list[Tensor], size: int) -> int:
    """The lowest offset where ``size`` elements overlap none of ``live``."""
    offset = 0
    for x in sorted(live, key=lambda x: x.offset):
        if x.offset - offset >= size:
            break
        offset = max(offset, x.offset + x.size)
    return offset


def graph_code(mf: ModelFile, plan: GraphPlan) -> tuple[str, str, list[str], set, bool]:
    """(the helpers' C, the arenas and source tables, the statements of ``bnn_infer``,
    the (kind, output) block kernels called, whether ``bnn_emit_bit`` is needed) for a
    graph placed by :func:`plan_graph`."""
    shapes = _shapes(mf)
    used: set[str] = set()
    kernels: set[tuple[str, str]] = set()
    into = {j: t for t, (j, _) in plan.fused.items()}
    order = plan.order
    pos = {t: i for i, t in enumerate(order, 1)}

    def when(time: int) -> str:  # "t" packing, "t+" computing, node t
        return f"{order[time // 2 - 1]}{'+' if time % 2 else ''}"

    decls = ["/* Activations (bnnlab.deploy.cgraph): each tensor's place in its arena, in\n"
             " * elements, and the nodes during which it is held (t: packing, t+: computing).\n"]
    if order != sorted(order):
        decls.append(f" * The nodes run in the order {', '.join(map(str, order))}.\n")
    for x in sorted((*plan.tensors.values(), *plan.signs.values()), key=lambda x: x.first):
        decls.append(f" *   {x.what:<22} {str(x.shape):<16} bnn_{x.arena}[{x.offset}..+{x.size}]"
                     f"  nodes {when(x.first)}..{when(x.last)}\n")
    decls.append(" */\n")
    for kind, ctype in (("bits", "uint32_t"), ("vals", "float")):
        if plan.arena[kind]:
            decls.append(f"static {ctype} bnn_{kind}[{plan.arena[kind]}];\n")
    calls = []
    for t in order:
        node = mf.nodes[t - 1]
        dst = plan.tensors[t].ref if t in plan.tensors else "logits"
        shape = shapes[t]
        if node.op == "block":
            b = mf.blocks[node.block]
            s = node.sources[0]
            add = None
            if t in into:
                dst, add = plan.tensors[into[t]].ref, plan.tensors[plan.fused[into[t]][1]].ref
            calls.append(f"    /* node {t}: block {node.block}"
                         + (f", plus node {plan.fused[into[t]][1]} (the add of node {into[t]})"
                            if add else "") + " */")
            if b.input == "signs":
                packed = plan.signs[s]
                if packed.first == 2 * pos[t]:
                    used.add("pack")
                    h, w, c = shapes[s]
                    calls.append(f"    bnn_pack_signs({plan.tensors[s].ref}, {h * w}, {c}, "
                                 f"{packed.ref});")
                x = packed.ref
            else:
                x = "input" if b.input == "raw" else plan.tensors[s].ref
            kernels.add((block_kind(b), "sum" if add else b.output))
            calls.append(block_call(b, f"b{node.block}", x, dst, add))
            continue
        if t in plan.fused:
            calls.append(f"    /* node {t}: add of nodes {', '.join(map(str, node.sources))}, "
                         f"computed by node {plan.fused[t][0]} */")
            continue
        src = [plan.tensors[s] for s in node.sources]
        used.add(node.op)
        calls.append(f"    /* node {t}: {node.op} of node{'s' * (len(src) > 1)} "
                     f"{', '.join(map(str, node.sources))} */")
        if node.op == "maxpool":
            h, w, c = shapes[node.sources[0]]
            calls.append(f"    bnn_maxpool({src[0].ref}, {w}, {c}, {node.pool[0]}, "
                         f"{node.pool[1]}, {shape[0]}, {shape[1]}, {dst});")
            continue
        refs = ", ".join(x.ref for x in src)
        decls.append(f"static const float *const bnn_n{t}[{len(src)}] = {{{refs}}};\n")
        if node.op == "add":
            calls.append(f"    bnn_add(bnn_n{t}, {len(src)}, {math.prod(shape)}, {dst});")
        else:
            chans = ", ".join(str(x.shape[2]) for x in src)
            decls.append(f"static const int bnn_n{t}_c[{len(src)}] = {{{chans}}};\n")
            calls.append(f"    bnn_concat(bnn_n{t}, bnn_n{t}_c, {len(src)}, "
                         f"{shape[0] * shape[1]}, {dst});")
    helpers = "".join(_HELPERS[k] for k in _HELPERS if k in used)
    return helpers, "".join(decls), calls, kernels, "pack" in used
