"""Reading and writing IDX files, the format of MNIST and its look-alikes.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data, big-endian, row-major. Files may be gzipped;
gzip is recognised by its magic bytes, never by the file name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .dataset import DatasetError

__all__ = ["IDX_DTYPES", "MAX_DIMS", "MAX_PAYLOAD_BYTES", "decode_idx", "decode_idx_header",
           "encode_idx", "is_gzip", "read_idx", "write_idx"]

#: IDX type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 4
#: Ceiling on the data size a header may announce; the largest real IDX sets (EMNIST) are about
#: half of this, and a lying header must not make us allocate gigabytes.
MAX_PAYLOAD_BYTES = 1 << 30

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
#: After the announced data, a gzip stream is inflated at most this much further (and thrown
#: away) to tell a damaged stream, whose checksum fails, from an intact one with extra bytes.
_GZIP_DRAIN_BYTES = 64 << 20
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_FIX = "replace it with an intact copy of the original file"


def is_gzip(data: bytes) -> bool:
    return data[:2] == _GZIP_MAGIC


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzipped IDX file into a native-endian array.

    Raises :class:`DatasetError` naming the file when it is missing, is not IDX, is cut short,
    has extra bytes at the end, announces an absurd size, or is a damaged gzip stream.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    return decode_idx(data, str(path))


def _open(data: bytes) -> BinaryIO:
    if is_gzip(data):
        return gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    return io.BytesIO(data)


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file (raw or gzipped); ``source`` names it in errors."""
    try:
        with _open(data) as stream:
            return _decode_stream(stream, source, is_gzip(data))
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{source}: damaged gzip data ({exc}); {_FIX}") from exc


def decode_idx_header(data: bytes, source: str = "<bytes>") -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and shape an IDX file announces, inflating only its first bytes."""
    try:
        with _open(data) as stream:
            dtype, shape, _ = _read_header(stream, source)
            return dtype, shape
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{source}: damaged gzip data ({exc}); {_FIX}") from exc


def _read_exact(stream: BinaryIO, n: int, source: str, what: str) -> bytearray:
    # Growing in chunks means a header that lies about the size costs only the bytes really there.
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            raise DatasetError(
                f"{source}: file is truncated: {what} needs {n} bytes but only {len(buf)} remain; "
                f"{_FIX}"
            )
        buf += chunk
    return buf


def _read_header(stream: BinaryIO, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    magic = _read_exact(stream, 4, source, "the IDX header")
    zero1, zero2, code, ndim = magic
    if zero1 or zero2:
        raise DatasetError(
            f"{source}: not an IDX file (magic bytes {bytes(magic).hex()} should start with 0000); "
            f"{_FIX}"
        )
    if code not in IDX_DTYPES:
        raise DatasetError(
            f"{source}: unknown IDX type code 0x{code:02X} (expected one of "
            f"{', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}); {_FIX}"
        )
    if not 1 <= ndim <= MAX_DIMS:
        raise DatasetError(f"{source}: IDX header announces {ndim} dimensions (1..{MAX_DIMS} "
                           f"supported); {_FIX}")
    shape = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, source, "the IDX header"))
    if min(shape) == 0:
        raise DatasetError(f"{source}: IDX header announces an empty dimension {shape}; {_FIX}")
    dtype = IDX_DTYPES[code]
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_PAYLOAD_BYTES:
        raise DatasetError(
            f"{source}: IDX header announces shape {shape}, {nbytes} bytes of data, beyond the "
            f"{MAX_PAYLOAD_BYTES} byte limit; the header is corrupt; {_FIX}"
        )
    return dtype, shape, nbytes


def _decode_stream(stream: BinaryIO, source: str, gzipped: bool) -> np.ndarray:
    dtype, shape, nbytes = _read_header(stream, source)
    payload = _read_exact(stream, nbytes, source, f"shape {shape}")
    if stream.read(1):
        if gzipped:
            # A flipped bit inside a deflate stream often inflates to more bytes than were
            # compressed; the gzip checksum at the end of the stream tells which it is.
            drained = 1
            while drained < _GZIP_DRAIN_BYTES and (chunk := stream.read(_CHUNK)):
                drained += len(chunk)
        raise DatasetError(
            f"{source}: file has trailing bytes after the {nbytes} bytes of shape {shape}; {_FIX}"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def encode_idx(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes of ``array`` (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= MAX_DIMS or 0 in array.shape:
        raise ValueError(
            f"IDX files here hold 1..{MAX_DIMS} non-empty dimensions, not {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``compress`` is true.

    ``compress=None`` gzips when the name ends in ``.gz``. Gzip output uses a fixed time stamp so
    the same array always gives the same bytes (and checksum).
    """
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
