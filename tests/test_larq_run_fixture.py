"""A whole run of Larq, replayed: bnnlab's Trainer against Keras/Larq's recorded trajectory.

``tests/data/larq_run_small.npz`` was written by ``benchmarks/larq_run_fixture.py`` with
TensorFlow 2.15 and Larq 0.14: four epochs of five steps, each epoch ending on a partial
batch of 44, reshuffled every epoch, weights clipped after every update, and batch-norm
running statistics carried from epoch to epoch. The ten-step check of
``larq_step_check.py`` reaches none of these; a difference in any of them shows here as a
loss, an array or a test figure that parts from Larq's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bnnlab.experiment import build_model, make_trainer
from bnnlab.io.scenes import load_scene

FIXTURE = Path(__file__).parent / "data" / "larq_run_small.npz"

# Float32 sums in another order move the last bits. When the fixture was recorded, losses,
# running statistics and test loss stayed within 7e-7 of Larq's; latent weights within
# 2e-4 (Adam's first steps move a weight whose gradient is nearly zero by about the
# learning rate, whichever way its last bits point), with no binary weight of another
# sign. A real difference in the recipe moves them by orders of magnitude more (see
# test_a_different_recipe_is_caught). The bounds leave room for another CPU's rounding.
LOSS_TOL = 2e-5
STAT_TOL = 2e-5
WEIGHT_TOL = 2e-3
SIGN_TOL = 1e-3  # fraction of binary weights allowed another sign


@pytest.fixture(scope="module")
def recorded():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def replay(rec, tmp_path, *, momentum=None):
    """Train the fixture's scene on its data from its initial arrays; return the per-step
    batch-mean losses, the states after every epoch, the batch orders drawn and the model."""
    scene_file = tmp_path / "scene.toml"
    scene_file.write_text(str(rec["scene"]))
    scene = load_scene(scene_file)
    levels = float(rec["levels"])
    data = SimpleNamespace(x_train=rec["x_train"].astype(np.float32) / levels,
                           y_train=rec["y_train"].astype(np.int64),
                           x_test=rec["x_test"].astype(np.float32) / levels,
                           y_test=rec["y_test"].astype(np.int64))
    model = build_model(scene, data.x_train.shape[1:], 10)
    model.load_state_dict({k[5:]: v for k, v in rec.items() if k.startswith("init/")})
    if momentum is not None:
        for layer in model.layers:
            if hasattr(layer, "momentum"):
                layer.momentum = momentum
    trainer = make_trainer(scene, model, data, telemetry=False)
    trainer.x_val = trainer.y_val = None
    trainer.snapshot_every = 1
    n, bs = len(data.x_train), scene.batch_size
    replica = np.random.default_rng(scene.seed)
    orders = np.stack([replica.permutation(n) for _ in range(scene.epochs)])
    per_epoch = -(-n // bs)
    losses, states, prev = [], {}, 0.0
    for snap in trainer:
        seen = min(snap.batch * bs, n)  # snap.loss: mean over the epoch's samples so far
        total = snap.loss * seen
        losses.append(total - prev if snap.batch > 1 else total)
        prev = total
        if snap.step % per_epoch == 0:
            states[snap.step] = {k: np.array(v) for k, v in snap.model_state.items()}
    assert trainer._rng.bit_generator.state == replica.bit_generator.state, \
        "the trainer drew random numbers besides the batch orders"
    sizes = np.array([min(bs, n - (s % per_epoch) * bs) for s in range(len(losses))])
    return np.array(losses) / sizes, states, orders, model, data


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (1.0 + np.abs(b).max()))


def deviations(rec, losses, states, model, data):
    """How far bnnlab's run lies from Larq's, figure by figure."""
    out = {"loss": float(np.abs(losses - rec["keras_losses"]).max())}
    last = int(rec["checkpoints"][-1])
    out["stats"] = max(_rel(states[int(s)][k[len(f"keras/{s}/"):]], v)
                       for s in rec["checkpoints"] for k, v in rec.items()
                       if k.startswith(f"keras/{s}/") and "moving_" in k)
    out["weights"] = max(_rel(states[last][k[len(f"keras/{last}/"):]], v)
                         for k, v in rec.items() if k.startswith(f"keras/{last}/"))
    out["signs"] = max(float(np.mean(np.signbit(states[last][k[len(f"keras/{last}/"):]])
                                     != np.signbit(v)))
                       for k, v in rec.items()
                       if k.startswith(f"keras/{last}/") and k.endswith("/kernel"))
    tests = []
    for s, (loss, acc) in zip(rec["checkpoints"], rec["keras_test"]):
        model.load_state_dict(states[int(s)])
        ours = model.evaluate(data.x_test, data.y_test)
        tests.append((abs(ours[0] - loss), abs(ours[1] - acc)))
    out["test_loss"] = max(t[0] for t in tests)
    out["test_accuracy"] = max(t[1] for t in tests)
    return out


def test_batch_orders_are_the_recorded_ones(recorded, tmp_path):
    _, _, orders, _, _ = replay(recorded, tmp_path)
    assert np.array_equal(orders, recorded["orders"].astype(np.int64))


def test_whole_run_follows_larq(recorded, tmp_path):
    losses, states, _, model, data = replay(recorded, tmp_path)
    d = deviations(recorded, losses, states, model, data)
    assert len(losses) == len(recorded["keras_losses"]) == 20
    assert d["loss"] < LOSS_TOL, d
    assert d["stats"] < STAT_TOL, d
    assert d["weights"] < WEIGHT_TOL, d
    assert d["signs"] <= SIGN_TOL, d
    assert d["test_loss"] < 1e-4 and d["test_accuracy"] < 1e-6, d


def test_a_different_recipe_is_caught(recorded, tmp_path):
    """The comparison is sharp enough to see a recipe that differs only in the batch-norm
    momentum (0.9 for Keras's 0.99): training is untouched, the running statistics are not."""
    losses, states, _, model, data = replay(recorded, tmp_path, momentum=0.9)
    d = deviations(recorded, losses, states, model, data)
    assert d["loss"] < LOSS_TOL
    assert d["stats"] > 100 * STAT_TOL, d
