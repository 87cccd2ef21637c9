"""The wheel and the sdist carry everything the program needs, and an installed wheel runs
outside the source tree (presets, icon, CLI and app start)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["packages"]


def _source_packages() -> set[str]:
    found = set()
    for init in (ROOT / "bnnlab").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if "__pycache__" not in rel.parts:
            found.add(".".join(rel.parts))
    return found


def test_every_package_is_declared():
    declared = set(_declared_packages())
    missing = _source_packages() - declared
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert "bnnlab.presets" in declared


def test_presets_are_the_scenes_folder():
    from bnnlab.io.scenes import preset_dir, preset_names

    assert preset_dir().resolve() == (ROOT / "scenes").resolve()
    assert preset_names() == sorted(p.stem for p in (ROOT / "scenes").glob("*.toml"))
    assert "quickstart" in preset_names()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An sdist built from the checkout, and a wheel built from that sdist (as pip would)."""
    out = tmp_path_factory.mktemp("dist")
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    sdist = out / r.stdout.strip().splitlines()[-1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        str(sdist)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = out.glob("bnnlab-*.whl")
    return sdist, wheel


def test_wheel_built_from_the_sdist_holds_every_preset_module_and_icon(built):
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for toml in (ROOT / "scenes").glob("*.toml"):
        assert f"bnnlab/presets/{toml.name}" in names, f"preset {toml.name} missing from the wheel"
    for py in (ROOT / "bnnlab").rglob("*.py"):
        rel = py.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} missing from the wheel"
    assert "bnnlab/icons/bnnlab.svg" in names
    assert not any(n.startswith(("tests/", "resources/")) for n in names)


def _fresh_env(tmp: Path, wheel: Path) -> Path:
    """A new venv outside the checkout with only the wheel installed as bnnlab.

    Its dependencies (NumPy, Numba, PySide6, ...) are borrowed from the test environment
    through a .pth line, so no download is needed; the test environment's editable
    install of bnnlab is not visible there (a .pth line adds a folder, not its .pth files).
    """
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (purelib / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                        "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return env_dir


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(built, tmp_path):
    _, wheel = built
    env_dir = _fresh_env(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BNNLAB_"))}
    env.update(QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path / "home"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def run(*args, timeout=600):
        r = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True,
                           timeout=timeout)
        assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
        return r.stdout

    py = str(env_dir / "bin" / "python")
    where = run(py, "-c", "import bnnlab, bnnlab.presets as p; print(bnnlab.__file__); print(p.__file__)")
    assert all(line.startswith(str(env_dir)) for line in where.split()), where
    exe = str(env_dir / "bin" / "bnnlab")
    assert run(exe, "--version").strip().startswith("bnnlab ")
    assert "quickstart" in run(exe, "summary", "quickstart")
    out = run(exe, "train", "quickstart", "--epochs", "1", "--json")
    assert '"val_accuracy"' in out
    run(exe, "install-desktop", "--data-home", str(tmp_path / "share"))
    entry = (tmp_path / "share" / "applications" / "bnnlab.desktop").read_text()
    assert f"Exec={exe} %f" in entry
    # The app starts offscreen on its default scene, trains briefly and quits by itself.
    out = run(exe, "gui", "--measure-stall", "1")
    assert "event loop" in out, out
