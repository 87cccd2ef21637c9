"""A desktop program's habits: version, freedesktop entry and icon, Help > About."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from bnnlab.app.about import about_sections, version
from bnnlab.cli import main
from bnnlab.io.desktop import (MIME_TYPE, desktop_entry, icon_bytes, install_desktop, mime_xml,
                               uninstall_desktop)


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
    entry, icon, mime, mime_icon = paths
    assert entry == tmp_path / "applications" / "bnnlab.desktop"
    assert icon == tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "bnnlab.svg"
    text = entry.read_text()
    assert "Exec=/usr/bin/bnnlab %f" in text and "Icon=bnnlab" in text
    assert "StartupWMClass=bnnlab" in text
    assert icon.read_bytes() == icon_bytes() and icon_bytes().lstrip().startswith(b"<svg")
    if shutil.which("desktop-file-validate"):
        r = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
        assert r.returncode == 0 and "error" not in r.stdout, r.stdout
    assert mime == tmp_path / "mime" / "packages" / "bnnlab.xml" and mime.is_file()
    assert mime_icon.read_bytes() == icon_bytes()
    assert uninstall_desktop(tmp_path) == paths
    assert not any(p.exists() for p in paths)
    assert uninstall_desktop(tmp_path) == []


def _mime_match(xml_text: str):
    """(MIME type, glob patterns, [(offset, bytes)] of the string magic) of the one type
    in a shared-mime-info document, read as the specification says."""
    import codecs
    import xml.etree.ElementTree as ET

    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    (mt,) = ET.fromstring(xml_text).findall("m:mime-type", ns)
    globs = [g.get("pattern") for g in mt.findall("m:glob", ns)]
    magic = [(int(m.get("offset")), codecs.escape_decode(m.get("value"))[0])
             for m in mt.findall("m:magic/m:match", ns) if m.get("type") == "string"]
    return mt.get("type"), globs, magic


def test_bnn_files_have_a_mime_type_that_matches_what_the_exporter_writes(tmp_path):
    import fnmatch

    from bnnlab.core.layers import layer_from_config
    from bnnlab.core.model import Sequential
    from bnnlab.deploy import export_model
    from bnnlab.deploy.format import MAGIC

    model = Sequential([layer_from_config({"type": "QuantDense", "units": 3,
                                           "kernel_quantizer": "ste_sign"})], (4,), seed=0)
    path = tmp_path / "model.bnn"
    export_model(model, path)
    data = path.read_bytes()
    mime_type, globs, magic = _mime_match(mime_xml())
    assert mime_type == MIME_TYPE and magic
    assert any(fnmatch.fnmatch(path.name, g) for g in globs)
    assert not any(fnmatch.fnmatch("model.h5", g) for g in globs)
    for offset, value in magic:
        assert data[offset:offset + len(value)] == value == MAGIC
    entry = desktop_entry(["/usr/bin/bnnlab"])
    assert f"MimeType={MIME_TYPE};" in entry.splitlines()


def test_installed_mime_type_is_what_the_desktop_finds(tmp_path):
    # What a file manager sees: Qt's MIME database (the freedesktop one) with the
    # installed folder as XDG_DATA_HOME, for a .bnn file and for the same bytes renamed.
    pytest.importorskip("PySide6")
    home = tmp_path / "share"
    install_desktop(home, command=["/usr/bin/bnnlab"])
    assert _mime_match((home / "mime" / "packages" / "bnnlab.xml").read_text())[0] == MIME_TYPE
    if shutil.which("update-mime-database"):
        assert (home / "mime" / "mime.cache").is_file()  # the database was refreshed
        assert f"{MIME_TYPE}:*.bnn" in (home / "mime" / "globs2").read_text()
    from bnnlab.core.layers import layer_from_config
    from bnnlab.core.model import Sequential
    from bnnlab.deploy import export_model

    model = Sequential([layer_from_config({"type": "QuantDense", "units": 2,
                                           "kernel_quantizer": "ste_sign"})], (3,), seed=0)
    named, renamed = tmp_path / "m.bnn", tmp_path / "m.data"
    export_model(model, named)
    renamed.write_bytes(named.read_bytes())
    code = ("import sys; from PySide6.QtCore import QMimeDatabase; db = QMimeDatabase(); "
            "print(*[db.mimeTypeForFile(p).name() for p in sys.argv[1:]])")
    env = {**__import__("os").environ, "XDG_DATA_HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-c", code, str(named), str(renamed)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [MIME_TYPE, MIME_TYPE]


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
