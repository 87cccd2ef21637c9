"""The ``.bnn`` model file: in-memory records, the encoder, and a validating decoder.

The byte layout is specified in ``docs/bnn-format.md``; this module is one implementation
of it. The decoder checks every count and size against the bytes that remain *before*
it allocates anything, so a hostile file costs at most a few times its own size in
memory, and every defect is reported as :class:`ModelFileError` with the field concerned.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..io.atomic import write_atomic

__all__ = [
    "ACC_LIMIT",
    "MAGIC",
    "MAX_ELEMENTS",
    "MAX_FILE_BYTES",
    "MODE_GE",
    "MODE_LE",
    "MODE_MINUS",
    "MODE_PLUS",
    "VERSION",
    "Block",
    "InputSpec",
    "accumulator_bound",
    "ModelFile",
    "ModelFileError",
    "decode",
    "encode",
    "pack_signs",
    "read_file",
    "unpack_signs",
    "write_file",
]

# PNG's trick: a high-bit byte catches 7-bit channels, CR LF and ^Z catch text-mode copies.
MAGIC = b"\x89BNN\r\n\x1a\n"
VERSION = 1
HEADER_BYTES = 16
TRAILER_BYTES = 4

# Limits that keep a decoder's (and a runtime's) memory bounded whatever the file says.
MAX_FILE_BYTES = 1 << 28
MAX_ELEMENTS = 1 << 24  # per tensor per example: activations, kernel fan-in
MAX_BLOCKS = 255
# Integer accumulators are int32 everywhere (reader, runtime, generated C): a block whose
# worst case |accumulator| exceeds this is refused. See accumulator_bound().
ACC_LIMIT = (1 << 31) - 1

# Threshold modes: the output is +1 when the (pooled) accumulator m satisfies the mode.
MODE_GE, MODE_LE, MODE_PLUS, MODE_MINUS = 0, 1, 2, 3

_KINDS = {1: "conv2d", 2: "dense"}
_INPUTS = {0: "raw", 1: "bits"}
_KERNELS = {0: "float32", 1: "bits"}
_ACCS = {0: "int32", 1: "float32"}
_OUTPUTS = {0: "bits", 1: "logits"}
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


@dataclass(frozen=True, eq=False)
class ModelFile:
    input: InputSpec
    blocks: tuple[Block, ...]
    class_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

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
                 encoding: str) -> None:
    """Everything about a block's header that can be checked without its arrays.

    ``prev`` is the shape it must consume; ``spatial`` says whether that shape is an image
    (a convolution needs one) rather than a flat vector.
    """
    where = f"block {i}"

    def fail(msg):
        raise ModelFileError(f"{where}: {msg}")

    first, last = i == 0, i == n_blocks - 1
    if (b.input == "raw") != first:
        fail("only the first block reads the raw input" if not first else
             "the first block must read the raw input")
    if b.input == "bits" and (b.kernel != "bits" or b.acc != "int32"):
        fail("a block with binary input needs a binary kernel and an int32 accumulator")
    if b.acc == "int32" and b.input == "raw" and (b.kernel != "bits" or encoding != "uint8"):
        fail("an integer accumulator on the raw input needs a binary kernel and uint8 input")
    if (b.output == "logits") != last:
        fail("only the last block outputs logits" if not last else "the last block must output logits")
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


def validate(mf: ModelFile) -> None:
    """Raise :class:`ModelFileError` unless ``mf`` can be written and read back."""
    prev, spatial = _check_input(mf.input)
    if not 1 <= len(mf.blocks) <= MAX_BLOCKS:
        raise ModelFileError(f"{len(mf.blocks)} blocks; a model has 1..{MAX_BLOCKS}")
    for i, b in enumerate(mf.blocks):
        _check_block(b, i, len(mf.blocks), prev, spatial, mf.input.encoding)
        _check_arrays(b, i)
        prev, spatial = b.out_shape, b.kind == "conv2d"
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


# --------------------------------------------------------------------------- encoding


def encode(mf: ModelFile) -> bytes:
    """The file's bytes; raises :class:`ModelFileError` for a record that breaks the spec."""
    validate(mf)
    out = bytearray()
    spec = mf.input
    out += struct.pack("<B", len(spec.shape))
    out += struct.pack(f"<{len(spec.shape)}H", *spec.shape)
    out += struct.pack("<Bff", _code(_ENCODINGS, spec.encoding), spec.scale, spec.offset)
    out += struct.pack("<II", mf.n_outputs, len(mf.class_names))
    for name in mf.class_names:
        raw = name.encode()
        out += struct.pack("<B", len(raw)) + raw
    out += struct.pack("<B", len(mf.metadata))
    for key, value in mf.metadata.items():
        k, v = key.encode(), str(value).encode()
        out += struct.pack("<B", len(k)) + k + struct.pack("<H", len(v)) + v
    out += struct.pack("<B", len(mf.blocks))
    for b in mf.blocks:
        out += struct.pack("<BBBBBHHHH", _code(_KINDS, b.kind), _code(_INPUTS, b.input),
                           _code(_KERNELS, b.kernel), _code(_ACCS, b.acc), _code(_OUTPUTS, b.output),
                           *b.in_shape, b.out_channels)
        if b.kind == "conv2d":
            out += struct.pack("<10B", *b.kernel_size, b.stride, *b.pads,
                               _code(_PAD_VALUES, b.pad_value), *b.pool)
        out += np.ascontiguousarray(b.kernel_data).astype("<f4" if b.kernel == "float32" else "u1").tobytes()
        if b.output == "bits":
            out += b.modes.tobytes()
            out += b.thresholds.astype("<i4" if b.acc == "int32" else "<f4").tobytes()
        else:
            out += b.scale.astype("<f4").tobytes() + b.offset.astype("<f4").tobytes()
    size = HEADER_BYTES + len(out) + TRAILER_BYTES
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"the model needs {size} bytes; the format allows {MAX_FILE_BYTES}")
    head = MAGIC + struct.pack("<HHI", VERSION, 0, size)
    body = head + bytes(out)
    return body + struct.pack("<I", zlib.crc32(body))


class _Cursor:
    """Reads little-endian fields, refusing to go past the end of the body.

    With a ``layout`` list, every field read is appended to it as ``(offset, size, what)``.
    """

    def __init__(self, data: bytes, start: int, end: int, layout: list | None = None):
        self.data, self.pos, self.end = data, start, end
        self.layout = layout

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise ModelFileError(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                                 f"{self.end - self.pos} remain")
        b = self.data[self.pos:self.pos + n]
        if self.layout is not None:
            self.layout.append((self.pos, n, what))
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        raw = self.take(count * np.dtype(dtype).itemsize, what)
        return np.frombuffer(raw, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="))

    def text(self, n: int, what: str) -> str:
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{what} is not valid UTF-8") from None


def _enum(table: dict[int, object], code: int, what: str):
    if code not in table:
        raise ModelFileError(f"{what}: unknown code {code}")
    return table[code]


def decode(data: bytes, layout: list | None = None) -> ModelFile:
    """Parse and validate a whole file held in memory.

    When ``layout`` is a list, the decoder appends ``(offset, size, what)`` for every field
    it reads, in file order, header and checksum included (``bnnlab.deploy.explain`` shows
    it as the file's byte map).
    """
    data = bytes(data)
    if data[:8] != MAGIC[:len(data)]:
        raise ModelFileError("not a .bnn model file (bad magic bytes)")
    if len(data) < HEADER_BYTES + TRAILER_BYTES:
        raise ModelFileError(f"truncated: {len(data)} bytes is shorter than a header")
    version, flags, size = struct.unpack("<HHI", data[8:16])
    if version != VERSION:
        raise ModelFileError(f"format version {version} is not supported (this bnnlab reads {VERSION})")
    if size != len(data):
        what = "truncated" if size > len(data) else "trailing bytes"
        raise ModelFileError(f"{what}: the header says {size} bytes, the file has {len(data)}")
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"file of {size} bytes exceeds the limit of {MAX_FILE_BYTES}")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise ModelFileError("checksum mismatch: the file is corrupt")
    if flags != 0:
        raise ModelFileError(f"unknown flags {flags:#06x}")
    if layout is not None:
        layout += [(0, 8, "magic"), (8, 2, "format version"), (10, 2, "flags"), (12, 4, "file size")]
    c = _Cursor(data, HEADER_BYTES, size - TRAILER_BYTES, layout)

    (rank,) = c.unpack("<B", "input rank")
    if rank not in (1, 3):
        raise ModelFileError(f"input rank {rank} (must be 1 or 3)")
    shape = c.unpack(f"<{rank}H", "input shape")
    enc, scale, offset = c.unpack("<Bff", "input encoding, scale and offset")
    spec = InputSpec(tuple(shape), _enum(_ENCODINGS, enc, "input encoding"), scale, offset)
    prev, spatial = _check_input(spec)

    n_out, n_names = c.unpack("<II", "output and class name counts")
    if n_names not in (0, n_out):
        raise ModelFileError(f"{n_names} class names for {n_out} outputs")
    if n_names > c.end - c.pos:  # each name takes at least its length byte
        raise ModelFileError(f"truncated: {n_names} class names cannot fit")
    names = []
    for j in range(n_names):
        (ln,) = c.unpack("<B", f"class name {j}")
        names.append(c.text(ln, f"class name {j}"))

    (n_meta,) = c.unpack("<B", "metadata count")
    meta: dict[str, str] = {}
    for j in range(n_meta):
        (kl,) = c.unpack("<B", f"metadata key {j}")
        key = c.text(kl, f"metadata key {j}")
        (vl,) = c.unpack("<H", f"metadata value {key!r}")
        if not key or key in meta:
            raise ModelFileError(f"metadata key {key!r} is empty or repeated")
        meta[key] = c.text(vl, f"metadata value {key!r}")

    (n_blocks,) = c.unpack("<B", "block count")
    if n_blocks < 1:
        raise ModelFileError("the model has no blocks")
    blocks = []
    for i in range(n_blocks):
        kind, inp, ker, acc, outk, ih, iw, ic, oc = c.unpack("<BBBBBHHHH", f"block {i} header")
        fields = dict(kind=_enum(_KINDS, kind, f"block {i} kind"),
                      input=_enum(_INPUTS, inp, f"block {i} input"),
                      kernel=_enum(_KERNELS, ker, f"block {i} kernel"),
                      acc=_enum(_ACCS, acc, f"block {i} accumulator"),
                      output=_enum(_OUTPUTS, outk, f"block {i} output"),
                      in_shape=(ih, iw, ic), out_channels=oc)
        if fields["kind"] == "conv2d":
            kh, kw, st, pt, pb, pl, pr, pv, ps, pst = c.unpack("<10B", f"block {i} geometry")
            fields.update(kernel_size=(kh, kw), stride=st, pads=(pt, pb, pl, pr),
                          pad_value=_enum(_PAD_VALUES, pv, f"block {i} pad value"), pool=(ps, pst))
        # Check the geometry with a placeholder kernel, so sizes are known before reading.
        probe = Block(kernel_data=np.zeros(0, np.uint8), **fields)
        _check_block(probe, i, n_blocks, prev, spatial, spec.encoding)
        n, k = oc, probe.fan_in
        if fields["kernel"] == "bits":
            kdata = c.array("u1", -(-n * k // 8), f"block {i} kernel")
        else:
            if 4 * n * k > c.end - c.pos:
                raise ModelFileError(f"truncated: block {i} kernel needs {4 * n * k} bytes")
            kdata = c.array("<f4", n * k, f"block {i} kernel").reshape(n, k)
        if fields["output"] == "bits":
            modes = c.array("u1", n, f"block {i} threshold modes")
            thr = c.array("<i4" if fields["acc"] == "int32" else "<f4", n, f"block {i} thresholds")
            b = Block(kernel_data=kdata, modes=modes, thresholds=thr, **fields)
        else:
            s = c.array("<f4", n, f"block {i} logit scales")
            o = c.array("<f4", n, f"block {i} logit offsets")
            b = Block(kernel_data=kdata, scale=s, offset=o, **fields)
        _check_arrays(b, i)
        blocks.append(b)
        prev, spatial = b.out_shape, b.kind == "conv2d"
    if c.pos != c.end:
        raise ModelFileError(f"{c.end - c.pos} unexpected bytes after the last block")
    mf = ModelFile(spec, tuple(blocks), tuple(names), meta)
    if n_out != mf.n_outputs:
        raise ModelFileError(f"the header says {n_out} outputs, the last block gives {mf.n_outputs}")
    if layout is not None:
        layout.append((size - TRAILER_BYTES, TRAILER_BYTES, "CRC-32 checksum"))
    return mf


# --------------------------------------------------------------------------- files


def write_file(path: str | os.PathLike, mf: ModelFile) -> int:
    """Write atomically (temporary file, fsync, rename); returns the size in bytes."""
    data = encode(mf)
    write_atomic(path, lambda f: f.write(data), suffix=".bnn")
    return len(data)


def read_file(path: str | os.PathLike) -> ModelFile:
    """Read and validate a ``.bnn`` file; every problem is a :class:`ModelFileError`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > MAX_FILE_BYTES:
                raise ModelFileError(f"{path}: {st.st_size} bytes exceeds the limit of {MAX_FILE_BYTES}")
            # Read what the file holds (one byte more shows a file that grew meanwhile);
            # a pipe or device has no size, so it is read in pieces up to the limit.
            if stat.S_ISREG(st.st_mode):
                data = f.read(st.st_size + 1)
            else:
                parts, total = [], 0
                while total <= MAX_FILE_BYTES:
                    part = f.read(min(1 << 20, MAX_FILE_BYTES + 1 - total))
                    if not part:
                        break
                    parts.append(part)
                    total += len(part)
                data = b"".join(parts)
            if len(data) > MAX_FILE_BYTES:
                raise ModelFileError(f"{path}: more than {MAX_FILE_BYTES} bytes")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return decode(data)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
