"""Keras/Larq .h5 files written by hand, valid and hostile: every bad one is one line naming the
file, and a file that declares a huge layer is refused before anything is allocated."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from bnnlab.cli import main
from bnnlab.deploy.larq_import import LarqImportError, import_larq


def _layers(units: int = 3, inputs: int = 4) -> list[dict]:
    return [
        {"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, inputs]}},
        {"class_name": "Dense", "config": {"name": "dense", "units": units, "use_bias": True,
                                           "activation": "linear"}},
    ]


def _write(path, config, weights=None, weight_names=None):
    """An .h5 laid out as Keras 2 saves it: model_config JSON, model_weights/<layer>/..."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = config if isinstance(config, (str, bytes)) else json.dumps(config)
        group = f.create_group("model_weights/dense")
        for name, array in (weights or {}).items():
            group.create_dataset(f"dense/{name}", data=array)
        names = weight_names if weight_names is not None else [
            f"dense/{n}".encode() for n in (weights or {})]
        group.attrs["weight_names"] = names
    return path


def _sequential(layers) -> dict:
    return {"class_name": "Sequential", "config": {"name": "m", "layers": layers}}


GOOD_WEIGHTS = {"kernel:0": np.ones((4, 3), np.float32), "bias:0": np.zeros(3, np.float32)}


def test_a_hand_written_file_imports(tmp_path):
    model = import_larq(_write(tmp_path / "ok.h5", _sequential(_layers()), GOOD_WEIGHTS))
    assert model.input_shape == (4,) and model.output_shape == (3,)
    np.testing.assert_array_equal(model.layers[0].kernel.value, np.ones((4, 3)))


def _bn_on_images(axis):
    return [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 6, 6, 2]}},
        {"class_name": "BatchNormalization", "config": {"name": "dense", "axis": axis}},
    ]


@pytest.mark.parametrize("make,match", [
    (lambda p: _write(p, {"class_name": "Sequential", "config": [1, 2]}), "must be an object"),
    (lambda p: _write(p, _sequential([{"class_name": "InputLayer", "config": {
        "batch_input_shape": [None, None, None, 1]}}, _layers()[1]])), "only the batch size may be null"),
    (lambda p: _write(p, _sequential([{"class_name": "InputLayer", "config": {
        "batch_input_shape": [None, "28"]}}, _layers()[1]])), "input shape"),
    (lambda p: _write(p, "[" * 100_000 + "]" * 100_000), "nested too deeply|not valid JSON|Sequential"),
    (lambda p: _write(p, '{"class_name": "Sequential", "config": {"layers": ' + "[" * 100_000
                      + "]" * 100_000 + "}}"), "nested too deeply"),
    (lambda p: _write(p, _sequential(_layers()),
                      {"kernel:0": np.full((4, 3), b"abcd"), "bias:0": np.zeros(3, np.float32)}),
     "holds |S4 values, not real numbers"),
    (lambda p: _write(p, _sequential(_layers()),
                      {"kernel:0": np.ones((4, 3), np.complex64), "bias:0": np.zeros(3, np.float32)}),
     "complex64 values"),
    (lambda p: _write(p, _sequential(_layers()), GOOD_WEIGHTS, weight_names=7),
     "weight_names must be a list"),
    (lambda p: _write(p, _sequential([_layers()[0], {"class_name": "Dense", "config": {
        "name": "dense", "units": 16.5}}])), "units must be a positive whole number, got 16.5"),
    (lambda p: _write(p, _sequential([5])), "layer 0: malformed"),
    (lambda p: _write(p, _sequential([_layers()[0], {"class_name": "Dense", "config": {
        "name": {"x": 1}, "units": 3}}])), "layer name must be a string"),
    (lambda p: _write(p, _sequential(_bn_on_images(1))), "axis 1 of a 4-D tensor"),
    (lambda p: _write(p, _sequential(_bn_on_images([2]))), "axis 2 of a 4-D tensor"),
])
def test_hostile_files_are_one_line_errors(tmp_path, capsys, make, match):
    path = make(tmp_path / "bad.h5")
    with pytest.raises(LarqImportError) as info:
        import_larq(path)
    assert str(info.value).startswith(str(path)), info.value
    assert pytest.importorskip("re").search(match, str(info.value)), info.value
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_batch_norm_on_the_channel_axis_is_accepted(tmp_path):
    for axis in (3, -1, [3]):
        path = tmp_path / f"bn{axis}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["model_config"] = json.dumps(_sequential(_bn_on_images(axis)))
            g = f.create_group("model_weights/dense")
            for n in ("gamma", "beta", "moving_mean", "moving_variance"):
                g.create_dataset(f"dense/{n}:0", data=np.ones(2, np.float32))
            g.attrs["weight_names"] = [f"dense/{n}:0".encode() for n in
                                       ("gamma", "beta", "moving_mean", "moving_variance")]
        assert import_larq(path).output_shape == (6, 6, 2)


def test_damaged_files_are_one_line_errors(tmp_path):
    # Runs of flipped bytes across the whole file: HDF5 reports most damage only when the
    # damaged part is read, after the file has opened.
    good = _write(tmp_path / "ok.h5", _sequential(_layers()), GOOD_WEIGHTS).read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for i in range(150):
        data = bytearray(good)
        start = int(rng.integers(0, len(data) - 16))
        for pos in range(start, start + int(rng.integers(1, 16))):
            data[pos] ^= int(rng.integers(1, 256))
        path = tmp_path / f"damaged{i}.h5"
        path.write_bytes(bytes(data))
        try:
            import_larq(path)
            outcomes.add("read")
        except LarqImportError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            outcomes.add(str(exc).split(": ", 2)[1][:20])
        path.unlink()
    assert len(outcomes) > 2, outcomes


def test_a_huge_layer_is_refused_before_it_is_built(tmp_path):
    path = _write(tmp_path / "huge.h5", _sequential(_layers(units=2_000_000, inputs=784)))
    tracemalloc.start()
    try:
        with pytest.raises(LarqImportError, match="1,570,000,000 weights") as info:
            import_larq(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the limit is" in str(info.value)
    assert peak < 32 << 20, f"{peak} bytes allocated before refusing"
