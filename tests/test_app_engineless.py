"""A .bnn file whose padding the float engine cannot represent opens all the same: the
runtime-backed views work (summary, Bits, predictions, evaluation), the engine-backed
ones say why they cannot."""

import dataclasses

import numpy as np
import pytest

from bnnlab.app.models import EngineUnavailable, NoLatentWeights
from bnnlab.app.opening import open_any
from bnnlab.core.layers import layer_from_config
from bnnlab.core.model import Sequential
from bnnlab.core.summary import profile_model
from bnnlab.data import load_dataset
from bnnlab.deploy.fold import fold_model, input_spec_for
from bnnlab.deploy.format import ModelFile, ModelFileError, write_file
from bnnlab.deploy.profile import profile_from_file
from bnnlab.deploy.runtime import Runtime, raw_from_unit
from bnnlab.deploy.unfold import model_from_file

Q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
LAYERS = [
    {"type": "QuantConv2D", "filters": 6, "kernel_size": 3, "kernel_quantizer": "ste_sign"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "BatchNorm"},
    {"type": "QuantConv2D", "filters": 8, "kernel_size": 3, "padding": "same", "pad_values": -1.0, **Q},
    {"type": "BatchNorm"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "QuantDense", "units": 10, **Q},
    {"type": "BatchNorm"},
]


def _files(tmp_path):
    model = Sequential([layer_from_config(lc) for lc in LAYERS], (28, 28, 1), seed=2)
    rng = np.random.default_rng(2)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("moving_mean"):
            state[k] = rng.normal(0, 3, v.shape).astype(np.float32)
    model.load_state_dict(state)
    names = load_dataset("digits", seed=2, limit_train=1, limit_test=1).class_names
    mf = fold_model(model, input_spec_for((28, 28, 1)), names,
                    {"name": "odd", "dataset": "digits", "seed": "2"})
    b = mf.blocks[1]
    assert b.pads == (1, 1, 1, 1)
    # Two rows of padding above, none below: the same output size as 'same', which Keras
    # would pad one above and one below; the runtime runs it, the engine cannot build it.
    odd = dataclasses.replace(b, pads=(2, 0, 1, 1))
    blocks = list(mf.blocks)
    blocks[1] = odd
    odd_mf = ModelFile(mf.input, blocks, mf.class_names, mf.metadata)
    normal, path = tmp_path / "normal.bnn", tmp_path / "odd.bnn"
    write_file(normal, mf)
    write_file(path, odd_mf)
    return normal, path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("engineless"))


def test_profile_from_file_is_the_unfolded_models(files):
    normal, _ = files
    mf = open_any(normal).bnn
    assert profile_from_file(mf, name="x").layers == profile_model(model_from_file(mf, name="x")).layers
    twin = profile_from_file(mf, float_twin=True)
    assert twin.params_1bit == 0 and twin.macs_1bit == 0
    assert twin.params_32bit == profile_from_file(mf).total_params


def test_a_file_the_engine_cannot_build_opens_and_runs(files):
    normal, path = files
    opened = open_any(path)
    with pytest.raises(ModelFileError, match="neither Keras 'valid' nor 'same'"):
        model_from_file(opened.bnn)
    assert opened.model is None and "neither Keras 'valid' nor 'same'" in opened.engine_error
    assert opened.input_shape == (28, 28, 1) and opened.num_classes == 10 and opened.is_binary
    assert opened.name == "odd" and opened.computes_on == "runtime"
    ds = load_dataset("digits", seed=2, limit_test=60, splits=("test",))
    rt = Runtime(opened.bnn)
    np.testing.assert_array_equal(opened.predict(ds.x_test), rt.predict(raw_from_unit(ds.x_test, "uint8")))
    ev = opened.evaluate(limit=60)
    assert ev.n == 60 and ev.computed_on == "runtime"
    assert opened.profile().total_params == open_any(normal).profile().total_params
    assert "Total params" in opened.summary_text()
    info = opened.describe()
    assert info["bnn_bytes"] == path.stat().st_size and info["summary"]["name"] == "odd"
    assert "duplicate filters: not counted" in opened.report()
    with pytest.raises(EngineUnavailable, match=r"Filters needs the float engine.*odd\.bnn"):
        opened.filters()
    with pytest.raises(NoLatentWeights):
        opened.latent_weights()
    e = opened.explain_unit(ds.x_test[0], 1, (0, 0, 3))  # the extra top padding row counts
    assert e.agrees and e.windows[0].k == len(e.taps)  # -1 padding: every tap counts


def test_the_normal_twin_still_builds_the_engine(files):
    normal, _ = files
    opened = open_any(normal)
    assert opened.model is not None and opened.engine_error is None


def test_cli_summary_counts_the_file_and_filters_says_why(files, capsys):
    from bnnlab.cli import main

    normal, path = files
    assert main(["summary", str(path)]) == 0
    odd = capsys.readouterr().out
    assert main(["summary", str(normal)]) == 0
    assert "Total params" in odd and odd.split("stats")[1] == capsys.readouterr().out.split("stats")[1]
    assert main(["filters", str(path)]) != 0
    assert "needs the float engine" in capsys.readouterr().err


def test_exporting_it_for_larq_says_why_it_cannot(files, tmp_path):
    import time

    from bnnlab.app.session import Session

    _, path = files
    session = Session(warm_up=False)
    try:
        session.open_model(path)
        end = time.monotonic() + 120
        while not session.runs and time.monotonic() < end:
            session.wait_idle(0.05)
            time.sleep(0.01)
        run = session.runs[0]
        with pytest.raises(ValueError, match="no layer-by-layer form.*neither Keras"):
            session.export_run_h5(run, tmp_path / "odd.h5")
        assert not (tmp_path / "odd.h5").exists()
    finally:
        session.shutdown()
