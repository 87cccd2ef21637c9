"""Workspace files: the scene being edited and every run, saved and opened again.

Format (``docs/workspace.md``): a NumPy ``.npz`` archive (a zip of ``.npy`` arrays, read
with ``allow_pickle=False``, so nothing in the file becomes code) written atomically.

* ``workspace.json`` — UTF-8 JSON as a uint8 array: ``{"format": "bnnlab-workspace",
  "version": 1, "scene": TOML text, "runs": [...]}``. Each run records its number, label,
  colour, visibility, state, the run it is the twin of, its scene (TOML text), model
  config, parameter count, the source file of an opened model, and its latest
  snapshot's numbers (step, epoch, loss, accuracy, ...) and per-layer scalars.
* ``run<N>/state/<key>`` — the run's weights and batch-norm statistics, bit for bit.
* ``run<N>/history/<field>`` — its curves.
* ``run<N>/layer<i>/<field>`` — the per-layer histograms of its latest snapshot.

The header also keeps every comparison over seeds (``"comparisons"``): its scenes, and
the figures and per-epoch curves of each training finished. Opened models are stored by
path and opened again from their file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from ..core.layerstats import LayerStats
from ..core.trainer import History, LayerTelemetry, Snapshot
from ..io.atomic import write_atomic
from ..io.scenes import Scene, SceneError, scene_from_dict, scene_to_toml, tomllib
from .compare import SeedRun
from .runs import Run, RunState
from .seeds import Comparison

__all__ = ["FORMAT", "VERSION", "Workspace", "WorkspaceError", "WorkspaceRun",
           "load_workspace", "save_workspace"]

FORMAT = "bnnlab-workspace"
VERSION = 1
_HEADER = "workspace.json"
_MAX_HEADER = 64 << 20  # bytes: a header is small; a bigger one is not ours

_SNAP_OBJECTS = ("layers", "history", "model_config", "model_state", "epoch_layers")


class WorkspaceError(ValueError):
    """A workspace file that cannot be read; the message names the file and the reason."""


class WorkspaceRun:
    """A run read from a workspace, before the session takes it: the run, and for an opened
    model the file to open again."""

    def __init__(self, run: Run, opened_path: str | None):
        self.run, self.opened_path = run, opened_path


def _plain(v):
    """A snapshot field as JSON: numbers, text, None, and tuples of them as lists."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return float(v)


class Workspace:
    """What a workspace file holds: the scene, the runs and the comparisons over seeds."""

    def __init__(self, scene: Scene, runs: list[WorkspaceRun], comparisons: list[Comparison]):
        self.scene, self.runs, self.comparisons = scene, runs, comparisons


def save_workspace(path: str | os.PathLike, scene: Scene, runs: list[Run],
                   comparisons: list[Comparison] = ()) -> None:
    """Write ``scene``, ``runs`` and ``comparisons`` to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {}
    doc_runs = []
    for run in runs:
        n = run.number
        entry: dict[str, Any] = {
            "number": n, "label": run.label, "color": run.color, "visible": run.visible,
            "state": run.state.value, "twin_of": run.twin_of, "parameters": run.parameters,
            "scene": scene_to_toml(run.scene), "model_config": run.model_config,
            "fp_config": run.fp_config, "error": run.error,
            "opened": run.opened.path if run.opened is not None else None,
        }
        s = run.snapshot
        if s is not None and run.opened is None:
            entry["snapshot"] = {f.name: _plain(getattr(s, f.name)) for f in fields(Snapshot)
                                 if f.name not in _SNAP_OBJECTS}
            entry["snapshot"]["model_config"] = s.model_config
            entry["snapshot"]["epoch_layers"] = [ls.as_dict() for ls in s.epoch_layers]
            for key, value in s.model_state.items():
                arrays[f"run{n}/state/{key}"] = np.asarray(value)
            for f in fields(History):
                arrays[f"run{n}/history/{f.name}"] = np.asarray(getattr(s.history, f.name))
            layers = []
            for i, t in enumerate(s.layers):
                plain = {}
                for f in fields(LayerTelemetry):
                    value = getattr(t, f.name)
                    if isinstance(value, np.ndarray):
                        arrays[f"run{n}/layer{i}/{f.name}"] = value
                    else:
                        plain[f.name] = _plain(value)
                layers.append(plain)
            entry["snapshot"]["layers"] = layers
        doc_runs.append(entry)
    doc = {"format": FORMAT, "version": VERSION, "scene": scene_to_toml(scene), "runs": doc_runs,
           "comparisons": [_comparison_entry(c) for c in comparisons if any(c.runs.values())]}
    arrays[_HEADER] = np.frombuffer(json.dumps(doc).encode("utf-8"), np.uint8)

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    write_atomic(path, write, suffix=".npz")


def _scene(text: str, where: str) -> Scene:
    try:
        return scene_from_dict(tomllib.loads(text), where=where)
    except (tomllib.TOMLDecodeError, SceneError) as exc:
        raise WorkspaceError(f"{where}: {exc}") from None


def load_workspace(path: str | os.PathLike) -> Workspace:
    """Read a workspace file (raises :class:`WorkspaceError`)."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise WorkspaceError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise WorkspaceError(f"{path}: not a workspace file ({exc})") from None
    with archive:
        names = set(archive.files)
        if _HEADER not in names:
            raise WorkspaceError(f"{path}: not a bnnlab workspace (no {_HEADER})")
        raw = archive[_HEADER]
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER:
            raise WorkspaceError(f"{path}: {_HEADER} is not a UTF-8 text array")
        try:
            doc = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"{path}: {_HEADER} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise WorkspaceError(f"{path}: not a bnnlab workspace")
        if doc.get("version") != VERSION:
            raise WorkspaceError(f"{path}: workspace version {doc.get('version')!r}; this "
                                 f"bnnlab reads version {VERSION}")
        try:
            scene = _scene(doc["scene"], f"{path}: scene")
            runs = [_run(archive, names, entry, path) for entry in doc["runs"]]
            comparisons = [_comparison(entry, path) for entry in doc.get("comparisons", [])]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, WorkspaceError):
                raise
            raise WorkspaceError(f"{path}: damaged workspace ({type(exc).__name__}: {exc})") from None
    return Workspace(scene, runs, comparisons)


def _comparison_entry(c: Comparison) -> dict:
    def seed_run(r: SeedRun) -> dict:
        d = asdict(r)
        d["averaged"] = {str(k): float(v) for k, v in r.averaged.items()}
        return d

    return {"number": c.number, "seeds": c.seeds, "epochs": c.epochs,
            "variants": [[label, scene_to_toml(scene)] for label, scene in c.variants],
            # a comparison saved while it runs is kept as what it had finished
            "state": "cancelled" if c.live else c.state, "error": c.error,
            "seconds": c.seconds, "done": c.done, "total": c.total,
            "runs": {label: [seed_run(r) for r in runs] for label, runs in c.runs.items()}}


_COMPARISON_STATES = ("finished", "cancelled", "failed")


def _comparison(e: dict, path: str) -> Comparison:
    n = int(e["number"])
    where = f"{path}: comparison {n}"
    variants = [(str(label), _scene(text, f"{where}, scene {label!r}"))
                for label, text in e["variants"]]
    labels = [label for label, _ in variants]
    if len(variants) < 2 or len(set(labels)) != len(labels):
        raise WorkspaceError(f"{where}: needs two or more scenes with distinct names")
    if e["state"] not in _COMPARISON_STATES:
        raise WorkspaceError(f"{where}: unknown state {e['state']!r}")
    runs = {label: [] for label in labels}
    for label, items in dict(e["runs"]).items():
        if label not in runs:
            raise WorkspaceError(f"{where}: trainings of {label!r}, which it does not compare")
        runs[label] = [_seed_run(d) for d in items]
    epochs = e.get("epochs")
    return Comparison(number=n, variants=variants, seeds=int(e["seeds"]),
                      epochs=None if epochs is None else int(epochs), state=e["state"],
                      runs=runs, done=int(e.get("done", 0)), total=int(e.get("total", 0)),
                      error=str(e.get("error", "")), seconds=float(e.get("seconds", 0.0)),
                      saved=True)


def _seed_run(d: dict) -> SeedRun:
    vb = d.get("val_accuracy_batch_stats")
    return SeedRun(label=str(d["label"]), scene=str(d["scene"]), seed=int(d["seed"]),
                   epochs=int(d["epochs"]), loss=float(d["loss"]), accuracy=float(d["accuracy"]),
                   val_loss=float(d["val_loss"]), val_accuracy=float(d["val_accuracy"]),
                   val_accuracy_batch_stats=None if vb is None else float(vb),
                   seconds=float(d["seconds"]), parameters=int(d["parameters"]),
                   epoch_val_accuracy=tuple(float(v) for v in d["epoch_val_accuracy"]),
                   epoch_loss=tuple(float(v) for v in d["epoch_loss"]),
                   averaged={int(k): float(v) for k, v in dict(d.get("averaged", {})).items()})


def _run(archive, names: set[str], e: dict, path: str) -> WorkspaceRun:
    n = int(e["number"])
    run = Run(number=n, scene=_scene(e["scene"], f"{path}: run {n}"), color=str(e["color"]),
              label=str(e["label"]), visible=bool(e["visible"]), state=RunState(e["state"]),
              model_config=e.get("model_config"), fp_config=e.get("fp_config"),
              error=str(e.get("error", "")), twin_of=e.get("twin_of"),
              parameters=e.get("parameters"), saved=True)
    s = e.get("snapshot")
    if s is not None:
        prefix = f"run{n}/"
        state = {k[len(prefix) + 6:]: archive[k] for k in names if k.startswith(prefix + "state/")}
        curves = {f.name: archive[f"{prefix}history/{f.name}"] for f in fields(History)
                  if f"{prefix}history/{f.name}" in names}
        for key in ("val_loss_batch_stats", "val_accuracy_batch_stats"):  # not measured
            curves.setdefault(key, np.full(len(curves["epoch"]), np.nan))
        curves.setdefault("grad_norm", np.full(np.shape(curves["flip_ratio"]), np.nan))
        history = History(**curves)
        layers = []
        for i, plain in enumerate(s["layers"]):
            t = {}
            for f in fields(LayerTelemetry):
                key = f"{prefix}layer{i}/{f.name}"
                if key in names:
                    t[f.name] = archive[key]
                else:
                    value = plain.get(f.name)
                    t[f.name] = tuple(value) if isinstance(value, list) else value
            layers.append(LayerTelemetry(**t))
        scalars = {f.name: s[f.name] for f in fields(Snapshot)
                   if f.name not in _SNAP_OBJECTS and f.name in s}
        epoch_layers = tuple(LayerStats(**d) for d in s.get("epoch_layers", []))
        run.snapshot = Snapshot(**scalars, layers=tuple(layers), history=history,
                                model_config=s["model_config"], model_state=state,
                                epoch_layers=epoch_layers)
    return WorkspaceRun(run, e.get("opened"))
