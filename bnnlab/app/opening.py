"""Open any file bnnlab reads: a ``.bnn`` model, a Keras/Larq ``.h5``, a checkpoint
``.npz`` or a scene ``.toml``, told apart by their first bytes and then by their suffix.

:func:`open_any` is the one place that decides what a file is; the command line, the
app's File menu, drag-and-drop and ``bnnlab PATH`` all call it.

How a file is recognised (:func:`sniff`):

* the ``.bnn`` magic bytes (``89 42 4E 4E 0D 0A 1A 0A``) make a ``.bnn`` model;
* the HDF5 signature (``89 48 44 46 0D 0A 1A 0A``, at offset 0 or after a user block
  of 512, 1024, 2048, ... bytes) makes a Keras/Larq model;
* a zip archive makes a checkpoint (NumPy's ``.npz`` is a zip of ``.npy`` files), unless
  it holds Keras 3's ``config.json``, which is named as unsupported;
* UTF-8 text makes a scene.

The content decides, whatever the suffix says (a ``.bnn`` file renamed ``.h5`` still
opens as a ``.bnn``). Only when the content matches none of them does the suffix choose
the reader, so that a damaged file gets that reader's precise complaint (a truncated
``.bnn`` reports the truncation, not "unknown type"). Every failure is an
:class:`OpenError` whose message starts with the path.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

__all__ = ["KINDS", "OpenError", "SUFFIXES", "open_any", "sniff"]

# kind -> what it is, for messages
KINDS = {
    "bnn": "a .bnn model",
    "keras": "a Keras/Larq .h5 model",
    "checkpoint": "a bnnlab checkpoint (.npz)",
    "scene": "a scene (.toml)",
}
SUFFIXES = {".bnn": "bnn", ".h5": "keras", ".hdf5": "keras", ".keras": "keras",
            ".npz": "checkpoint", ".toml": "scene"}

_BNN_MAGIC = b"\x89BNN\r\n\x1a\n"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_SNIFF_BYTES = 4096


class OpenError(ValueError):
    """A file that cannot be opened; the message names the file and the reason."""


def _head_kind(path: str, head: bytes) -> str | None:
    if head.startswith(_BNN_MAGIC):
        return "bnn"
    if head.startswith(_HDF5_MAGIC):
        return "keras"
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    offset = 512  # HDF5 allows a user block before the superblock, of 512 * 2**k bytes
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while offset + 8 <= min(size, 1 << 20):
                f.seek(offset)
                if f.read(8) == _HDF5_MAGIC:
                    return "keras"
                offset *= 2
    except OSError:
        return None
    if not head or b"\x00" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut by the sniff window
            return None
    return "text"


def sniff(path: str | os.PathLike) -> str:
    """The kind of file at ``path``: ``"bnn"``, ``"keras"``, ``"checkpoint"`` or ``"scene"``.

    Raises :class:`OpenError` for a missing file, a folder, an unreadable file, a Keras 3
    ``.keras`` archive, and a file that neither its content nor its suffix identifies.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise OpenError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OpenError(f"{path}: is a folder, not a model or scene file") from None
    except OSError as exc:
        raise OpenError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = _head_kind(path, head)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError):
            names = set()  # damaged: the checkpoint reader says how
        if "config.json" in names and not any(n.endswith(".npy") for n in names):
            raise OpenError(f"{path}: a Keras 3 .keras archive, which bnnlab does not read; "
                            "save the model as HDF5 with model.save('model.h5')")
        return "checkpoint"
    if kind in ("bnn", "keras"):
        return kind
    if kind == "text" and SUFFIXES.get(suffix, "scene") == "scene":
        return "scene"
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]  # the reader for the suffix says what is wrong
    what = "an empty file" if not head else "text" if kind == "text" else "binary data"
    raise OpenError(f"{path}: {what} of unknown type; bnnlab opens .bnn models, Keras/Larq .h5 "
                    "models, checkpoints (.npz) and scenes (.toml)")


def open_any(path: str | os.PathLike, want: str | None = None, *, input_scale: str | None = None):
    """Open ``path`` as what it is: an :class:`~bnnlab.app.models.OpenedModel` for the three
    model kinds, a :class:`~bnnlab.io.scenes.Scene` for a scene.

    ``want="model"`` or ``want="scene"`` refuses the other with an :class:`OpenError`.
    ``input_scale`` ("unit" or "symmetric") says how a Keras model's images were scaled
    in training, which its file does not record (default "unit", as Larq's examples do);
    ``.bnn`` files and checkpoints record it themselves.

    Every failure (missing, damaged or unsupported file) is an :class:`OpenError` whose
    message starts with the path and is fit to show as is.
    """
    path = os.fspath(path)
    kind = sniff(path)
    if want not in (None, "model", "scene"):
        raise ValueError(f"want must be None, 'model' or 'scene', not {want!r}")
    if want == "model" and kind == "scene":
        what = "a scene" if Path(path).suffix.lower() == ".toml" else "text"
        raise OpenError(f"{path}: {what}, not a model file (.bnn, .h5 or .npz)")
    if want == "scene" and kind != "scene":
        raise OpenError(f"{path}: {KINDS[kind]}, not a scene (.toml)")
    if kind == "scene":
        from ..io.scenes import SceneError, load_scene

        try:
            return load_scene(path)
        except SceneError as exc:
            raise OpenError(str(exc)) from None
    from ..deploy.fold import ExportError
    from ..deploy.format import ModelFileError
    from ..deploy.larq_import import LarqImportError
    from ..io.checkpoints import CheckpointError
    from .models import OpenedModel

    try:
        return OpenedModel.load(path, kind, input_scale=input_scale)
    except (ModelFileError, LarqImportError, CheckpointError, ExportError, OSError) as exc:
        msg = str(exc)
        raise OpenError(msg if msg.startswith(path) else f"{path}: {msg}") from None
