"""Checkpoints (.npz) written to hurt: headers of the wrong type, huge declared layers, unused
or oversized entries (zip bombs), bad arrays. Each is one line naming the file, found before
the damage is done; memory is measured with tracemalloc."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.core.layers import Dense
from bnnlab.core.model import Sequential
from bnnlab.io.checkpoints import CheckpointError, load_checkpoint, save_checkpoint


def _model():
    return Sequential([Dense(3)], (4,), seed=0)


def _header(model=None, **changes):
    header = {"format": "bnnlab-checkpoint", "version": 1,
              "model": (model or _model()).config(), "meta": {}}
    header.update(changes)
    return header


def _npy(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _write(path, header, arrays=None, extra=()):
    """A checkpoint as save_checkpoint lays it out, with any header and entries."""
    if arrays is None:
        arrays = _model().state_dict()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        text = header if isinstance(header, bytes) else json.dumps(header).encode()
        zf.writestr("header.npy", _npy(np.frombuffer(text, np.uint8)))
        for key, value in arrays.items():
            zf.writestr(f"w:{key}.npy", _npy(value))
        for name, data in extra:
            zf.writestr(name, data)
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        try:
            fn()
            error = None
        except Exception as exc:  # noqa: BLE001 - returned to the test
            error = exc
        return tracemalloc.get_traced_memory()[1], error
    finally:
        tracemalloc.stop()


def test_round_trip(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "m.npz", model, meta={"a": 1})
    back, meta = load_checkpoint(tmp_path / "m.npz")
    assert meta == {"a": 1}
    np.testing.assert_array_equal(back.layers[0].kernel.value, model.layers[0].kernel.value)


@pytest.mark.parametrize("header,match", [
    ([1, 2, 3], "not a bnnlab checkpoint"),
    ("just a string", "not a bnnlab checkpoint"),
    (_header(version="1"), "version '1' is not supported"),
    (_header(model=None) | {"model": [1]}, "model must be an object"),
    (_header() | {"model": {"layers": 5, "input_shape": [4]}}, "model must be an object"),
    (_header() | {"model": {"layers": [{"type": "Dense", "units": 3}], "input_shape": "ab"}},
     "input shape|invalid literal"),
    (_header() | {"model": {"layers": [7], "input_shape": [4]}}, "model layer 0"),
    (_header() | {"model": {"layers": [{"type": "Dense", "units": 3.5}], "input_shape": [4]}},
     "units must be a positive whole number"),
    (_header(meta=[1]), "meta must be an object"),
])
def test_mistyped_headers_are_one_line(tmp_path, capsys, header, match):
    path = _write(tmp_path / "bad.npz", header)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_header_declaring_millions_of_units_is_refused_before_building(tmp_path):
    big = {"name": "m", "input_shape": [784],
           "layers": [{"type": "Dense", "units": 3_000_000, "name": "dense"}]}
    path = _write(tmp_path / "big.npz", _header() | {"model": big}, arrays={})
    peak, error = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError) and "2,355,000,000 weights" in str(error)
    assert peak < 16 << 20, f"{peak} bytes allocated before refusing"


def _write_raw_entry(path, name: str, nbytes: int):
    """Append a deflated entry of ``nbytes`` zeros after a .npy header, streamed."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(
                out, {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)})
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                out.write(chunk)


@pytest.mark.parametrize("name", ["junk.npy", "w:dense/unused.npy"])
def test_an_unused_entry_is_refused_unread(tmp_path, name):
    path = _write(tmp_path / "bomb.npz", _header())
    _write_raw_entry(path, name, 64 << 20)
    assert path.stat().st_size < 1 << 20
    peak, error = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError), error
    assert "entries the model does not use" in str(error) and name in str(error)
    assert peak < 8 << 20, f"{peak} bytes allocated to refuse a zip bomb"


def test_an_array_declaring_more_than_the_model_needs_is_refused_unread(tmp_path):
    model = _model()
    arrays = model.state_dict()
    path = _write(tmp_path / "big-array.npz", _header(model),
                  {k: v for k, v in arrays.items() if k != "dense/kernel"})
    _write_raw_entry(path, "w:dense/kernel.npy", 64 << 20)
    peak, error = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError) and "dense/kernel" in str(error)
    assert "declares" in str(error)
    assert peak < 8 << 20


@pytest.mark.parametrize("bad,match", [
    (np.full((4, 3), np.nan, np.float32), "NaN or infinity"),
    (np.ones((4, 3), np.complex64), "complex64 values"),
    (np.ones((3, 4), np.float32), r"shape \(3, 4\)"),
])
def test_bad_arrays_are_refused(tmp_path, bad, match):
    arrays = dict(_model().state_dict(), **{"dense/kernel": bad})
    path = _write(tmp_path / "bad.npz", _header(), arrays)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_a_damaged_zip_is_one_line(tmp_path):
    path = tmp_path / "m.npz"
    save_checkpoint(path, _model())
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for i in range(60):
        damaged = bytearray(data)
        pos = int(rng.integers(0, len(damaged)))
        damaged[pos] ^= 0x5A
        bad = tmp_path / f"bad{i}.npz"
        bad.write_bytes(bytes(damaged))
        try:
            load_checkpoint(bad)
        except CheckpointError as exc:
            assert str(exc).startswith(str(bad))
