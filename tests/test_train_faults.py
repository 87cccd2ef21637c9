"""Training under fault: an output that cannot be written, a diverging run, settings that
would be silently mangled, a model too large for memory, and a bad environment variable.
Each error a user can cause is one line naming the file or option and the reason."""

from __future__ import annotations

import errno
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.core.layers import Conv2D, Dense, MaxPool2D, QuantConv2D, QuantDense, layer_from_config
from bnnlab.core.model import ModelTooLarge, Sequential
from bnnlab.core.optimizers import make_optimizer
from bnnlab.core.trainer import DIVERGENCE_FACTOR, DivergenceWatch, Trainer, TrainingDiverged
from bnnlab.data import load_dataset
from bnnlab.io.checkpoints import load_checkpoint
from bnnlab.io.scenes import SceneError, load_scene

XOR_SCENE = """
schema_version = 1
name = "xor-small"
seed = 1
[data]
dataset = "xor"
limit_train = 256
limit_test = 64
[training]
epochs = {epochs}
batch_size = 32
learning_rate = {lr}
[[model.layers]]
type = "Dense"
units = 8
[[model.layers]]
type = "QuantDense"
units = 8
input_quantizer = "ste_sign"
kernel_quantizer = "ste_sign"
kernel_constraint = "weight_clip"
[[model.layers]]
type = "BatchNorm"
[[model.layers]]
type = "QuantDense"
units = 2
input_quantizer = "ste_sign"
kernel_quantizer = "ste_sign"
[[model.layers]]
type = "Activation"
activation = "softmax"
"""


def _scene(tmp_path: Path, lr: float = 0.01, epochs: int = 2) -> Path:
    path = tmp_path / "scene.toml"
    path.write_text(XOR_SCENE.format(lr=lr, epochs=epochs))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------ --out and saving

def test_out_naming_a_folder_is_refused_before_training(capsys, tmp_path):
    code, out, err = _run(capsys, "train", _scene(tmp_path), "--out", tmp_path)
    assert code == 2 and "epoch" not in out
    assert f"{tmp_path} is a folder" in _one_line(err)


def test_out_in_an_unwritable_folder_is_refused_before_training(capsys, tmp_path, monkeypatch):
    import bnnlab.io.outputs as outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    real = outputs.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):  # the tests run as root, where chmod does not stop us
        if Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", mkstemp)
    code, out, err = _run(capsys, "train", _scene(tmp_path), "--out", locked / "m.npz")
    assert code == 2 and "epoch" not in out
    line = _one_line(err)
    assert f"cannot write into folder {locked}" in line and "Permission denied" in line


def test_out_on_a_disk_too_full_is_refused_before_training(capsys, tmp_path, monkeypatch):
    import bnnlab.io.outputs as outputs

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    code, out, err = _run(capsys, "train", _scene(tmp_path), "--out", tmp_path / "m.npz")
    assert code == 2 and "epoch" not in out
    assert "100 bytes free" in _one_line(err)


@pytest.mark.parametrize("suffix", [".npz", ".bnn"])
def test_a_failed_save_after_training_keeps_the_model(capsys, tmp_path, monkeypatch, suffix):
    import bnnlab.io.atomic as atomic

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / f"model{suffix}"
    real = atomic.write_atomic

    def full_disk(path, write, suffix=""):
        if Path(path) == target:  # the disk filled up while training ran
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write, suffix)

    for module in ("bnnlab.io.checkpoints", "bnnlab.deploy.format"):
        mod = sys.modules.get(module) or __import__(module, fromlist=["x"])
        if hasattr(mod, "write_atomic"):
            monkeypatch.setattr(mod, "write_atomic", full_disk)
    code, out, err = _run(capsys, "train", _scene(tmp_path), "--out", target)
    assert code == 1 and "epoch 2/2" in out
    line = _one_line(err)
    assert f"cannot write {target}" in line and "No space left on device" in line
    saved = list((tmp_path / "cache" / "bnnlab" / "unsaved").iterdir())
    assert len(saved) == 1 and saved[0].suffix == suffix and str(saved[0]) in line
    assert not target.exists()
    if suffix == ".npz":
        model, meta = load_checkpoint(saved[0])
        assert meta["scene"] == "xor-small" and len(meta["epochs"]) == 2


def test_save_with_fallback_tries_each_folder_and_raises_when_all_fail(tmp_path):
    from bnnlab.io.outputs import save_with_fallback

    written = []

    def save(path):
        if not path.startswith(str(tmp_path / "ok")):
            raise OSError(errno.EROFS, "Read-only file system")
        Path(path).write_text("x")
        written.append(path)

    where, error = save_with_fallback(tmp_path / "a" / "m.npz", save,
                                      [tmp_path / "bad", tmp_path / "ok"])
    assert error.errno == errno.EROFS and written == [where]
    assert Path(where).parent == tmp_path / "ok" and where.endswith(".npz")
    with pytest.raises(OSError, match="Read-only"):
        save_with_fallback(tmp_path / "m.npz", save, [tmp_path / "bad"])


# ------------------------------------------------------------------------------- divergence

def test_a_huge_learning_rate_is_stopped_as_diverged(capsys, tmp_path):
    code, out, err = _run(capsys, "train", _scene(tmp_path, lr=1e9, epochs=3), "--out",
                          tmp_path / "m.npz")
    assert code == 1
    line = _one_line(err)
    assert "lower the learning rate (now 1e+09)" in line and "starting value" in line
    assert not (tmp_path / "m.npz").exists()


def test_a_healthy_run_is_not_flagged(capsys, tmp_path):
    code, out, err = _run(capsys, "train", _scene(tmp_path, lr=0.01, epochs=3))
    assert code == 0, err


def test_divergence_watch_needs_a_sustained_stretch():
    watch = DivergenceWatch(num_classes=10, batches_per_epoch=1000)
    assert watch.batch(2.5) is None  # reference: max(2.5, ln 10)
    limit = DIVERGENCE_FACTOR * 2.5
    assert watch.limit == pytest.approx(limit)
    for _ in range(10):  # spikes separated by ordinary batches never count
        for _ in range(49):
            assert watch.batch(limit * 100) is None
        assert watch.batch(1.0) is None
    for _ in range(49):
        assert watch.batch(limit * 2) is None
    assert "50 batches in a row" in watch.batch(limit * 2)
    assert watch.epoch(limit * 0.9) is None and "mean loss" in watch.epoch(limit * 1.1)
    # A short epoch is the whole stretch; chance level is the floor of the reference.
    short = DivergenceWatch(num_classes=2, batches_per_epoch=4)
    assert short.batch(0.01) is None and short.limit == pytest.approx(10 * math.log(2))
    assert [short.batch(100.0) for _ in range(4)][-1] is not None


def test_trainer_raises_diverged_with_the_reason():
    ds = load_dataset("xor", seed=0, limit_train=256, limit_test=32)
    model = Sequential([Dense(8), QuantDense(8, input_quantizer="ste_sign",
                                             kernel_quantizer="ste_sign"),
                        QuantDense(2, input_quantizer="ste_sign", kernel_quantizer="ste_sign")],
                       (2,), seed=0)
    trainer = Trainer(model, ds.x_train, ds.y_train, optimizer=make_optimizer(
        "sgd", learning_rate=1e9, momentum=0.0), epochs=5, batch_size=32)
    with pytest.raises(TrainingDiverged, match="starting value"):
        trainer.run()


# --------------------------------------------------------------- settings that were mangled

@pytest.mark.parametrize("options,match", [
    (dict(beta_1=5), r"beta_1 must be a number in \[0, 1\)"),
    (dict(beta_1=1.0), "beta_1"),
    (dict(beta_2=-0.1), "beta_2"),
    (dict(epsilon=0), "epsilon"),
    (dict(beta_1="0.9"), "beta_1"),
    (dict(beta_1=float("nan")), "beta_1"),
])
def test_adam_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer("adam", **options)


def test_sgd_and_bop_options_are_validated():
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("sgd", momentum=True)
    with pytest.raises(ValueError, match="nesterov"):
        make_optimizer("sgd", nesterov="yes")
    with pytest.raises(ValueError, match="gamma"):
        make_optimizer("bop", gamma=0)


@pytest.mark.parametrize("cfg,match", [
    ({"type": "QuantConv2D", "filters": 16.5}, "filters must be a positive whole number, got 16.5"),
    ({"type": "Conv2D", "filters": 8, "kernel_size": 2.5}, "kernel_size"),
    ({"type": "Conv2D", "filters": 8, "strides": True}, "strides"),
    ({"type": "QuantDense", "units": "64"}, "units"),
    ({"type": "Dense", "units": 0}, "units"),
    ({"type": "MaxPool2D", "pool_size": 1.5}, "pool_size"),
])
def test_integer_fields_are_refused_not_truncated(cfg, match):
    with pytest.raises(ValueError, match=match):
        layer_from_config(cfg)


def test_whole_floats_and_numpy_integers_are_accepted():
    assert QuantConv2D(16.0).filters == 16 and Conv2D(np.int64(4), (3, 3)).filters == 4
    assert MaxPool2D(np.int32(2)).pool_size == 2


def test_scene_with_fractional_filters_names_the_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(_scene(tmp_path).read_text().replace("units = 8\n", "units = 8.5\n", 1))
    with pytest.raises(SceneError, match=r"model\.layers\[0\].*units.*8\.5"):
        load_scene(path)


@pytest.mark.parametrize("line,match", [
    ("seed = -1", "seed: must be a non-negative integer, got -1"),
    ("description = 3", "description: must be a string, got 3"),
    ("name = [1, 2]", "name: must be a string"),
])
def test_scene_fields_are_type_checked(tmp_path, line, match):
    key = line.split(" =")[0]
    lines = [ln for ln in _scene(tmp_path).read_text().splitlines()
             if not ln.startswith(f"{key} =")]
    lines.insert(1, line)
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneError, match=match):
        load_scene(path)


def test_negative_seed_on_the_command_line(capsys, tmp_path):
    code, _, err = _run(capsys, "train", _scene(tmp_path), "--seed", "-1")
    assert code == 2 and "--seed must be a non-negative integer" in _one_line(err)
    assert "does not fit" not in err


# ---------------------------------------------------------------------- size before memory

def test_a_million_unit_scene_says_what_it_needs_before_allocating(capsys, tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text(_scene(tmp_path).read_text().replace("units = 8\n", "units = 1000000\n", 2))
    tracemalloc.start()
    try:
        code, out, err = _run(capsys, "summary", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2
    line = _one_line(err)
    # Dense 2 -> 1e6, QuantDense 1e6 -> 1e6 (both with biases), batch norm, QuantDense 1e6 -> 2
    count = (2 * 10**6 + 10**6) + (10**12 + 10**6) + 4 * 10**6 + (2 * 10**6 + 2)
    assert f"{count:,} weights" in line and "xor-small" in line
    assert "4,000.04 GB as float32" in line and "training needs about" in line
    assert peak < 64 << 20, f"{peak} bytes allocated before refusing"


def test_model_size_is_checked_from_shapes():
    with pytest.raises(ModelTooLarge, match="10,000,000,000 weights"):
        Sequential([Dense(100_000, use_bias=False)], (100_000,))
    small = Sequential([Dense(3)], (4,), max_weight_bytes=4 * 15)
    assert small.output_shape == (3,)
    with pytest.raises(ModelTooLarge):
        Sequential([Dense(3)], (4,), max_weight_bytes=4 * 14)


# ------------------------------------------------------------------------- the environment

def test_a_bad_popcount_setting_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("BNNLAB_POPCOUNT", "garbage")
    code, _, err = _run(capsys, "summary", "quickstart")
    assert code == 2
    assert "BNNLAB_POPCOUNT must be auto, bytes, csa or lanes, not 'garbage'" in _one_line(err)


def test_a_bad_popcount_setting_in_a_fresh_process_is_one_line():
    env = {"BNNLAB_POPCOUNT": "garbage", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "bnnlab", "summary", "quickstart"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "BNNLAB_POPCOUNT" in _one_line(done.stderr)


def test_scenes_read_without_tomllib():
    pytest.importorskip("tomli")
    code = ("import sys; sys.modules['tomllib'] = None\n"
            "from bnnlab.io.scenes import load_preset\n"
            "print(load_preset('quickstart').name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "quickstart"


def test_sources_parse_as_python_3_10():
    # requires-python admits 3.10: no syntax newer than it (except*, PEP 695 generics, ...).
    import ast

    root = Path(__file__).resolve().parents[1] / "bnnlab"
    for path in sorted(root.rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))


def test_a_model_refused_by_the_exporter_after_training_is_kept_as_a_checkpoint(
        capsys, tmp_path, monkeypatch):
    import bnnlab.cli_deploy as cli_deploy
    from bnnlab.cli_base import CliError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise CliError("--out: a weight is NaN")

    monkeypatch.setattr(cli_deploy, "write_trained", refuse)
    (tmp_path / "model.npz").write_text("the user's own file, not to be touched")
    code, out, err = _run(capsys, "train", _scene(tmp_path), "--out", tmp_path / "model.bnn")
    assert code == 1 and "epoch 2/2" in out
    line = _one_line(err)
    saved = list((tmp_path / "cache" / "bnnlab" / "unsaved").iterdir())
    assert len(saved) == 1 and saved[0].suffix == ".npz" and str(saved[0]) in line
    assert "a weight is NaN" in line
    assert load_checkpoint(saved[0])[1]["scene"] == "xor-small"
    assert (tmp_path / "model.npz").read_text().startswith("the user's own file")


def test_export_and_import_outputs_are_checked_first(capsys, tmp_path, monkeypatch):
    import bnnlab.io.outputs as outputs
    from bnnlab.io.checkpoints import save_checkpoint

    model = Sequential([Dense(2)], (2,), seed=0)
    save_checkpoint(tmp_path / "m.npz", model, meta={"dataset": "xor"})
    locked = tmp_path / "locked"
    locked.mkdir()
    real = outputs.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", mkstemp)
    code, _, err = _run(capsys, "export", tmp_path / "m.npz", locked / "m.bnn")
    assert code == 2 and f"cannot write into folder {locked}" in _one_line(err)
    code, _, err = _run(capsys, "export", tmp_path / "m.npz", tmp_path / "none" / "m.bnn")
    assert code == 2 and "does not exist" in _one_line(err)


def test_an_io_error_after_the_checks_is_one_line(capsys, tmp_path, monkeypatch):
    import bnnlab.cli_deploy as cli_deploy

    def vanished(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/m.bnn")

    monkeypatch.setattr(cli_deploy, "cmd_export", vanished)
    code, _, err = _run(capsys, "export", tmp_path / "m.npz", tmp_path / "m.bnn")
    assert code == 2 and _one_line(err) == "bnnlab: /gone/m.bnn: No such file or directory"
