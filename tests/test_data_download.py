"""File datasets: downloading (against a local HTTP server only), look-up order, checksums,
consistency checks, and the real MNIST / Fashion-MNIST copies when present."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from bnnlab.data import DatasetError, dataset_info, dataset_names, load_dataset, write_idx
from bnnlab.data.download import fetch, mirror_urls
from bnnlab.data.fakes import fake_spec, write_fake_files
from bnnlab.data.registry import FILE_DATASETS, cache_root

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test may see the user's folders or settings, or reach beyond 127.0.0.1."""
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("BNNLAB_MIRROR", raising=False)
    for name in FILE_DATASETS:
        monkeypatch.setitem(FILE_DATASETS, name, fake_spec(name, {}))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated/...`` promises the whole file but sends half of it,
    ``/hang/...`` answers only after the test is over."""

    requests: list[str]
    release: threading.Event

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/hang/"):
            self.release.wait(10)
            return
        if self.path.startswith("/busy/"):
            self.send_error(503, "Service Unavailable")
            return
        flaky = self.path.startswith("/flaky/") and self.requests.count(self.path) == 1
        if flaky or self.path.startswith("/truncated/"):
            name = self.path.removeprefix("/flaky/" if flaky else "/truncated/")
            data = Path(self.directory, name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if self.path.startswith("/flaky/"):
            self.path = self.path.removeprefix("/flaky")
        super().do_GET()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients hanging up early are part of the tests


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path/srv``; yields (base_url, folder, request log)."""
    folder = tmp_path / "srv"
    folder.mkdir()
    requests: list[str] = []
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"requests": requests, "release": release})
    httpd = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, requests
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------- fetch

def test_fetch_success_reports_progress(server, tmp_path):
    base, folder, _ = server
    blob = np.random.default_rng(0).bytes(300_000)
    (folder / "blob.bin").write_bytes(blob)
    calls = []
    dest = fetch([f"{base}/blob.bin"], tmp_path / "out" / "blob.bin",
                 hashlib.md5(blob).hexdigest(), lambda done, total: calls.append((done, total)))
    assert dest.read_bytes() == blob
    assert _only(dest.parent) == ["blob.bin"]
    assert calls[0] == (0, len(blob)) and calls[-1] == (len(blob), len(blob))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_fetch_wrong_checksum_leaves_nothing(server, tmp_path):
    base, folder, _ = server
    (folder / "f.gz").write_bytes(b"x" * 1000)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as info:
        fetch([f"{base}/f.gz"], out / "f.gz", "0" * 32)
    assert "checksum mismatch" in str(info.value) and f"{base}/f.gz" in str(info.value)
    assert _only(out) == []


def test_fetch_falls_back_to_next_mirror(server, tmp_path):
    base, folder, requests = server
    (folder / "b").mkdir()
    (folder / "b" / "f.gz").write_bytes(b"payload")
    dest = fetch([f"{base}/a/f.gz", f"{base}/b/f.gz"], tmp_path / "f.gz",
                 hashlib.md5(b"payload").hexdigest())
    assert dest.read_bytes() == b"payload"
    assert requests == ["/a/f.gz", "/b/f.gz"]


def test_fetch_truncated_response(server, tmp_path):
    base, folder, _ = server
    (folder / "f.gz").write_bytes(bytes(range(256)) * 100)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as info:
        fetch([f"{base}/truncated/f.gz"], out / "f.gz", _md5(folder / "f.gz"), retry_wait=0.01)
    assert "12800" in str(info.value) or "closed early" in str(info.value)
    assert _only(out) == []


def test_fetch_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/mnist/f.gz"
    with pytest.raises(DatasetError) as info:
        fetch([url], tmp_path / "f.gz", "0" * 32, timeout=5)
    message = str(info.value)
    assert url in message and "cannot connect" in message and "f.gz" in message
    assert _only(tmp_path) == []


def test_fetch_lists_every_failure(server, tmp_path):
    base, _, _ = server
    urls = [f"{base}/missing1", f"http://127.0.0.1:{_closed_port()}/x"]
    with pytest.raises(DatasetError) as info:
        fetch(urls, tmp_path / "f", "0" * 32, timeout=5)
    assert all(u in str(info.value) for u in urls)
    assert "HTTP 404" in str(info.value)


def test_fetch_timeout(server, tmp_path):
    base, _, _ = server
    with pytest.raises(DatasetError) as info:
        fetch([f"{base}/hang/f"], tmp_path / "f", "0" * 32, timeout=0.3, retry_wait=0.01)
    assert "timed out" in str(info.value)
    assert _only(tmp_path) == ["srv"]


def test_fetch_interrupted_cleans_up(server, tmp_path):
    base, folder, _ = server
    (folder / "big").write_bytes(b"\x00" * 500_000)
    out = tmp_path / "out"

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch([f"{base}/big"], out / "big", _md5(folder / "big"), interrupt)
    assert _only(out) == []


def test_fetch_writes_a_file_with_normal_permissions(server, tmp_path):
    import os

    base, folder, _ = server
    (folder / "f.gz").write_bytes(b"payload")
    old = os.umask(0o022)
    try:
        dest = fetch([f"{base}/f.gz"], tmp_path / "out" / "f.gz", _md5(folder / "f.gz"))
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o644  # as open() makes it, not mkstemp's 0o600


def test_a_broken_transfer_is_tried_again_on_the_same_mirror(server, tmp_path):
    base, folder, requests = server
    (folder / "f.gz").write_bytes(bytes(range(256)) * 100)
    calls = []
    dest = fetch([f"{base}/flaky/f.gz"], tmp_path / "out" / "f.gz", _md5(folder / "f.gz"),
                 lambda done, total: calls.append(done), retry_wait=0.01)
    assert dest.read_bytes() == (folder / "f.gz").read_bytes()
    assert requests == ["/flaky/f.gz", "/flaky/f.gz"]
    assert calls.count(0) == 2  # progress restarted for the second attempt
    assert _only(dest.parent) == ["f.gz"]


def test_only_broken_transfers_are_retried(server, tmp_path):
    base, folder, requests = server
    with pytest.raises(DatasetError) as info:
        fetch([f"{base}/missing", f"{base}/busy/f"], tmp_path / "f", "0" * 32, retries=2,
              retry_wait=0.01)
    assert requests == ["/missing", "/busy/f", "/busy/f", "/busy/f"]
    assert "HTTP 503" in str(info.value) and "(after 3 attempts)" in str(info.value)
    assert _only(tmp_path) == ["srv"]


def test_a_killed_download_leaves_nothing_after_the_next_one(server, tmp_path):
    """A process killed outright cannot clean up: the next download of the file does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    base, folder, _ = server
    (folder / "f.gz").write_bytes(b"payload")
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys; from bnnlab.data.download import fetch; "
            "fetch([sys.argv[1]], sys.argv[2], '0' * 32, timeout=60, retries=0)")
    child = subprocess.Popen([sys.executable, "-c", code, f"{base}/hang/f.gz", str(out / "f.gz")])
    try:
        end = time.monotonic() + 60
        while not list(out.iterdir()) and time.monotonic() < end:
            time.sleep(0.05)
        assert len(list(out.iterdir())) == 1  # its temporary file, mid-download
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(list(out.iterdir())) == 1
    fetch([f"{base}/f.gz"], out / "f.gz", _md5(folder / "f.gz"))
    assert _only(out) == ["f.gz"] and os.access(out / "f.gz", os.R_OK)


def test_fetch_with_no_mirrors(tmp_path):
    with pytest.raises(DatasetError, match="no mirror"):
        fetch([], tmp_path / "f", "0" * 32)


def test_mirror_env_comes_first(monkeypatch):
    monkeypatch.setenv("BNNLAB_MIRROR", "http://127.0.0.1:9/m/")
    assert mirror_urls("mnist", "a.gz", ["http://127.0.0.1:9/base"]) == [
        "http://127.0.0.1:9/m/mnist/a.gz", "http://127.0.0.1:9/base/a.gz"]


# ------------------------------------------------------------------- download via the registry

def test_load_downloads_into_cache(server, monkeypatch):
    base, folder, requests = server
    md5s = write_fake_files(folder / "mnist", n_train=40, n_test=20)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    monkeypatch.setenv("BNNLAB_MIRROR", base)
    calls = []
    ds = load_dataset("mnist", progress=lambda d, t: calls.append((d, t)))
    target = cache_root() / "mnist"
    assert ds.source == str(target)
    assert _only(target) == sorted(FILES)
    assert sorted(requests) == sorted(f"/mnist/{f}" for f in FILES)
    assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    assert {t for _, t in calls} == {(folder / "mnist" / f).stat().st_size for f in FILES}
    # Cached now: no server needed.
    monkeypatch.setenv("BNNLAB_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    again = load_dataset("mnist", download=False)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_train_shows_the_download_on_a_terminal(server, monkeypatch, capsys):
    import io
    import re
    import sys

    from bnnlab.cli import main

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    base, folder, _ = server
    md5s = write_fake_files(folder / "mnist", n_train=64, n_test=20)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    monkeypatch.setenv("BNNLAB_MIRROR", base)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["train", "larq-mnist-bnn", "--epochs", "1"]) == 0
    drawn = sys.stderr.getvalue()
    # one bar for the four files, restarting at 0 with each file's size, then the training's
    assert re.search(r"downloading mnist: +0%\|", drawn)
    assert drawn.index("downloading") < drawn.index("epoch 1/1") and drawn.endswith("\r")
    assert len(re.findall(r"downloading mnist: +0%", drawn)) == len(FILES)
    assert "epoch 1/1" in capsys.readouterr().out


def test_download_fetches_only_missing_files(server, monkeypatch):
    base, folder, requests = server
    md5s = write_fake_files(folder / "kmnist")
    monkeypatch.setitem(FILE_DATASETS, "kmnist", fake_spec("kmnist", md5s,
                                                           mirrors=(f"{base}/kmnist/",)))
    target = cache_root() / "kmnist"
    target.mkdir(parents=True)
    for name in FILES[:2]:
        (target / name).write_bytes((folder / "kmnist" / name).read_bytes())
    load_dataset("kmnist")
    assert sorted(requests) == sorted(f"/kmnist/{f}" for f in FILES[2:])


def test_download_failure_explains_the_fix(server, monkeypatch):
    base, _, _ = server
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", {}, mirrors=(f"{base}/none/",)))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "HTTP 404" in message and "--data-dir" in message and "BNNLAB_DATA_DIR" in message
    assert not list((cache_root() / "mnist").iterdir())


# ------------------------------------------------------------------------------ look-up order

def _fake_everywhere(tmp_path, monkeypatch):
    folders = {k: tmp_path / k / "mnist" for k in ("arg", "env", "cache", "system")}
    folders["cache"] = cache_root() / "mnist"
    folders["system"] = tmp_path / "usr-share"
    md5s = {}
    for folder in folders.values():
        md5s = write_fake_files(folder)  # same seed: identical files, identical checksums
    monkeypatch.setitem(FILE_DATASETS, "mnist",
                        fake_spec("mnist", md5s, system_dirs=(str(folders["system"]),)))
    monkeypatch.setenv("BNNLAB_DATA_DIR", str(tmp_path / "env"))
    return folders


def test_lookup_order(tmp_path, monkeypatch):
    folders = _fake_everywhere(tmp_path, monkeypatch)
    assert load_dataset("mnist", tmp_path / "arg", download=False).source == str(folders["arg"])
    assert load_dataset("mnist", download=False).source == str(folders["env"])
    monkeypatch.delenv("BNNLAB_DATA_DIR")
    assert load_dataset("mnist", download=False).source == str(folders["cache"])
    for f in FILES:
        (folders["cache"] / f).unlink()
    assert load_dataset("mnist", download=False).source == str(folders["system"])


def test_data_dir_without_the_dataset_falls_through(tmp_path, monkeypatch):
    folders = _fake_everywhere(tmp_path, monkeypatch)
    (tmp_path / "empty").mkdir()
    ds = load_dataset("mnist", tmp_path / "empty", download=False)
    assert ds.source == str(folders["env"])


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch):
    folders = _fake_everywhere(tmp_path, monkeypatch)
    (folders["arg"] / FILES[3]).unlink()
    assert load_dataset("mnist", tmp_path / "arg", download=False).source == str(folders["env"])


def test_xdg_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("BNNLAB_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "bnnlab" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "bnnlab" / "datasets"


def test_missing_without_download_explains_the_fix(tmp_path):
    (tmp_path / "d" / "mnist").mkdir(parents=True)
    write_idx(tmp_path / "d" / "mnist" / FILES[0], np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "d", download=False)
    message = str(info.value)
    for part in ("--data-dir", "BNNLAB_DATA_DIR", "download", str(tmp_path / "d" / "mnist"),
                 "only 1 of 4", str(cache_root() / "mnist"), FILES[0]):
        assert part in message


# ------------------------------------------------------------------------ verifying the files

def _install(tmp_path, monkeypatch, name="mnist", **kwargs) -> Path:
    folder = tmp_path / "d" / name
    md5s = write_fake_files(folder, **kwargs)
    monkeypatch.setitem(FILE_DATASETS, name, fake_spec(name, md5s))
    return folder


def test_fake_dataset_loads(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, n_train=30, n_test=10)
    ds = load_dataset("MNIST", tmp_path / "d", download=False)
    assert ds.name == "mnist" and ds.kind == "image" and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.y_test.shape == (10,)
    raw = np.frombuffer(gzip.decompress((tmp_path / "d/mnist" / FILES[0]).read_bytes())[16:],
                        np.uint8)
    np.testing.assert_array_equal(ds.x_train.ravel(), raw.astype(np.float32) / 255)


def test_uncompressed_names_are_accepted(tmp_path, monkeypatch):
    folder = tmp_path / "d" / "mnist"
    md5s = write_fake_files(folder, gz=False)
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
    assert _only(folder) == sorted(f.removesuffix(".gz") for f in FILES)
    assert load_dataset("mnist", tmp_path / "d", download=False).x_train.shape[0] == 30


def test_limits_take_the_first_examples(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    full = load_dataset("mnist", tmp_path / "d", download=False)
    part = load_dataset("mnist", tmp_path / "d", download=False, limit_train=7, limit_test=3)
    np.testing.assert_array_equal(part.x_train, full.x_train[:7])
    np.testing.assert_array_equal(part.y_test, full.y_test[:3])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_limits(bad):
    with pytest.raises(DatasetError, match="limit_train"):
        load_dataset("circle", limit_train=bad)


def test_checksum_mismatch_names_file_folder_and_fix(tmp_path, monkeypatch):
    folder = _install(tmp_path, monkeypatch)
    write_idx(folder / FILES[1], np.zeros(30, np.uint8))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "d", download=False)
    message = str(info.value)
    assert str(folder / FILES[1]) in message and "checksum mismatch" in message
    assert "Delete it" in message and "--data-dir" in message


def test_damaged_file_is_reported(tmp_path, monkeypatch):
    folder = _install(tmp_path, monkeypatch)
    (folder / FILES[2]).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match=FILES[2]):
        load_dataset("mnist", tmp_path / "d", download=False)


def _reinstall_md5s(folder: Path, monkeypatch, name="mnist"):
    md5s = {f: _md5(folder / f) for f in FILES}
    monkeypatch.setitem(FILE_DATASETS, name, fake_spec(name, md5s))


def test_label_out_of_range(tmp_path, monkeypatch):
    folder = _install(tmp_path, monkeypatch, num_classes=11)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "d", download=False)
    assert FILES[1] in str(info.value) and "out of range" in str(info.value)
    assert folder.exists()


def test_count_mismatch(tmp_path, monkeypatch):
    folder = _install(tmp_path, monkeypatch)
    write_idx(folder / FILES[3], np.zeros(9, np.uint8))
    _reinstall_md5s(folder, monkeypatch)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path / "d", download=False)
    assert FILES[2] in str(info.value) and FILES[3] in str(info.value)


def test_wrong_kind_of_file(tmp_path, monkeypatch):
    folder = _install(tmp_path, monkeypatch)
    write_idx(folder / FILES[0], np.zeros((30, 28, 28), np.float32))
    _reinstall_md5s(folder, monkeypatch)
    with pytest.raises(DatasetError, match="uint8 images"):
        load_dataset("mnist", tmp_path / "d", download=False)


# ------------------------------------------------------------------------------- the registry

def test_names_and_info():
    names = dataset_names()
    assert names[:3] == ["mnist", "fashion-mnist", "kmnist"]
    assert {"digits", "circle", "xor", "gauss", "spiral", "moons"} <= set(names)
    info = dataset_info("kmnist")
    assert info.needs_files and info.kind == "image" and info.input_shape == (28, 28, 1)
    assert info.class_names == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    assert dataset_info("fashion_mnist").class_names[-1] == "Ankle boot"
    assert not dataset_info("spiral").needs_files


def test_unknown_name_lists_valid_ones():
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar")
    assert "cifar" in str(info.value) and all(n in str(info.value) for n in dataset_names())
    with pytest.raises(DatasetError):
        dataset_info("nope")


# ------------------------------------------------------------------------------ the real files

REAL_MNIST = Path("/work/shared/data/mnist")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="no local MNIST copy")
def test_real_mnist(monkeypatch):
    monkeypatch.undo()  # the real registry entries and checksums
    monkeypatch.setenv("BNNLAB_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    ds = load_dataset("mnist", REAL_MNIST.parent, download=False)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train[0] == 5 and ds.y_train.dtype == np.int64
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() < ds.x_train.max() == 1.0
    assert np.bincount(ds.y_test).sum() == 10000 and ds.source == str(REAL_MNIST)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist missing")
def test_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.undo()
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    ds = load_dataset("fashion-mnist", download=False, limit_train=100)
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.x_train.shape == (100, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.class_names[9] == "Ankle boot" and ds.y_train[0] == 9
