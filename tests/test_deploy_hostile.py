"""Hostile and careless inputs to the deploy side: strings that try to become C code, valid
files that ask for unbounded memory or time or overflow int32, non-finite weights, and
the random-model agreement of the C export, the runtime and the engine."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlab.core.layers import BatchNorm, Flatten, MaxPool2D, QuantConv2D, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.app.opening import OpenError, open_any
from bnnlab.deploy import ExportError, ModelFileError, load_runtime
from bnnlab.deploy import format as F
from bnnlab.deploy.cexport import export_c, generate_c
from bnnlab.deploy.fold import fold_model
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_inputs, random_model_file

MAKE = shutil.which("make") and shutil.which("gcc")
needs_make = pytest.mark.skipif(not MAKE, reason="make and gcc are needed")
BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def make_and_run(mf, raw, folder):
    """Export, build with the shipped Makefile (-Werror), run the demo: its predictions."""
    export_c(mf, folder)
    subprocess.run(["make", "-s"], cwd=folder, check=True, capture_output=True, text=True)
    data = folder / "inputs.bin"
    np.ascontiguousarray(raw, np.uint8 if mf.input.encoding == "uint8" else "<f4").tofile(data)
    res = subprocess.run([str(folder / "bnn_demo"), str(data)], cwd=folder, check=True,
                         capture_output=True, text=True)
    return res, np.array([int(v) for v in res.stdout.split()])


def mlp(units=16, seed=1):
    return Sequential([QuantDense(units, kernel_quantizer="ste_sign"), BatchNorm(),
                       QuantDense(2, **BIN), BatchNorm()], (2,), seed=seed)


# --------------------------------------------------------------------------- C injection

ATTACK = ('*/\n#include <stdlib.h>\n__attribute__((constructor)) static void pwn(void) '
          '{ system("touch PWNED"); }\n/*')
NASTY = st.lists(st.sampled_from(["*/", "/*", "\\", "\n", "\r", "??/", "??=", "\"", "'", "\0",
                                  "é", "\u202e", "😀", "#include <stdio.h>", "%s", "a", " "]),
                 max_size=8).map("".join)


def _names_program(folder, n):
    """A C program printing every class name's bytes in hex, one name a line."""
    (folder / "names.c").write_text(textwrap.dedent(f"""
        #include <stdio.h>
        #include "bnn_model.h"
        int main(void) {{
            int i;
            for (i = 0; i < {n}; i++) {{
                const unsigned char *p = (const unsigned char *)bnn_class_names[i];
                while (*p) {{ printf("%02x", *p++); }}
                printf("\\n");
            }}
            return 0;
        }}
        """))
    exe = folder / "names"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                    str(folder / "names.c"), str(folder / "bnn_model.c")], check=True,
                   capture_output=True, text=True, cwd=folder)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [bytes.fromhex(line) for line in out.splitlines()]


@needs_make
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=NASTY, classes=st.lists(NASTY, min_size=2, max_size=2))
def test_strings_never_become_c_code(tmp_path_factory, name, classes):
    folder = tmp_path_factory.mktemp("inject")
    base = fold_model(mlp())
    classes = [c.replace("\0", "") for c in classes]  # a C string cannot hold NUL (see below)
    mf = F.ModelFile(base.input, base.blocks, tuple(classes), {"name": ATTACK + name})
    raw = np.random.default_rng(0).normal(0, 1, (50, 2)).astype(np.float32)
    res, pred = make_and_run(mf, raw, folder / "c")
    np.testing.assert_array_equal(pred, Runtime(mf).predict(raw))
    assert res.stderr == "" and not (folder / "c" / "PWNED").exists()
    assert sorted(os.listdir(folder / "c")) == ["Makefile", "bnn_demo", "bnn_entry.c",
                                                 "bnn_model.c", "bnn_model.h", "inputs.bin", "main.c"]
    assert _names_program(folder / "c", 2) == [c.encode() for c in classes]


def test_generated_sources_are_plain_ascii_without_comment_breaks():
    base = fold_model(mlp())
    mf = F.ModelFile(base.input, base.blocks, ("a*/b", "??/"), {"name": ATTACK + "??/\\\n"})
    files, _ = generate_c(mf)
    header = files["bnn_model.h"]
    comment = header[:header.index("*/")]
    assert "#include <stdlib.h>" not in header.split("*/", 1)[1]
    assert "\n__attribute__" not in comment and "??" not in header
    for text in files.values():
        text.encode("ascii")
        assert "system(" not in text


def test_a_nul_in_a_class_name_is_refused_for_c():
    base = fold_model(mlp())
    mf = F.ModelFile(base.input, base.blocks, ("a\0b", "c"), {})
    with pytest.raises(ModelFileError, match="NUL"):
        generate_c(mf)


# --------------------------------------------------------------------------- builds and agreement


@needs_make
@pytest.mark.parametrize("units", [16, 64])
def test_two_layer_binary_mlp_builds_with_its_makefile(tmp_path, units):
    # gcc 12 saw thr[f] / sgn[f] read through a NULL pointer once the kernel was inlined.
    mf = fold_model(mlp(units))
    raw = np.random.default_rng(1).normal(0, 1, (100, 2)).astype(np.float32)
    _, pred = make_and_run(mf, raw, tmp_path / "c")
    np.testing.assert_array_equal(pred, Runtime(mf).predict(raw))


@needs_make
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_models_build_and_match_the_runtime(tmp_path_factory, seed):
    rng = np.random.default_rng(seed)
    mf = random_model_file(rng)
    raw = random_inputs(rng, mf, 100)
    _, pred = make_and_run(mf, raw, tmp_path_factory.mktemp("rand") / "c")
    np.testing.assert_array_equal(pred, Runtime(mf).predict(raw, threads=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_models_runtime_matches_the_oracle(seed):
    rng = np.random.default_rng(seed)
    mf = F.decode(F.encode(random_model_file(rng)))
    raw = random_inputs(rng, mf, 7)
    np.testing.assert_array_equal(Runtime(mf).logits(raw, threads=1), reference_logits(mf, raw))


# --------------------------------------------------------------------------- int32 accumulators


def _big_raw_block_file(k_side=3000):
    """A valid-looking dense block on raw uint8 pixels: 255 * K beyond 2**31."""
    spec = F.InputSpec((k_side, k_side, 1), "uint8", float(np.float32(1 / 255)), 0.0)
    k = k_side * k_side
    b = F.Block(kind="dense", input="raw", kernel="bits", acc="int32", output="logits",
                in_shape=(k_side, k_side, 1), out_channels=1,
                kernel_data=np.zeros(-(-k // 8), np.uint8),
                scale=np.ones(1, np.float32), offset=np.zeros(1, np.float32))
    return F.ModelFile(spec, (b,))


def test_int32_accumulator_overflow_is_refused_everywhere(tmp_path):
    mf = _big_raw_block_file()
    assert F.accumulator_bound(mf.blocks[0]) == 255 * 9_000_000 > F.ACC_LIMIT
    with pytest.raises(ModelFileError, match="int32 accumulator can reach"):
        F.encode(mf)
    with pytest.raises(ModelFileError, match="int32 accumulator can reach"):
        generate_c(mf)
    with pytest.raises(ModelFileError, match="int32 accumulator can reach"):
        Runtime(mf)
    # A file written by a careless tool: the reader refuses it, naming the file.
    blob = _raw_encode(mf)
    path = tmp_path / "overflow.bnn"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError, match=r"overflow\.bnn: block 0: the int32 accumulator"):
        load_runtime(path)


def _raw_encode(mf):
    """encode() without validation, to build files the writer would refuse."""
    saved = F.validate
    try:
        F.validate = lambda m: None
        return F.encode(mf)
    finally:
        F.validate = saved


# --------------------------------------------------------------------------- runtime limits


def _padded_conv_file(side=3000, k=255):
    """8 KB: a raw 1x1 conv, then a k x k binary conv with zero padding on a side x side map."""
    spec = F.InputSpec((side, side, 1), "uint8", float(np.float32(1 / 255)), 0.0)
    b0 = F.Block(kind="conv2d", input="raw", kernel="bits", acc="int32", output="bits",
                 in_shape=(side, side, 1), out_channels=1, kernel_data=np.zeros(1, np.uint8),
                 modes=np.zeros(1, np.uint8), thresholds=np.zeros(1, np.int32))
    pad = k - 1
    b1 = F.Block(kind="conv2d", input="bits", kernel="bits", acc="int32", output="logits",
                 in_shape=(side, side, 1), out_channels=1,
                 kernel_data=np.zeros(-(-k * k // 8), np.uint8), kernel_size=(k, k),
                 pads=(pad, pad, pad, pad), pad_value=0, pool=(k, k),
                 scale=np.ones(1, np.float32), offset=np.zeros(1, np.float32))
    return F.ModelFile(spec, (b0, b1))


def test_runtime_refuses_a_small_file_that_needs_terabytes(tmp_path):
    path = tmp_path / "huge.bnn"
    F.write_file(path, _padded_conv_file())
    assert path.stat().st_size < 9000
    for load in (load_runtime, open_any):
        with pytest.raises((ModelFileError, OpenError)) as err:
            load(path)
        msg = str(err.value)
        assert msg.startswith(str(path)) and "MiB" in msg and "\n" not in msg
        assert "BNNLAB_MAX_RUNTIME_MEMORY" in msg
    from bnnlab.deploy.limits import runtime_cost

    assert runtime_cost(F.read_file(path)).memory > 1 << 40


def test_work_per_input_is_limited_and_the_limits_can_be_raised(tmp_path, monkeypatch):
    mf = fold_model(mlp(64))
    path = tmp_path / "m.bnn"
    F.write_file(path, mf)
    with pytest.raises(ModelFileError, match="operations"):
        Runtime(mf, max_work=10)
    monkeypatch.setenv("BNNLAB_MAX_RUNTIME_WORK", "10")
    with pytest.raises(ModelFileError, match=r"m\.bnn: .*BNNLAB_MAX_RUNTIME_WORK"):
        load_runtime(path)
    monkeypatch.setenv("BNNLAB_MAX_RUNTIME_WORK", "1G")
    monkeypatch.setenv("BNNLAB_MAX_RUNTIME_MEMORY", "1K")
    with pytest.raises(ModelFileError, match="MiB"):
        load_runtime(path)
    monkeypatch.setenv("BNNLAB_MAX_RUNTIME_MEMORY", "lots")
    with pytest.raises(ModelFileError, match="not a size"):
        load_runtime(path)
    monkeypatch.delenv("BNNLAB_MAX_RUNTIME_MEMORY")
    assert load_runtime(path).predict(np.zeros((1, 2), np.float32)).shape == (1,)


_RLIMIT_CHILD = r"""
import os, resource, sys
import numpy as np
from bnnlab.deploy.runtime import Runtime, load_runtime
from bnnlab.deploy import format as F
path, limit_mb = sys.argv[1], int(sys.argv[2])
Runtime(F.read_file(path)).logits(np.zeros((1, *F.read_file(path).input.shape), np.uint8), threads=1)
def vm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm() + (limit_mb << 20), resource.RLIM_INFINITY))
rt = load_runtime(path)
rt.logits(np.zeros((1, *rt.input.shape), np.uint8), threads=1)
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_reading_and_running_a_small_model_needs_little_address_space(tmp_path):
    # read_file once reserved 256 MiB for any file (f.read(MAX + 1)).
    model = Sequential([QuantConv2D(6, 3, kernel_quantizer="ste_sign", use_bias=False),
                        MaxPool2D(2), BatchNorm(), QuantConv2D(8, 3, padding="same", **BIN),
                        BatchNorm(), Flatten(), QuantDense(5, **BIN), BatchNorm()], (10, 10, 1))
    path = tmp_path / "m.bnn"
    F.write_file(path, fold_model(model))
    assert path.stat().st_size < 8192
    res = subprocess.run([sys.executable, "-c", _RLIMIT_CHILD, str(path), "64"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# --------------------------------------------------------------------------- bad arrays


@pytest.mark.parametrize("layer,key,value", [
    (0, "kernel", np.nan),
    (1, "moving_variance", np.inf),
    (2, "kernel", np.inf),
])
def test_export_refuses_non_finite_arrays(layer, key, value):
    model = mlp()
    model.layers[layer].state()[key][...] = value
    with pytest.raises(ExportError, match="NaN or infinity"):
        fold_model(model)


def test_checkpoints_with_non_finite_or_complex_arrays_are_refused(tmp_path):
    from bnnlab.io.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "m.npz"
    save_checkpoint(path, mlp())
    z = dict(np.load(path))
    key = next(k for k in z if k.endswith("kernel"))
    for bad, match in ((np.full_like(z[key], np.nan), "NaN"),
                       (z[key].astype(np.complex64) * 1j, "complex")):
        np.savez(tmp_path / "bad.npz", **{**z, key: bad})
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- engine model


def test_engine_model_agrees_with_runtime_for_negative_input_scale_with_pooling(tmp_path):
    layers = [QuantConv2D(8, 3, kernel_quantizer="ste_sign", use_bias=False), MaxPool2D(2),
              BatchNorm(), QuantConv2D(4, 3, **BIN), BatchNorm(), MaxPool2D(2)]
    model = Sequential([*layers, Flatten(), QuantDense(5, **BIN), BatchNorm()], (14, 14, 1), seed=3)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            layer.moving_mean[:] = rng.normal(0, 2, layer.channels)
            layer.beta.value[:] = rng.normal(0, 1, layer.channels)
    spec = F.InputSpec((14, 14, 1), "uint8", float(np.float32(-2 / 255)), 1.0)  # inverted pixels
    mf = fold_model(model, spec)
    assert mf.blocks[0].acc == "int32" and mf.blocks[0].pool[0]
    path = tmp_path / "neg.bnn"
    F.write_file(path, mf)
    raw = rng.integers(0, 256, (300, 14, 14, 1)).astype(np.uint8)
    x = raw.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    from bnnlab.deploy.unfold import model_from_file

    engine = model_from_file(F.read_file(path)).predict_logits(x).argmax(1)
    runtime = load_runtime(path).predict(raw)
    assert np.mean(engine == runtime) >= 0.99


_COST_CHILD = r"""
import os, resource, sys
import numpy as np
from bnnlab.deploy import format as F
from bnnlab.deploy.limits import runtime_cost
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_inputs
def vm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
for path in sys.argv[1:]:
    mf = F.read_file(path)
    raw = random_inputs(np.random.default_rng(0), mf, 1)
    Runtime(mf, max_memory=1 << 40).logits(raw, threads=1)  # compile or load the kernels
    cost = runtime_cost(mf).memory
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm() + cost + (1 << 20), hard))
    try:
        Runtime(mf, max_memory=1 << 40).logits(raw, threads=1)
    except MemoryError:
        print("over", path, cost)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print("done")
"""


def _larger_models():
    """Models whose buffers are megabytes: padding tables, im2col rows, float first layers."""
    pad0 = dict(padding="same", pad_values=0.0)
    return [
        (Sequential([QuantConv2D(32, 5, kernel_quantizer="ste_sign", use_bias=False), BatchNorm(),
                     QuantConv2D(64, 5, **pad0, **BIN), BatchNorm(), MaxPool2D(2),
                     QuantConv2D(64, 3, **pad0, **BIN), BatchNorm(), Flatten(),
                     QuantDense(10, **BIN), BatchNorm()], (96, 96, 3), seed=0), "uint8"),
        (Sequential([QuantConv2D(48, 3, **pad0, use_bias=False), BatchNorm(), MaxPool2D(2),
                     QuantConv2D(40, 7, **pad0, **BIN), BatchNorm(), Flatten(),
                     QuantDense(3, **BIN), BatchNorm()], (80, 80, 2), seed=1), "float32"),
        (Sequential([Flatten(), QuantDense(2048, kernel_quantizer="ste_sign"), BatchNorm(),
                     QuantDense(1024, **BIN), BatchNorm(), QuantDense(10, **BIN), BatchNorm()],
                    (64, 64, 3), seed=2), "uint8"),
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_runtime_cost_bounds_what_the_runtime_allocates(tmp_path):
    """Each model runs under an address-space limit of its computed cost (plus 1 MiB)."""
    paths = []
    for i, (model, enc) in enumerate(_larger_models()):
        shape = model.input_shape
        spec = F.InputSpec(shape, enc, float(np.float32(1 / 255)) if enc == "uint8" else 1.0, 0.0)
        paths.append(tmp_path / f"m{i}.bnn")
        F.write_file(paths[-1], fold_model(model, spec))
    rng = np.random.default_rng(5)
    for i in range(20):
        paths.append(tmp_path / f"r{i}.bnn")
        F.write_file(paths[-1], random_model_file(rng))
    # glibc maps large blocks on their own and unmaps them when freed, so each allocation
    # meets the limit rather than reusing memory freed before.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
           "MALLOC_TOP_PAD_": "0"}
    res = subprocess.run([sys.executable, "-c", _COST_CHILD, *map(str, paths)], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0 and res.stdout.strip().endswith("done"), res.stderr[-2000:]
    assert "over" not in res.stdout, res.stdout


@needs_make
def test_constant_channels_stay_constant_on_non_finite_accumulators(tmp_path):
    # Found by benchmarks/fuzz_models.py: 0 * inf is NaN, which failed "always +1".
    spec = F.InputSpec((3,), "float32", 1.0, 0.0)
    modes = np.array([F.MODE_PLUS, F.MODE_MINUS, F.MODE_GE, F.MODE_LE] * 2, np.uint8)
    b0 = F.Block(kind="dense", input="raw", kernel="float32", acc="float32", output="bits",
                 in_shape=(1, 1, 3), out_channels=8,
                 kernel_data=np.array([[1, 1, 1], [1, -1, 0]] * 4, np.float32),
                 modes=modes, thresholds=np.zeros(8, np.float32))
    b1 = F.Block(kind="dense", input="bits", kernel="bits", acc="int32", output="logits",
                 in_shape=(1, 1, 8), out_channels=8, kernel_data=F.pack_signs(np.eye(8) * 2 - 1),
                 scale=np.arange(1, 9, dtype=np.float32), offset=np.zeros(8, np.float32))
    mf = F.ModelFile(spec, (b0, b1))
    raw = np.array([[np.inf, 1, 2], [-np.inf, np.inf, 0], [np.nan, 0, 0], [1, 2, 3]], np.float32)
    want = reference_logits(mf, raw)
    got = Runtime(mf).logits(raw, threads=1)
    np.testing.assert_array_equal(got, want)
    bits = Runtime(mf).trace(raw)[0]
    assert (bits[:, 0::4] == 1).all() and (bits[:, 1::4] == -1).all()
    _, pred = make_and_run(mf, raw, tmp_path / "c")
    np.testing.assert_array_equal(pred, want.argmax(1))


@needs_make
def test_a_nan_in_a_pool_window_pools_to_nan_everywhere(tmp_path):
    # Found by benchmarks/fuzz_models.py: max-pooling with NaN depended on the tap order.
    spec = F.InputSpec((4, 4, 1), "float32", 1.0, 0.0)
    rng = np.random.default_rng(0)
    modes = np.array([F.MODE_GE, F.MODE_LE, F.MODE_GE, F.MODE_LE, F.MODE_PLUS], np.uint8)
    b0 = F.Block(kind="conv2d", input="raw", kernel="float32", acc="float32", output="bits",
                 in_shape=(4, 4, 1), out_channels=5, kernel_size=(1, 1), pool=(2, 2),
                 kernel_data=np.array([[1], [1], [-1], [-1], [1]], np.float32),
                 modes=modes, thresholds=np.array([0.5, 0.5, -0.5, -0.5, 0], np.float32))
    b1 = F.Block(kind="dense", input="bits", kernel="bits", acc="int32", output="logits",
                 in_shape=(2, 2, 5), out_channels=6,
                 kernel_data=F.pack_signs(rng.choice([-1, 1], 6 * 20)),
                 scale=np.arange(1, 7, dtype=np.float32), offset=np.zeros(6, np.float32))
    mf = F.ModelFile(spec, (b0, b1))
    raw = rng.normal(0, 1, (64, 4, 4, 1)).astype(np.float32)
    for n in range(64):  # NaNs at every position of the first window, alone or with others
        raw[n].reshape(-1)[[0, 1, 4, 5][n % 4]] = np.nan
        if n >= 32:
            raw[n].reshape(-1)[rng.integers(16)] = np.nan
    want = reference_logits(mf, raw)
    np.testing.assert_array_equal(Runtime(mf).logits(raw, threads=1), want)
    _, pred = make_and_run(mf, raw, tmp_path / "c")
    np.testing.assert_array_equal(pred, want.argmax(1))
