import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.io.checkpoints import load_checkpoint, save_checkpoint
from bnnlab.data.fakes import fake_spec, write_fake_files
from bnnlab.data.registry import FILE_DATASETS


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_text_and_json(capsys):
    code, out, _ = run(capsys, "summary", "larq-mnist-bnn")
    assert code == 0 and "13.19 KiB" in out and "0.9303" in out
    code, out, _ = run(capsys, "summary", "larq-mnist-bnn", "--json")
    d = json.loads(out)
    assert d["params_1bit"] == 93088 and d["macs_1bit"] == 2599552


def test_train_json_per_epoch_and_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "toy.npz"
    code, out, _ = run(capsys, "train", "toy-xor", "--epochs", "2", "--json", "--out", str(ckpt), "--seed", "1")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "loss", "accuracy", "val_accuracy", "seconds", "train_seconds",
                "val_seconds", "images_per_second"} <= set(r)
        assert r["val_seconds"] >= 0 and r["train_seconds"] > 0
        assert abs(r["train_seconds"] + r["val_seconds"] - r["seconds"]) < 0.002
    model, meta = load_checkpoint(ckpt)
    assert meta["scene"] == "toy-xor" and len(meta["epochs"]) == 2
    # the checkpoint holds plain arrays: readable without pickle
    with np.load(ckpt, allow_pickle=False) as z:
        assert "header" in z.files


def test_train_on_fake_mnist_via_data_dir(capsys, tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "mnist", n_train=64, n_test=32)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    code, out, err = run(capsys, "train", "larq-mnist-bnn", "--epochs", "1", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert "epoch 1/1" in out and "64 train" in out


def test_train_dataset_option_replaces_the_scenes(capsys, tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "fashion-mnist", n_train=64, n_test=32)
    monkeypatch.setitem(FILE_DATASETS, "fashion-mnist", fake_spec("fashion-mnist", md5s))
    code, out, err = run(capsys, "train", "larq-mnist-bnn", "--epochs", "1", "--dataset",
                         "fashion-mnist", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert "on fashion-mnist (64 train" in out


def test_filters_on_checkpoint_and_scene(capsys, tmp_path):
    code, out, _ = run(capsys, "filters", "larq-mnist-bnn", "--json")
    reports = json.loads(out)
    assert [r["layer"] for r in reports] == ["quant_conv2d", "quant_conv2d_1", "quant_conv2d_2"]
    code, out, _ = run(capsys, "filters", "quickstart")
    assert code == 0 and "unique of 512 patterns" in out and "saved" in out


@pytest.mark.parametrize("argv,match", [
    (["train", "no-such-scene"], "neither a scene file nor a preset"),
    (["train", "quickstart", "--epochs", "0"], "--epochs"),
    (["train", "quickstart", "--epochs", "x"], "invalid int value"),
    (["summary", "missing.npz"], "no such file"),
    (["train", "larq-mnist-bnn", "--data-dir", "/nonexistent"], "--data-dir /nonexistent does not exist"),
    (["frobnicate"], "not a command, a scene file or a preset"),
])
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, tmp_path, argv, match):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BNNLAB_MIRROR", "http://127.0.0.1:9/")  # closed port: nothing leaves this machine
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", {}))  # no mirrors, no system folder
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnnlab")
    assert match in err


def test_corrupt_checkpoint_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "filters", str(bad))
    assert code == 2 and "not a readable bnnlab checkpoint" in err


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset

    model = build_model(load_preset("toy-xor"), (2,), 2)
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        save_checkpoint(target, model)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_python_dash_m_and_bench_quick_json():
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "bnnlab", "summary", "toy-xor"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "Total" in r.stdout
    r = subprocess.run([sys.executable, "-m", "bnnlab", "bench", "--quick", "--repeats", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    cases = [row["case"] for row in d["results"]]
    assert "gemm 5184x576x64" in cases and "avx2" in d["cpu"]
    gemm = next(row for row in d["results"] if row["case"] == "gemm 5184x576x64")
    assert gemm["ratio"] > 0 and gemm["binary_tops"] > 0
    assert d["cpu"]["popcount"]
    for batch in (1, 256):
        rt = [row for row in d["results"] if row["case"] == f".bnn runtime batch {batch}"]
        assert [row["threads"] for row in rt] == [1, 2]
        assert all(row["binary_images_per_s"] > 0 and row["ratio"] > 0 for row in rt)
    roof = d["roofline"]
    assert roof["binary_tops_per_thread"] > 0 and roof["float32_gflops_per_thread"] > 0
    assert roof["method"] and roof["isa"] and set(roof["by_threads"]) == {"1", "2"}
    for row in d["results"]:
        assert row["fraction_of_roofline"] > 0, row["case"]
        assert row["roofline_alongside"]["binary_tops"] > 0, row["case"]
    # A GEMM's fraction is its rate over the binary peak measured alongside it.
    assert gemm["fraction_of_roofline"] == pytest.approx(
        gemm["binary_tops"] / gemm["roofline_alongside"]["binary_tops"])


def test_bench_epoch_runs_a_whole_epoch():
    from bnnlab.bench import bench_epoch

    (row,) = bench_epoch(nthreads=1, n=640, roofline=True)
    assert row["threads"] == 1 and row["epoch_s"] > 0
    assert row["images_per_s"] == pytest.approx(640 / row["epoch_s"])
    assert row["fraction_of_roofline"] > 0


class _Terminal(io.StringIO):
    """stderr as a terminal would be (the progress bars draw only on one); ``fileno`` is a
    pseudo-terminal of ``columns`` columns, for the width."""

    def __init__(self, columns: int = 80):
        super().__init__()
        import fcntl
        import struct
        import termios

        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def isatty(self):
        return True

    def fileno(self):
        return self.slave

    def close_pty(self):
        os.close(self.master)
        os.close(self.slave)


def test_train_draws_a_progress_bar_that_fits_the_terminal(monkeypatch, capsys):
    err = _Terminal(columns=60)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        assert main(["train", "quickstart", "--epochs", "2", "--limit-train", "3000"]) == 0
    finally:
        err.close_pty()
    drawn = [seg for seg in re.split(r"[\r\n]", err.getvalue()) if seg.strip()]
    assert any(seg.startswith("epoch 1/2") and "loss" in seg and "batch" in seg for seg in drawn)
    assert max(len(seg) for seg in drawn) <= 60  # never wraps, so redrawing never scrolls
    assert err.getvalue().rstrip(" ").endswith("\r")  # erased at the end
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in out if ln.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]


def test_no_progress_bar_off_a_terminal_or_with_json(monkeypatch, capsys):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    try:
        assert main(["train", "toy-xor", "--epochs", "1", "--json"]) == 0
    finally:
        err.close_pty()
    assert err.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert main(["train", "toy-xor", "--epochs", "1"]) == 0
    assert sys.stderr.getvalue() == ""


def test_the_apps_options_open_the_app_without_a_command(monkeypatch, tmp_path):
    # `bnnlab --data-dir DIR [SCENE]` is `bnnlab gui --data-dir DIR [SCENE]`, as the
    # README's data section suggests; it used to be refused as an unknown command.
    import bnnlab.gui.app

    seen = []
    monkeypatch.setattr(bnnlab.gui.app, "main", lambda argv: seen.append(argv) or 0)
    assert main(["--data-dir", str(tmp_path)]) == 0
    assert main([f"--data-dir={tmp_path}", "quickstart"]) == 0
    assert seen == [["--data-dir", str(tmp_path)], ["quickstart", "--data-dir", str(tmp_path)]]
