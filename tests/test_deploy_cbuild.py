"""Size builds of the exported C: the Makefile runs what the measurement runs, the Cortex-M
images build under -Werror for every kind of block, and the CLI prints flash and RAM."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.deploy import cbuild
from bnnlab.deploy.cbuild import TARGETS, commands, makefile, measure, missing_tools
from bnnlab.deploy.cexport import export_c
from bnnlab.deploy.fold import fold_model
from bnnlab.deploy.format import write_file
from bnnlab.deploy.larq_import import import_larq
from bnnlab.deploy.samples import random_model_file

LARQ_H5 = "/work/shared/testdata/larq/larq_mnist_bnn.h5"
ARM = missing_tools("cortex-m0plus")
needs_arm = pytest.mark.skipif(ARM is not None, reason=f"Cortex-M toolchain: {ARM}")
needs_host = pytest.mark.skipif(missing_tools("host") is not None,
                                reason=f"host toolchain: {missing_tools('host')}")


def _larq_c(folder):
    pytest.importorskip("h5py")
    mf = fold_model(import_larq(LARQ_H5), class_names=list("0123456789"))
    return mf, export_c(mf, folder)


def test_the_makefile_runs_the_measured_commands():
    text = makefile()
    for key, t in TARGETS.items():
        prefix = "$(ARM_PREFIX)" if t.prefix else ""
        assert f"\n{t.name}: bnn-{key}.elf\n" in text
        for cmd in commands(key, prefix):
            assert "\t" + " ".join(cmd) + "\n" in text
    assert "-mcpu=cortex-m0plus -mthumb" in text
    assert "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16" in text
    assert text.count("-nostdlib -nostartfiles") == len(TARGETS)


@needs_arm
def test_cortex_m_images_of_the_larq_model(tmp_path):
    _mf, info = _larq_c(tmp_path / "c")
    m0, m4 = measure(tmp_path / "c", "cortex-m0plus"), measure(tmp_path / "c", "cortex-m4")
    for m in (m0, m4):
        # the const tables are the export's, word for word; code and libgcc come on top
        assert m["rodata"] >= info.table_bytes and m["flash"] == m["text"] + m["data"]
        assert m["text"] == m["code"] + m["rodata"] and m["data"] == 0
        # buffers + 784 input bytes + 10 float logits + the class the entry stores
        assert m["bss"] == info.ram_bytes + 784 + 40 + 4
        assert m["stack_static"] and 0 < m["stack_bound"] < 1024
        assert m["ram"] == m["bss"] + m["stack_bound"]
        assert "__popcountsi2" in m["helpers"]  # libgcc counts the bits
        # no division routine: every division is by a power of two
        assert not [h for h in m["helpers"] if "div" in h or "mod" in h]
    assert "__aeabi_fmul" in m0["helpers"]  # no FPU on the M0+: soft float from libgcc
    assert "__aeabi_fmul" not in m4["helpers"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == \
        ["Makefile", "bnn_entry.c", "bnn_model.c", "bnn_model.h", "main.c"]  # built elsewhere
    if shutil.which("make"):
        out = subprocess.run(["make", "-s", "cortex-m0plus"], cwd=tmp_path / "c", check=True,
                             capture_output=True, text=True).stdout
        text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
        assert (text, data, bss) == (m0["text"], m0["data"], m0["bss"])
        export_c(_mf, tmp_path / "c")  # a new export removes the old build
        assert not (tmp_path / "c" / "bnn-cortex-m0plus.elf").exists()


@needs_arm
@pytest.mark.parametrize("seed", range(6))
def test_every_block_kind_builds_for_cortex_m(tmp_path, seed):
    """Random models (float and integer first layers, int32 and int16 thresholds, every
    padding and pooling) build under -Werror, where int32_t is a long and int 32 bits."""
    rng = np.random.default_rng(seed)
    mf = random_model_file(rng)
    export_c(mf, tmp_path / "c")
    for key in ("cortex-m0plus", "cortex-m4"):
        m = measure(tmp_path / "c", key)
        assert not [h for h in m["helpers"] if "div" in h or "mod" in h], m["helpers"]


@needs_host
def test_cli_prints_flash_and_ram(tmp_path, capsys):
    mf, _ = _larq_c(tmp_path / "first")
    write_file(tmp_path / "m.bnn", mf)
    assert main(["export", str(tmp_path / "m.bnn"), "--c", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"host \(.*\) +flash +[\d,]+ bytes", out)
    if ARM is None:
        for title in ("Cortex-M0+", "Cortex-M4F"):
            assert re.search(rf"{re.escape(title)} +flash +1\d,\d\d\d bytes .* RAM +[12],\d\d\d", out)
    assert main(["export", str(tmp_path / "m.bnn"), "--c", str(tmp_path / "out"), "--json"]) == 0
    import json

    sizes = json.loads(capsys.readouterr().out)["c_sizes"]
    assert sizes["host"]["flash"] > 12_000


@needs_host
def test_cli_without_the_arm_toolchain_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(cbuild.shutil, "which",
                        lambda name: None if name.startswith("arm-none-eabi-") else real(name))
    mf, _ = _larq_c(tmp_path / "first")
    write_file(tmp_path / "m.bnn", mf)
    assert main(["export", str(tmp_path / "m.bnn"), "--c", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    missing = [ln for ln in lines if "not installed" in ln]
    assert len(missing) == 1 and "Cortex-M0+, Cortex-M4F" in missing[0]
    assert "arm-none-eabi-gcc is not installed" in missing[0] and "gcc-arm-none-eabi" in missing[0]
    assert any(re.search(r"host \(.*\) +flash", ln) for ln in lines)
