"""Checkpoints: a model's configuration (JSON) and arrays in one ``.npz`` file, no pickle.

The archive holds ``header`` (UTF-8 JSON as uint8: format name, version, the model's
``config()`` and free-form ``meta``) and one ``w:<layer>/<array>`` entry per array of the
model's ``state_dict()``. Files are written atomically.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from ..core.model import Sequential
from .atomic import write_atomic

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "MAX_HEADER_BYTES", "CheckpointError",
           "load_checkpoint", "save_checkpoint"]


class CheckpointError(Exception):
    """A checkpoint file that cannot be read as a bnnlab model."""


CHECKPOINT_FORMAT = "bnnlab-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: Sequential, meta: dict[str, Any] | None = None) -> None:
    """Write the model's config (JSON) and arrays to an ``.npz`` file, atomically."""
    path = os.fspath(path)
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "model": model.config(), "meta": meta or {}}
    arrays = {f"w:{k}": v for k, v in model.state_dict().items()}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays), suffix=".npz")


#: Ceiling on the JSON header's size; a real one is a few kilobytes.
MAX_HEADER_BYTES = 16 << 20
# Room for the .npy header in front of each array's data.
_NPY_HEADER_ROOM = 1 << 12


def load_checkpoint(path: str | os.PathLike) -> tuple[Sequential, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; (model, meta).

    Nothing is inflated before it is known to be needed and of the right size: the header
    first (its declared size checked), then the model is sized from its configuration
    (refused before allocating if too large), then each array the model needs, its declared
    size checked against the model's. An entry the model does not use is refused unread.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            return _load(zf, path)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (zipfile.BadZipFile, ValueError, EOFError, zlib.error, struct.error, KeyError,
            NotImplementedError, RuntimeError) as exc:
        # Damaged zip or .npy data (zipfile reports some damage as an unsupported version or
        # an encrypted entry); json errors are ValueErrors, deep nesting a RecursionError.
        raise CheckpointError(f"{path}: not a readable bnnlab checkpoint ({exc})") from None


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _load(zf: zipfile.ZipFile, path: str) -> tuple[Sequential, dict[str, Any]]:
    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: {reason}")

    entries = {info.filename: info for info in zf.infolist()}
    info = entries.get("header.npy")
    if info is None:
        raise fail("not a bnnlab checkpoint (no header)")
    if info.file_size > MAX_HEADER_BYTES:
        raise fail(f"the header declares {info.file_size:,} bytes; the limit is "
                   f"{MAX_HEADER_BYTES:,}")
    raw = _read_entry(zf, info)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise fail("not a bnnlab checkpoint (the header is not JSON text)")
    header = json.loads(raw.tobytes().decode())
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise fail("not a bnnlab checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise fail(f"checkpoint version {header.get('version')!r} is not supported "
                   f"(this bnnlab reads version {CHECKPOINT_VERSION})")
    config, meta = header.get("model"), header.get("meta", {})
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise fail("the header's model must be an object with a list of layers")
    if not isinstance(meta, dict):
        raise fail(f"the header's meta must be an object, not {type(meta).__name__}")
    try:
        model = Sequential.from_config(config)
    except (KeyError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from None
    own = model.state_dict()
    wanted = {f"w:{key}.npy": key for key in own}
    unused = sorted(set(entries) - set(wanted) - {"header.npy"})
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise fail(f"holds entries the model does not use: {', '.join(unused[:3])}{more}")
    arrays = {}
    for name, key in wanted.items():
        info = entries.get(name)
        if info is None:
            raise fail(f"array {key!r} is missing")
        if info.file_size > own[key].nbytes + _NPY_HEADER_ROOM:
            raise fail(f"array {key!r} declares {info.file_size:,} bytes, the model's array "
                       f"{own[key].shape} needs {own[key].nbytes:,}")
        array = _read_entry(zf, info)
        if array.dtype.kind not in "fiu":
            raise fail(f"array {key!r} holds {array.dtype} values, not real numbers")
        if array.shape != own[key].shape:
            raise fail(f"array {key!r} has shape {array.shape}, the model needs {own[key].shape}")
        if not np.isfinite(array).all():
            raise fail(f"array {key!r} holds NaN or infinity")
        arrays[key] = array
    model.load_state_dict(arrays)
    return model, meta
