"""Both ways of counting bits in the binary GEMM, whatever this CPU would pick.

The kernels choose at import time between per-byte counts (plain, or after Harley-Seal
carry-save adders: AVX2 and older) and per-lane ``vpopcntq`` (AVX-512 VPOPCNTDQ). Both are plain LLVM vector operations, so
each runs correctly on any x86-64 CPU; here each is forced in a fresh process with an
empty Numba cache and compared with the integer dot product. A second check compiles
(without running) the kernel for a Zen 4 CPU and looks for ``vpopcntq`` in its assembly.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="the popcount modes are x86-64 code paths")

CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bnnlab.core import kernels as K
    from bnnlab.core.kernels import packing, xnor
    bad = []
    for m, k, n in [(1, 1, 1), (7, 65, 17), (33, 288, 64), (129, 100, 33), (3, 2500, 20),
                    (2, 4096, 16), (1, 8257, 17), (515, 130, 20), (1, 1100, 16), (4, 1031, 48),
                    (40, 576, 64)]:
        rng = np.random.default_rng(m + k + n)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        abits = packing.pack_rows_ref(a)
        bt = np.ascontiguousarray(packing.pack_rows_ref(b.T).T)
        want = xnor.binary_dot_ref(a, b)
        for parallel in (False, True):
            out = np.full((m, n), 7, np.int32)
            K.xnor_gemm(abits, bt, k, out=out, parallel=parallel)
            if not np.array_equal(out, want):
                bad.append([m, k, n, parallel])
        # Harley-Seal counting forced on every row length (1: even one word), in this
        # mode's popcount.
        for csa in (0, 1, 8, 16):
            out = np.full((m, n), 7, np.int32)
            xnor.xnor_gemm_serial(abits, bt, np.int64(k), out, np.int64(csa))
            if not np.array_equal(out, want):
                bad.append([m, k, n, "csa", csa])
        # The split-nibble count of short rows forced on (1) and off (0), in this mode.
        for nib in (0, 1):
            out = np.full((m, n), 7, np.int32)
            xnor.xnor_gemm_serial(abits, bt, np.int64(k), out, np.int64(32), np.int64(nib))
            if not np.array_equal(out, want):
                bad.append([m, k, n, "nib", nib])
        # Panels made beforehand (the runtime's GEMM): forced, as this mode makes them,
        # and none.
        for bp in (xnor.nibble_panels(bt, n // 16 * 16), xnor.gemm_panels(bt),
                   np.zeros(0, np.uint64)):
            out = np.full((m, n), 7, np.int32)
            xnor.xnor_gemm_prepared(abits, bt, bp, np.int64(k), out)
            if not np.array_equal(out, want):
                bad.append([m, k, n, "prepared", int(bp.size)])
            for parallel in (False, True):
                got = K.xnor_gemm(abits, bt, k, parallel=parallel, threads=2, panels=bp)
                if not np.array_equal(got, want):
                    bad.append([m, k, n, "prepared", int(bp.size), parallel])
    # The fused inference pass (its binary chains call the GEMM on blocks of rows, short
    # and long) against the layer-by-layer one, in this mode.
    from bnnlab.core.model import Sequential
    q = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign"}
    model = Sequential.from_config({"input_shape": [9, 9, 2], "layers": [
        {"type": "Conv2D", "filters": 16, "kernel_size": 2}, {"type": "MaxPool2D"},
        {"type": "BatchNorm"}, {"type": "QuantConv2D", "filters": 70, "kernel_size": 3, **q},
        {"type": "BatchNorm"}, {"type": "Flatten"},
        {"type": "QuantDense", "units": 5, **q}]}, seed=3)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean[...] = rng.normal(0, 2, layer.moving_mean.shape)
    for n in (1, 40):
        x = rng.normal(0, 1, (n, 9, 9, 2)).astype(np.float32)
        if not np.array_equal(model.forward(x), model.forward(x, fused=False)):
            bad.append(["fused inference", n])
    # The kernels it keeps follow the weights: every binary kernel's signs flipped in place
    # between two evaluations.
    first = model.forward(x)
    for layer in model.layers:
        if getattr(layer, "binary", False):
            layer.kernel.value[...] *= -1
    after = model.forward(x)
    if np.array_equal(after, first) or not np.array_equal(after, model.forward(x, fused=False)):
        bad.append(["kept kernels"])
    print(json.dumps({"mode": K.POPCOUNT_MODE, "bad": bad}))
""")


def _run(code, env_extra, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), **env_extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bytes", "csa", "lanes"])
def test_each_popcount_mode_matches_integer_dot(mode, tmp_path):
    got = _run(CHECK, {"BNNLAB_POPCOUNT": mode}, tmp_path)
    assert got == {"mode": mode, "bad": []}


def test_unknown_popcount_mode_is_refused(tmp_path):
    env = dict(os.environ, BNNLAB_POPCOUNT="fast", NUMBA_CACHE_DIR=str(tmp_path / "c"))
    proc = subprocess.run([sys.executable, "-c", "import bnnlab.core.kernels"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "BNNLAB_POPCOUNT must be auto, bytes, csa or lanes" in proc.stderr


ASM = textwrap.dedent("""
    import json
    from numba import types
    from bnnlab.core import kernels as K
    sig = (types.Array(types.uint64, 2, "C"), types.Array(types.uint64, 2, "C"), types.int64,
           types.Array(types.int32, 2, "C"), types.int64, types.int64)
    K.xnor_gemm_serial.compile(sig)
    asm = K.xnor_gemm_serial.inspect_asm(sig)
    print(json.dumps({"mode": K.POPCOUNT_MODE, "vpopcntq": asm.count("vpopcntq"),
                      "vpshufb": asm.count("vpshufb")}))
""")


@pytest.mark.slow
def test_lanes_mode_compiles_to_vpopcntq_on_zen4(tmp_path):
    # Compiled for another CPU and never called: this machine may lack AVX-512.
    got = _run(ASM, {"BNNLAB_POPCOUNT": "lanes", "NUMBA_CPU_NAME": "znver4",
                     "NUMBA_CPU_FEATURES": ""}, tmp_path)
    assert got["mode"] == "lanes"
    assert got["vpopcntq"] > 0


CACHING = textwrap.dedent("""
    import json
    from numba.core.caching import NullCache
    from bnnlab.core.kernels import jit, xnor
    from bnnlab.deploy import runtime_chain, runtime_kernels
    from numba.core.registry import CPUDispatcher
    disps = [v for m in (xnor, runtime_kernels, runtime_chain) for v in vars(m).values()
             if isinstance(v, CPUDispatcher)]
    print(json.dumps({"mode": jit.POPCOUNT_MODE, "auto": jit.automatic_popcount_mode(),
                      "cached": sorted({not isinstance(d._cache, NullCache) for d in disps})}))
""")


def test_only_the_automatic_mode_uses_the_disk_cache(tmp_path):
    """A kernel compiled in one popcount mode must never be loaded from disk in another:
    the mode is a constant inside the compiled code and Numba's cache does not know it."""
    auto = _run(CACHING, {}, tmp_path)
    assert auto["mode"] == auto["auto"] and auto["cached"] == [True]
    other = "bytes" if auto["auto"] != "bytes" else "lanes"
    forced = _run(CACHING, {"BNNLAB_POPCOUNT": other}, tmp_path)
    assert forced["mode"] == other and forced["cached"] == [False]
    same = _run(CACHING, {"BNNLAB_POPCOUNT": auto["auto"]}, tmp_path)
    assert same["cached"] == [True]


METHOD = textwrap.dedent("""
    import json
    from bnnlab.core.kernels.roofline import popcount_method
    from bnnlab.core.kernels.simd import HOST_FEATURES
    print(json.dumps({"method": popcount_method(),
                      "vpopcntdq": bool(HOST_FEATURES.get("avx512vpopcntdq"))}))
""")


def test_forced_lanes_mode_does_not_claim_vpopcntq_the_cpu_lacks(tmp_path):
    # bench prints this method beside its roofline: on a CPU without VPOPCNTDQ the
    # forced per-lane count runs as LLVM spells it there, not as vpopcntq.
    got = _run(METHOD, {"BNNLAB_POPCOUNT": "lanes"}, tmp_path)
    if got["vpopcntdq"]:
        assert "vpopcntq" in got["method"] and "forced" not in got["method"]
    else:
        assert "forced on a CPU without AVX-512 VPOPCNTDQ" in got["method"]
        assert "not vpopcntq" in got["method"]
