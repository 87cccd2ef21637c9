"""What a scene's settings mean to a person: the binarizer controls' choices, the
short descriptions runs are compared by, and run labels naming what differs."""

from __future__ import annotations

from ..core.binarizers import get_binarizer
from ..core.layer_types import QUANT_KEYS, float_twin, quantized_types
from ..io.scenes import Scene

__all__ = [
    "binarizer_choice",
    "binarizer_spec",
    "describe_scene",
    "difference_label",
    "effective_binarizer",
    "effective_clip",
    "label_runs",
]

_QUANT_TYPES = quantized_types()
_STE_VARIANTS = ("ste_sign", "approx_sign", "swish_sign")


def binarizer_choice(spec) -> tuple[str, str, bool]:
    """Split a binarizer spec into what the controls show: (mode, STE variant, gated).

    ``mode`` is "deterministic" or "stochastic"; ``gated`` is whether the straight-through
    gradient is cut outside |x| <= 1.
    """
    b = get_binarizer(spec) if spec is not None else get_binarizer("ste_sign")
    if b is None:
        b = get_binarizer("ste_sign")
    if b.name == "stochastic_sign":
        return "stochastic", "ste_sign", b.clip_value is not None
    if b.name == "ste_sign":
        return "deterministic", "ste_sign", b.clip_value is not None
    if b.name == "approx_sign":
        return "deterministic", "approx_sign", True
    if b.name == "swish_sign":
        return "deterministic", "swish_sign", False
    return "deterministic", b.name, b.gate_window() is not None


def binarizer_spec(mode: str, ste: str, gated: bool):
    """The scene value for a choice of controls (inverse of :func:`binarizer_choice`)."""
    if mode == "stochastic":
        return "stochastic_sign" if gated else {"name": "stochastic_sign", "clip_value": None}
    if ste == "ste_sign":
        return "ste_sign" if gated else {"name": "ste_sign", "clip_value": None}
    if ste in _STE_VARIANTS:
        return ste  # approx_sign is always gated to |x| <= 1, swish_sign never hard-gated
    raise ValueError(f"unknown straight-through estimator {ste!r}; valid: {', '.join(_STE_VARIANTS)}")


def _short(spec) -> str:
    b = get_binarizer(spec)
    if b is None:
        return "none"
    if b.name in ("ste_sign", "stochastic_sign"):
        return b.name if b.clip_value == 1.0 else (
            f"{b.name} ungated" if b.clip_value is None else f"{b.name}(clip={b.clip_value:g})")
    return b.label()


def _is_binary(spec) -> bool:
    b = get_binarizer(spec) if spec else None
    return b is not None and b.binary


def effective_binarizer(scene: Scene, key: str):
    """The spec the quantized layers will use for ``key`` ("input_quantizer" or
    "kernel_quantizer"): the scene override, else the first layer's own, else None."""
    for lc in scene.resolved_layers():
        if lc.get("type") in _QUANT_TYPES and lc.get(key):
            return lc[key]
    return None


def effective_clip(scene: Scene) -> bool | None:
    """Whether latent weights are clipped (None when the model has no binary kernel)."""
    values = {lc.get("kernel_constraint") == "weight_clip" for lc in scene.resolved_layers()
              if lc.get("type") in _QUANT_TYPES and lc.get("kernel_quantizer")}
    if not values:
        return None
    return True in values


def describe_scene(scene: Scene) -> dict[str, str]:
    """The settings a person compares runs by, as short strings."""
    resolved = scene.resolved_layers()
    binary = any(_is_binary(lc.get(key)) for lc in resolved if lc.get("type") in _QUANT_TYPES
                 for key in ("kernel_quantizer", "input_quantizer"))
    acts = sorted({_short(lc["input_quantizer"]) for lc in resolved
                   if lc.get("type") in _QUANT_TYPES and lc.get("input_quantizer")})
    kernels = sorted({_short(lc["kernel_quantizer"]) for lc in resolved
                      if lc.get("type") in _QUANT_TYPES and lc.get("kernel_quantizer")})
    clip = effective_clip(scene)
    shape = [{k: v for k, v in lc.items() if k not in QUANT_KEYS}
             | {"type": float_twin(lc.get("type"))} for lc in scene.layers]
    data = scene.dataset + (f"[:{scene.limit_train}]" if scene.limit_train else "")
    return {
        "precision": "binary" if binary else "full precision",
        "act": "/".join(acts) or "none",
        "weights": "/".join(kernels) or "none",
        "clip": "none" if clip is None else ("on" if clip else "off"),
        "opt": scene.optimizer,
        "lr": f"{scene.learning_rate:g}",
        "schedule": scene.schedule,
        "batch": str(scene.batch_size),
        "epochs": str(scene.epochs),
        "data": data,
        "scale": scene.input_scale,
        "seed": str(scene.seed),
        "layers": repr(shape),
    }


def difference_label(base: Scene, scene: Scene) -> str:
    """What differs from ``base``, e.g. "act=stochastic_sign, clip off" ("" if nothing)."""
    a, b = describe_scene(base), describe_scene(scene)
    parts = []
    if a["precision"] != b["precision"]:
        parts.append(b["precision"])
    else:
        if a["act"] != b["act"]:
            parts.append(f"act={b['act']}")
        if a["weights"] != b["weights"]:
            parts.append(f"weights={b['weights']}")
        if a["clip"] != b["clip"]:
            parts.append(f"clip {b['clip']}")
    for key in ("opt", "lr", "schedule", "batch", "epochs", "data", "scale", "seed"):
        if a[key] != b[key]:
            parts.append(f"{key}={b[key]}")
    if a["layers"] != b["layers"]:
        parts.append("other layers")
    return ", ".join(parts)


def label_runs(scenes: list[Scene]) -> list[str]:
    """Labels for runs in order: the first by its scene name, the others by what differs."""
    if not scenes:
        return []
    labels = [scenes[0].name]
    for scene in scenes[1:]:
        labels.append(difference_label(scenes[0], scene) or "same settings")
    return labels
