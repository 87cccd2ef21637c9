"""The Bits panel's Qt-free part: mosaics of activation maps, the unit under a click, the
receptive field, and the step-by-step numbers of a clicked unit against the runtime."""

import numpy as np
import pytest

from bnnlab.app.bits import Mosaic, block_input, block_output, probe, receptive_field, unit_text
from bnnlab.app.models import OpenedModel
from bnnlab.core.layers import layer_from_config
from bnnlab.core.model import Sequential

Q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
LAYERS = [
    {"type": "QuantConv2D", "filters": 5, "kernel_size": 3, "kernel_quantizer": "ste_sign"},
    {"type": "BatchNorm"},
    {"type": "QuantConv2D", "filters": 7, "kernel_size": 3, "padding": "same", "pad_values": -1.0, **Q},
    {"type": "BatchNorm"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "QuantConv2D", "filters": 3, "kernel_size": 2, "padding": "same", **Q},  # zero pad
    {"type": "BatchNorm"},
    {"type": "Flatten"},
    {"type": "QuantDense", "units": 37, **Q},  # a strip of more than one row
    {"type": "BatchNorm"},
    {"type": "QuantDense", "units": 4, **Q},
]


@pytest.fixture(scope="module")
def opened():
    model = Sequential([layer_from_config(lc) for lc in LAYERS], (13, 10, 1), seed=4)
    rng = np.random.default_rng(4)
    state = model.state_dict()
    for k, v in state.items():  # varied thresholds and both comparison directions
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 3, v.shape).astype(np.float32)
        elif k.endswith("gamma"):
            state[k] = (rng.choice([-1.0, 1.0], v.shape) * rng.uniform(0.5, 2, v.shape)).astype(np.float32)
    model.load_state_dict(state)
    return OpenedModel.from_model(model, "random", class_names="abcd")


@pytest.mark.parametrize("shape", [(13, 10, 5), (1, 1, 37), (1, 1, 4), (4, 9, 1), (2, 3, 64)])
def test_mosaic_cells_and_clicks_are_inverse(shape):
    m = Mosaic.for_shape(shape)
    h, w, c = shape
    seen = set()
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                r, col = m.cell(y, x, ch)
                assert 0 <= r < m.size[0] and 0 <= col < m.size[1]
                assert m.unit_at(r + 0.5, col + 0.99) == (y, x, ch)
                seen.add((r, col))
    assert len(seen) == h * w * c
    gaps = [(r, col) for r in range(m.size[0]) for col in range(m.size[1]) if (r, col) not in seen]
    assert all(m.unit_at(r + 0.5, col + 0.5) is None for r, col in gaps)
    assert m.unit_at(-0.5, 0) is None and m.unit_at(m.size[0] + 1, 0) is None
    values = np.random.default_rng(0).choice([-1, 1], shape)
    img = m.image(values)
    for (y, x, ch) in [(0, 0, 0), (h - 1, w - 1, c - 1)]:
        assert img[m.cell(y, x, ch)] == (values[y, x, ch] + 1) / 2
    if (h, w) == (1, 1):
        assert m.gap == 0 and m.columns == min(c, 32)  # a strip of bits


def test_clicked_units_agree_with_the_runtime_on_random_inputs(opened):
    rt = opened.runtime()
    mf = rt.model_file
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(4):
        x = rng.random((13, 10, 1)).astype(np.float32)
        for block, b in enumerate(mf.blocks):
            mosaic = Mosaic.for_shape(b.out_shape)
            trace = rt.trace(opened.raw_inputs(x[None]))[block][0]
            for _ in range(8):  # a click at a random pixel: a unit, or a gap
                py, px = rng.uniform(0, mosaic.size[0]), rng.uniform(0, mosaic.size[1])
                unit = mosaic.unit_at(py, px)
                if unit is None:
                    continue
                p = probe(opened, x, block, unit)
                e = p.explanation
                assert e.unit == unit and e.agrees
                y, xx, c = unit
                hp, wp, f = b.out_shape
                assert e.output == e.runtime_output == trace[(y * wp + xx) * f + c]
                if b.output == "bits":  # the pixel clicked shows the same bit
                    assert block_output(p, mf, block)[unit] == e.output
                    assert mosaic.image(block_output(p, mf, block))[mosaic.cell(*unit)] == (e.output + 1) / 2
                for w in e.windows:
                    if w.popcount is not None:
                        assert w.dot == w.k - 2 * w.popcount
                text = unit_text(e)
                assert f"output {e.output:+g}" in text and "the same" in text
                checked += 1
    assert checked > 40


def test_block_input_is_the_previous_output(opened):
    mf = opened.model_file()
    x = np.random.default_rng(2).random((13, 10, 1)).astype(np.float32)
    p = probe(opened, x, 1, (0, 0, 0))
    assert block_input(p, mf, 0).shape == (13, 10, 1)
    np.testing.assert_allclose(block_input(p, mf, 0)[..., 0], p.raw[..., 0] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(block_input(p, mf, 1), p.maps[0].values)
    assert set(np.unique(block_input(p, mf, 2))) <= {-1.0, 1.0}


def test_receptive_field_covers_the_taps_read(opened):
    mf = opened.model_file()
    x = np.random.default_rng(3).random((13, 10, 1)).astype(np.float32)
    b = mf.blocks[1]  # 3x3 'same' with -1 padding, then a 2x2 pool
    e = probe(opened, x, 1, (0, 1, 2)).explanation
    field = receptive_field(b, (0, 1, 2))
    pt, _, pl, _ = b.pads
    read = {(wy * b.stride - pt + dy, wx * b.stride - pl + dx)
            for w in e.windows for (wy, wx) in [w.position] for (dy, dx, _c) in e.taps}
    inside = {(y, xx) for y, xx in read if 0 <= y < b.in_shape[0] and 0 <= xx < b.in_shape[1]}
    assert set(field) == inside and len(field) == 3 * 4  # rows -1..2 (0..2 inside), columns 1..4
    dense = mf.blocks[3]
    assert len(receptive_field(dense, (0, 0, 0))) == dense.in_shape[0] * dense.in_shape[1]


def test_step_text_lists_bits_by_kernel_position(opened):
    x = np.random.default_rng(5).random((13, 10, 1)).astype(np.float32)
    b = opened.model_file().blocks[2]
    hp, wp, _ = b.out_shape
    e = probe(opened, x, 2, (hp - 1, wp - 1, 1)).explanation  # zero padding: skipped taps
    text = unit_text(e)
    assert "input bits (the receptive field)" in text and "weight bits" in text
    assert "XNOR" in text and "·" in text  # padding taps that take no part
    w = max(e.windows, key=lambda w: w.dot)
    assert f"popcount of disagreements d = {w.popcount} of K = {w.k} taps" in text
    assert text.count("(0,0)") >= 3  # one row per kernel position in each of the three grids


def _grey(title: str) -> dict[str, float]:
    """The grey levels a title names: {'black': v, 'white': v, 'grey': v} where it says."""
    import re

    found = {}
    for name in ("black", "grey", "white"):
        m = re.search(name + r" ([+−-]?[0-9.e+]+)", title)
        if m:
            found[name] = float(m.group(1).replace("−", "-"))
    return found


def test_every_map_caption_states_the_grey_levels_the_image_uses(opened):
    from bnnlab.app.bits import input_labels, output_labels

    mf = opened.model_file()
    x = np.random.default_rng(5).random((13, 10, 1)).astype(np.float32)
    last = len(mf.blocks) - 1
    for block in range(last + 1):
        p = probe(opened, x, block, (0, 0, 0))
        out = block_output(p, mf, block)
        values = np.asarray(p.maps[block].values, np.float32).reshape(out.shape)
        title, caption = output_labels(p, mf, block)
        levels = _grey(caption)
        image = Mosaic.for_shape(out.shape).image(out)
        mosaic = Mosaic.for_shape(out.shape)
        # Each named level is the value drawn black (0), grey (0.5) or white (1).
        for name, shade in (("black", 0.0), ("grey", 0.5), ("white", 1.0)):
            if name in levels:
                at = np.argwhere(np.isclose(values, levels[name], rtol=1e-3, atol=1e-6))
                for unit in at[:3]:
                    assert image[mosaic.cell(*unit)] == pytest.approx(shade, abs=1e-6), (block, name)
        assert "lowest" not in title + caption
        if block == last:  # the logits: scaled by their largest magnitude, around zero
            top = float(np.abs(values).max())
            assert "logits" in title
            assert levels["black"] == pytest.approx(-top, rel=1e-2)
            assert levels["white"] == pytest.approx(top, rel=1e-2) and levels["grey"] == 0
        else:
            assert levels == {"black": -1.0, "white": 1.0}
        inp = block_input(p, mf, block)
        in_levels = _grey(input_labels(p, mf, block)[1])
        if block == 0:  # pixels 0..255
            assert in_levels == {"black": 0.0, "white": 255.0}
            assert inp.min() >= -1 and inp.max() <= 1
        else:
            assert in_levels == {"black": -1.0, "white": 1.0}


@pytest.mark.parametrize("shape", [(13, 10, 5), (1, 1, 37), (2, 3, 64)])
def test_mosaic_gaps_are_exactly_the_pixels_of_no_unit(shape):
    m = Mosaic.for_shape(shape)
    gaps = m.gaps()
    assert gaps.shape == m.size
    units = np.zeros(m.size, bool)
    h, w, c = shape
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                units[m.cell(y, x, ch)] = True
    np.testing.assert_array_equal(gaps, ~units)
