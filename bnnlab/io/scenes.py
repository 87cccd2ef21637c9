"""Scenes: saved experiments as TOML (read with ``tomllib``, or ``tomli`` on Python 3.10;
written by this module).

A scene names a dataset, a model (layer by layer), training settings, binarizer
overrides and a seed. Unknown keys warn, missing keys take defaults, invalid values fail
with the file, the key and the reason. ``schema_version`` allows later migrations.
"""

from __future__ import annotations

import copy
import importlib.resources
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from ..core.binarizers import get_binarizer
from ..core.graph import assign_names, wire
from ..core.layer_types import is_quantized
from ..core.layers import layer_from_config
from ..core.optimizers import make_optimizer, optimizer_names, schedule_names
from .atomic import write_atomic

__all__ = ["Scene", "SceneError", "SceneWarning", "load_scene", "save_scene", "scene_to_toml",
           "preset_dir", "preset_names", "load_preset", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
INPUT_SCALES = ("unit", "symmetric")
LAYER_LR_SCALES = ("none", "glorot")


class SceneError(ValueError):
    """A scene that cannot be used; the message names file, key and reason."""


class SceneWarning(UserWarning):
    """Something in a scene was ignored (e.g. an unknown key)."""


@dataclass
class Scene:
    """An experiment: data, model, training and binarization settings."""

    name: str = "untitled"
    description: str = ""
    seed: int = 0
    # data
    dataset: str = "digits"
    limit_train: int = 0  # 0 = all
    limit_test: int = 0
    input_scale: str = "unit"  # pixels in [0, 1] ("unit") or [-1, 1] ("symmetric")
    # model
    layers: list[dict[str, Any]] = field(default_factory=list)
    # training
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    snapshot_every: int = 20
    # Re-estimate batch-norm running statistics from this many training batches at each
    # epoch's end (0: moving averages only, as Keras).
    bn_reestimate_batches: int = 0
    # "glorot": scale each binary kernel's updates by BinaryNet's per-layer factor
    # sqrt((fan_in + fan_out) / 1.5); "none": one learning rate for all.
    layer_lr_scale: str = "none"
    # overrides applied to every quantized layer (None = keep each layer's own)
    activation_binarizer: Any = None
    kernel_binarizer: Any = None
    weight_clip: bool | None = None
    # the file the scene was read from ("" if none), for messages; not part of the scene
    source: str = field(default="", compare=False, repr=False)

    def copy(self) -> "Scene":
        return copy.deepcopy(self)

    def resolved_layers(self) -> list[dict[str, Any]]:
        """Layer configs with the binarization overrides applied."""
        out = []
        for lc in self.layers:
            lc = dict(lc)
            if is_quantized(lc.get("type")):
                if self.activation_binarizer is not None and lc.get("input_quantizer"):
                    lc["input_quantizer"] = self.activation_binarizer
                if self.kernel_binarizer is not None and lc.get("kernel_quantizer"):
                    lc["kernel_quantizer"] = self.kernel_binarizer
                if self.weight_clip is not None and lc.get("kernel_quantizer"):
                    lc["kernel_constraint"] = "weight_clip" if self.weight_clip else None
            out.append(lc)
        return out

    def full_precision_twin(self) -> "Scene":
        """The same network in full precision: float kernels, no clipping, and hard tanh
        (``clip(x, -1, 1)``) where a binarizer was, so the twin keeps its nonlinearity."""
        twin = self.copy()
        twin.name = f"{self.name}-fp-twin"
        twin.activation_binarizer = twin.kernel_binarizer = twin.weight_clip = None
        twin.layer_lr_scale = "none"  # the scaling exists for clipped binary latent weights
        layers = []
        for lc in self.resolved_layers():
            lc = dict(lc)
            if is_quantized(lc.get("type")):
                if lc.get("input_quantizer"):
                    lc["input_quantizer"] = "hard_tanh"
                lc.pop("kernel_quantizer", None)
                lc.pop("kernel_constraint", None)
            layers.append(lc)
        twin.layers = layers
        return twin

    def validate(self, where: str = "scene") -> None:
        """Raise :class:`SceneError` on the first invalid value."""
        def fail(key, reason):
            raise SceneError(f"{where}: {key}: {reason}")

        def positive_int(key, v, allow_zero=False):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
                fail(key, f"must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")

        for key in ("name", "description"):
            if not isinstance(getattr(self, key), str):
                fail(key, f"must be a string, got {getattr(self, key)!r}")
        if not self.name.strip():
            fail("name", "must not be empty")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            fail("seed", f"must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            fail("data.dataset", f"must be a dataset name, got {self.dataset!r}")
        positive_int("data.limit_train", self.limit_train, allow_zero=True)
        positive_int("data.limit_test", self.limit_test, allow_zero=True)
        if self.input_scale not in INPUT_SCALES:
            fail("data.input_scale", f"must be one of {', '.join(INPUT_SCALES)}, got {self.input_scale!r}")
        positive_int("training.epochs", self.epochs)
        positive_int("training.batch_size", self.batch_size)
        positive_int("training.snapshot_every", self.snapshot_every)
        positive_int("training.bn_reestimate_batches", self.bn_reestimate_batches, allow_zero=True)
        if self.layer_lr_scale not in LAYER_LR_SCALES:
            fail("training.layer_lr_scale", f"must be one of {', '.join(LAYER_LR_SCALES)}, "
                 f"got {self.layer_lr_scale!r}")
        if self.optimizer not in optimizer_names():
            fail("training.optimizer", f"unknown optimizer {self.optimizer!r}; valid: {', '.join(optimizer_names())}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            fail("training.learning_rate", f"must be a positive number, got {lr!r}")
        if self.schedule not in schedule_names():
            fail("training.schedule", f"unknown schedule {self.schedule!r}; valid: {', '.join(schedule_names())}")
        try:
            make_optimizer(self.optimizer, learning_rate=float(lr), **self.optimizer_options)
        except ValueError as exc:
            fail("training.optimizer_options", str(exc))
        for key in ("activation_binarizer", "kernel_binarizer"):
            try:
                get_binarizer(getattr(self, key))
            except (ValueError, TypeError) as exc:
                fail(f"binarization.{key.split('_')[0] if key.startswith('activation') else 'kernel'}", str(exc))
        if self.weight_clip is not None and not isinstance(self.weight_clip, bool):
            fail("binarization.weight_clip", f"must be true or false, got {self.weight_clip!r}")
        if not self.layers:
            fail("model.layers", "the model has no layers")
        built = []
        for i, lc in enumerate(self.resolved_layers()):
            if not isinstance(lc, dict):
                fail(f"model.layers[{i}]", "must be a table")
            try:
                built.append(layer_from_config(lc))
            except (ValueError, TypeError) as exc:
                fail(f"model.layers[{i}]", str(exc))
        try:  # the wiring (inputs, cycles); shapes are checked once the data is known
            assign_names(built)
            wire(built)
        except ValueError as exc:
            fail("model.layers", str(exc))


# --------------------------------------------------------------------------- reading

_TOP = {"schema_version", "name", "description", "seed", "data", "model", "training", "binarization"}
_DATA = {"dataset": "dataset", "limit_train": "limit_train", "limit_test": "limit_test",
         "input_scale": "input_scale"}
_TRAINING = {"epochs": "epochs", "batch_size": "batch_size", "optimizer": "optimizer",
             "learning_rate": "learning_rate", "optimizer_options": "optimizer_options",
             "schedule": "schedule", "snapshot_every": "snapshot_every",
             "bn_reestimate_batches": "bn_reestimate_batches", "layer_lr_scale": "layer_lr_scale"}
_BIN = {"activation": "activation_binarizer", "kernel": "kernel_binarizer",
        "weight_clip": "weight_clip"}


def scene_from_dict(doc: dict[str, Any], where: str = "scene") -> Scene:
    """Build and validate a scene from parsed TOML; warn about unknown keys."""
    version = doc.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        raise SceneError(f"{where}: schema_version: must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SceneError(f"{where}: schema_version: {version} is newer than this bnnlab "
                         f"understands ({SCHEMA_VERSION}); upgrade bnnlab")
    for key in doc:
        if key not in _TOP:
            warnings.warn(f"{where}: unknown key {key!r} ignored", SceneWarning, stacklevel=3)
    scene = Scene()
    for key in ("name", "description", "seed"):
        if key in doc:
            setattr(scene, key, doc[key])

    def table(name, mapping):
        t = doc.get(name, {})
        if not isinstance(t, dict):
            raise SceneError(f"{where}: {name}: must be a table")
        for key, value in t.items():
            if key not in mapping:
                warnings.warn(f"{where}: unknown key {name}.{key} ignored", SceneWarning, stacklevel=4)
                continue
            setattr(scene, mapping[key], value)

    table("data", _DATA)
    table("training", _TRAINING)
    table("binarization", _BIN)
    model = doc.get("model", {})
    if not isinstance(model, dict):
        raise SceneError(f"{where}: model: must be a table")
    for key in model:
        if key != "layers":
            warnings.warn(f"{where}: unknown key model.{key} ignored", SceneWarning, stacklevel=3)
    layers = model.get("layers", [])
    if not isinstance(layers, list):
        raise SceneError(f"{where}: model.layers: must be an array of tables")
    scene.layers = [dict(lc) if isinstance(lc, dict) else lc for lc in layers]
    if not isinstance(scene.optimizer_options, dict):
        raise SceneError(f"{where}: training.optimizer_options: must be a table")
    if isinstance(scene.learning_rate, int) and not isinstance(scene.learning_rate, bool):
        scene.learning_rate = float(scene.learning_rate)
    scene.validate(where)
    return scene


def load_scene(path: str | os.PathLike) -> Scene:
    """Read and validate a scene file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SceneError(f"{path}: no such scene file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SceneError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise SceneError(f"{path}: cannot read ({exc.strerror})") from None
    scene = scene_from_dict(doc, where=path)
    scene.source = path
    return scene


# --------------------------------------------------------------------------- writing


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(v: str) -> str:
    """A TOML basic string: every control character escaped (TOML allows none raw but tab)."""
    if any("\ud800" <= ch <= "\udfff" for ch in v):
        raise SceneError(f"cannot write {v!r} to a scene: it holds half of a surrogate pair")
    return '"' + "".join(_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ch == "\x7f"
                                              else ch) for ch in v) + '"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_string(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise SceneError(f"cannot write the number {v} to a scene")
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = [f"{_toml_key(k)} = {_toml_value('none' if x is None else x)}" for k, x in v.items()]
        return "{ " + ", ".join(items) + " }"
    raise SceneError(f"cannot write {v!r} to a scene")


def scene_to_toml(scene: Scene) -> str:
    """Serialize a scene; ``load_scene`` of the result gives back an equal scene."""
    lines = [f"schema_version = {SCHEMA_VERSION}",
             f"name = {_toml_value(scene.name)}",
             f"description = {_toml_value(scene.description)}",
             f"seed = {_toml_value(scene.seed)}", "", "[data]"]
    for key, attr in _DATA.items():
        lines.append(f"{key} = {_toml_value(getattr(scene, attr))}")
    lines += ["", "[training]"]
    for key, attr in _TRAINING.items():
        if key != "optimizer_options":
            lines.append(f"{key} = {_toml_value(getattr(scene, attr))}")
    lines.append(f"optimizer_options = {_toml_value(scene.optimizer_options)}")
    bins = [(key, getattr(scene, attr)) for key, attr in _BIN.items() if getattr(scene, attr) is not None]
    if bins:
        lines += ["", "[binarization]"]
        lines += [f"{key} = {_toml_value(v)}" for key, v in bins]
    for lc in scene.layers:
        lines += ["", "[[model.layers]]"]
        for key, v in lc.items():
            if v is None:
                continue  # a missing key means None (no quantizer, no constraint)
            lines.append(f"{_toml_key(key)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def save_scene(scene: Scene, path: str | os.PathLike) -> None:
    """Validate then write a scene atomically (temp file, then rename)."""
    path = os.fspath(path)
    scene.validate(path)
    text = scene_to_toml(scene)
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), suffix=".toml")


# --------------------------------------------------------------------------- presets


def preset_dir() -> Path:
    """The folder of preset scenes: the installed package ``bnnlab.presets``.

    ``$BNNLAB_SCENES_DIR`` replaces it with a folder of one's own. The presets are package
    data read through :mod:`importlib.resources`, so they are found the same way in a
    wheel, an editable install or a source distribution.
    """
    env = os.environ.get("BNNLAB_SCENES_DIR")
    if env:
        return Path(env).expanduser()
    try:
        root = importlib.resources.files("bnnlab.presets")
    except ModuleNotFoundError:
        raise SceneError("bnnlab's preset scenes are not installed (no package bnnlab.presets); "
                         "reinstall bnnlab (pip install .)") from None
    # Installed packages live on the file system; a Traversable from a zip would not.
    path = Path(os.fspath(root)) if isinstance(root, os.PathLike) else None
    if path is None or not path.is_dir():
        raise SceneError(f"bnnlab's preset scenes are not in a folder ({root}); "
                         "install bnnlab unzipped")
    return path


def preset_names() -> list[str]:
    d = preset_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_preset(name: str) -> Scene:
    """Load ``scenes/<name>.toml``; unknown names list the presets."""
    path = preset_dir() / f"{name}.toml"
    if not path.is_file():
        raise SceneError(f"unknown preset {name!r}; presets: {', '.join(preset_names()) or 'none found'}")
    return load_scene(path)

