"""The generated C: it compiles with strict flags, and predicts what the runtime predicts."""

import shutil
import subprocess

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.core.layers import BatchNorm, Conv2D, Flatten, MaxPool2D, QuantConv2D, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.data import load_dataset
from bnnlab.deploy import read_file
from bnnlab.deploy.cbuild import build_c, measure
from bnnlab.deploy.cexport import export_c, generate_c
from bnnlab.deploy.fold import fold_model, input_spec_for
from bnnlab.deploy.larq_import import import_larq
from bnnlab.deploy.runtime import Runtime

LARQ = "/work/shared/testdata/larq"
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")
BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def c_logits(mf, raw, tmp_path):
    """Build the C demo and run it on raw inputs; returns its predicted classes."""
    out = tmp_path / "c"
    export_c(mf, out)
    exe = build_c(out)  # -std=c99 -Wall -Wextra -Werror -O2; raises on any warning
    data = tmp_path / "inputs.bin"
    np.ascontiguousarray(raw, np.uint8 if mf.input.encoding == "uint8" else "<f4").tofile(data)
    res = subprocess.run([str(exe), str(data)], capture_output=True, text=True, check=True)
    return np.array([int(v) for v in res.stdout.split()])


@needs_gcc
def test_larq_mnist_model_in_c_matches_runtime(tmp_path):
    mf = fold_model(import_larq(f"{LARQ}/larq_mnist_bnn.h5"), class_names=list("0123456789"))
    z = np.load(f"{LARQ}/predictions.npz")
    raw = z["images"][..., None]
    got = c_logits(mf, raw, tmp_path)
    want = Runtime(mf).predict(raw)
    assert len(got) == 500
    np.testing.assert_array_equal(got, want)
    sizes = measure(tmp_path / "c", "host")
    # 93,088 weight bits = 11,636 bytes, plus first-layer word padding, thresholds and scales
    assert 12_000 < sizes["rodata"] < 13_500
    # the two activation buffers, the 28x28 uint8 input and 10 float logits, aligned
    assert 876 + 784 + 40 <= sizes["bss"] < 2_000


@needs_gcc
def test_trained_toy_model_float_first_layer(tmp_path):
    bnn = tmp_path / "xor.bnn"
    assert main(["train", "toy-xor", "--epochs", "3", "--out", str(bnn), "--json"]) == 0
    mf = read_file(bnn)
    assert mf.blocks[0].acc == "float32" and mf.input.encoding == "float32"
    x = load_dataset("xor", seed=0).x_test
    got = c_logits(mf, x, tmp_path)
    np.testing.assert_array_equal(got, Runtime(mf).predict(x))


def _random_net(pad, pool_first, seed):
    head = [MaxPool2D(2), BatchNorm()] if pool_first else [BatchNorm(), MaxPool2D(2)]
    layers = [QuantConv2D(40, 3, kernel_quantizer="ste_sign", use_bias=False), *head,
              QuantConv2D(33, 3, padding="same", pad_values=pad, **BIN), BatchNorm(),
              QuantConv2D(70, 2, strides=2, padding="same", **BIN), BatchNorm(), Flatten(),
              QuantDense(9, **BIN), BatchNorm()]
    model = Sequential(layers, (13, 12, 2), seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            c = layer.channels
            layer.moving_mean[:] = rng.normal(0, 2, c)
            layer.moving_variance[:] = rng.uniform(0.2, 9, c)
            layer.gamma.value[:] = rng.normal(0, 1, c)
            layer.gamma.value[0] = 0.0
            layer.beta.value[:] = rng.normal(0, 1, c)
    return model


@needs_gcc
@pytest.mark.parametrize("pad,pool_first", [(0.0, True), (1.0, False), (-1.0, True)])
def test_every_kernel_path_matches_runtime(tmp_path, pad, pool_first):
    mf = fold_model(_random_net(pad, pool_first, seed=int(pad) + 5))
    raw = np.random.default_rng(0).integers(0, 256, (300, 13, 12, 2)).astype(np.uint8)
    np.testing.assert_array_equal(c_logits(mf, raw, tmp_path), Runtime(mf).predict(raw))


@needs_gcc
@pytest.mark.parametrize("first", [
    Conv2D(6, 3, padding="same"),
    # a binary kernel, but zero padding is not a raw zero here: float accumulation
    QuantConv2D(6, 3, padding="same", kernel_quantizer="ste_sign"),
])
def test_float_first_layer_with_symmetric_pixels(tmp_path, first):
    layers = [first, BatchNorm(), MaxPool2D(2), Flatten(), QuantDense(5, **BIN), BatchNorm()]
    model = Sequential(layers, (8, 8, 1), seed=2)
    model.layers[1].moving_mean[:] = 0.3
    mf = fold_model(model, input_spec_for((8, 8, 1), "symmetric"))
    assert mf.blocks[0].acc == "float32"
    raw = np.random.default_rng(1).integers(0, 256, (300, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_array_equal(c_logits(mf, raw, tmp_path), Runtime(mf).predict(raw))


def test_generated_c_has_no_malloc_and_const_tables():
    mf = fold_model(_random_net(0.0, True, 1), class_names=[f"c{i}" for i in range(9)])
    files, info = generate_c(mf)
    src = files["bnn_model.c"]
    assert "malloc" not in src and "#include <stdlib.h>" not in src and "<stdio.h>" not in src
    assert "static const uint32_t b1_w[" in src and "static uint32_t bnn_buf0[" in src
    # ping-pong buffers: pooled 5x5x40 (2 words a pixel), then 5x5x33, then 3x3x70 (3 words)
    assert info.ram_bytes == 4 * (max(5 * 5 * 2, 3 * 3 * 3) + 5 * 5 * 2)
    assert sum(info.tables.values()) == info.table_bytes


@needs_gcc
def test_cli_export_c(tmp_path, capsys):
    mf = fold_model(_random_net(1.0, False, 3))
    from bnnlab.deploy.format import write_file

    write_file(tmp_path / "m.bnn", mf)
    assert main(["export", str(tmp_path / "m.bnn"), "--c", str(tmp_path / "out")]) == 0
    assert "const tables" in capsys.readouterr().out
    subprocess.run(["make", "-s"], cwd=tmp_path / "out", check=True, capture_output=True) \
        if shutil.which("make") else build_c(tmp_path / "out")
    assert (tmp_path / "out" / "bnn_demo").exists()


@needs_gcc
@pytest.mark.parametrize("layers,shape", [
    ([Flatten(), QuantDense(3, kernel_quantizer="ste_sign"), BatchNorm()], (4, 4, 1)),
    ([QuantDense(8, kernel_quantizer="ste_sign"), BatchNorm(), QuantDense(3, **BIN)], (5,)),
])
def test_one_and_two_block_models_compile_and_match(tmp_path, layers, shape):
    mf = fold_model(Sequential(layers, shape, seed=4))
    rng = np.random.default_rng(2)
    raw = (rng.integers(0, 256, (200, *shape)).astype(np.uint8) if len(shape) == 3
           else rng.normal(0, 1, (200, *shape)).astype(np.float32))
    np.testing.assert_array_equal(c_logits(mf, raw, tmp_path), Runtime(mf).predict(raw))
