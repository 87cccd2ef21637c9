"""The Bits view's numbers: bit planes and the bytes that hold them, thresholds, the byte map
of a .bnn file, and one unit computed by hand, all checked against the runtime."""

import os

import numpy as np
import pytest

from bnnlab.core.model import Sequential
from bnnlab.core.layers import layer_from_config
from bnnlab.deploy.explain import (
    activation_maps,
    explain_unit,
    file_layout,
    kernel_bits,
    tap_labels,
    thresholds,
)
from bnnlab.deploy.fold import default_input_spec, fold_model
from bnnlab.deploy.format import encode
from bnnlab.deploy.runtime import Runtime

LARQ = "/work/shared/testdata/larq"
H5 = f"{LARQ}/larq_mnist_bnn.h5"


def _model(layers, shape, seed):
    model = Sequential([layer_from_config(lc) for lc in layers], shape, seed=seed)
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for k, v in state.items():  # spread the batch-norm statistics: varied thresholds and modes
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 4, v.shape).astype(np.float32)
        elif k.endswith("moving_variance"):
            state[k] = rng.uniform(0.5, 4, v.shape).astype(np.float32)
        elif k.endswith("gamma"):
            state[k] = rng.choice([-1.0, 1.0], v.shape).astype(np.float32) * rng.uniform(0.5, 2, v.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


Q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
CNN = [  # zero padding on a binary input (skipped taps), -1 padding, a pool after a negative scale
    {"type": "QuantConv2D", "filters": 6, "kernel_size": 3, "kernel_quantizer": "ste_sign",
     "padding": "same"},
    {"type": "BatchNorm"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "QuantConv2D", "filters": 70, "kernel_size": 3, "padding": "same", "pad_values": 0.0, **Q},
    {"type": "BatchNorm"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "QuantConv2D", "filters": 9, "kernel_size": 2, "padding": "same", "pad_values": -1.0,
     "strides": 2, **Q},
    {"type": "BatchNorm"},
    {"type": "Flatten"},
    {"type": "QuantDense", "units": 5, **Q},
    {"type": "BatchNorm"},
]
POINTS = [  # float input, float accumulator in the first block
    {"type": "QuantDense", "units": 13, "kernel_quantizer": "ste_sign"},
    {"type": "BatchNorm"},
    {"type": "QuantDense", "units": 7, **Q},
    {"type": "BatchNorm"},
    {"type": "QuantDense", "units": 3, **Q},
]


@pytest.fixture(scope="module")
def cnn():
    model = _model(CNN, (12, 11, 1), seed=1)
    rt = Runtime(fold_model(model, default_input_spec((12, 11, 1))))
    raw = np.random.default_rng(2).integers(0, 256, (12, 11, 1), dtype=np.uint8)
    return rt, raw


def _all_units(b):
    hp, wp, f = b.out_shape
    return [(y, x, c) for y in range(hp) for x in range(wp) for c in range(f)]


def _check_window_arithmetic(e):
    for w in e.windows:
        if e.kind == "xnor":
            assert w.k == int(w.counted.sum())
            assert w.popcount == int(((w.input_bits ^ w.weight_bits) & w.counted).sum())
            assert np.array_equal(w.xnor, 1 - (w.input_bits ^ w.weight_bits))
            assert w.dot == w.k - 2 * w.popcount
            assert w.dot == float(np.sum((w.inputs * w.weights)[w.counted]))
            assert np.array_equal(w.input_bits, (w.inputs < 0).astype(np.uint8))
    assert e.m == max(w.dot for w in e.windows)


def test_every_unit_of_a_cnn_agrees_with_the_runtime(cnn):
    rt, raw = cnn
    modes = set()
    for i, b in enumerate(rt.model_file.blocks):
        for unit in _all_units(b):
            e = explain_unit(rt, raw, i, unit)
            assert e.agrees, (i, unit, e.output, e.runtime_output)
            _check_window_arithmetic(e)
        if b.output == "bits":
            modes |= {t.mode for t in thresholds(rt.model_file, i)}
    assert {">=", "<="} <= modes  # both directions of comparison were exercised


def test_zero_padding_skips_taps_and_minus_one_padding_counts_them(cnn):
    rt, raw = cnn
    b1 = rt.model_file.blocks[1]
    e = explain_unit(rt, raw, 1, (0, 0, 0))
    assert e.kind == "xnor" and len(e.windows) == 4  # a 2x2 max pool
    corner = e.windows[0]
    assert corner.position == (0, 0) and corner.k == 4 * b1.in_shape[2]  # 2x2 of 3x3 taps inside
    assert e.windows[3].k == 9 * b1.in_shape[2]
    e2 = explain_unit(rt, raw, 2, (0, 0, 0))
    assert all(w.k == len(e2.taps) for w in e2.windows)  # -1 padding: every tap counts
    first = explain_unit(rt, raw, 0, (0, 0, 0))
    assert first.kind == "integer" and first.windows[0].k == 4  # raw zeros take no part


def test_float_first_block_agrees(cnn):
    model = _model(POINTS, (4,), seed=5)
    rt = Runtime(fold_model(model, default_input_spec((4,))))
    assert rt.model_file.blocks[0].acc == "float32"
    for raw in np.random.default_rng(6).normal(0, 2, (5, 4)).astype(np.float32):
        for i, b in enumerate(rt.model_file.blocks):
            for unit in _all_units(b):
                e = explain_unit(rt, raw, i, unit)
                assert e.agrees, (i, unit)
    assert e.kind == "xnor" and e.rule.startswith("logit = ")


def test_a_wrong_runtime_bit_is_reported(cnn, monkeypatch):
    rt, raw = cnn
    real = rt.trace

    def flipped(x):
        out = real(x)
        out[1] = out[1].copy()
        out[1][0, 0] = -out[1][0, 0]
        return out

    monkeypatch.setattr(rt, "trace", flipped)
    assert not explain_unit(rt, raw, 1, (0, 0, 0)).agrees
    assert explain_unit(rt, raw, 1, (0, 0, 1)).agrees


def test_bit_planes_are_the_bytes_of_the_file(cnn):
    rt, _ = cnn
    mf = rt.model_file
    data = encode(mf)
    spans = file_layout(data)
    assert spans[0].offset == 0 and spans[-1].end == len(data)
    assert all(a.end == b.offset for a, b in zip(spans, spans[1:]))
    assert spans[0].what == "magic" and spans[-1].what == "CRC-32 checksum"
    rng = np.random.default_rng(0)
    for i, b in enumerate(mf.blocks):
        kb = kernel_bits(mf, i)
        (span,) = [s for s in spans if s.block == i and s.what == f"block {i} kernel"]
        assert span.size == b.kernel_data.nbytes == -(-kb.bits.size // 8)
        assert kb.bits.shape == (b.out_channels, b.fan_in) and len(kb.taps) == b.fan_in
        for f, k in zip(rng.integers(0, kb.filters, 50), rng.integers(0, kb.fan_in, 50)):
            byte, bit = kb.position(int(f), int(k))
            assert (data[span.offset + byte] >> bit) & 1 == kb.bits[f, k]
            assert kb.bits[f, k] == (b.signs()[f, k] < 0)
        if b.kind == "conv2d":
            kh, kw = b.kernel_size
            dy, dx, c = kb.taps[5 % len(kb.taps)]
            assert kb.grid()[0, c, dy, dx] == kb.bits[0, 5 % len(kb.taps)]
            assert kb.taps == [(y, x, ch) for y in range(kh) for x in range(kw)
                               for ch in range(b.in_shape[2])]
        if b.output == "bits":
            (tspan,) = [s for s in spans if s.what == f"block {i} thresholds"]
            assert tspan.size == 4 * b.out_channels


def test_activation_maps_are_the_runtime_trace(cnn):
    rt, raw = cnn
    maps = activation_maps(rt, raw)
    trace = rt.trace(raw[None])
    for m, t, b in zip(maps, trace, rt.model_file.blocks):
        if m.bits:
            assert m.values.shape == b.out_shape
            np.testing.assert_array_equal(m.values.reshape(-1), t[0])
        else:
            np.testing.assert_array_equal(m.values, t[0])


def test_units_outside_the_output_are_refused(cnn):
    rt, raw = cnn
    with pytest.raises(IndexError, match="outside"):
        explain_unit(rt, raw, 0, (99, 0, 0))
    with pytest.raises(IndexError):
        explain_unit(rt, raw, 9, (0, 0, 0))


@pytest.mark.skipif(not os.path.exists(H5), reason="Larq test model not available")
def test_larq_model_units_agree_with_the_runtime():
    from bnnlab.app.opening import open_any

    opened = open_any(H5)
    rt = opened.runtime()
    images = np.load(f"{LARQ}/predictions.npz")["images"]
    rng = np.random.default_rng(0)
    for raw in images[:3, ..., None]:
        for i, b in enumerate(rt.model_file.blocks):
            units = _all_units(b)
            pick = units if len(units) <= 64 else [units[j] for j in rng.choice(len(units), 64, replace=False)]
            for unit in pick:
                e = explain_unit(rt, raw, i, unit)
                assert e.agrees, (i, unit)
                _check_window_arithmetic(e)
    e = explain_unit(rt, images[0, ..., None], 1, (2, 3, 4))
    assert e.kind == "xnor" and len(e.windows) == 4 and e.windows[0].k == 3 * 3 * 32
    assert len(tap_labels(rt.model_file.blocks[1])) == 288
