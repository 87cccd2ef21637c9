"""The runtime's one-call chain of binary blocks (deploy/runtime_chain.py) against the
NumPy oracle and the block-by-block path, on random models of every block kind, in groups
of any size, and in every popcount mode."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlab.deploy import format as F
from bnnlab.deploy import runtime_chain
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_inputs, random_model_file


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 2, 7]),
       group=st.sampled_from([1, 3, 64]))
def test_chain_matches_the_oracle_and_the_block_path(monkeypatch, seed, n, group):
    monkeypatch.setattr(runtime_chain, "MAX_GROUP", group)
    rng = np.random.default_rng(seed)
    mf = F.decode(F.encode(random_model_file(rng, max_blocks=5)))
    rt = Runtime(mf)
    raw = random_inputs(rng, mf, n)
    want = reference_logits(mf, raw)
    np.testing.assert_array_equal(rt.logits(raw, threads=1), want)
    np.testing.assert_array_equal(rt.logits(raw, threads=2), want)
    np.testing.assert_array_equal(rt.trace(raw)[-1], want)  # the block-by-block path


def _dense_mlp():
    rng = np.random.default_rng(5)
    while True:
        mf = random_model_file(rng, max_blocks=4)
        if len(mf.blocks) >= 3 and mf.blocks[0].kind == "dense" and mf.blocks[0].acc == "float32":
            return mf


def test_chain_is_used_after_a_first_block_it_cannot_hold():
    mf = _dense_mlp()
    rt = Runtime(mf)
    assert rt._lead == 1 and rt._chain is not None and not rt._chain.starts_with_pixels
    raw = random_inputs(np.random.default_rng(1), mf, 5)
    np.testing.assert_array_equal(rt.logits(raw), reference_logits(mf, raw))


def test_larq_mnist_runs_as_one_chain_from_the_pixels():
    from bnnlab.bench import larq_runtime

    rt, _, rng = larq_runtime()
    assert rt._lead == 0 and rt._chain.starts_with_pixels
    raw = rng.integers(0, 256, (9, 28, 28, 1), dtype=np.uint8)
    want = reference_logits(rt.model_file, raw)
    np.testing.assert_array_equal(rt.logits(raw[:1]), want[:1])
    np.testing.assert_array_equal(rt.logits(raw, threads=2), want)
    # A strided view of the pixels is read as it is, not as its buffer.
    wide = np.zeros((9, 28, 56, 1), np.uint8)
    wide[:, :, ::2] = raw
    np.testing.assert_array_equal(rt.logits(wide[:, :, ::2]), want)


MODES = textwrap.dedent("""
    import json
    import numpy as np
    from bnnlab.core.kernels import POPCOUNT_MODE
    from bnnlab.deploy import format as F
    from bnnlab.deploy.reference import reference_logits
    from bnnlab.deploy.runtime import Runtime
    from bnnlab.deploy.samples import random_inputs, random_model_file
    bad, chains = [], 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        mf = F.decode(F.encode(random_model_file(rng, max_blocks=5)))
        rt = Runtime(mf)
        chains += rt._chain is not None
        raw = random_inputs(rng, mf, 3)
        if not np.array_equal(rt.logits(raw, threads=1), reference_logits(mf, raw)):
            bad.append(seed)
    print(json.dumps({"mode": POPCOUNT_MODE, "bad": bad, "chains": chains}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bytes", "csa", "lanes"])
def test_chain_matches_the_oracle_in_every_popcount_mode(mode, tmp_path):
    # A fresh process per mode (the mode is fixed at import), with bounds checks on.
    env = dict(os.environ, BNNLAB_POPCOUNT=mode, NUMBA_BOUNDSCHECK="1",
               NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run([sys.executable, "-c", MODES], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["mode"] == mode and got["bad"] == [] and got["chains"] >= 20


def test_chain_scratch_stays_within_what_the_memory_limit_counts():
    # runtime_cost counts CHAIN_SCRATCH_BYTES (or one image's scratch when that is more)
    # for the chain; a group never needs more, on random stacks and on a wide one.
    from bnnlab.deploy.limits import CHAIN_SCRATCH_BYTES, chain_image_bytes

    from bnnlab.core.layers import BatchNorm, Flatten, QuantConv2D, QuantDense
    from bnnlab.core.model import Sequential
    from bnnlab.deploy.fold import fold_model

    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    # 512 channels into 16 filters: long patches and few accumulators, so the group the
    # accumulators alone allow (40 images) would need 3.3 MB of scratch.
    wide = Sequential([QuantConv2D(512, 1, kernel_quantizer="ste_sign"), BatchNorm(),
                       QuantConv2D(16, 3, **binary), BatchNorm(), Flatten(),
                       QuantDense(10, **binary), BatchNorm()], (12, 12, 3), seed=0)
    models = [fold_model(wide, F.InputSpec((12, 12, 3), "uint8", float(np.float32(1 / 255)), 0.0))]
    rng = np.random.default_rng(11)
    models += [F.decode(F.encode(random_model_file(rng, max_blocks=5))) for _ in range(60)]
    checked = capped = 0
    for mf in models:
        chain = Runtime(mf)._chain
        if chain is None:
            continue
        x16, act, pbuf, zbuf, accbuf, _ = chain._sizes
        per_image = 2 * x16 + 8 * (2 * act + pbuf) + 4 * (zbuf + accbuf)
        assert per_image <= chain_image_bytes(mf.blocks)
        assert chain.group * per_image <= max(CHAIN_SCRATCH_BYTES, per_image)
        capped += (runtime_chain._CHUNK_BYTES // (4 * zbuf)) * per_image > CHAIN_SCRATCH_BYTES
        checked += 1
    assert checked >= 20 and capped >= 1
