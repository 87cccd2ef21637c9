"""Checkpoints: a model's configuration (JSON) and arrays in one ``.npz`` file, no pickle.

The archive holds ``header`` (UTF-8 JSON as uint8: format name, version, the model's
``config()`` and free-form ``meta``) and one ``w:<layer>/<array>`` entry per array of the
model's ``state_dict()``. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..core.model import Sequential
from .atomic import write_atomic

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "load_checkpoint",
           "save_checkpoint"]


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


def load_checkpoint(path: str | os.PathLike) -> tuple[Sequential, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; (model, meta)."""
    path = os.fspath(path)
    try:
        # Opened here so the file is closed even when numpy rejects its contents.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            if "header" not in z.files:
                raise CheckpointError(f"{path}: not a bnnlab checkpoint (no header)")
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # zip, json and npy errors all mean the same to a user
        raise CheckpointError(f"{path}: not a readable bnnlab checkpoint ({exc})") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a bnnlab checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {header.get('version')} is not supported "
                              f"(this bnnlab reads version {CHECKPOINT_VERSION})")
    try:
        model = Sequential.from_config(header["model"])
        model.load_state_dict(arrays)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model, header.get("meta", {})
