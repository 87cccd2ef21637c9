"""IDX reading and writing: round trips and every way a file can be broken."""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnlab.data import DatasetError, read_idx, write_idx
from bnnlab.data.idx import IDX_DTYPES, MAX_PAYLOAD_BYTES, decode_idx, encode_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


def _sample(dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, dtype, shape, compress):
    array = _sample(dtype, shape)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_every_type_code_is_covered():
    codes = {encode_idx(_sample(d, (2,)))[2] for d in DTYPES}
    assert codes == set(IDX_DTYPES) == {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}


def test_big_endian_layout():
    data = encode_idx(np.array([[1, 258]], dtype=np.int16))
    assert data == bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 1, 2) + b"\x00\x01\x01\x02"


def test_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "raw.gz", array, compress=False)
    raw_named_gz = write_idx(tmp_path / "compressed.idx", array, compress=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)


def test_suffix_picks_compression_by_default(tmp_path):
    array = np.zeros((2, 2), np.uint8)
    assert write_idx(tmp_path / "x.gz", array).read_bytes()[:2] == b"\x1f\x8b"
    assert write_idx(tmp_path / "x", array).read_bytes()[:4] == bytes([0, 0, 8, 2])


def test_gzip_output_is_deterministic(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    a = write_idx(tmp_path / "a.gz", array).read_bytes()
    b = write_idx(tmp_path / "b.gz", array).read_bytes()
    assert a == b


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    seed=st.integers(0, 2**16),
    compress=st.booleans(),
)
def test_round_trip_in_memory(dtype, shape, seed, compress):
    array = _sample(dtype, shape, seed)
    data = encode_idx(array)
    if compress:
        data = gzip.compress(data)
    np.testing.assert_array_equal(decode_idx(data), array)


# --------------------------------------------------------------------------- broken files

def _write(tmp_path, data: bytes, name="broken-idx1-ubyte", gz=False):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _expect_error(path, *words):
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message
    return message


GOOD = encode_idx(np.arange(10, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path, gz):
    _expect_error(_write(tmp_path, b"\x01" + GOOD[1:], gz=gz), "not an IDX file")


@pytest.mark.parametrize("gz", [False, True])
def test_bad_type_code(tmp_path, gz):
    _expect_error(_write(tmp_path, GOOD[:2] + b"\x0a" + GOOD[3:], gz=gz), "type code 0x0A")


@pytest.mark.parametrize("ndim", [0, 5, 255])
def test_bad_number_of_dimensions(tmp_path, ndim):
    data = bytes([0, 0, 8, ndim]) + struct.pack(f">{ndim}I", *[1] * ndim) + b"\x00"
    _expect_error(_write(tmp_path, data), f"{ndim} dimensions")


def test_zero_dimension(tmp_path):
    _expect_error(_write(tmp_path, bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 0)), "empty")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    _expect_error(_write(tmp_path, GOOD[:-3], gz=gz), "truncated")


@pytest.mark.parametrize("cut", [0, 2, 5])
def test_truncated_header(tmp_path, cut):
    _expect_error(_write(tmp_path, GOOD[:cut]), "truncated")


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path, gz):
    _expect_error(_write(tmp_path, GOOD + b"\x00", gz=gz), "trailing")


@pytest.mark.parametrize("gz", [False, True])
def test_absurd_dimensions_rejected_before_allocating(tmp_path, gz):
    data = bytes([0, 0, 0x0E, 3]) + struct.pack(">III", 60000, 60000, 60000)
    message = _expect_error(_write(tmp_path, data, gz=gz), "limit")
    assert str(MAX_PAYLOAD_BYTES) in message


@pytest.mark.parametrize("gz", [False, True])
def test_lying_header_with_small_gzip_costs_little(tmp_path, gz):
    # Announces 512 MiB, delivers 10 bytes: must fail as truncated, having allocated about what
    # the file holds (one read chunk), not what its header announces.
    n = MAX_PAYLOAD_BYTES // 2
    data = bytes([0, 0, 8, 1]) + struct.pack(">I", n) + b"\x00" * 10
    path = _write(tmp_path, data, gz=gz)
    tracemalloc.start()
    try:
        _expect_error(path, "truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"


def test_corrupt_gzip_stream(tmp_path):
    blob = bytearray(gzip.compress(encode_idx(np.arange(1000, dtype=np.int32))))
    blob[30:60] = b"\xff" * 30
    _expect_error(_write(tmp_path, bytes(blob), name="corrupt.gz"), "gzip")


def test_gzip_with_bad_crc(tmp_path):
    blob = bytearray(gzip.compress(GOOD))
    blob[-8] ^= 0xFF  # CRC32 of the content sits in the trailer
    _expect_error(_write(tmp_path, bytes(blob), name="badcrc.gz"), "gzip")


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(encode_idx(np.arange(1000, dtype=np.int32)))
    _expect_error(_write(tmp_path, blob[: len(blob) // 2], name="cut.gz"))


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope-idx3-ubyte.gz", "cannot read")


@pytest.mark.parametrize("bad", [np.zeros(3, np.uint16), np.zeros(3, bool), np.zeros(3, np.float16),
                                 np.zeros((1, 1, 1, 1, 1), np.uint8), np.zeros((0, 3), np.uint8)])
def test_write_rejects_unsupported_arrays(tmp_path, bad):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", bad)
