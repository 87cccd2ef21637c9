"""The fused inference pass against the layer-by-layer one, bit for bit, and the chain
kernels against their NumPy twins and against the engine's own kernels run one by one."""

import numpy as np
import pytest

from bnnlab.core import kernels as K
from bnnlab.core.inference import find_chains
from bnnlab.core.kernels import chains as C
from bnnlab.core.kernels.packing import pack_rows_ref
from bnnlab.core.kernels.sign import sign_pack_ref
from bnnlab.core.model import Sequential

SIGNS = ["ste_sign", "sign", "approx_sign", "swish_sign", {"name": "ste_sign", "clip_value": 1.3}]


def _same_bits(a, b):
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a).view(np.uint32),
                                                 np.ascontiguousarray(b).view(np.uint32))


def _randomize_state(model, rng):
    """Weights, biases and batch-norm numbers spread so that every sign is in play:
    negative gammas, means near the pre-activations, small variances."""
    for layer in model.layers:
        for p in layer.params():
            p.value[...] = rng.normal(0, 1, p.value.shape)
        if hasattr(layer, "moving_mean"):
            c = layer.moving_mean.shape[0]
            layer.moving_mean[...] = rng.normal(0, 4, c)
            layer.moving_variance[...] = rng.uniform(0.01, 30, c)


def _conv_block(rng, binary):
    q = ({"input_quantizer": SIGNS[rng.integers(len(SIGNS))], "kernel_quantizer": "ste_sign"}
         if binary else {})
    layer = {"type": "QuantConv2D" if binary else "Conv2D",
             "filters": int(rng.choice([3, 8, 16, 32, 37, 64, 70])),
             "kernel_size": int(rng.integers(1, 4)), "strides": int(rng.choice([1, 1, 2])),
             "padding": str(rng.choice(["valid", "same"])), "use_bias": bool(rng.random() < 0.5),
             "activation": str(rng.choice(["linear", "relu"])), **q}
    if binary:
        layer["pad_values"] = float(rng.choice([0.0, 1.0, -1.0]))
    return layer


def _random_stack(rng, size=9):
    """A random stack: float or binary convolutions, each followed by some of pooling
    (2x2 or 3x3 windows, any stride), batch norm (any flags) and ReLU, then flatten and
    dense layers with binarized inputs."""
    h = w = size
    layers = []
    for i in range(int(rng.integers(1, 4))):
        layers.append(_conv_block(rng, binary=i > 0 or rng.random() < 0.3))
        k, s, pad = layers[-1]["kernel_size"], layers[-1]["strides"], layers[-1]["padding"]
        h = -(-h // s) if pad == "same" else (h - k) // s + 1
        w = -(-w // s) if pad == "same" else (w - k) // s + 1
        if h < 1 or w < 1:
            return None
        if rng.random() < 0.6 and min(h, w) >= 3:
            p = int(rng.choice([2, 2, 3]))
            st = int(rng.integers(1, p + 1))
            layers.append({"type": "MaxPool2D", "pool_size": p, "strides": st})
            h, w = (h - p) // st + 1, (w - p) // st + 1
        if rng.random() < 0.8:
            layers.append({"type": "BatchNorm", "center": bool(rng.random() < 0.8),
                           "scale": bool(rng.random() < 0.5)})
        if rng.random() < 0.15:
            layers.append({"type": "Activation", "activation": "relu"})
    layers.append({"type": "Flatten"})
    if rng.random() < 0.3:
        layers.append({"type": "BatchNorm"})
    for _ in range(int(rng.integers(0, 3))):
        layers.append({"type": "QuantDense", "units": int(rng.choice([5, 64, 65, 130])),
                       "input_quantizer": SIGNS[rng.integers(len(SIGNS))],
                       "kernel_quantizer": "ste_sign", "use_bias": bool(rng.random() < 0.5)})
        if rng.random() < 0.7:
            layers.append({"type": "BatchNorm"})
    last = ("QuantDense" if rng.random() < 0.5 else "Dense")
    extra = ({"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
             if last == "QuantDense" else {})
    layers.append({"type": last, "units": 7, **extra})
    return layers


def _build(layers, shape, seed):
    model = Sequential.from_config({"input_shape": list(shape), "layers": layers}, seed=seed)
    _randomize_state(model, np.random.default_rng(seed + 1))
    return model


def _check(model, x, rng_seed=None):
    r1 = None if rng_seed is None else np.random.default_rng(rng_seed)
    r2 = None if rng_seed is None else np.random.default_rng(rng_seed)
    fast = model.forward(x, rng=r1)
    plain = model.forward(x, rng=r2, fused=False)
    assert _same_bits(fast, plain), np.abs(fast - plain).max()
    if rng_seed is not None:  # both passes drew the same numbers, in the same order
        assert r1.random() == r2.random()


@pytest.mark.parametrize("seed", range(24))
def test_fused_inference_equals_layer_by_layer_on_random_stacks(seed):
    rng = np.random.default_rng(seed)
    layers = None
    while layers is None:
        size = int(rng.integers(6, 14))
        layers = _random_stack(rng, size)
    shape = (size, size, int(rng.choice([1, 2, 3])))
    model = _build(layers, shape, seed)
    for n in (1, 2, 5, 17):
        x = rng.normal(0, 1, (n, *shape)).astype(np.float32)
        _check(model, x)


def test_the_random_stacks_exercise_every_fused_path():
    """The test above would prove nothing if nothing were fused: count what it meets."""
    seen = {"float conv": 0, "binary conv": 0, "unfused": 0, "pool": 0, "flatten": 0}
    for seed in range(24):
        rng = np.random.default_rng(seed)
        layers = None
        while layers is None:
            size = int(rng.integers(6, 14))
            layers = _random_stack(rng, size)
        model = _build(layers, (size, size, 1), seed)
        for c in find_chains(model).values():
            if c.fused:
                seen["binary conv" if model.layers[c.source].binary else "float conv"] += 1
            else:
                seen["unfused"] += 1
            kinds = [model.layers[j].type_name for j in c.members]
            seen["pool"] += "MaxPool2D" in kinds
            seen["flatten"] += "Flatten" in kinds
    assert min(seen.values()) >= 3, seen


def test_larq_mnist_bnn_is_fused_end_to_end():
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset

    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    _randomize_state(model, np.random.default_rng(3))
    chains = find_chains(model)
    assert sorted(chains) == [3, 6, 9, 11]
    assert [chains[i].fused for i in (3, 6, 9, 11)] == [True, True, True, False]
    assert [model.layers[j].type_name for j in chains[3].members] == ["MaxPool2D", "BatchNorm"]
    rng = np.random.default_rng(4)
    for n in (1, 3, 64):
        _check(model, rng.random((n, 28, 28, 1), dtype=np.float32))


def _graph(kind):
    """A residual block (a binary conv whose output is added to its input's batch norm)
    or two branches concatenated; some outputs are read twice, so not fused."""
    stem = [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "name": "stem"},
            {"type": "MaxPool2D", "pool_size": 2, "name": "pool"},
            {"type": "BatchNorm", "name": "bn0"}]
    q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "use_bias": False}
    if kind == "add":
        body = [{"type": "QuantConv2D", "filters": 8, "kernel_size": 3, "padding": "same",
                 "name": "c1", **q},
                {"type": "BatchNorm", "name": "bn1"},
                {"type": "Add", "inputs": ["bn1", "bn0"], "name": "add"}]
    elif kind == "twice":  # one output read twice by the same layer
        body = [{"type": "Concatenate", "inputs": ["bn0", "bn0"], "name": "cat"}]
    else:
        body = [{"type": "QuantConv2D", "filters": 5, "kernel_size": 3, "padding": "same",
                 "name": "a", "inputs": ["bn0"], **q},
                {"type": "QuantConv2D", "filters": 6, "kernel_size": 1, "name": "b",
                 "inputs": ["bn0"], **q},
                {"type": "BatchNorm", "name": "bnb", "inputs": ["b"]},
                {"type": "Concatenate", "inputs": ["a", "bnb"], "name": "cat"}]
    head = [{"type": "QuantConv2D", "filters": 33, "kernel_size": 2, "name": "c2", **q},
            {"type": "MaxPool2D", "pool_size": 2},
            {"type": "BatchNorm"},
            {"type": "Flatten"},
            {"type": "QuantDense", "units": 10, **q}]
    return stem + body + head


@pytest.mark.parametrize("kind", ["add", "concatenate", "twice"])
def test_fused_inference_equals_layer_by_layer_on_graphs(kind):
    model = _build(_graph(kind), (10, 10, 3), 7)
    assert model.is_graph
    assert any(c.fused for c in find_chains(model).values())
    rng = np.random.default_rng(8)
    for n in (1, 6):
        _check(model, rng.normal(0, 1, (n, 10, 10, 3)).astype(np.float32))


def test_stochastic_binarizers_draw_the_same_numbers_in_the_same_order():
    q = {"input_quantizer": "stochastic_sign", "kernel_quantizer": "ste_sign"}
    layers = [{"type": "QuantConv2D", "filters": 4, "kernel_size": 2,
               "kernel_quantizer": "stochastic_sign"},  # float input: a fused float conv
              {"type": "BatchNorm"},
              {"type": "QuantConv2D", "filters": 8, "kernel_size": 3,
               "input_quantizer": "ste_sign", "kernel_quantizer": "stochastic_sign"},
              {"type": "MaxPool2D"}, {"type": "BatchNorm"},
              {"type": "QuantConv2D", "filters": 16, "kernel_size": 3,
               "input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"},
              {"type": "BatchNorm"}, {"type": "Flatten"},
              {"type": "QuantDense", "units": 20, **q}, {"type": "BatchNorm"},
              {"type": "QuantDense", "units": 4, "input_quantizer": "ste_sign",
               "kernel_quantizer": "stochastic_sign"}]
    model = _build(layers, (13, 13, 2), 3)
    assert [c.fused for c in find_chains(model).values()] == [True, True, False]
    x = np.random.default_rng(0).normal(0, 1, (9, 13, 13, 2)).astype(np.float32)
    for seed in (1, 2):
        _check(model, x, rng_seed=seed)


def _kept(model):
    return dict(model._inference_plan[1].kernels)


def _kept_stack():
    """Binary convolutions with zero 'same' padding (a padding correction), 16 columns and
    more (nibble panels), and binary dense layers of 16 and fewer units."""
    q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
    return [{"type": "Conv2D", "filters": 16, "kernel_size": 3},
            {"type": "MaxPool2D"}, {"type": "BatchNorm"},
            {"type": "QuantConv2D", "filters": 32, "kernel_size": 3, "padding": "same", **q},
            {"type": "BatchNorm"},
            {"type": "QuantConv2D", "filters": 17, "kernel_size": 3, **q},
            {"type": "MaxPool2D"}, {"type": "BatchNorm"}, {"type": "Flatten"},
            {"type": "QuantDense", "units": 16, **q}, {"type": "BatchNorm"},
            {"type": "QuantDense", "units": 5, **q}]


def test_kept_kernels_are_reused_while_the_weights_keep_their_signs():
    model = _build(_kept_stack(), (12, 12, 2), 11)
    x = np.random.default_rng(1).normal(0, 1, (3, 12, 12, 2)).astype(np.float32)
    _check(model, x)
    kept = _kept(model)
    assert sorted(kept) == [3, 5, 9, 11]
    assert kept[3].corr is not None and kept[5].corr is None
    assert kept[3].panels.size == (2 * kept[3].bt.size if K.POPCOUNT_MODE == "csa" else 0)
    _check(model, x)
    assert all(_kept(model)[i] is kept[i] for i in kept)
    for i in kept:  # new magnitudes, the same signs: nothing to make again
        model.layers[i].kernel.value[...] *= 3.0
    _check(model, x)
    assert all(_kept(model)[i] is kept[i] for i in kept)


@pytest.mark.parametrize("change", ["in place", "optimizer step", "checkpoint", "new array"])
def test_kept_kernels_follow_every_change_of_the_weights(change):
    """The fused pass keeps each binary kernel and its panels between calls; when the
    weights change between two evaluations, by any means, the next one must use them.
    (Kept without a check, the second evaluation would give the first one's logits.)"""
    from bnnlab.core.model import softmax_cross_entropy
    from bnnlab.core.optimizers import Bop

    model = _build(_kept_stack(), (12, 12, 2), 12)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (5, 12, 12, 2)).astype(np.float32)
    for n in (1, 5):  # one image (short GEMM calls) and a few
        _check(model, x[:n])
    before = model.forward(x)
    kept = _kept(model)
    binary = [model.layers[i] for i in kept]
    if change == "in place":
        for q in binary:
            w = q.kernel.value.reshape(-1, q.kernel.value.shape[-1])
            w[: w.shape[0] // 2] *= -1
    elif change == "optimizer step":
        for q in binary:
            q.kernel.value[...] = np.where(q.kernel.value >= 0, 1.0, -1.0)
        y = rng.integers(0, 5, 5)
        _, dlogits = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(dlogits)
        Bop(threshold=0.0, gamma=1.0).step([p for _, p in model.params()])
    elif change == "checkpoint":
        model.load_state_dict(_build(_kept_stack(), (12, 12, 2), 13).state_dict())
    else:
        for q in binary:
            q.kernel.value = -q.kernel.value
    flipped = sum(not np.array_equal(kept[i].bt, K.pack_weights(
        np.where(model.layers[i].kernel.value >= 0, 1.0, -1.0).reshape(-1, kept[i].bt.shape[1])))
        for i in kept)
    assert flipped >= 2, "the change must change some kernels' bits"
    after = model.forward(x)
    assert not _same_bits(after, before)
    _check(model, x)
    for n in (1, 2):
        _check(model, x[:n])
    fresh = _build(_kept_stack(), (12, 12, 2), 12)
    fresh.load_state_dict(model.state_dict())
    assert _same_bits(fresh.forward(x), after)
    assert any(_kept(model)[i] is not kept[i] for i in kept)


def test_stochastic_kernels_are_drawn_on_every_call():
    layers = _kept_stack()
    layers[3]["kernel_quantizer"] = "stochastic_sign"
    layers[11]["input_quantizer"] = "stochastic_sign"
    model = _build(layers, (12, 12, 2), 14)
    x = np.random.default_rng(3).normal(0, 1, (4, 12, 12, 2)).astype(np.float32)
    for seed in (1, 2, 3):
        _check(model, x, rng_seed=seed)
    assert 3 not in _kept(model)
    a = model.forward(x, rng=np.random.default_rng(5))
    b = model.forward(x, rng=np.random.default_rng(6))
    assert not _same_bits(a, b)


def test_batch_statistics_mode_and_float_models_take_the_plain_path():
    layers = _graph("add")
    model = _build(layers, (10, 10, 3), 2)
    x = np.random.default_rng(1).normal(0, 1, (4, 10, 10, 3)).astype(np.float32)
    before = find_chains(model)
    for layer in model.layers:
        if hasattr(layer, "inference_batch_stats"):
            layer.inference_batch_stats = True
    assert all(not any(model.layers[j].type_name == "BatchNorm" for j in c.members)
               for c in find_chains(model).values())
    assert find_chains(model) != before
    _check(model, x)
    for layer in model.layers:
        if hasattr(layer, "inference_batch_stats"):
            layer.inference_batch_stats = False
    _check(model, x)  # the cached plan follows the switch back
    flt = _build([{"type": "Conv2D", "filters": 4}, {"type": "MaxPool2D"}, {"type": "Flatten"},
                  {"type": "Dense", "units": 3}], (6, 6, 1), 0)
    assert find_chains(flt) == {}
    _check(flt, np.ones((2, 6, 6, 1), np.float32))


def test_training_forward_is_untouched_by_fusion():
    model = _build(_graph("add"), (10, 10, 3), 5)
    x = np.random.default_rng(2).normal(0, 1, (3, 10, 10, 3)).astype(np.float32)
    a = model.forward(x, training=True, rng=np.random.default_rng(0))
    model2 = _build(_graph("add"), (10, 10, 3), 5)
    b = model2.forward(x, training=True, rng=np.random.default_rng(0), fused=False)
    assert _same_bits(a, b)


# --------------------------------------------------------------------------- kernels


def _awkward(rng, shape):
    z = rng.normal(0, 2, shape).astype(np.float32)
    flat = z.reshape(-1)
    pick = rng.choice(flat.size, size=max(1, flat.size // 20), replace=False)
    flat[pick[::3]] = 0.0
    flat[pick[1::3]] = -0.0
    flat[pick[2::3]] = np.nan
    return z


@pytest.mark.parametrize("n,h,w,c,pool,stride,flat", [
    (1, 5, 5, 1, 0, 0, False), (3, 6, 7, 37, 2, 2, False), (2, 9, 9, 64, 3, 2, False),
    (4, 4, 4, 70, 2, 1, True), (1, 1, 1, 130, 0, 0, False), (5, 3, 3, 8, 0, 0, True),
    (17, 8, 8, 32, 2, 2, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_chain_bits_matches_its_twin(n, h, w, c, pool, stride, flat, threads):
    rng = np.random.default_rng(n * 100 + c)
    z = _awkward(rng, (n, h, w, c))
    if pool:
        z[np.isnan(z)] = 1.5  # pooling is compiled with fastmath: NaN order not kept
    ho, wo = ((h - pool) // stride + 1, (w - pool) // stride + 1) if pool else (h, w)
    a = rng.normal(0, 1, c).astype(np.float32)
    b = rng.normal(0, 1, c).astype(np.float32)
    a[0] = 0.0
    reps = ho * wo if flat else 1
    geo = C.ChainGeometry(h, w, c, pool, stride, np.tile(a, reps), np.tile(b, reps))
    got = C.chain_bits(z, geo, threads=threads)
    want = C.chain_bits_ref(z, pool, stride, np.tile(a, reps), np.tile(b, reps))
    assert got.dtype == np.uint64 and np.array_equal(got, want)
    # and with the engine's kernels one after the other
    y = z
    if pool:
        y = np.empty((n, ho, wo, c), np.float32)
        K.maxpool_forward(z, pool, stride, y)
    y = K.scale_shift(y.reshape(-1, c), a, b)
    y = y.reshape(n, -1) if flat else y.reshape(-1, c)
    assert np.array_equal(got, K.sign_pack(y)[1])


def test_sign_without_batch_norm_keeps_signed_zeros_and_nan():
    z = np.array([[[[0.0, -0.0, np.nan, -1e-38, 1e-45, -np.inf, np.inf, -3.0, 2.0]]]],
                 np.float32)
    ones, zeros = np.ones(9, np.float32), np.zeros(9, np.float32)
    got = C.chain_bits(z, C.ChainGeometry(1, 1, 9, 0, 0, ones, zeros))
    assert np.array_equal(got, sign_pack_ref(z.reshape(1, 9))[1])
    assert np.array_equal(got, pack_rows_ref(np.array([[1, 1, -1, -1, 1, -1, 1, -1, 1]])))


def test_batch_norm_rounds_the_product_before_adding_the_offset():
    """x * a + b as scale_shift computes it: the product rounded to float32, then the sum.
    With b = -round(x * a) where rounding went up, that is exactly 0 (bit 0); a fused
    multiply-add would see the negative exact remainder (bit 1)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, 4096).astype(np.float32)
    a = rng.uniform(1, 2, 4096).astype(np.float32)
    p = x * a
    up = p.astype(np.float64) > x.astype(np.float64) * a.astype(np.float64)
    x, a, b = x[up][:64], a[up][:64], -p[up][:64]
    assert x.size == 64
    got = C.chain_bits(x.reshape(1, 1, 1, 64), C.ChainGeometry(1, 1, 64, 0, 0, a, b))
    assert np.array_equal(got, K.sign_pack(K.scale_shift(x.reshape(1, 64), a, b))[1])
    assert got[0, 0] == 0


def test_chain_geometry_refuses_rows_that_do_not_tile():
    with pytest.raises(ValueError, match="do not tile"):
        C.ChainGeometry(3, 3, 4, 0, 0, np.ones(5, np.float32), np.zeros(5, np.float32))


def _conv_chain_case(rng, n, h, w, c, f, k, stride, padding, pool, bias, relu):
    from bnnlab.core.shapes import conv_output_size

    ho, pt = conv_output_size(h, k, stride, padding)
    wo, pl = conv_output_size(w, k, stride, padding)
    pool = pool if min(ho, wo) >= max(pool, 1) else 0
    pho, pwo = ((ho - pool) // pool + 1, (wo - pool) // pool + 1) if pool else (ho, wo)
    a = rng.normal(0, 1, f).astype(np.float32)
    b = rng.normal(0, 3, f).astype(np.float32)
    geo = C.ChainGeometry(ho, wo, f, pool, pool, a, b)
    bvec = rng.normal(0, 1, f).astype(np.float32) if bias else None
    return (ho, wo, pt, pl, pool, pho, pwo, a, b, geo, bvec)


def _finish(z, bvec, relu, pool, a, b):
    """The layer-by-layer epilogue, pooling, batch norm and sign, with the engine's kernels."""
    n, ho, wo, f = z.shape
    if bvec is not None:
        z += bvec
    if relu:
        z *= z > 0
    if pool:
        p = np.empty((n, (ho - pool) // pool + 1, (wo - pool) // pool + 1, f), np.float32)
        K.maxpool_forward(z, pool, pool, p)
        z = p
    return K.sign_pack(K.scale_shift(z.reshape(-1, f), a, b))[1]


@pytest.mark.parametrize("n,h,w,c,f,k,stride,padding,pool,bias,relu", [
    (1, 7, 7, 1, 16, 3, 1, "valid", 2, False, False),
    (3, 9, 8, 3, 37, 3, 2, "same", 2, True, True),
    (2, 6, 6, 5, 70, 1, 1, "valid", 3, True, False),
    (5, 5, 5, 2, 8, 2, 1, "same", 0, False, True),
    (9, 28, 28, 1, 32, 3, 1, "valid", 2, False, False),
    (3, 10, 10, 3, 32, 3, 2, "same", 2, True, True),
    (2, 9, 9, 2, 48, 2, 1, "same", 2, True, False),
    (2, 8, 8, 8, 64, 3, 1, "valid", 2, True, True)])  # 72 taps: two blocks of K
@pytest.mark.parametrize("threads", [1, 2])
def test_float_conv_chain_matches_the_kernels_one_by_one(n, h, w, c, f, k, stride, padding,
                                                         pool, bias, relu, threads):
    rng = np.random.default_rng(n + h + f)
    x = rng.normal(0, 1, (n, h, w, c)).astype(np.float32)
    wt = rng.normal(0, 1, (k, k, c, f)).astype(np.float32)
    ho, wo, pt, pl, pool, _, _, a, b, geo, bvec = _conv_chain_case(
        rng, n, h, w, c, f, k, stride, padding, pool, bias, relu)
    got = C.float_conv_chain(x, wt, stride, pt, pl, np.float32(0), bvec, relu, geo,
                             threads=threads)
    z = np.empty((n, ho, wo, f), np.float32)
    K.conv_forward_direct(x, wt, stride, pt, pl, np.float32(0), z)
    assert np.array_equal(got, _finish(z, bvec, relu, pool, a, b))


@pytest.mark.parametrize("n,h,w,c,f,k,stride,padding,pad_bit,pool,bias,relu", [
    (1, 6, 6, 32, 64, 3, 1, "valid", 0, 2, False, False),
    (3, 7, 5, 5, 17, 3, 2, "same", 1, 2, True, True),
    (2, 9, 9, 64, 33, 2, 1, "valid", 0, 3, True, False),
    (4, 5, 5, 70, 16, 3, 1, "same", 0, 0, False, True),
    (13, 13, 13, 32, 64, 3, 1, "valid", 0, 2, False, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_binary_conv_chain_matches_the_kernels_one_by_one(n, h, w, c, f, k, stride, padding,
                                                          pad_bit, pool, bias, relu, threads):
    rng = np.random.default_rng(n * 7 + c + f)
    xq = np.where(rng.random((n, h, w, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    wq = np.where(rng.random((k * k * c, f)) < 0.5, -1.0, 1.0).astype(np.float32)
    ho, wo, pt, pl, pool, _, _, a, b, geo, bvec = _conv_chain_case(
        rng, n, h, w, c, f, k, stride, padding, pool, bias, relu)
    pix = pack_rows_ref(xq.reshape(-1, c))
    bt = K.pack_weights(wq)
    corr = rng.integers(-3, 4, (ho * wo, f)).astype(np.float32) if padding == "same" else None
    got = C.binary_conv_chain(pix, n, (h, w, c), (k, k), stride, (pt, pl), pad_bit, bt,
                              k * k * c, corr, bvec, relu, geo, threads=threads)
    a_bits = K.pack_patches_parallel(pix, n, h, w, c, k, k, stride, pt, pl, ho, wo, pad_bit)
    z = np.empty((n * ho * wo, f), np.float32)
    K.xnor_gemm(a_bits, bt, k * k * c, out=z)
    if corr is not None:
        z = z.reshape(n, ho * wo, f)
        z -= corr[None]
    assert np.array_equal(got, _finish(z.reshape(n, ho, wo, f), bvec, relu, pool, a, b))


def test_block_sizes_keep_four_row_groups():
    for pixels in (1, 2, 3, 121, 169, 676, 10000):
        for n in (1, 5, 256):
            b = C.chain_block_images(pixels, 32, n)
            assert 1 <= b <= n
            assert b == n or (b * pixels) % 4 == 0
