"""Files the deploy side writes (.bnn, .npz, scenes, C folders): permissions as any program
would give them, nothing half-written or stray after a kill."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bnnlab.core.layers import BatchNorm, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.deploy import format as F
from bnnlab.deploy.cexport import export_c
from bnnlab.deploy.fold import fold_model
from bnnlab.io.atomic import write_atomic

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX modes, kill")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def model_file(units=8, seed=1):
    m = Sequential([QuantDense(units, kernel_quantizer="ste_sign"), BatchNorm(),
                    QuantDense(3, **BIN), BatchNorm()], (4,), seed=seed)
    return fold_model(m)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path):
    return os.stat(path).st_mode & 0o777


def test_new_files_follow_the_umask(tmp_path, umask):
    from bnnlab.io.checkpoints import save_checkpoint
    from bnnlab.io.scenes import load_preset, save_scene

    for mask, want in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        umask(mask)
        d = tmp_path / f"m{mask:o}"
        d.mkdir()
        F.write_file(d / "m.bnn", model_file())
        save_checkpoint(d / "m.npz", Sequential([QuantDense(2)], (3,)))
        save_scene(load_preset("quickstart"), d / "s.toml")
        export_c(model_file(), d / "c")
        for name in ("m.bnn", "m.npz", "s.toml", "c/bnn_model.c", "c/bnn_model.h", "c/main.c",
                     "c/Makefile"):
            assert mode(d / name) == want, (name, oct(mode(d / name)))
        assert mode(d / "c") == 0o777 & ~mask


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "m.bnn"
    F.write_file(path, model_file())
    os.chmod(path, 0o640)
    F.write_file(path, model_file(seed=2))
    assert mode(path) == 0o640
    export_c(model_file(), tmp_path / "c")
    os.chmod(tmp_path / "c" / "bnn_model.c", 0o600)
    export_c(model_file(seed=2), tmp_path / "c")
    assert mode(tmp_path / "c" / "bnn_model.c") == 0o600
    assert mode(tmp_path / "c" / "main.c") == 0o644


_BLOCKING_WRITER = r"""
import os, sys, time
from bnnlab.io.atomic import write_atomic
path = sys.argv[1]
def write(f):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
write_atomic(path, write)
"""


def _start_and_kill(code, *args, marker="writing"):
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if marker not in line:
        proc.kill()
        raise AssertionError(proc.communicate()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_a_killed_writer_leaves_the_old_file_and_its_temporary_is_cleaned(tmp_path):
    path = tmp_path / "m.bnn"
    F.write_file(path, model_file())
    before = path.read_bytes()
    _start_and_kill(_BLOCKING_WRITER, path)
    assert path.read_bytes() == before
    stray = [p.name for p in tmp_path.iterdir() if p.name != "m.bnn"]
    assert len(stray) == 1  # the killed writer's temporary
    F.write_file(path, model_file(seed=2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.bnn"]
    assert F.read_file(path).blocks[0].out_channels == 8


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    mine = tmp_path / f".m.bnn.tmp-{os.getppid()}-0123abcd"
    mine.write_bytes(b"another process is writing this")
    write_atomic(tmp_path / "m.bnn", lambda f: f.write(b"x"))
    assert mine.exists()


_BLOCKING_EXPORT = r"""
import os, sys, time
import numpy as np
from bnnlab.core.layers import BatchNorm, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.deploy.cexport import export_c
from bnnlab.deploy.fold import fold_model
out = sys.argv[1]
m = Sequential([QuantDense(16, kernel_quantizer="ste_sign"), BatchNorm(),
                QuantDense(3, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
                BatchNorm()], (4,), seed=9)
mf = fold_model(m)
real_replace, real_fsync, calls = os.replace, os.fsync, []
def stall():
    print("writing", flush=True)
    time.sleep(600)
def replace(a, b, **kw):  # a writer that replaces file by file: stop after the first
    real_replace(a, b, **kw)
    calls.append(b)
    if len(calls) == 1:
        stall()
def fsync(fd):  # a writer that syncs its files before swapping them in: stop there
    real_fsync(fd)
    stall()
os.replace, os.fsync = replace, fsync
export_c(mf, out)
"""


def test_a_killed_c_export_leaves_the_old_sources_whole(tmp_path):
    out = tmp_path / "c"
    export_c(model_file(), out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _start_and_kill(_BLOCKING_EXPORT, out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # no new header beside the old .c
    export_c(model_file(seed=3), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # the stale folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["Makefile", "bnn_entry.c", "bnn_model.c",
                                                     "bnn_model.h", "main.c", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_export_into_a_new_folder_and_a_stale_demo_is_removed(tmp_path):
    out = tmp_path / "deep" / "c"
    export_c(model_file(), out)
    (out / "bnn_demo").write_bytes(b"old binary")
    export_c(model_file(seed=4), out)
    assert not (out / "bnn_demo").exists()
    (out / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        export_c(model_file(), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["c"]
    assert np.all([(out / n).exists() for n in ("bnn_model.c", "bnn_model.h")])


def test_write_atomic_fsyncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd)))
    write_atomic(tmp_path / "a.bin", lambda f: f.write(b"1"))
    assert str(tmp_path) in synced  # the folder, after the rename
    assert any(".a.bin.tmp-" in s for s in synced)  # the file, before it
