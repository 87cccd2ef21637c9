"""The records of a ``.bnn`` model file and their rules: the codes, the in-memory
:class:`Block`, :class:`Node` and :class:`ModelFile`, and :func:`validate`, which checks a
record (built in memory or being decoded) against every rule of ``docs/bnn-format.md``.
:mod:`bnnlab.deploy.format` turns records into bytes and back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# PNG's trick: a high-bit byte catches 7-bit channels, CR LF and ^Z catch text-mode copies.
MAGIC = b"\x89BNN\r\n\x1a\n"
VERSION = 1  # a stack of blocks
GRAPH_VERSION = 2  # a graph of nodes (docs/bnn-format.md, "Version 2"); stacks stay version 1
HEADER_BYTES = 16
TRAILER_BYTES = 4

# Limits that keep a decoder's (and a runtime's) memory bounded whatever the file says.
MAX_FILE_BYTES = 1 << 28
MAX_ELEMENTS = 1 << 24  # per tensor per example: activations, kernel fan-in
MAX_BLOCKS = 255  # blocks of a stack; nodes of a graph
# Integer accumulators are int32 everywhere (reader, runtime, generated C): a block whose
# worst case |accumulator| exceeds this is refused. See accumulator_bound().
ACC_LIMIT = (1 << 31) - 1

# Threshold modes: the output is +1 when the (pooled) accumulator m satisfies the mode.
MODE_GE, MODE_LE, MODE_PLUS, MODE_MINUS = 0, 1, 2, 3

_KINDS = {1: "conv2d", 2: "dense"}
_INPUTS = {0: "raw", 1: "bits", 2: "signs"}  # signs: of a float tensor (graphs only)
_KERNELS = {0: "float32", 1: "bits"}
_ACCS = {0: "int32", 1: "float32"}
_OUTPUTS = {0: "bits", 1: "logits"}  # logits: float values (in a graph, at any node)
_OPS = {0: "block", 1: "add", 2: "concatenate", 3: "maxpool"}
_ENCODINGS = {0: "uint8", 1: "float32"}
_PAD_VALUES = {0: 0, 1: 1, 2: -1}


def _code(table: dict[int, object], value) -> int:
    for k, v in table.items():
        if v == value:
            return k
    raise ModelFileError(f"{value!r} is not one of {', '.join(map(repr, table.values()))}")


class ModelFileError(ValueError):
    """A ``.bnn`` file (or record) that is truncated, corrupt, inconsistent or unsupported."""


@dataclass(frozen=True)
class InputSpec:
    """What the model reads: ``x = raw * scale + offset`` element-wise, in float32.

    ``encoding`` is the type of ``raw``: ``"uint8"`` (image pixels) or ``"float32"``.
    ``shape`` is ``(H, W, C)`` or ``(F,)``.
    """

    shape: tuple[int, ...]
    encoding: str = "uint8"
    scale: float = float(np.float32(1.0 / 255.0))  # stored as float32
    offset: float = 0.0


@dataclass(frozen=True, eq=False)
class Block:
    """One compute layer with everything folded into it: conv/dense, optional max pool, epilogue.

    ``kernel_data`` holds the weights in (output channel, tap) order, taps ``(dy, dx, c)``
    for convolutions and the NHWC flatten order for dense layers: packed sign bits
    (uint8, see :func:`pack_signs`) when ``kernel == "bits"``, float32 ``(out_c, K)``
    otherwise. The epilogue is either per-channel ``modes``/``thresholds`` (output bits)
    or per-channel float ``scale``/``offset`` (output logits).
    """

    kind: str  # "conv2d" | "dense"
    input: str  # "raw" (the model input; first block only) | "bits"
    kernel: str  # "bits" | "float32"
    acc: str  # "int32" | "float32"
    output: str  # "bits" | "logits" (last block only)
    in_shape: tuple[int, int, int]  # (H, W, C); a flat input is (1, 1, F)
    out_channels: int
    kernel_data: np.ndarray
    kernel_size: tuple[int, int] = (1, 1)
    stride: int = 1
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    pad_value: int = 0  # taps in the padding count as 0 (skipped), +1 or -1
    pool: tuple[int, int] = (0, 0)  # max pool (size, stride); (0, 0) = none
    modes: np.ndarray | None = None
    thresholds: np.ndarray | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def fan_in(self) -> int:
        """K: inputs per output, i.e. the length of one filter."""
        if self.kind == "dense":
            return self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        return self.kernel_size[0] * self.kernel_size[1] * self.in_shape[2]

    @property
    def conv_shape(self) -> tuple[int, int, int]:
        """Output shape before pooling."""
        if self.kind == "dense":
            return (1, 1, self.out_channels)
        h, w, _ = self.in_shape
        kh, kw = self.kernel_size
        pt, pb, pl, pr = self.pads
        return ((h + pt + pb - kh) // self.stride + 1, (w + pl + pr - kw) // self.stride + 1,
                self.out_channels)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        ho, wo, c = self.conv_shape
        size, stride = self.pool
        if size:
            return ((ho - size) // stride + 1, (wo - size) // stride + 1, c)
        return (ho, wo, c)

    def signs(self) -> np.ndarray:
        """The binary kernel as int8 ±1, shape (out_c, K)."""
        if self.kernel != "bits":
            raise ValueError("this block has a float kernel")
        return unpack_signs(self.kernel_data, self.out_channels, self.fan_in)

    def weights(self) -> np.ndarray:
        """The kernel as float32 (out_c, K), whatever its storage."""
        if self.kernel == "bits":
            return self.signs().astype(np.float32)
        return np.asarray(self.kernel_data, np.float32)


@dataclass(frozen=True)
class Node:
    """One node of a graph model (version 2): a block, or an operation on float tensors.

    ``sources`` name the tensors it reads: 0 is the model input, j >= 1 the output of node
    j (1-based, always an earlier node). ``block`` indexes ``ModelFile.blocks`` for an
    ``op == "block"`` node (-1 otherwise); ``pool`` is the (size, stride) of a max pool.
    """

    op: str  # "block" | "add" | "concatenate" | "maxpool"
    sources: tuple[int, ...]
    block: int = -1
    pool: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class ModelFile:
    """A model: its input, its blocks, and for a graph (version 2) the nodes wiring them;
    without ``nodes`` the blocks form a stack (version 1)."""

    input: InputSpec
    blocks: tuple[Block, ...]
    class_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    nodes: tuple[Node, ...] = ()

    @property
    def is_graph(self) -> bool:
        return bool(self.nodes)

    @property
    def n_outputs(self) -> int:
        h, w, c = self.blocks[-1].out_shape
        return h * w * c


def accumulator_bound(b: Block) -> int | None:
    """The largest |accumulator| an integer block can produce; None for a float accumulator.

    ±1 inputs give at most K (the fan-in); uint8 pixels with ±1 weights at most 255 * K.
    The one rule for the reader, the runtime and the C export: it must not exceed
    :data:`ACC_LIMIT`.
    """
    if b.acc != "int32":
        return None
    return b.fan_in * (255 if b.input == "raw" else 1)


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """±1 (or any sign-carrying) array -> packed bytes, bit 1 = -1, LSB first, row-major."""
    bits = np.asarray(signs).reshape(-1) < 0
    return np.packbits(bits, bitorder="little")


def unpack_signs(packed: np.ndarray, rows: int, cols: int) -> np.ndarray:
    bits = np.unpackbits(np.asarray(packed, np.uint8), count=rows * cols, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).reshape(rows, cols)


# --------------------------------------------------------------------------- validation


def _check_block(b: Block, i: int, n_blocks: int, prev: tuple[int, int, int], spatial: bool,
                 encoding: str, graph: tuple[bool, bool] | None = None) -> None:
    """Everything about a block's header that can be checked without its arrays.

    ``prev`` is the shape it must consume; ``spatial`` says whether that shape is an image
    (a convolution needs one) rather than a flat vector. In a graph, ``graph`` says
    (whether its source is the raw input, whether it is the last node) in place of the
    block's position in a stack.
    """
    where = f"block {i}"

    def fail(msg):
        raise ModelFileError(f"{where}: {msg}")

    first, last = (i == 0, i == n_blocks - 1) if graph is None else graph
    if (b.input == "raw") != first:
        fail("only the first block reads the raw input" if not first else
             "the first block must read the raw input")
    if b.input == "signs" and graph is None:
        fail("only a graph (version 2) block reads the signs of a float tensor")
    if b.input in ("bits", "signs") and (b.kernel != "bits" or b.acc != "int32"):
        fail("a block with binary input needs a binary kernel and an int32 accumulator")
    if b.acc == "int32" and b.input == "raw" and (b.kernel != "bits" or encoding != "uint8"):
        fail("an integer accumulator on the raw input needs a binary kernel and uint8 input")
    if graph is None and (b.output == "logits") != last:
        fail("only the last block outputs logits" if not last else "the last block must output logits")
    if graph is not None and last and b.output != "logits":
        fail("the last node must output float values (the logits)")
    if tuple(b.in_shape) != tuple(prev):
        fail(f"input shape {tuple(b.in_shape)} does not match the shape before it {tuple(prev)}")
    if not 1 <= b.out_channels <= 0xFFFF:
        fail(f"{b.out_channels} output channels")
    k = b.fan_in
    if not 1 <= k <= MAX_ELEMENTS:
        fail(f"fan-in {k} is outside 1..{MAX_ELEMENTS}")
    bound = accumulator_bound(b)
    if bound is not None and bound > ACC_LIMIT:
        fail(f"the int32 accumulator can reach {bound} ({k} taps of uint8 pixels), beyond "
             f"{ACC_LIMIT}; such a layer needs a float32 accumulator")
    if b.kind == "conv2d":
        if not spatial:
            fail("a convolution needs an image input, not a flat vector")
        kh, kw = b.kernel_size
        if not (1 <= kh <= 255 and 1 <= kw <= 255 and 1 <= b.stride <= 255):
            fail(f"kernel {b.kernel_size} / stride {b.stride} out of range")
        pt, pb, pl, pr = b.pads
        if not (0 <= pt < kh and 0 <= pb < kh and 0 <= pl < kw and 0 <= pr < kw):
            fail(f"padding {b.pads} must be smaller than the kernel {b.kernel_size}")
        if b.pad_value not in (0, 1, -1):
            fail(f"pad value {b.pad_value}")
        if b.input == "raw" and b.acc == "int32" and b.pad_value != 0:
            fail("an integer accumulator on the raw input pads with raw zeros (pad value 0)")
        h, w, _ = b.in_shape
        if h + pt + pb < kh or w + pl + pr < kw:
            fail(f"input {b.in_shape} is smaller than the kernel {b.kernel_size}")
        size, stride = b.pool
        ho, wo, _ = b.conv_shape
        if (size == 0) != (stride == 0):
            fail(f"pool size {size} with stride {stride}")
        if size and (size > min(ho, wo) or size > 255 or stride > 255):
            fail(f"pool {size} does not fit the {ho}x{wo} output")
    else:
        if b.pool != (0, 0) or b.pads != (0, 0, 0, 0) or b.kernel_size != (1, 1) or b.stride != 1:
            fail("a dense block has no kernel size, stride, padding or pool")
    oh, ow, oc = b.out_shape
    if oh * ow * oc > MAX_ELEMENTS or math.prod(b.conv_shape) > MAX_ELEMENTS:
        fail(f"output {b.out_shape} has more than {MAX_ELEMENTS} elements")


def _check_arrays(b: Block, i: int) -> None:
    where = f"block {i}"
    n, k = b.out_channels, b.fan_in
    data = b.kernel_data
    if b.kernel == "bits":
        if data.dtype != np.uint8 or data.shape != (-(-n * k // 8),):
            raise ModelFileError(f"{where}: packed kernel must be {-(-n * k // 8)} bytes")
        spare = (-n * k) % 8
        if spare and int(data[-1]) >> (8 - spare):
            raise ModelFileError(f"{where}: the unused bits after the kernel must be zero")
    else:
        if data.dtype != np.float32 or data.shape != (n, k):
            raise ModelFileError(f"{where}: float kernel must be float32 {(n, k)}")
        if not np.isfinite(data).all():
            raise ModelFileError(f"{where}: the kernel holds NaN or infinity")
    if b.output == "bits":
        m, t = b.modes, b.thresholds
        want = np.int32 if b.acc == "int32" else np.float32
        if m is None or t is None or m.shape != (n,) or t.shape != (n,) or m.dtype != np.uint8 \
                or t.dtype != want:
            raise ModelFileError(f"{where}: needs {n} threshold modes (uint8) and thresholds ({want.__name__})")
        if int(m.max(initial=0)) > MODE_MINUS:
            raise ModelFileError(f"{where}: threshold mode {int(m.max())} is not 0..3")
        if b.acc == "float32" and not np.isfinite(t).all():
            raise ModelFileError(f"{where}: a threshold is NaN or infinite")
        if np.any(t[m >= MODE_PLUS] != 0):
            raise ModelFileError(f"{where}: constant channels must store threshold 0")
    else:
        s, o = b.scale, b.offset
        if s is None or o is None or s.shape != (n,) or o.shape != (n,) or s.dtype != np.float32 \
                or o.dtype != np.float32:
            raise ModelFileError(f"{where}: needs {n} float32 scales and offsets")
        if not (np.isfinite(s).all() and np.isfinite(o).all()):
            raise ModelFileError(f"{where}: a logit scale or offset is NaN or infinite")


def _check_input(spec: InputSpec) -> tuple[tuple[int, int, int], bool]:
    shape = tuple(spec.shape)
    if len(shape) not in (1, 3) or not all(1 <= s <= 0xFFFF for s in shape):
        raise ModelFileError(f"input shape {shape} must be (H, W, C) or (F,) with sizes 1..65535")
    if math.prod(shape) > MAX_ELEMENTS:
        raise ModelFileError(f"input {shape} has more than {MAX_ELEMENTS} elements")
    if spec.encoding not in _ENCODINGS.values():
        raise ModelFileError(f"input encoding {spec.encoding!r}")
    for name in ("scale", "offset"):
        v = float(getattr(spec, name))
        if not math.isfinite(v) or v != float(np.float32(v)):
            raise ModelFileError(f"input {name} {v!r} must be a finite float32")
    if spec.scale == 0:
        raise ModelFileError("input scale must not be zero")
    if len(shape) == 3:
        return shape, True
    return (1, 1, shape[0]), False


class _GraphCheck:
    """Walks a graph's nodes in file order, knowing each tensor's kind ("raw", "bits" or
    "values", i.e. float), shape and whether it is an image; every rule of the version 2
    structure is checked here, for the writer and the reader alike."""

    def __init__(self, encoding: str, shape: tuple[int, int, int], spatial: bool):
        self.encoding = encoding
        self.tensors = [("raw", tuple(shape), spatial)]
        self.read = [False]
        self.n_blocks = 0

    def node(self, node: Node, n_nodes: int, block: Block | None) -> None:
        j = len(self.tensors)

        def fail(msg):
            raise ModelFileError(f"node {j}: {msg}")

        if node.op not in _OPS.values():
            fail(f"unknown operation {node.op!r}")
        if not 1 <= len(node.sources) <= 255:
            fail(f"{len(node.sources)} sources")
        for s in node.sources:
            if not 0 <= s < j:
                fail(f"source {s} is not the input (0) or an earlier node")
            self.read[s] = True
        srcs = [self.tensors[s] for s in node.sources]
        kinds = {k for k, _, _ in srcs}
        last = j == n_nodes
        if node.op == "block":
            if len(srcs) != 1:
                fail("a block reads one tensor")
            if node.block != self.n_blocks:
                fail(f"names block {node.block}; blocks are stored in node order "
                     f"(expected {self.n_blocks})")
            kind, shape, spatial = srcs[0]
            want = {"raw": "raw", "bits": "bits", "values": "signs"}[kind]
            if block.input != want:
                fail(f"reads a {kind} tensor, so its block's input must be {want!r}, "
                     f"not {block.input!r}")
            _check_block(block, self.n_blocks, 0, shape, spatial, self.encoding,
                         graph=(kind == "raw", last))
            self.n_blocks += 1
            out = ("bits" if block.output == "bits" else "values", block.out_shape,
                   block.kind == "conv2d")
        else:
            if kinds != {"values"}:
                fail(f"{node.op} reads float tensors only, not {', '.join(sorted(kinds))}")
            if last:
                fail("the last node must be a block that outputs the logits")
            shapes = [sh for _, sh, _ in srcs]
            spatial = srcs[0][2]
            if node.op == "maxpool":
                size, stride = node.pool
                h, w, c = shapes[0]
                if len(srcs) != 1 or not spatial:
                    fail("max pooling reads one image tensor")
                if not (1 <= size <= min(h, w, 255) and 1 <= stride <= 255):
                    fail(f"pool {node.pool} does not fit the {h}x{w} input")
                shape = ((h - size) // stride + 1, (w - size) // stride + 1, c)
            elif len(srcs) < 2:
                fail(f"{node.op} joins at least two tensors")
            elif node.op == "add":
                if any(sh != shapes[0] for sh in shapes):
                    fail(f"add needs tensors of one shape, got {shapes}")
                shape = shapes[0]
            else:
                if any(sh[:2] != shapes[0][:2] for sh in shapes):
                    fail(f"concatenate needs tensors of one height and width, got {shapes}")
                shape = (*shapes[0][:2], sum(sh[2] for sh in shapes))
                if shape[2] > 0xFFFF:
                    fail(f"{shape[2]} channels")
            if math.prod(shape) > MAX_ELEMENTS:
                fail(f"output {shape} has more than {MAX_ELEMENTS} elements")
            out = ("values", shape, spatial)
        self.tensors.append(out)
        self.read.append(False)

    def done(self, n_blocks: int) -> None:
        if self.n_blocks != n_blocks:
            raise ModelFileError(f"{n_blocks} blocks, {self.n_blocks} of them in nodes")
        unread = [j for j in range(len(self.read) - 1) if not self.read[j]]
        if unread:
            what = "the input" if unread[0] == 0 else f"node {unread[0]}'s output"
            raise ModelFileError(f"{what} is not read by any node")


def validate(mf: ModelFile) -> None:
    """Raise :class:`ModelFileError` unless ``mf`` can be written and read back."""
    prev, spatial = _check_input(mf.input)
    if not 1 <= len(mf.blocks) <= MAX_BLOCKS:
        raise ModelFileError(f"{len(mf.blocks)} blocks; a model has 1..{MAX_BLOCKS}")
    if mf.nodes:
        if not 1 <= len(mf.nodes) <= MAX_BLOCKS:
            raise ModelFileError(f"{len(mf.nodes)} nodes; a graph has 1..{MAX_BLOCKS}")
        check = _GraphCheck(mf.input.encoding, prev, spatial)
        for node in mf.nodes:
            if node.op == "block" and not 0 <= node.block < len(mf.blocks):
                raise ModelFileError(f"a node names block {node.block}, not one of the "
                                     f"{len(mf.blocks)}")
            check.node(node, len(mf.nodes), mf.blocks[node.block] if node.op == "block" else None)
        check.done(len(mf.blocks))
    for i, b in enumerate(mf.blocks):
        if not mf.nodes:
            _check_block(b, i, len(mf.blocks), prev, spatial, mf.input.encoding)
            prev, spatial = b.out_shape, b.kind == "conv2d"
        _check_arrays(b, i)
    if mf.class_names and len(mf.class_names) != mf.n_outputs:
        raise ModelFileError(f"{len(mf.class_names)} class names for {mf.n_outputs} outputs")
    for name in mf.class_names:
        if len(name.encode()) > 255:
            raise ModelFileError(f"class name {name[:20]!r}... is longer than 255 bytes")
    if len(mf.metadata) > 255:
        raise ModelFileError("more than 255 metadata entries")
    for key, value in mf.metadata.items():
        if not 1 <= len(key.encode()) <= 255 or len(str(value).encode()) > 0xFFFF:
            raise ModelFileError(f"metadata {key[:20]!r}: key must be 1..255 bytes, value up to 65535")
