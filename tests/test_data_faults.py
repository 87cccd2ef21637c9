"""File datasets under fault: lying or damaged files, unreadable files and folders, a typo in
the data folder, and loading only the split that is used. Cost is measured as memory
allocated (tracemalloc) and requests made, never as time."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnnlab.data import DatasetError, load_dataset
from bnnlab.data.fakes import fake_spec, write_fake_files
from bnnlab.data.idx import decode_idx, encode_idx
from bnnlab.data.registry import FILE_DATASETS, cache_root

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
REAL_SPECS = dict(FILE_DATASETS)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    # A closed port: any download attempt fails at once, and is visible in the message.
    monkeypatch.setenv("BNNLAB_MIRROR", "http://127.0.0.1:9")
    for name in FILE_DATASETS:
        monkeypatch.setitem(FILE_DATASETS, name, fake_spec(name, {}))


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        fn()
        error = None
    except BaseException as exc:  # noqa: BLE001 - handed back to the test
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


def _gzip_of_zeros_after(header: bytes, nbytes: int) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [c.compress(header)]
    zeros = bytes(1 << 20)
    for _ in range(nbytes >> 20):
        parts.append(c.compress(zeros))
    parts.append(c.flush())
    return b"".join(parts)


def test_a_lying_gzip_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    # The registry's real entry: a 64 MiB file announced in place of MNIST's test images, in a
    # gzip of 64 KB. Its checksum and header are wrong; the data must not be inflated to see it.
    monkeypatch.setitem(FILE_DATASETS, "mnist", REAL_SPECS["mnist"])
    folder = tmp_path / "d" / "mnist"
    folder.mkdir(parents=True)
    n = 64 << 20
    blob = _gzip_of_zeros_after(bytes([0, 0, 8, 3]) + struct.pack(">III", n // 784, 28, 28),
                                n // 784 * 784)
    assert len(blob) < 1 << 20
    (folder / FILES[2]).write_bytes(blob)
    (folder / FILES[3]).write_bytes(gzip.compress(encode_idx(np.zeros(10000, np.uint8))))
    peak, error = _peak_bytes(
        lambda: load_dataset("mnist", tmp_path / "d", download=False, splits=("test",)))
    assert isinstance(error, DatasetError), error
    assert "checksum mismatch" in str(error) and FILES[2] in str(error)
    assert "(85598, 28, 28)" in str(error) and "(10000, 28, 28)" in str(error)
    assert peak < 8 << 20, f"{peak} bytes allocated to refuse a lying file"


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setitem(FILE_DATASETS, "mnist", REAL_SPECS["mnist"])
    folder = tmp_path / "d" / "mnist"
    folder.mkdir(parents=True)
    with open(folder / FILES[2].removesuffix(".gz"), "wb") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    (folder / FILES[3]).write_bytes(b"")
    peak, error = _peak_bytes(
        lambda: load_dataset("mnist", tmp_path / "d", download=False, splits=("test",)))
    assert isinstance(error, DatasetError), error
    assert "t10k-images-idx3-ubyte" in str(error) and "can hold" in str(error)
    assert peak < 8 << 20


def test_a_flipped_bit_in_a_gzip_is_reported_as_damage_not_as_extra_bytes():
    labels = (np.arange(20000) * 7 % 10).astype(np.uint8)
    labels[::13] = 3
    blob = gzip.compress(encode_idx(labels), mtime=0)
    reasons = set()
    for pos in range(10, len(blob) - 8):
        for bit in (0, 3, 6):
            damaged = bytearray(blob)
            damaged[pos] ^= 1 << bit
            try:
                decode_idx(bytes(damaged), "labels.gz")
            except DatasetError as exc:
                reasons.add(str(exc).split(": ", 1)[1].split(" (")[0])
    assert reasons and not any("trailing" in r for r in reasons), reasons


def test_images_of_the_wrong_size_name_the_file(tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "d" / "kmnist", image_size=20)
    monkeypatch.setitem(FILE_DATASETS, "kmnist", fake_spec("kmnist", md5s))
    with pytest.raises(DatasetError) as info:
        load_dataset("kmnist", tmp_path / "d", download=False)
    message = str(info.value)
    assert str(tmp_path / "d" / "kmnist" / FILES[0]) in message
    assert "20x20" in message and "28x28" in message


def test_an_unreadable_file_is_one_clear_error(tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "d" / "mnist")
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    locked = tmp_path / "d" / "mnist" / FILES[2]
    real_read = Path.read_bytes

    def read_bytes(self):  # the tests run as root, where chmod 000 does not stop a read
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "d", download=False)
    assert str(locked) in str(info.value) and "Permission denied" in str(info.value)


def test_a_download_into_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "home").write_text("a file where a folder should be")
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "home" / "cache"))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "cannot write into" in message and str(tmp_path / "home" / "cache") in message
    assert "BNNLAB_CACHE_DIR" in message


def test_a_full_disk_during_a_download_is_one_clear_error(tmp_path, monkeypatch):
    import io
    import os

    from bnnlab.data import download

    class Response(io.BytesIO):
        headers = {"Content-Length": str(1 << 20)}

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda request, timeout: Response(bytes(1 << 20)))
    monkeypatch.setattr(download.os, "fdopen", lambda fd, mode: FullDisk(fd, "wb"))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    assert "No space left on device" in str(info.value)
    assert str(cache_root() / "mnist") in str(info.value)
    assert os.listdir(cache_root() / "mnist") == []


def test_only_the_split_used_is_read(tmp_path, monkeypatch):
    md5s = write_fake_files(tmp_path / "d" / "mnist", n_test=12)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    for name in FILES[:2]:
        (tmp_path / "d" / "mnist" / name).unlink()
    ds = load_dataset("mnist", tmp_path / "d", download=False, splits=("test",))
    assert ds.x_test.shape == (12, 28, 28, 1) and ds.x_train.shape == (0, 28, 28, 1)
    assert ds.input_shape == (28, 28, 1)
    with pytest.raises(DatasetError, match="only 2 of 4"):
        load_dataset("mnist", tmp_path / "d", download=False)
    assert load_dataset("xor", splits=("test",)).x_train.shape == (0, 2)
    with pytest.raises(DatasetError, match="splits"):
        load_dataset("xor", splits=("validation",))


@pytest.mark.parametrize("make", ["missing", "empty", "flat"])
def test_a_mistyped_data_dir_is_named_before_any_download(tmp_path, monkeypatch, make):
    folder = tmp_path / "data"
    if make == "empty":
        folder.mkdir()
    if make == "flat":  # the files themselves, not in a mnist/ sub-folder
        md5s = write_fake_files(folder)
        monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", folder)
    message = str(info.value)
    assert f"--data-dir {folder}" in message and "127.0.0.1" not in message
    assert {"missing": "does not exist", "empty": "has no MNIST",
            "flat": "move them into"}[make] in message
    assert not (cache_root() / "mnist").exists()


def test_run_reads_only_the_test_files(tmp_path, monkeypatch, capsys):
    from bnnlab.cli import main
    from bnnlab.deploy import export_model
    from bnnlab.deploy.fold import input_spec_for
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset

    md5s = write_fake_files(tmp_path / "d" / "mnist", n_test=16)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    for name in FILES[:2]:
        (tmp_path / "d" / "mnist" / name).unlink()
    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    export_model(model, tmp_path / "m.bnn", input_spec_for((28, 28, 1), "unit", "image"),
                 tuple("0123456789"), {"name": "m"})
    code = main(["run", str(tmp_path / "m.bnn"), "--data", "mnist", "--data-dir",
                 str(tmp_path / "d")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "16 mnist test images" in out
