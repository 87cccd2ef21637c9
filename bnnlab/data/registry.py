"""The dataset registry: which names exist, where their files are looked for, and loading.

File datasets (MNIST and its look-alikes) are looked for, per dataset ``<name>``, in:

1. ``<data_dir>/<name>/`` for the ``data_dir`` argument (the CLI's ``--data-dir``);
2. ``$BNNLAB_DATA_DIR/<name>/``;
3. the cache, ``$BNNLAB_CACHE_DIR/<name>/``, else ``$XDG_CACHE_HOME/bnnlab/datasets/<name>/``,
   else ``~/.cache/bnnlab/datasets/<name>/``;
4. folders where system packages install the set (Debian's ``dataset-fashion-mnist``).

The first folder holding all four files is used, after checking every file's checksum; when
none does, the files are downloaded into the cache (unless ``download=False``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import digits, toy
from .dataset import Dataset, DatasetError, DatasetInfo
from .download import CACHE_ENV, ProgressFn, fetch, mirror_urls
from .idx import decode_idx, decode_idx_header, encode_idx, is_gzip

__all__ = [
    "BUILTIN_DATASETS", "CACHE_ENV", "DATA_DIR_ENV", "FILE_DATASETS", "SPLITS", "FileDatasetSpec", "FileSpec",
    "cache_root", "dataset_folders", "dataset_info", "dataset_names", "load_dataset",
]

DATA_DIR_ENV = "BNNLAB_DATA_DIR"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, by its original name.

    ``md5`` is the checksum of the file as published (gzipped). ``raw_md5`` is that of its
    uncompressed IDX content, which also identifies copies that were gunzipped or re-gzipped
    (Debian re-gzips Fashion-MNIST); ``None`` when no trustworthy value is known. ``shape`` is
    that of the published array: a copy whose checksum differs must announce it in its header
    before anything beyond the header is inflated.
    """

    filename: str
    md5: str
    raw_md5: str | None = None
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class FileDatasetSpec:
    name: str
    title: str
    description: str
    class_names: tuple[str, ...]
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[FileSpec, FileSpec, FileSpec, FileSpec]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def split_files(self, splits: tuple[str, ...]) -> tuple[FileSpec, ...]:
        """The files holding ``splits`` (``"train"``, ``"test"``), images before labels."""
        pairs = {"train": (self.train_images, self.train_labels),
                 "test": (self.test_images, self.test_labels)}
        return tuple(f for split in SPLITS if split in splits for f in pairs[split])


def _mnist_files(md5s: tuple[str, str, str, str],
                 raw_md5s: tuple[str | None, ...] = (None,) * 4) -> dict[str, FileSpec]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    roles = ("train_images", "train_labels", "test_images", "test_labels")
    shapes = ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    rows = zip(roles, names, md5s, raw_md5s, shapes, strict=True)
    return {role: FileSpec(n, m, r, s) for role, n, m, r, s in rows}


# Published md5s of the .gz files: MNIST's are those torchvision checks;
# Fashion-MNIST's are from its README; KMNIST's are torchvision's (its authors publish none).
# The raw md5s were computed from verified copies (MNIST, and Debian's Fashion-MNIST, whose
# content md5s match those published for the upstream files).
FILE_DATASETS: dict[str, FileDatasetSpec] = {
    "mnist": FileDatasetSpec(
        name="mnist",
        title="MNIST",
        description="Handwritten digits, 28x28 grayscale; 60,000 train / 10,000 test.",
        class_names=tuple("0123456789"),
        **_mnist_files(
            ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
             "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
            ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
             "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": FileDatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        description="Zalando clothing images, 28x28 grayscale; 60,000 train / 10,000 test.",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        **_mnist_files(
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
             "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
            ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
             "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "kmnist": FileDatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST",
        description="Cursive Japanese hiragana (kuzushiji), 28x28 grayscale; "
                    "60,000 train / 10,000 test.",
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        **_mnist_files(
            ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
             "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
        ),
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                 "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    ),
}


@dataclass(frozen=True)
class _Builtin:
    info: DatasetInfo
    build: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _points_builtin(name: str, title: str, description: str) -> _Builtin:
    info = DatasetInfo(name, title, "points", description, False, toy.CLASS_NAMES, (2,))
    return _Builtin(info, lambda seed: toy.make_split(name, seed))


BUILTIN_DATASETS: dict[str, _Builtin] = {
    "digits": _Builtin(
        DatasetInfo("digits", "Synthetic digits", "image",
                    "Procedurally drawn digits in MNIST's format, 28x28 grayscale; "
                    f"{digits.DEFAULT_TRAIN} train / {digits.DEFAULT_TEST} test. Needs no files.",
                    False, digits.CLASS_NAMES, (digits.SIZE, digits.SIZE, 1)),
        digits.make_split,
    ),
    "circle": _points_builtin("circle", "Circle", "A disc of one class in a ring of the other."),
    "xor": _points_builtin("xor", "XOR", "Four quadrants; the class is the sign of x*y."),
    "gauss": _points_builtin("gauss", "Gaussian", "Two Gaussian blobs."),
    "spiral": _points_builtin("spiral", "Spiral", "Two interleaved spirals."),
    "moons": _points_builtin("moons", "Moons", "Two interleaved half circles."),
}


def dataset_names() -> list[str]:
    """Every registered name: file datasets first, then the built-in ones."""
    return [*FILE_DATASETS, *BUILTIN_DATASETS]


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in FILE_DATASETS and key not in BUILTIN_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset (no loading, no I/O)."""
    key = _canonical(name)
    if key in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[key].info
    spec = FILE_DATASETS[key]
    return DatasetInfo(key, spec.title, "image", spec.description, True, spec.class_names,
                       (28, 28, 1))


def cache_root() -> Path:
    """Folder holding one sub-folder of downloaded files per dataset."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "bnnlab" / "datasets"


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: ProgressFn | None = None,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """Load a registered dataset by name.

    File datasets are found as described in this module's docstring; ``progress`` reports
    ``(bytes_done, bytes_total)`` per downloaded file, restarting at 0 for each. Built-in sets
    are generated from ``seed``. ``limit_train``/``limit_test`` keep only the first N examples.
    ``splits`` names the splits wanted: a split left out is neither looked for, read nor
    downloaded, and comes back with no examples (``splits=("test",)`` to evaluate a model).
    Every failure raises :class:`DatasetError` with a message fit to show as is.
    """
    key = _canonical(name)
    for label, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        valid = isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1
        if limit is not None and not valid:
            raise DatasetError(f"{label} must be a positive integer or None, not {limit!r}")
    splits = tuple(splits)
    if not splits or any(s not in SPLITS for s in splits):
        raise DatasetError(f"splits must name some of {', '.join(SPLITS)}, not {splits!r}")
    limits = {"train": limit_train if "train" in splits else 0,
              "test": limit_test if "test" in splits else 0}
    if key in BUILTIN_DATASETS:
        builtin = BUILTIN_DATASETS[key]
        x_tr, y_tr, x_te, y_te = builtin.build(seed)
        return Dataset(key, x_tr[:limits["train"]], y_tr[:limits["train"]], x_te[:limits["test"]],
                       y_te[:limits["test"]], builtin.info.class_names, builtin.info.kind,
                       "built-in")
    spec = FILE_DATASETS[key]
    folder = _find_or_download(spec, data_dir, download, progress, spec.split_files(splits))
    pairs = {"train": (spec.train_images, spec.train_labels),
             "test": (spec.test_images, spec.test_labels)}
    arrays = {}
    for split, (images, labels) in pairs.items():
        if split in splits:
            arrays[split] = _load_pair(spec, folder, images, labels, limits[split])
        else:
            side = images.shape[1:]
            arrays[split] = (np.zeros((0, *side, 1), np.float32), np.zeros(0, np.int64))
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    return Dataset(key, x_tr, y_tr, x_te, y_te, spec.class_names, "image", str(folder))


# ----------------------------------------------------------------------------- finding files

def _candidates(spec: FileDatasetSpec,
                data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    env = os.environ.get(DATA_DIR_ENV)
    return [
        ("data_dir argument", Path(data_dir).expanduser() / spec.name if data_dir else None),
        (f"${DATA_DIR_ENV}", Path(env).expanduser() / spec.name if env else None),
        ("cache", cache_root() / spec.name),
        *(("system package", Path(d)) for d in spec.system_dirs),
    ]


def _locate(folder: Path, file: FileSpec) -> Path | None:
    """The file under its original name, or under the same name without ``.gz``."""
    for candidate in (folder / file.filename, folder / file.filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_or_download(spec: FileDatasetSpec, data_dir: str | os.PathLike | None, download: bool,
                      progress: ProgressFn | None, files: tuple[FileSpec, ...]) -> Path:
    looked = []
    for label, folder in _candidates(spec, data_dir):
        if folder is None:
            looked.append(f"  {label}: not set")
            continue
        found = sum(_locate(folder, f) is not None for f in files)
        if found == len(files):
            return folder
        state = f"only {found} of {len(files)} files" if found else "missing"
        looked.append(f"  {folder} ({label}): {state}")
    fix = (f"pass --data-dir DIR (data_dir=DIR) where DIR/{spec.name}/ holds "
           f"{', '.join(f.filename for f in files)} (or the same names without .gz), "
           f"or set {DATA_DIR_ENV}=DIR")
    if not download:
        raise DatasetError(
            f"{spec.title} ({spec.name}): data files not found and downloading is off. Looked in:\n"
            + "\n".join(looked)
            + f"\nTo fix: {fix}, or allow downloading into {cache_root() / spec.name}."
        )
    if data_dir:
        # A folder was named on purpose: a typo in it must not start a download elsewhere.
        raise DatasetError(_no_dataset_in(spec, Path(data_dir).expanduser(), files))
    target = cache_root() / spec.name
    for file in files:
        if _locate(target, file) is None:
            try:
                fetch(mirror_urls(spec.name, file.filename, spec.mirrors), target / file.filename,
                      file.md5, progress)
            except DatasetError as exc:
                raise DatasetError(f"{spec.title} ({spec.name}): {exc}\nOr {fix}.") from None
    return target


def _no_dataset_in(spec: FileDatasetSpec, data_dir: Path, files: tuple[FileSpec, ...]) -> str:
    if not data_dir.is_dir():
        what = "does not exist" if not data_dir.exists() else "is not a folder"
        return (f"--data-dir {data_dir} {what}, so it has no {spec.title} ({spec.name}); fix the "
                f"path, or leave --data-dir out to download {spec.name} into "
                f"{cache_root() / spec.name}")
    sub = data_dir / spec.name
    if all(_locate(data_dir, f) is not None for f in files):
        hint = (f"; the files are in {data_dir} itself: move them into {sub} or pass the folder "
                "above it")
    else:
        present = sum(_locate(sub, f) is not None for f in files)
        hint = f"; {sub} holds {present} of the {len(files)} files needed" if present else ""
    return (f"--data-dir {data_dir} has no {spec.title} dataset: {sub} should hold "
            f"{', '.join(f.filename for f in files)}{hint}. Fix the path, or leave --data-dir out "
            f"to download {spec.name} into {cache_root() / spec.name}")


# ------------------------------------------------------------------------- reading, checking

# Files already checked in this process, keyed so that a changed file or checksum is re-checked.
_verified: set[tuple[str, int, int, str, str | None]] = set()


def _read_verified(spec: FileDatasetSpec, folder: Path, file: FileSpec) -> np.ndarray:
    """The file's array, checked against the release before more than its header is inflated.

    A copy with the published checksum is the release itself. Any other copy (gunzipped,
    re-gzipped, damaged, or lying) must announce the published shape in its header before
    its data is inflated, then match the published content checksum.
    """
    path = _locate(folder, file)
    if path is None:  # vanished since the folder was chosen
        raise DatasetError(f"{folder / file.filename}: file not found")
    try:
        stat = path.stat()
        limit = _size_limit(file)
        if limit is not None and stat.st_size > limit:
            raise DatasetError(
                f"{path}: {stat.st_size} bytes, more than any copy of {spec.title} file "
                f"{file.filename} can hold ({limit}); replace it with the original file")
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, file.md5, file.raw_md5)
    if key in _verified:
        return decode_idx(data, str(path))
    digest = hashlib.md5(data).hexdigest()
    if digest == file.md5:
        array = decode_idx(data, str(path))
        _verified.add(key)
        return array

    def mismatch(detail: str = "") -> DatasetError:
        expected = file.md5 + (f" (or {file.raw_md5} uncompressed)" if file.raw_md5 else "")
        return DatasetError(
            f"{path}: checksum mismatch for {spec.title} file {file.filename} in folder "
            f"{folder}: md5 {digest}, expected {expected}{detail}. The file is damaged or is not "
            f"the original release. Delete it and load again to download a fresh copy, or point "
            f"--data-dir / {DATA_DIR_ENV} at a folder with the original files."
        )

    _, shape = decode_idx_header(data, str(path))
    if file.shape and shape != file.shape:
        raise mismatch(f"; its header announces shape {shape}, the release holds {file.shape}")
    array = decode_idx(data, str(path))
    # An uncompressed copy with no known content checksum can only be checked structurally.
    unverifiable = file.raw_md5 is None and not is_gzip(data)
    if not unverifiable and hashlib.md5(encode_idx(array)).hexdigest() != file.raw_md5:
        raise mismatch()
    _verified.add(key)
    return array


def _size_limit(file: FileSpec) -> int | None:
    """Bytes beyond which no copy of ``file`` (raw, or gzipped at any level) can be genuine."""
    if not file.shape:
        return None
    raw = 4 + 4 * len(file.shape) + math.prod(file.shape)  # uint8 elements
    return raw + raw // 64 + 4096  # deflate expands incompressible data by well under 1%


def _load_pair(spec: FileDatasetSpec, folder: Path, images_file: FileSpec, labels_file: FileSpec,
               limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    images = _read_verified(spec, folder, images_file)
    labels = _read_verified(spec, folder, labels_file)
    img_path = _locate(folder, images_file)
    lbl_path = _locate(folder, labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{img_path}: expected uint8 images of shape (N, H, W), got "
                           f"{images.dtype} {images.shape}; replace it with the original file")
    side = images_file.shape[1:]
    if side and images.shape[1:] != side:
        raise DatasetError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, but "
                           f"{spec.title} images are {side[0]}x{side[1]}; replace it with the "
                           "original file")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{lbl_path}: expected uint8 labels of shape (N,), got "
                           f"{labels.dtype} {labels.shape}; replace it with the original file")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
                           f"{labels.shape[0]} labels; the two files must come from the same "
                           "release")
    num_classes = len(spec.class_names)
    if labels.size and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DatasetError(f"{lbl_path}: label {labels[bad]} at index {bad} is out of range "
                           f"0..{num_classes - 1}; replace it with the original file")
    images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    return x, labels.astype(np.int64)


def dataset_folders(name: str, data_dir: str | os.PathLike | None = None
                    ) -> list[tuple[str, Path | None, int]]:
    """Where a file dataset is looked for, in order: ``(label, folder, files found there)``.

    ``folder`` is None for a place that is not set (no ``--data-dir``, no
    ``$BNNLAB_DATA_DIR``); the first folder with all its files is the one loading uses.
    """
    spec = FILE_DATASETS[_canonical(name)]
    return [(label, folder,
             0 if folder is None else sum(_locate(folder, f) is not None for f in spec.files))
            for label, folder in _candidates(spec, data_dir)]
