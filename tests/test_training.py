"""Optimizers, the snapshot iterator, and end-to-end learning on built-in data."""

import threading

import numpy as np
import pytest

from bnnlab.core.layers import BatchNorm, Dense, Param, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.core.optimizers import SGD, Adam, Bop, make_optimizer, make_schedule
from bnnlab.core.trainer import Trainer, TrainingDiverged
from bnnlab.experiment import build_model, make_trainer, prepare_data
from bnnlab.io.scenes import load_preset


def _param(v, **kw):
    v = np.asarray(v, np.float32)
    return Param("w", v.copy(), np.zeros_like(v), **kw)


def test_adam_first_step_matches_keras_formula():
    p = _param([0.5, -0.5])
    p.grad[...] = [0.2, -0.1]
    Adam(1e-3, epsilon=1e-7).step([p])
    # step 1: m = 0.1 g, v = 0.001 g^2, lr_t = lr sqrt(1 - b2) / (1 - b1)
    lr_t = 1e-3 * np.sqrt(1 - 0.999) / (1 - 0.9)
    expect = np.array([0.5, -0.5]) - lr_t * (0.1 * np.array([0.2, -0.1])) / (np.sqrt(0.001 * np.array([0.04, 0.01])) + 1e-7)
    np.testing.assert_allclose(p.value, expect, rtol=1e-6)


def test_weight_clip_applies_after_update_and_sgd_momentum():
    p = _param([0.99, -0.99], clip=1.0)
    p.grad[...] = [-10.0, 10.0]
    SGD(0.1, momentum=0.9).step([p])
    np.testing.assert_array_equal(p.value, [1.0, -1.0])
    q = _param([0.0])
    opt = SGD(0.1, momentum=0.5)
    q.grad[...] = 1.0
    opt.step([q])
    opt.step([q])
    np.testing.assert_allclose(q.value, [-0.1 - 0.15])


def test_bop_flips_when_momentum_agrees_with_weight_sign():
    w = _param([1.0, 1.0, -1.0], binary=True)
    other = _param([0.3])
    opt = Bop(threshold=1e-3, gamma=0.5)
    w.grad[...] = [0.01, -0.01, 0.0]
    other.grad[...] = [1.0]
    opt.step([w, other])
    # m = 0.5 g: first weight's momentum 0.005 > tau and same sign as w -> flip
    np.testing.assert_array_equal(w.value, [-1.0, 1.0, -1.0])
    assert other.value[0] < 0.3  # the real-valued parameter went to Adam


def test_schedules_and_unknown_names():
    f = make_schedule("cosine", 1.0, 100)
    assert f(0) == pytest.approx(1.0) and f(100) == pytest.approx(0.0) and f(50) == pytest.approx(0.5)
    assert make_schedule("step", 1.0, 90, every=30)(31) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("warm", 1.0, 10)
    with pytest.raises(ValueError, match="valid: adam, sgd, bop"):
        make_optimizer("rmsprop")


def _toy_model(seed=0):
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
             use_bias=False)
    # A float first layer: with two inputs, +-1 weights could only draw diagonal lines.
    return Sequential([Dense(16), BatchNorm(), QuantDense(16, **q), BatchNorm(), QuantDense(2, **q),
                       BatchNorm()], (2,), seed=seed)


def _xor(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)


def test_snapshots_are_immutable_and_complete():
    x, y = _xor()
    tr = Trainer(_toy_model(), x, y, x, y, epochs=2, batch_size=32, snapshot_every=3)
    snaps = list(tr)
    assert [s.event for s in snaps if s.event != "step"] == ["epoch", "done"]
    last = snaps[-1]
    assert last.step == 16 and last.epoch == 2 and last.val_accuracy is not None
    assert len(last.history.epoch) == 2 and last.history.flip_ratio.shape[1] == 3
    assert len(last.layers) == 3  # every layer with a kernel, float ones too
    assert last.layers[0].preact_counts is None  # the float first layer has no STE
    t = last.layers[1]
    assert t.preact_counts is not None and t.gate_window == (-1.0, 1.0) and 0 <= t.gated_fraction <= 1
    assert t.weight_counts.sum() == 16 * 16 and 0 <= t.frac_at_clip <= 1
    with pytest.raises(ValueError):
        t.weight_counts[0] = 5
    with pytest.raises(ValueError):
        last.model_state["dense/kernel"][0, 0] = 5
    # a snapshot is a copy: later training does not change it
    first = snaps[0].model_state["quant_dense/kernel"].copy()
    np.testing.assert_array_equal(snaps[0].model_state["quant_dense/kernel"], first)


@pytest.mark.parametrize("due", [lambda: False, "alternate"])
def test_thinned_snapshots_keep_every_curve_point(due):
    """snapshot_due skips whole snapshots of ordinary steps, not the curves' points: the
    history (flips and gating counted over the same steps) equals an unthinned run's."""
    x, y = _xor()

    def run(snapshot_due):
        tr = Trainer(_toy_model(), x, y, x, y, epochs=2, batch_size=16, snapshot_every=2)
        if snapshot_due == "alternate":
            flag = [False]

            def snapshot_due():
                flag[0] = not flag[0]
                return flag[0]

        tr.snapshot_due = snapshot_due
        return list(tr)

    full, thin = run(None), run(due)
    assert len(thin) < len(full)
    if due != "alternate":
        assert [s.event for s in thin] == ["epoch", "done"]
    a, b = full[-1].history, thin[-1].history
    np.testing.assert_array_equal(a.step, b.step)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.flip_ratio, b.flip_ratio)
    np.testing.assert_array_equal(a.gated_fraction, b.gated_fraction)
    np.testing.assert_array_equal(a.grad_norm, b.grad_norm)
    assert np.nanmax(a.flip_ratio) > 0 and np.nanmax(a.gated_fraction) > 0
    for s in thin:  # the snapshots that are built are the unthinned run's, step for step
        twin = next(f for f in full if f.step == s.step)
        assert s.layers[1].flip_ratio <= 1 and s.event == twin.event
        np.testing.assert_array_equal(s.layers[1].preact_counts, twin.layers[1].preact_counts)


def test_same_seed_same_run_and_different_seed_differs():
    x, y = _xor()

    def run(seed):
        tr = Trainer(_toy_model(seed), x, y, epochs=1, batch_size=16, seed=seed)
        return tr.run().history.loss

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_pause_step_and_stop_from_another_thread():
    x, y = _xor(512)
    tr = Trainer(_toy_model(), x, y, epochs=50, batch_size=16, snapshot_every=1)
    tr.pause()
    got = []
    worker = threading.Thread(target=lambda: got.extend(tr))
    worker.start()
    worker.join(0.3)
    assert got == [] and worker.is_alive()  # paused before the first batch
    tr.step_once()
    for _ in range(200):
        if got:
            break
        worker.join(0.01)
    worker.join(0.2)
    assert [s.step for s in got] == [1]  # exactly one batch ran
    tr.stop()
    worker.join(5)
    assert not worker.is_alive() and got[-1].event == "stopped"


def test_resume_voids_single_steps_still_owed():
    """Start paused, ask for three single steps, resume before they ran: the run goes on
    to its end (the unspent step budget used to pause it again once it ran out)."""
    x, y = _xor(64)
    tr = Trainer(_toy_model(), x, y, epochs=3, batch_size=16, snapshot_every=1)
    tr.pause()
    for _ in range(3):
        tr.step_once()
    tr.resume()
    got = []
    worker = threading.Thread(target=lambda: got.extend(tr), daemon=True)
    worker.start()
    worker.join(60)
    stuck = worker.is_alive()
    tr.stop()
    assert not stuck, f"the run paused itself after {len(got)} snapshots"
    assert got[-1].event == "done" and got[-1].step == 12


def test_nan_loss_stops_with_clear_error():
    x, y = _xor()
    model = Sequential([Dense(2)], (2,))
    x = x.copy()
    x[5] = np.nan
    with pytest.raises(TrainingDiverged, match="loss became nan .* lower the learning rate"):
        Trainer(model, x, y, epochs=1, batch_size=len(x)).run()


def test_bad_trainer_inputs():
    x, y = _xor()
    with pytest.raises(ValueError, match="labels must be in"):
        Trainer(_toy_model(), x, y + 5)
    with pytest.raises(ValueError, match="does not match the model"):
        Trainer(_toy_model(), np.zeros((4, 3), np.float32), y[:4])


def test_binary_mlp_learns_xor():
    x, y = _xor(1024)
    xt, yt = _xor(512, seed=1)
    tr = Trainer(_toy_model(), x, y, xt, yt, optimizer=Adam(0.01), epochs=15, batch_size=32)
    assert tr.run().val_accuracy > 0.8  # chance is 0.5


@pytest.mark.slow
def test_quickstart_scene_learns_builtin_digits():
    scene = load_preset("quickstart")
    scene.epochs = 2
    data = prepare_data(scene)
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    last = make_trainer(scene, model, data).run()
    assert last.val_accuracy > 0.6  # chance is 0.1


def test_full_precision_twin_keeps_a_nonlinearity_and_learns_xor():
    scene = load_preset("toy-xor").full_precision_twin()
    data = prepare_data(scene)
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    assert not any(getattr(layer, "binary", False) or getattr(layer, "kernel_binary", False)
                   for layer in model.layers)
    assert make_trainer(scene, model, data).run().val_accuracy > 0.9


@pytest.mark.parametrize("clip", [None, 1.0, 0.5])
def test_fused_adam_equals_the_numpy_update_bit_for_bit(clip):
    rng = np.random.default_rng(7)
    v = rng.uniform(-1.2, 1.2, (3, 3, 5, 7)).astype(np.float32)
    fused, plain = _param(v, clip=clip), _param(v, clip=clip)
    a_fused, a_plain = Adam(1e-2), Adam(1e-2)
    for _ in range(6):
        g = rng.standard_normal(v.shape).astype(np.float32)
        fused.grad[...] = g
        plain.grad[...] = g
        a_fused.step([fused])
        # The NumPy path, one parameter at a time, as Adam.update does it.
        a_plain._t = a_plain.iterations + 1
        lr = a_plain.current_lr
        a_plain.iterations += 1
        a_plain.update(plain, lr)
        plain.apply_constraint()
    np.testing.assert_array_equal(fused.value, plain.value)
    if clip is not None:
        assert np.abs(fused.value).max() <= clip


def test_adam_falls_back_for_arrays_it_cannot_fuse():
    v = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    p = Param("w", v.copy(order="F"), np.ones_like(v))
    assert not p.value.flags.c_contiguous
    Adam(0.1).step([p])
    np.testing.assert_allclose(p.value, v - 0.1, rtol=1e-5)


@pytest.mark.parametrize("preset", ["larq-mnist-bnn", "larq-mnist-fp"])
def test_a_seed_gives_the_same_bits_serial_or_threaded(monkeypatch, preset):
    """The kernels run serially when the machine is busy and threaded otherwise; the
    reductions are split the same way in both, so a run does not depend on the load."""
    from bnnlab.core.kernels import threads

    class Load:
        def check(self):
            return busy_now[0]

    busy_now = [False]
    monkeypatch.setattr(threads, "contention", Load())

    scene = load_preset(preset)
    scene.dataset, scene.limit_train, scene.limit_test = "digits", 256, 64
    data = prepare_data(scene)

    def run(busy):
        busy_now[0] = busy
        model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
        make_trainer(scene, model, data, epochs=1, telemetry=False).run()
        return model.state_dict()

    threaded, serial = run(False), run(True)
    assert threaded.keys() == serial.keys()
    for k in threaded:
        np.testing.assert_array_equal(threaded[k], serial[k], err_msg=k)
