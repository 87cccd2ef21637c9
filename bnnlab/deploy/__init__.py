"""Deployable models: the ``.bnn`` file, its runtime, C export and Larq import.

A GUI-free function API for the app and the CLI; everything returns plain data or
engine models:

* :func:`export_model` / :func:`model_file_bytes`: a trained model -> ``.bnn``;
* :func:`describe_model`: sizes (``.bnn``, float-32 equivalent), summary figures,
  blocks, for display;
* :func:`load_runtime`: a ``.bnn`` ready to run; :func:`export_c`: C99 sources.

Opening a model file of any kind (``.bnn``, Keras/Larq ``.h5``, checkpoint ``.npz``) is
:func:`bnnlab.app.opening.open_any`'s job. The file layout is specified in
``docs/bnn-format.md``.
"""

from __future__ import annotations

import os
from typing import Any

from .format import InputSpec, ModelFile, ModelFileError, read_file, write_file

__all__ = [
    "ExportError",
    "InputSpec",
    "LarqImportError",
    "ModelFile",
    "ModelFileError",
    "describe_model",
    "export_c",
    "export_model",
    "load_runtime",
    "model_file_bytes",
    "read_file",
    "to_model_file",
    "write_file",
]


def __getattr__(name):
    # The error classes live with the code that raises them; import that code on demand.
    if name == "ExportError":
        from .fold import ExportError
        return ExportError
    if name == "LarqImportError":
        from .larq_import import LarqImportError
        return LarqImportError
    raise AttributeError(name)


def to_model_file(model, input_spec: InputSpec | None = None, class_names=(),
         metadata: dict[str, str] | None = None) -> ModelFile:
    """The ``.bnn`` record of an engine model (raises ``ExportError`` naming the layer)."""
    from .fold import fold_model

    return fold_model(model, input_spec, class_names, metadata)


def model_file_bytes(model, input_spec: InputSpec | None = None, class_names=(),
                     metadata: dict[str, str] | None = None) -> bytes:
    """What :func:`export_model` would write, without writing it."""
    from .format import encode

    return encode(to_model_file(model, input_spec, class_names, metadata))


def export_model(model, path: str | os.PathLike, input_spec: InputSpec | None = None,
                 class_names=(), metadata: dict[str, str] | None = None) -> int:
    """Write ``model`` as a ``.bnn`` file, atomically; returns its size in bytes."""
    return write_file(path, to_model_file(model, input_spec, class_names, metadata))


def load_runtime(path: str | os.PathLike):
    """A :class:`~bnnlab.deploy.runtime.Runtime` for a ``.bnn`` file."""
    from .runtime import load_runtime as _load

    return _load(path)


def export_c(source: ModelFile | str | os.PathLike, outdir: str | os.PathLike):
    """Write C99 sources for a ``.bnn`` (path or record); returns a ``CExport``."""
    from .cexport import export_c as _export_c

    mf = source if isinstance(source, ModelFile) else read_file(source)
    return _export_c(mf, outdir)


def _blocks(mf: ModelFile) -> list[dict[str, Any]]:
    rows = []
    for i, b in enumerate(mf.blocks):
        kbytes = b.kernel_data.nbytes
        ebytes = 5 * b.out_channels if b.output == "bits" else 8 * b.out_channels
        modes = {}
        if b.modes is not None:
            counts = [int((b.modes == m).sum()) for m in range(4)]
            modes = dict(zip(("ge", "le", "plus", "minus"), counts))
        rows.append({
            "index": i, "kind": b.kind, "input": b.input, "kernel": b.kernel, "acc": b.acc,
            "output": b.output, "in_shape": list(b.in_shape), "out_shape": list(b.out_shape),
            "kernel_size": list(b.kernel_size) if b.kind == "conv2d" else None,
            "pool": list(b.pool) if b.pool[0] else None, "kernel_bytes": kbytes,
            "epilogue_bytes": ebytes, "threshold_modes": modes,
        })
    return rows


def _profile(model, model_file: ModelFile | None = None) -> dict[str, Any]:
    from ..core.summary import profile_model
    from .profile import profile_from_file

    p = profile_model(model) if model is not None else profile_from_file(model_file)
    return {"name": p.name, "params_1bit": p.params_1bit, "params_32bit": p.params_32bit,
            "memory_kib": p.memory_kib, "float32_kib": p.float32_kib,
            "float32_bytes": p.total_params * 4, "macs_1bit": p.macs_1bit,
            "macs_32bit": p.macs_32bit, "binarized_mac_ratio": p.binarized_mac_ratio,
            "layers": [{"name": lp.name, "type": lp.type_name,
                        "output_shape": list(lp.output_shape)} for lp in p.layers]}


def describe_model(model, input_spec: InputSpec | None = None, class_names=(),
                   metadata: dict[str, str] | None = None, *,
                   model_file: ModelFile | None = None) -> dict[str, Any]:
    """Plain data about exporting ``model``: the ``.bnn`` size against the float-32 equivalent.

    ``model_file`` is the model's ``.bnn`` record when it came from one (``model`` is then
    that file unfolded, or None when the engine cannot represent the file); otherwise the model is folded here. ``bnn_bytes`` is None (and
    ``export_error`` says why) when the model cannot be exported.
    """
    from .fold import ExportError
    from .format import encode

    summary = _profile(model, model_file)
    out: dict[str, Any] = {"summary": summary, "float32_bytes": summary["float32_bytes"],
                           "bnn_bytes": None, "export_error": None, "blocks": []}
    mf = model_file
    if mf is None:
        try:
            mf = to_model_file(model, input_spec, class_names, metadata)
        except (ExportError, ModelFileError) as exc:
            out["export_error"] = str(exc)
            return out
    out["bnn_bytes"] = len(encode(mf))
    out["blocks"] = _blocks(mf)
    out["compression"] = out["bnn_bytes"] / max(out["float32_bytes"], 1)
    return out
