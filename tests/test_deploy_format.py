"""The .bnn writer and reader: round trips, every rejection, and fuzzing with mutated files."""

import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlab.core.layers import BatchNorm, Flatten, MaxPool2D, QuantConv2D, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.deploy import format as F
from bnnlab.deploy.fold import fold_model

BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)


def small_model(seed=0):
    layers = [QuantConv2D(6, 3, kernel_quantizer="ste_sign", use_bias=False), MaxPool2D(2),
              BatchNorm(scale=False), QuantConv2D(8, 3, padding="same", **BIN), BatchNorm(),
              Flatten(), QuantDense(5, **BIN), BatchNorm()]
    m = Sequential(layers, (10, 10, 1), seed=seed)
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if isinstance(layer, BatchNorm):
            layer.moving_mean[:] = rng.normal(0, 3, layer.channels)
            layer.moving_variance[:] = rng.uniform(0.5, 4, layer.channels)
            layer.beta.value[:] = rng.normal(0, 1, layer.channels)
    return m


@pytest.fixture(scope="module")
def model_file():
    return fold_model(small_model(), class_names=list("abcde"), metadata={"name": "t", "k": "v"})


@pytest.fixture(scope="module")
def data(model_file):
    return F.encode(model_file)


def recrc(buf: bytearray) -> bytes:
    buf[-4:] = struct.pack("<I", zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


def test_round_trip_is_identical(model_file, data):
    back = F.decode(data)
    assert F.encode(back) == data
    assert back.class_names == tuple("abcde") and back.metadata == {"name": "t", "k": "v"}
    for a, b in zip(model_file.blocks, back.blocks):
        assert a.in_shape == b.in_shape and a.out_shape == b.out_shape
        np.testing.assert_array_equal(a.kernel_data, b.kernel_data)
        np.testing.assert_array_equal(a.signs(), b.signs())


def test_header_fields(data):
    assert data[:8] == b"\x89BNN\r\n\x1a\n"
    version, flags, size = struct.unpack("<HHI", data[8:16])
    assert (version, flags, size) == (1, 0, len(data))
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_one_bit_per_weight(model_file):
    # 9*1*6 + 9*6*8 + (4*4*8)*5 binary weights, stored as whole bytes per block
    bits = [b.out_channels * b.fan_in for b in model_file.blocks]
    assert bits == [54, 432, 640]
    assert [b.kernel_data.nbytes for b in model_file.blocks] == [7, 54, 80]


def test_sign_packing_convention():
    packed = F.pack_signs(np.array([1, -1, -1, 1, 1, 1, 1, 1, -1]))
    # bit 1 = -1, least-significant bit first
    assert packed.tolist() == [0b00000110, 0b00000001]
    np.testing.assert_array_equal(F.unpack_signs(packed, 1, 9)[0], [1, -1, -1, 1, 1, 1, 1, 1, -1])


def test_write_is_atomic(tmp_path, model_file, monkeypatch):
    path = tmp_path / "m.bnn"
    size = F.write_file(path, model_file)
    assert size == path.stat().st_size
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        F.write_file(path, model_file)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.bnn"]  # no temporary left behind


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:-1], "truncated|header says"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: b"PK" + d[2:], "bad magic"),
    (lambda d: recrc(bytearray(d[:8] + struct.pack("<H", 3) + d[10:])), "version 3"),
    (lambda d: recrc(bytearray(d[:8] + struct.pack("<H", 2) + d[10:])), "node 1: 0 sources"),
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "checksum"),
    (lambda d: recrc(bytearray(d[:10] + struct.pack("<H", 1) + d[12:])), "flags"),
])
def test_rejections(data, mutate, match):
    with pytest.raises(F.ModelFileError, match=match):
        F.decode(mutate(data))


def test_read_file_errors(tmp_path, data):
    with pytest.raises(F.ModelFileError, match="no such file"):
        F.read_file(tmp_path / "missing.bnn")
    with pytest.raises(F.ModelFileError, match="folder"):
        F.read_file(tmp_path)
    bad = tmp_path / "bad.bnn"
    bad.write_bytes(data[:-7])
    with pytest.raises(F.ModelFileError, match=r"bad\.bnn: truncated"):
        F.read_file(bad)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.bnn"
    with open(big, "wb") as f:
        f.truncate(4096)
    monkeypatch.setattr(F, "MAX_FILE_BYTES", 1024)
    with pytest.raises(F.ModelFileError, match="exceeds the limit"):
        F.read_file(big)


@pytest.mark.parametrize("in_shape,out", [((5, 5, 8), 65535), ((65535, 1, 8), 65535),
                                           ((65535, 65535, 255), 65535)])
def test_declared_sizes_are_checked_before_allocating(data, in_shape, out):
    # A dense block declaring up to 65535 outputs of a 65535 x 65535 x 255 input: up to
    # terabytes of weights in a file of a few kilobytes. Refused, having allocated about what
    # the file holds.
    d = bytearray(data)
    mf = F.decode(data)
    pos = d.index(struct.pack("<BBBBBHHHH", 2, 1, 1, 0, 1, *mf.blocks[2].in_shape, 5))
    d[pos:pos + 13] = struct.pack("<BBBBBHHHH", 2, 1, 1, 0, 1, *in_shape, out)
    d = recrc(d)
    tracemalloc.start()
    try:
        with pytest.raises(F.ModelFileError):
            F.decode(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(d) + (1 << 20), f"{peak} bytes allocated for a {len(d)}-byte file"


def test_structure_is_validated(model_file):
    b0, b1, b2 = model_file.blocks
    bad_shape = F.ModelFile(model_file.input, (b0, b2))
    with pytest.raises(F.ModelFileError, match="does not match"):
        F.encode(bad_shape)
    with pytest.raises(F.ModelFileError, match="only the last block outputs logits"):
        F.encode(F.ModelFile(model_file.input, (b0, b1, b2, b2)))
    with pytest.raises(F.ModelFileError, match="class names"):
        F.encode(F.ModelFile(model_file.input, model_file.blocks, ("a",)))
    nan = F.Block(**{**b2.__dict__, "scale": np.full(5, np.nan, np.float32)})
    with pytest.raises(F.ModelFileError, match="NaN"):
        F.encode(F.ModelFile(model_file.input, (b0, b1, nan)))
    modes = b1.modes.copy()
    modes[0] = F.MODE_PLUS
    const = F.Block(**{**b1.__dict__, "modes": modes})  # threshold of a constant channel
    if const.thresholds[0] != 0:
        with pytest.raises(F.ModelFileError, match="constant channels"):
            F.encode(F.ModelFile(model_file.input, (b0, const, b2)))


def _decode_or_error(blob: bytes):
    """A file is rejected with ModelFileError, or it runs and agrees with the NumPy oracle."""
    try:
        mf = F.decode(blob)
    except F.ModelFileError:
        return None
    from bnnlab.deploy.reference import reference_logits
    from bnnlab.deploy.runtime import Runtime
    from bnnlab.deploy.samples import random_inputs

    try:
        rt = Runtime(mf, file_bytes=len(blob))
    except F.ModelFileError as exc:  # beyond the runtime's documented limits
        assert "limit" in str(exc)
        return None
    raw = random_inputs(np.random.default_rng(len(blob)), mf, 3)
    np.testing.assert_array_equal(rt.logits(raw, threads=1), reference_logits(mf, raw))
    return mf


accepted: list[bool] = []


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_fuzz_mutated_files(model_file, draw):
    """Flip, overwrite, insert or delete bytes, with the checksum fixed so the parser is
    reached: the reader must return a model or raise ModelFileError, never anything else."""
    blob = bytearray(F.encode(model_file))
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "byte", "word", "insert", "delete", "truncate"]))
        i = draw.draw(st.integers(0, len(blob) - 5))
        if op == "flip":
            blob[i] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "byte":
            blob[i] = draw.draw(st.integers(0, 255))
        elif op == "word":
            blob[i:i + 4] = struct.pack("<I", draw.draw(st.sampled_from(
                [0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000])))[:len(blob) - i]
        elif op == "insert":
            blob[i:i] = bytes(draw.draw(st.binary(min_size=1, max_size=8)))
        elif op == "delete":
            del blob[i:i + draw.draw(st.integers(1, 8))]
        else:
            del blob[max(i, 4):-4]
        if len(blob) < 20:
            break
    if len(blob) >= 16 and draw.draw(st.booleans()):
        blob[12:16] = struct.pack("<I", len(blob))  # keep the size field honest too
    if len(blob) >= 4:
        blob = bytearray(recrc(blob))
    accepted.append(_decode_or_error(bytes(blob)) is not None)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_with_valid_header(tail):
    # (runs after test_fuzz_mutated_files: some of those files must have been accepted
    # and run, or the fuzzing above never reached the runtime)
    assert not accepted or sum(accepted) >= 10, f"{sum(accepted)} of {len(accepted)} accepted"
    body = F.MAGIC + struct.pack("<HHI", 1, 0, 16 + len(tail) + 4) + tail
    _decode_or_error(body + struct.pack("<I", zlib.crc32(body)))


def test_hostile_files_allocate_little(model_file):
    """Peak memory while rejecting mutated files stays within a small multiple of their size."""
    rng = np.random.default_rng(1)
    good = F.encode(model_file)
    tracemalloc.start()
    try:
        worst = 0
        for _ in range(300):
            blob = bytearray(good)
            for i in rng.integers(16, len(blob) - 4, size=3):
                blob[i:i + 2] = b"\xff\xff"
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                F.decode(recrc(blob))
            except F.ModelFileError:
                pass
            worst = max(worst, tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    assert worst < 20 * len(good) + 200_000
