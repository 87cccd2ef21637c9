"""The runtime on trained models, `bnnlab train --out .bnn`, `export`, `run`, and odd but valid files."""

import json
import multiprocessing
import os
import re
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlab.app.opening import open_any
from bnnlab.cli import main
from bnnlab.io.checkpoints import load_checkpoint
from bnnlab.data import load_dataset
from bnnlab.data.fakes import fake_spec, write_fake_files
from bnnlab.data.registry import FILE_DATASETS
from bnnlab.deploy import load_runtime, read_file
from bnnlab.deploy import format as F
from bnnlab.deploy.check import compare_with_engine
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime, raw_from_unit

# A small binary CNN on the built-in digits that trains to a useful accuracy in seconds;
# 'same' padding with -1, a batch norm before a pool, and a bias keep the folding honest.
SCENE = """
schema_version = 1
name = "deploy-test"
seed = 3
[data]
dataset = "digits"
limit_train = 2500
limit_test = 600
[training]
epochs = 2
batch_size = 50
learning_rate = 0.01
[[model.layers]]
type = "QuantConv2D"
filters = 12
kernel_size = 3
kernel_quantizer = "ste_sign"
use_bias = false
[[model.layers]]
type = "MaxPool2D"
pool_size = 2
[[model.layers]]
type = "BatchNorm"
scale = false
[[model.layers]]
type = "QuantConv2D"
filters = 24
kernel_size = 3
padding = "same"
pad_values = -1.0
input_quantizer = "ste_sign"
kernel_quantizer = "ste_sign"
kernel_constraint = "weight_clip"
[[model.layers]]
type = "BatchNorm"
[[model.layers]]
type = "MaxPool2D"
pool_size = 2
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "QuantDense"
units = 10
input_quantizer = "ste_sign"
kernel_quantizer = "ste_sign"
use_bias = false
[[model.layers]]
type = "BatchNorm"
scale = false
[[model.layers]]
type = "Activation"
activation = "softmax"
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, .bnn path, the trainer's last test accuracy)."""
    d = tmp_path_factory.mktemp("trained")
    scene = d / "deploy-test.toml"
    scene.write_text(SCENE)
    ckpt, bnn = d / "m.npz", d / "m.bnn"
    assert main(["train", str(scene), "--out", str(ckpt), "--json"]) == 0
    assert main(["export", str(ckpt), str(bnn), "--dataset", "digits"]) == 0
    _, meta = load_checkpoint(ckpt)
    return ckpt, bnn, meta["epochs"][-1]["val_accuracy"]


@pytest.fixture(scope="module")
def digits_test():
    ds = load_dataset("digits", seed=3, limit_test=600)
    return ds.x_test, ds.y_test


def test_runtime_equals_engine_on_every_test_image(trained, digits_test):
    ckpt, bnn, reported = trained
    model, _ = load_checkpoint(ckpt)
    x, y = digits_test
    rt = load_runtime(bnn)
    raw = raw_from_unit(x, "uint8")
    cmp = compare_with_engine(model, rt, x, raw)
    assert cmp.same == len(x), cmp.disagreements
    assert cmp.tie_bits == 0 or cmp.max_margin[0] < 1e-4
    acc = float(np.mean(rt.predict(raw) == y))
    assert acc == pytest.approx(reported, abs=1e-12)  # the accuracy the trainer reported
    assert acc > 0.3  # trained: far above the 0.1 of chance
    np.testing.assert_array_equal(rt.logits(raw[:50]), reference_logits(rt.model_file, raw[:50]))


def test_threads_do_not_change_results(trained, digits_test):
    rt = load_runtime(trained[1])
    raw = raw_from_unit(digits_test[0], "uint8")
    np.testing.assert_array_equal(rt.logits(raw, threads=1), rt.logits(raw, threads=2))


def _runtime_threads():
    return {t.ident for t in threading.enumerate() if t.name.startswith("bnn-runtime")}


def test_threads_are_started_once_and_one_image_runs_alone(trained, digits_test):
    rt = load_runtime(trained[1])
    raw = raw_from_unit(digits_test[0][:64], "uint8")
    want = reference_logits(rt.model_file, raw)
    np.testing.assert_array_equal(rt.logits(raw, threads=2), want)
    started = _runtime_threads()
    assert len(started) == 1  # the calling thread works too
    for _ in range(3):
        np.testing.assert_array_equal(rt.logits(raw, threads=2), want)
    assert _runtime_threads() == started  # the same threads, not new ones per call
    one = rt.logits(raw[5:6], threads=2)
    assert one.shape == (1, rt.n_outputs) and one.flags.c_contiguous
    np.testing.assert_array_equal(one, want[5:6])


def test_a_late_thread_takes_fewer_pieces(trained, digits_test, monkeypatch):
    # Pieces go to whichever thread is free: a pool worker that starts late (here: slow
    # on every piece) leaves the rest to the caller instead of holding the batch up.
    rt = load_runtime(trained[1])
    raw = raw_from_unit(digits_test[0][:200], "uint8")
    want = reference_logits(rt.model_file, raw)
    run, done = rt._run, []

    def slow_in_workers(x):
        worker = threading.current_thread().name.startswith("bnn-runtime")
        if worker:
            time.sleep(0.2)
        done.append((worker, len(x)))
        return run(x)

    monkeypatch.setattr(rt, "_run", slow_in_workers)
    np.testing.assert_array_equal(rt.logits(raw, threads=2), want)
    assert sum(n for _, n in done) == len(raw)
    by_worker = sum(1 for w, _ in done if w)
    assert len(done) >= 8 and by_worker <= 1 < len(done) - by_worker


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threads_work_in_a_forked_child(trained, digits_test):
    rt = load_runtime(trained[1])
    raw = raw_from_unit(digits_test[0][:32], "uint8")
    want = rt.logits(raw, threads=2)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(rt.logits, (raw, 2)).get(timeout=120)
    np.testing.assert_array_equal(got, want)


def test_opened_bnn_model_predicts_like_runtime(trained, digits_test):
    model = open_any(trained[1]).model
    x = digits_test[0]
    rt = load_runtime(trained[1])
    np.testing.assert_array_equal(model.predict_logits(x).argmax(1), rt.predict(raw_from_unit(x, "uint8")))


def test_describe_file_gives_plain_sizes(trained):
    info = open_any(trained[1]).describe()
    assert info["kind"] == "bnn" and info["bnn_bytes"] == info["file_bytes"]
    assert info["float32_bytes"] > 20 * info["bnn_bytes"]
    assert info["class_names"] == list("0123456789")
    assert [b["kind"] for b in info["blocks"]] == ["conv2d", "conv2d", "dense"]
    json.dumps(info)  # plain data only
    ck = open_any(trained[0]).describe()
    assert ck["kind"] == "checkpoint" and 0 < info["bnn_bytes"] - ck["bnn_bytes"] < 200  # no names, meta


def test_train_out_bnn_and_run_json(capsys, tmp_path):
    out = tmp_path / "xor.bnn"
    code, _, err = run(capsys, "train", "toy-xor", "--epochs", "2", "--seed", "1", "--out", out, "--json")
    assert code == 0, err
    mf = read_file(out)
    assert mf.input.encoding == "float32" and mf.metadata["source"] == "bnnlab train"
    code, text, err = run(capsys, "run", out, "--data", "xor", "--json")
    assert code == 0, err
    row = json.loads(text)
    assert row["accuracy"] == pytest.approx(float(mf.metadata["test_accuracy"]), abs=1e-12)
    assert row["images"] == 500 and row["images_per_second"] > 0


def test_run_on_fake_mnist(capsys, tmp_path, monkeypatch, trained):
    md5s = write_fake_files(tmp_path / "mnist", n_train=20, n_test=40)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    code, text, err = run(capsys, "run", trained[1], "--data", "mnist", "--data-dir", tmp_path)
    assert code == 0, err
    assert "40 mnist test images" in text and "images/s" in text


def test_run_bench_compares_with_float32(capsys, trained):
    code, text, err = run(capsys, "run", trained[1], "--data", "digits", "--limit", "200",
                          "--bench", "--json")
    assert code == 0, err
    rows = json.loads(text)["bench"]
    assert [(r["what"], r["threads"]) for r in rows] == [
        ("runtime", 1), ("float32 numpy/blas", 1), ("runtime", 2), ("float32 numpy/blas", 2)]
    assert all(r["same_predictions"] >= 199 for r in rows)


@pytest.mark.parametrize("argv,match", [
    (["run", "{tmp}/none.bnn", "--data", "digits"], "no such file"),
    (["run", "{bnn}", "--data", "xor"], "reads inputs of shape"),
    (["run", "{bnn}", "--data", "nope"], "unknown dataset"),
    (["run", "{bnn}"], "--data"),
    (["export", "{bnn}"], "nothing to do"),
    (["export", "{tmp}/x.txt", "{tmp}/y.bnn"], "x.txt: text, not a model file"),
    (["export", "{ckpt}", "{tmp}/y.onnx"], "must end in .bnn"),
    (["summary", "{tmp}/junk.bnn"], "bad magic"),
    (["import", "{tmp}/junk.h5"], "not an HDF5 file"),
    (["import", "{tmp}/junk.bnn"], "not a Keras"),
])
def test_cli_errors_are_one_line_exit_2(capsys, tmp_path, trained, argv, match):
    (tmp_path / "junk.bnn").write_bytes(b"hello")
    (tmp_path / "junk.h5").write_bytes(b"hello")
    (tmp_path / "x.txt").write_text("x")
    argv = [a.format(tmp=tmp_path, bnn=trained[1], ckpt=trained[0]) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


def test_export_checks_before_training(capsys, tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "mnist", n_train=20, n_test=10)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    code, out, err = run(capsys, "train", "larq-mnist-fp", "--epochs", "1", "--out",
                         tmp_path / "fp.bnn", "--data-dir", tmp_path)
    # the full-precision twin cannot be folded: refused before any data is trained on
    assert code == 2 and "relu" in err and "epoch" not in out


def _recrc(buf: bytearray) -> bytes:
    buf[-4:] = struct.pack("<I", zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(draw=st.data())
def test_any_valid_file_runs_like_the_oracle(trained, draw):
    """Mutate thresholds, modes, weights and geometry; whatever still decodes must run, and
    the runtime must agree with the NumPy oracle on it."""
    blob = bytearray(trained[1].read_bytes())
    for _ in range(draw.draw(st.integers(1, 6))):
        i = draw.draw(st.integers(16, len(blob) - 5))
        blob[i] = draw.draw(st.integers(0, 255))
    try:
        mf = F.decode(_recrc(blob))
    except F.ModelFileError:
        return
    rt = Runtime(mf)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, *mf.input.shape)).astype(np.uint8)
    np.testing.assert_array_equal(rt.logits(raw), reference_logits(mf, raw))


@pytest.mark.parametrize("chunk_bytes", [1, 5000, 1 << 30])
def test_chunked_blocks_equal_the_oracle(trained, digits_test, monkeypatch, chunk_bytes):
    # Binary blocks run a few images per GEMM; uneven last chunks must change nothing.
    import bnnlab.deploy.runtime as R

    monkeypatch.setattr(R, "_CHUNK_BYTES", chunk_bytes)
    rt = load_runtime(trained[1])
    raw = raw_from_unit(digits_test[0][:37], "uint8")
    np.testing.assert_array_equal(rt.logits(raw, threads=1), reference_logits(rt.model_file, raw))
    for b in rt._blocks:
        if hasattr(b, "chunk"):
            assert b.chunk >= 1
