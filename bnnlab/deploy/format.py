"""The ``.bnn`` model file: the encoder and a validating decoder of the records (which,
with their rules, live in :mod:`bnnlab.deploy.records` and are re-exported here).

The byte layout is specified in ``docs/bnn-format.md``; this module is one implementation
of it. The decoder checks every count and size against the bytes that remain *before*
it allocates anything, so a hostile file costs at most a few times its own size in
memory, and every defect is reported as :class:`ModelFileError` with the field concerned.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib

import numpy as np

from ..io.atomic import write_atomic
from .records import (  # noqa: F401 (the records are part of this module's interface)
    ACC_LIMIT,
    GRAPH_VERSION,
    HEADER_BYTES,
    MAGIC,
    MAX_BLOCKS,
    MAX_ELEMENTS,
    MAX_FILE_BYTES,
    MODE_GE,
    MODE_LE,
    MODE_MINUS,
    MODE_PLUS,
    TRAILER_BYTES,
    VERSION,
    _ACCS,
    _ENCODINGS,
    _INPUTS,
    _KERNELS,
    _KINDS,
    _OPS,
    _OUTPUTS,
    _PAD_VALUES,
    Block,
    InputSpec,
    ModelFile,
    ModelFileError,
    Node,
    _GraphCheck,
    _check_arrays,
    _check_block,
    _check_input,
    _code,
    accumulator_bound,
    pack_signs,
    unpack_signs,
    validate,
)

__all__ = [
    "ACC_LIMIT",
    "MAGIC",
    "MAX_ELEMENTS",
    "MAX_FILE_BYTES",
    "MODE_GE",
    "MODE_LE",
    "MODE_MINUS",
    "MODE_PLUS",
    "GRAPH_VERSION",
    "VERSION",
    "Block",
    "Node",
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
    if mf.nodes:
        out += struct.pack("<B", len(mf.nodes))
        for node in mf.nodes:
            out += struct.pack("<BB", _code(_OPS, node.op), len(node.sources))
            out += bytes(node.sources)
            if node.op == "block":
                out += _block_bytes(mf.blocks[node.block])
            elif node.op == "maxpool":
                out += struct.pack("<BB", *node.pool)
    else:
        out += struct.pack("<B", len(mf.blocks))
        for b in mf.blocks:
            out += _block_bytes(b)
    size = HEADER_BYTES + len(out) + TRAILER_BYTES
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"the model needs {size} bytes; the format allows {MAX_FILE_BYTES}")
    head = MAGIC + struct.pack("<HHI", GRAPH_VERSION if mf.nodes else VERSION, 0, size)
    body = head + bytes(out)
    return body + struct.pack("<I", zlib.crc32(body))


def _block_bytes(b: Block) -> bytes:
    out = bytearray()
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
    return bytes(out)


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
    if version not in (VERSION, GRAPH_VERSION):
        raise ModelFileError(f"format version {version} is not supported (this bnnlab reads "
                             f"{VERSION} and {GRAPH_VERSION})")
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

    blocks, nodes = [], []
    if version == GRAPH_VERSION:
        (n_nodes,) = c.unpack("<B", "node count")
        if n_nodes < 1:
            raise ModelFileError("the model has no nodes")
        check = _GraphCheck(spec.encoding, prev, spatial)
        for j in range(1, n_nodes + 1):
            op, n_src = c.unpack("<BB", f"node {j} operation and source count")
            op = _enum(_OPS, op, f"node {j} operation")
            sources = tuple(c.take(n_src, f"node {j} sources"))
            if op == "block":
                node = Node(op, sources, len(blocks))
                fields = _read_block_header(c, len(blocks))
                probe = Block(kernel_data=np.zeros(0, np.uint8), **fields)
                check.node(node, n_nodes, probe)
                blocks.append(_read_block_arrays(c, len(blocks), fields, probe))
            else:
                pool = c.unpack("<BB", f"node {j} pool") if op == "maxpool" else (0, 0)
                node = Node(op, sources, -1, tuple(pool))
                check.node(node, n_nodes, None)
            nodes.append(node)
        check.done(len(blocks))
    else:
        (n_blocks,) = c.unpack("<B", "block count")
        if n_blocks < 1:
            raise ModelFileError("the model has no blocks")
        for i in range(n_blocks):
            fields = _read_block_header(c, i)
            # Check the geometry with a placeholder kernel, so sizes are known before reading.
            probe = Block(kernel_data=np.zeros(0, np.uint8), **fields)
            _check_block(probe, i, n_blocks, prev, spatial, spec.encoding)
            b = _read_block_arrays(c, i, fields, probe)
            blocks.append(b)
            prev, spatial = b.out_shape, b.kind == "conv2d"
    if c.pos != c.end:
        raise ModelFileError(f"{c.end - c.pos} unexpected bytes after the last block")
    mf = ModelFile(spec, tuple(blocks), tuple(names), meta, tuple(nodes))
    if n_out != mf.n_outputs:
        raise ModelFileError(f"the header says {n_out} outputs, the last block gives {mf.n_outputs}")
    if layout is not None:
        layout.append((size - TRAILER_BYTES, TRAILER_BYTES, "CRC-32 checksum"))
    return mf


def _read_block_header(c: _Cursor, i: int) -> dict:
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
    return fields


def _read_block_arrays(c: _Cursor, i: int, fields: dict, probe: Block) -> Block:
    """The block's arrays, once its header has been checked (so their sizes are sane)."""
    n, k = probe.out_channels, probe.fan_in
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
    return b


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
