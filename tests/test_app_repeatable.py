"""A run trained in the app is the run ``bnnlab train SCENE --seed S`` trains: the same
seed gives bit-identical final weights, whether the run went straight through or was
paused, stepped and resumed, and whatever the snapshot cadence."""

import numpy as np
import pytest

from bnnlab.app.session import Session
from bnnlab.experiment import build_model, make_trainer, prepare_data
from bnnlab.io.scenes import load_preset

WAIT_S = 900  # the first run compiles the kernels; a loaded machine is slow


def _scene():
    scene = load_preset("toy-spiral")  # clipping, gating and batch norm all at work
    scene.limit_train, scene.limit_test, scene.epochs, scene.seed = 256, 64, 2, 3
    return scene


def _cli_weights(scene):
    """What bnnlab train does (bnnlab/cli.py cmd_train): no telemetry, the scene's cadence."""
    data = prepare_data(scene)
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    last = None
    for last in make_trainer(scene, model, data, telemetry=False):
        pass
    return {k: v.copy() for k, v in model.state_dict().items()}, last.val_accuracy


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


@pytest.fixture
def session():
    s = Session(warm_up=False, scene=_scene())
    yield s
    s.shutdown()


def test_app_runs_repeat_bit_for_bit_and_match_the_terminal(session):
    s = session
    cli, cli_val = _cli_weights(_scene())
    s.start()
    assert s.wait_idle(WAIT_S)
    s.start()
    assert s.wait_idle(WAIT_S)
    # paused at once, a few single steps, then resumed
    s.start(paused=True)
    for _ in range(3):
        s.step()
        s.poll()
    s.resume()
    assert s.wait_idle(WAIT_S)
    assert [r.state.value for r in s.runs] == ["finished"] * 3
    for run in s.runs:
        _same(dict(run.snapshot.model_state), cli)
        assert run.snapshot.val_accuracy == cli_val
