"""A desktop program's habits: version, freedesktop entry and icon, Help > About."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from bnnlab.app.about import about_sections, version
from bnnlab.cli import main
from bnnlab.io.desktop import desktop_entry, icon_bytes, install_desktop, uninstall_desktop


def test_version_flag_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"bnnlab {version()}"
    assert out.split()[1][0].isdigit()


def _exec_argv(entry: str) -> str:
    (line,) = [ln for ln in entry.splitlines() if ln.startswith("Exec=")]
    return line[len("Exec="):]


def test_exec_line_quotes_reserved_characters():
    entry = desktop_entry(["/opt/my apps/py$thon", "-m", "bnnlab", "50%"])
    # Spaces force quotes, $ is escaped inside them, % doubled, and the backslash that
    # escapes it is written twice in a desktop-entry string.
    assert _exec_argv(entry) == '"/opt/my apps/py\\\\$thon" -m bnnlab 50%% %f'
    with pytest.raises(ValueError):
        desktop_entry(["/bin/evil\nName=x"])


def test_install_writes_a_valid_entry_and_icon_and_remove_takes_them(tmp_path):
    paths = install_desktop(tmp_path, command=["/usr/bin/bnnlab"])
    entry, icon = paths
    assert entry == tmp_path / "applications" / "bnnlab.desktop"
    assert icon == tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "bnnlab.svg"
    text = entry.read_text()
    assert "Exec=/usr/bin/bnnlab %f" in text and "Icon=bnnlab" in text
    assert "StartupWMClass=bnnlab" in text
    assert icon.read_bytes() == icon_bytes() and icon_bytes().lstrip().startswith(b"<svg")
    if shutil.which("desktop-file-validate"):
        r = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
        assert r.returncode == 0 and "error" not in r.stdout, r.stdout
    assert uninstall_desktop(tmp_path) == paths
    assert not entry.exists() and not icon.exists()
    assert uninstall_desktop(tmp_path) == []


def test_install_desktop_command_into_an_unwritable_place_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["install-desktop", "--data-home", str(blocker)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0]


def test_about_names_version_popcount_and_data_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("BNNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("BNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "mnist").mkdir()
    sections = dict(about_sections(data_dir=str(tmp_path)))
    assert dict(sections["bnnlab"])["Version"] == version()
    kernels = dict(sections["Kernels"])
    from bnnlab.core import kernels as k

    assert kernels["Popcount"].startswith(k.POPCOUNT_MODE)
    folders = dict(sections["Folders"])
    assert "Dataset mnist" in folders and "Presets" in folders
    # MNIST is nowhere: the places looked in are named, the empty --data-dir folder first.
    assert folders["Dataset mnist"].startswith("not found (looked in: " + str(tmp_path / "mnist"))
    assert str(tmp_path / "cache" / "mnist") in folders["Dataset mnist"]


@pytest.mark.gui
def test_about_dialog_and_window_icon(qtbot):
    from bnnlab.gui.about import AboutDialog, app_icon

    assert not app_icon().isNull()
    dialog = AboutDialog(data_dir=None)
    qtbot.addWidget(dialog)
    text = dialog.label.text()
    assert version() in text and "Popcount" in text and "Presets" in text
