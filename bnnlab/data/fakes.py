"""Small fake file datasets for tests: real IDX files under the original names, and a registry
entry whose checksums match them, so the full find/verify/load path runs on a few kilobytes.

Typical use with pytest::

    md5s = write_fake_files(tmp_path / "mnist")
    monkeypatch.setitem(FILE_DATASETS, "mnist", fake_spec("mnist", md5s))
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .idx import write_idx
from .registry import FILE_DATASETS, FileDatasetSpec

__all__ = ["fake_spec", "write_fake_files"]


def write_fake_files(folder: str | os.PathLike, *, n_train: int = 30, n_test: int = 10,
                     num_classes: int = 10, image_size: int = 28, seed: int = 0,
                     gz: bool = True) -> dict[str, str]:
    """Write the four MNIST-named IDX files into ``folder``; returns ``{filename: md5}``.

    The images are random noise; with ``gz=False`` the names lack ``.gz``, but the returned keys
    always use the original ``.gz`` names, as the registry does.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = (image_size, image_size)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, *side), np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % num_classes).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, *side), np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % num_classes).astype(np.uint8),
    }
    md5s = {}
    for name, array in arrays.items():
        path = write_idx(folder / (name if gz else name.removesuffix(".gz")), array, compress=gz)
        md5s[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5s


def fake_spec(name: str, md5s: dict[str, str], *, mirrors: tuple[str, ...] = (),
              system_dirs: tuple[str, ...] = ()) -> FileDatasetSpec:
    """The registered spec of ``name`` with checksums ``md5s`` (by file name) and only the given
    mirrors and system folders, so a test never reaches a real server or system install.

    A checksum given for a ``.gz`` name serves as both the file and the content checksum, so
    fakes written with ``gz=False`` are verified too.
    """
    spec = FILE_DATASETS[name]

    def patched(file):
        md5 = md5s.get(file.filename, file.md5)
        return dataclasses.replace(file, md5=md5, raw_md5=md5)

    return dataclasses.replace(
        spec,
        train_images=patched(spec.train_images), train_labels=patched(spec.train_labels),
        test_images=patched(spec.test_images), test_labels=patched(spec.test_labels),
        mirrors=mirrors, system_dirs=system_dirs,
    )
