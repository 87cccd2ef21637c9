"""The Bits view on graph models (.bnn version 2): every block's input and output, one unit
computed by hand against the runtime, the add nodes that read it; the app's probe and
step text; the panel on bireal-mnist."""

from types import SimpleNamespace

import numpy as np
import pytest

from bnnlab.app.bits import block_input, block_output, probe, unit_text
from bnnlab.app.models import OpenedModel
from bnnlab.app.runs import Focus, RunState, RunView
from bnnlab.deploy.explain import (activation_maps, add_terms, block_inputs, explain_unit,
                                   graph_links)
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_graph_file, random_inputs
from bnnlab.experiment import build_model
from bnnlab.io.scenes import load_preset


def _units(b, rng, n=4):
    hp, wp, f = b.out_shape
    picks = [(0, 0, 0), (hp - 1, wp - 1, f - 1)]
    picks += [(int(rng.integers(hp)), int(rng.integers(wp)), int(rng.integers(f)))
              for _ in range(n - 2)]
    return picks


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_every_block_explained_against_the_runtime(seed):
    rng = np.random.default_rng(seed)
    mf = random_graph_file(rng)
    rt = Runtime(mf)
    raw = random_inputs(rng, mf, 1)[0]
    nodes = rt.node_outputs(raw[None])
    np.testing.assert_array_equal(nodes[-1].reshape(1, -1), rt.logits(raw[None]))
    maps, inputs = activation_maps(rt, raw), block_inputs(rt, raw)
    for j, nd in enumerate(mf.nodes, 1):
        if nd.op != "block":
            continue
        i, b = nd.block, mf.blocks[nd.block]
        np.testing.assert_array_equal(np.asarray(maps[i].values).reshape(-1), nodes[j - 1][0].reshape(-1))
        src = nodes[nd.sources[0] - 1][0] if nd.sources[0] else None
        if b.input == "signs":  # +1 where the float tensor is >= 0
            np.testing.assert_array_equal(inputs[i].reshape(-1),
                                          np.where(src >= 0, 1, -1).reshape(-1))
        elif b.input == "bits":
            np.testing.assert_array_equal(inputs[i].reshape(-1), src.reshape(-1))
        assert graph_links(mf, i).node == j
        for unit in _units(b, rng):
            e = explain_unit(rt, raw, i, unit)
            assert e.agrees, (seed, i, unit, e.output, e.runtime_output)
            assert e.kind == ("xnor" if b.input in ("bits", "signs") else e.kind)
            for w in e.windows:
                if w.input_bits is not None:
                    assert w.dot == w.k - 2 * w.popcount
            for a in add_terms(rt, raw, i, unit):
                total = np.float32(0)
                for _, v in a.terms:
                    total = np.float32(total + np.float32(v))
                assert a.total == pytest.approx(float(total), rel=1e-6, abs=1e-6)
                assert mf.nodes[a.node - 1].op == "add"


@pytest.fixture(scope="module")
def bireal():
    model = build_model(load_preset("bireal-mnist"), (28, 28, 1), 10)
    rng = np.random.default_rng(1)
    state = model.state_dict()
    for k, v in state.items():  # batch norms that do something: varied values and signs
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 3, v.shape).astype(np.float32)
        elif k.endswith("moving_variance"):
            state[k] = rng.uniform(0.5, 4, v.shape).astype(np.float32)
    model.load_state_dict(state)
    opened = OpenedModel.from_model(model, "bireal", class_names=tuple("0123456789"),
                                    dataset="mnist")
    x = np.random.default_rng(2).random((3, 28, 28, 1), dtype=np.float32)
    return opened, x


def test_probe_and_step_text_of_a_residual_block(bireal):
    opened, x = bireal
    mf = opened.model_file()
    p = probe(opened, x[0], 2, (3, 4, 5))  # conv2: reads the signs of add1, pools
    e = p.explanation
    assert e.agrees and e.kind == "xnor" and len(e.windows) == 4
    links = graph_links(mf, 2)
    assert links.source == "node 3 (add)" and links.readers == ("node 7 (add)",)
    inp = block_input(p, mf, 2)
    assert inp.shape == (13, 13, 32) and set(np.unique(inp)) <= {-1.0, 1.0}
    out = block_output(p, mf, 2)
    assert out.shape == (6, 6, 64) and np.abs(out).max() == pytest.approx(1.0)
    (a,) = p.adds
    assert a.node == 7 and [name for name, _ in a.terms] == ["node 4 (block 2)",
                                                            "node 6 (concatenate)"]
    assert a.terms[0][1] == e.output
    text = unit_text(e, adds=p.adds)
    assert "node 7 adds it to the other branch" in text and "<- this unit" in text
    assert "scale and offset: value = " in text and "threshold" not in text


@pytest.mark.gui
def test_bits_panel_shows_a_graph_model(qtbot, bireal):
    from bnnlab.gui.panels.bits import BitsPanel

    opened, x = bireal
    panel = BitsPanel()
    qtbot.addWidget(panel)
    panel.show()
    run = RunView(1, "#1 bireal", "#1f77b4", True, True, RunState.OPENED, None, opened=opened)
    ds = SimpleNamespace(x_test=x, name="mnist", class_names=tuple("0123456789"))
    panel.show_focus(Focus(runs=(run,), run=run, prepared=SimpleNamespace(dataset=ds)))
    qtbot.waitUntil(lambda: panel._worker.idle() and bool(panel.blocks)
                    and panel.explanation is not None, timeout=60_000)
    assert panel.pages.currentIndex() == 1
    assert "graph file (version 2)" in panel.heading.text() and "3 add" in panel.heading.text()
    assert panel.block.count() == 5 and panel.block.currentData() == 1  # the first XNOR block
    assert "signs of node 1 (block 0)" in panel.block.currentText()
    assert panel.explanation.agrees
    assert "node 3 adds it to the other branch" in panel.steps.toPlainText()
    assert panel.thresholds.rowCount() == 32 and " * m " in panel.thresholds.item(0, 1).text()
    assert panel.byte_table.rowCount() > 10
