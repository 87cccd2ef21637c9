"""Per-layer statistics, batch-norm re-estimation and batch-statistics evaluation, per-layer
learning rates, smoothed curves and averaged stochastic evaluation."""

import numpy as np
import pytest

from bnnlab.app.health import batchnorm_gap_warning
from bnnlab.core.binarizers import get_binarizer
from bnnlab.core.evaluation import (evaluate_averaged, evaluate_batch_stats, is_stochastic,
                                    reestimate_batchnorm)
from bnnlab.core.layers import BatchNorm, Dense, QuantDense
from bnnlab.core.layerstats import (flip_ratio, gated_fraction, weights_at_clip,
                                    weights_beyond_clip)
from bnnlab.core.model import Sequential
from bnnlab.core.optimizers import SGD, Adam, glorot_lr_scale
from bnnlab.core.trainer import Trainer, smoothing_steps
from bnnlab.experiment import apply_layer_lr_scale, build_model
from bnnlab.io.scenes import load_preset


def test_weight_fractions_on_hand_made_weights():
    w = np.array([1.0, -1.0, 0.9999995, -0.5, 0.0, 1.5, -2.0, 0.3], np.float32)
    # |w| >= 1 - 1e-6: 1, -1, 0.9999995, 1.5, -2 -> 5 of 8
    assert weights_at_clip(w, 1.0) == pytest.approx(5 / 8)
    assert weights_at_clip(w, None) == pytest.approx(5 / 8)  # no clip: the bound is 1
    assert weights_at_clip(w, 0.5) == pytest.approx(6 / 8)  # -0.5 counts too
    assert weights_beyond_clip(w) == pytest.approx(2 / 8)  # 1.5 and -2 only: 1 is not > 1
    assert weights_at_clip(np.zeros(0, np.float32), 1.0) == 0.0
    assert weights_beyond_clip(np.zeros(0, np.float32)) == 0.0


def test_flip_ratio_and_gated_fraction_on_hand_made_arrays():
    before = np.signbit(np.array([0.5, -0.5, 0.1, -0.1], np.float32))
    after = np.array([-0.5, -0.4, 0.2, 0.3], np.float32)  # first and last changed sign
    assert flip_ratio(before, after) == pytest.approx(0.5)
    x = np.array([[-2.0, -1.0, 0.0, 0.5], [1.0, 1.01, 3.0, -0.99]], np.float32)
    # ste_sign passes |x| <= 1: -2, 1.01 and 3 are gated -> 3 of 8
    assert gated_fraction(get_binarizer("ste_sign"), x) == pytest.approx(3 / 8)
    assert gated_fraction(get_binarizer({"name": "ste_sign", "clip_value": "none"}), x) == 0.0
    assert gated_fraction(None, x) is None
    assert gated_fraction(get_binarizer("ste_sign"), None) is None


def _net(seed=0, momentum=0.99, activation="ste_sign"):
    q = dict(input_quantizer=activation, kernel_quantizer="ste_sign",
             kernel_constraint="weight_clip", use_bias=False)
    return Sequential([Dense(32), BatchNorm(momentum=momentum), QuantDense(32, **q),
                       BatchNorm(momentum=momentum), QuantDense(3, **q), BatchNorm(momentum=momentum)],
                      (4,), seed=seed)


def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 4))
    y = rng.integers(0, 3, n)
    x = (centres[y] + rng.normal(0, 1, (n, 4)) + 5.0).astype(np.float32)  # far from zero mean
    return x, y.astype(np.int64)


def test_reestimated_statistics_equal_the_average_of_batch_statistics():
    model = _net()
    x, _ = _blobs(256)
    bn = model.layers[1]
    reestimate_batchnorm(model, x, batches=4, batch_size=64, rng=np.random.default_rng(3))
    # Recompute by hand: the same four batches, drawn as the function draws them.
    rng = np.random.default_rng(3)
    idx = rng.permutation(256)[:256]
    h = x @ model.layers[0].kernel.value + model.layers[0].bias.value
    means = [h[np.sort(idx[i:i + 64])].astype(np.float64).mean(0) for i in range(0, 256, 64)]
    variances = [h[np.sort(idx[i:i + 64])].astype(np.float64).var(0) for i in range(0, 256, 64)]
    np.testing.assert_allclose(bn.moving_mean, np.mean(means, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, np.mean(variances, 0), rtol=1e-4)
    # afterwards training updates use the momentum again
    assert not bn.reestimating
    before = bn.moving_mean.copy()
    model.forward(x[:64], training=True, rng=np.random.default_rng(0))
    expect = 0.99 * before + 0.01 * h[:64].astype(np.float64).mean(0)
    np.testing.assert_allclose(bn.moving_mean, expect, rtol=1e-5, atol=1e-5)


def test_batch_stats_evaluation_leaves_running_statistics_alone():
    model = _net()
    x, y = _blobs(300)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    loss, acc = evaluate_batch_stats(model, x, y, batch_size=64)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    assert 0.0 <= acc <= 1.0 and np.isfinite(loss)
    # With batch statistics, a shift of the whole input is normalized away; with the
    # (untrained) running statistics it is not.
    _, acc_shift = evaluate_batch_stats(model, x + 100.0, y, batch_size=300)
    _, acc_same = evaluate_batch_stats(model, x, y, batch_size=300)
    assert acc_shift == acc_same


def test_reestimation_fixes_lagging_statistics_without_changing_training():
    xa, ya = _blobs(900)
    x, y, xv, yv = xa[:600], ya[:600], xa[600:], ya[600:]
    runs = {}
    for k in (0, 8):
        model = _net(momentum=0.99)
        tr = Trainer(model, x, y, xv, yv, optimizer=Adam(0.01), epochs=2, batch_size=64,
                     seed=0, telemetry=False, bn_reestimate_batches=k)
        snaps = [s for s in tr if s.event in ("epoch", "done")]
        runs[k] = (model, snaps)
    (m0, s0), (m8, s8) = runs[0], runs[8]
    # the weights trained identically: re-estimation draws from its own generator
    for p0, p8 in zip(m0.params(), m8.params()):
        np.testing.assert_array_equal(p0[1].value, p8[1].value)
    # only the running statistics differ, and with re-estimation validation is honest
    assert not np.allclose(m0.layers[1].moving_mean, m8.layers[1].moving_mean)
    last0, last8 = s0[-1], s8[-1]
    assert last8.bn_reestimated and not last0.bn_reestimated
    # momentum 0.99 over 20 steps leaves the statistics far off: a large gap in run 0
    assert last0.val_accuracy_batch_stats - last0.val_accuracy > 0.1
    assert abs(last8.val_accuracy_batch_stats - last8.val_accuracy) < 0.05
    assert last0.val_accuracy_batch_stats == last8.val_accuracy_batch_stats
    # the app's warning names the cause and the cure, only when the figures differ
    text = batchnorm_gap_warning(last0)
    assert text and "momentum 0.99" in text and "bn_reestimate_batches" in text
    assert batchnorm_gap_warning(last8) is None


def test_epoch_snapshots_carry_layer_stats_and_smoothed_curves():
    x, y = _blobs(600)
    tr = Trainer(_net(), x, y, x, y, optimizer=Adam(0.01), epochs=3, batch_size=32, seed=0,
                 snapshot_every=5, telemetry=False)
    snaps = list(tr)
    ends = [s for s in snaps if s.event in ("epoch", "done")]
    # the float first Dense counts as a (non-binary) quantized layer too
    assert all([ls.name for ls in s.epoch_layers] == ["dense", "quant_dense", "quant_dense_1"]
               for s in ends)
    assert all(s.epoch_layers == () for s in snaps if s.event == "step")
    first = ends[0].epoch_layers[1]
    assert 0 < first.flip_ratio < 1
    assert 0 <= first.weights_at_clip <= 1 and first.weights_beyond_clip == 0.0
    assert first.gated_fraction is not None and 0 < first.gated_fraction < 1
    h = snaps[-1].history
    # the smoothed loss carries across epochs: no jump back up at an epoch's start
    steps_per_epoch = tr.batches_per_epoch
    i = int(np.searchsorted(h.step, steps_per_epoch, side="right"))
    assert abs(h.loss[i] - h.loss[i - 1]) < 0.25 * h.loss[i - 1]
    assert snaps[-1].smoothed_loss == h.loss[-1]


def test_glorot_lr_scale_and_per_layer_learning_rates():
    assert glorot_lr_scale(784, 512) == pytest.approx(np.sqrt((784 + 512) / 1.5))
    scene = load_preset("binarynet-mlp")
    model = build_model(scene, (28, 28, 1), 10)
    apply_layer_lr_scale(scene, model)
    first = model.quant_layers[0]
    expected = np.sqrt((784 + first.kernel.value.shape[1]) / 1.5)
    assert scene.layer_lr_scale == "glorot"
    assert first.kernel.lr_scale == pytest.approx(expected)
    twin = scene.full_precision_twin()
    assert twin.layer_lr_scale == "none"
    # Adam and SGD both scale a parameter's step by its factor
    for opt_cls in (Adam, SGD):
        a = np.array([0.1, -0.2], np.float32)
        ps = []
        for scale in (1.0, 4.0):
            from bnnlab.core.layers import Param
            p = Param("w", a.copy(), np.array([0.3, -0.1], np.float32), lr_scale=scale)
            opt_cls(0.01).step([p])
            ps.append(p.value - a)
        np.testing.assert_allclose(ps[1], 4.0 * ps[0], rtol=1e-5)


def test_averaged_stochastic_passes():
    model = _net(activation="stochastic_sign")
    assert is_stochastic(model) and not is_stochastic(_net())
    x, y = _blobs(400)
    Trainer(model, x, y, optimizer=Adam(0.02), epochs=3, batch_size=32, seed=0,
            telemetry=False, bn_reestimate_batches=4).run()
    res = evaluate_averaged(model, x, y, [1, 2, 8, 32], seed=0)
    assert res.ks == (1, 2, 8, 32)
    # the same seed gives the same answer; averaging more passes helps on this set
    assert evaluate_averaged(model, x, y, [1, 2, 8, 32], seed=0) == res
    assert res.accuracy[-1] >= res.accuracy[0]
    assert res.loss[-1] < res.loss[0]
    det = evaluate_averaged(_net(), x, y, [1, 5])
    assert det.accuracy[0] == det.accuracy[1]
    with pytest.raises(ValueError):
        evaluate_averaged(model, x, y, [0])


def test_smoothed_curve_is_a_debiased_moving_average_across_epochs():
    x, y = _blobs(600)
    tr = Trainer(_net(), x, y, optimizer=Adam(0.01), epochs=2, batch_size=30, seed=0,
                 snapshot_every=1, telemetry=False)
    snaps = list(tr)
    assert len(snaps) == 40
    # recover each batch's loss from the epoch-running means the snapshots also carry
    # (all batches hold 30 examples, so the running mean weighs them equally)
    batch_losses = [s.loss if s.batch == 1 else s.loss * s.batch - snaps[i - 1].loss * (s.batch - 1)
                    for i, s in enumerate(snaps)]
    alpha = 1.0 / smoothing_steps(tr.batches_per_epoch)
    num = den = 0.0
    expect = []
    for v in batch_losses:
        num = (1 - alpha) * num + alpha * v
        den = (1 - alpha) * den + alpha
        expect.append(num / den)
    np.testing.assert_allclose(snaps[-1].history.loss, expect, rtol=1e-9)
    # at the first batch of epoch 2 the curve continues instead of restarting at that batch
    assert snaps[20].history.loss[-1] != pytest.approx(batch_losses[20])


@pytest.mark.parametrize("name, field, value", [
    ("ablation-no-clip", "weight_clip", False),
    ("ablation-stochastic", "activation_binarizer", "stochastic_sign"),
])
def test_ablations_differ_from_quickstart_in_one_setting(name, field, value):
    base, other = load_preset("quickstart"), load_preset(name)
    assert getattr(other, field) == value
    for scene in (base, other):
        scene.name = scene.description = scene.source = ""  # source: the file it came from
        setattr(scene, field, None)
    assert vars(base) == vars(other)
