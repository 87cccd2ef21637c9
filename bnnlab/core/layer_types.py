"""What bnnlab knows about each layer type, in one table.

Every module that needs a fact about a layer *type* (rather than a built layer) asks
here: whether it takes binarizers, which full-precision type is its twin, the names
Keras and Larq give it, and how the model summary counts it. The layer classes in
:mod:`bnnlab.core.layers` implement these types; ``tests/test_layer_types.py`` checks that
both list the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAYER_TYPES", "QUANT_KEYS", "SUMMARY_RULES", "LayerType", "canonical_type",
           "float_twin", "is_quantized", "keras_names", "layer_type", "quantized_types"]

# The configuration keys only quantized layers have.
QUANT_KEYS = ("input_quantizer", "kernel_quantizer", "kernel_constraint")

# How bnnlab.core.summary counts a layer, as Larq's summary does.
SUMMARY_RULES = {
    "kernel": "kernel weights (1 bit each when binarized, else 32) and the bias (32 bits); "
              "MACs = kernel weights x output pixels, 1-bit when kernel and input are binarized",
    "batchnorm": "2 non-trainable float32 numbers per channel (inference scale and offset); 0 MACs",
    "free": "no parameters and 0 MACs",
    "unknown": "no parameters; MACs not counted (shown as ?)",
}


@dataclass(frozen=True)
class LayerType:
    """Facts about one layer type.

    ``name`` is the type as scenes and checkpoints write it; ``keras`` the class names
    Keras/Larq configurations use for it; ``quantized`` says whether it takes
    ``input_quantizer``/``kernel_quantizer``/``kernel_constraint``; ``float_twin`` is the
    type of the same layer in full precision (itself when it has no binarizers);
    ``summary`` is its rule in :data:`SUMMARY_RULES`.
    """

    name: str
    keras: tuple[str, ...]
    quantized: bool
    float_twin: str
    summary: str


LAYER_TYPES: dict[str, LayerType] = {t.name: t for t in (
    LayerType("QuantConv2D", ("QuantConv2D",), True, "Conv2D", "kernel"),
    LayerType("Conv2D", ("Conv2D",), False, "Conv2D", "kernel"),
    LayerType("QuantDense", ("QuantDense",), True, "Dense", "kernel"),
    LayerType("Dense", ("Dense",), False, "Dense", "kernel"),
    LayerType("BatchNorm", ("BatchNormalization",), False, "BatchNorm", "batchnorm"),
    LayerType("MaxPool2D", ("MaxPooling2D",), False, "MaxPool2D", "free"),
    LayerType("Flatten", ("Flatten",), False, "Flatten", "free"),
    LayerType("Activation", ("Activation",), False, "Activation", "unknown"),
    LayerType("Add", ("Add",), False, "Add", "free"),
    LayerType("Concatenate", ("Concatenate",), False, "Concatenate", "free"),
)}
_BY_ALIAS = {alias: t for t in LAYER_TYPES.values() for alias in t.keras}


def canonical_type(name: str | None) -> str | None:
    """bnnlab's name for a type given by its own or its Keras name; None if unknown."""
    t = layer_type(name)
    return t.name if t else None


def layer_type(name: str | None) -> LayerType | None:
    """The facts about type ``name`` (bnnlab or Keras spelling), or None."""
    if name is None:
        return None
    return LAYER_TYPES.get(name) or _BY_ALIAS.get(name)


def is_quantized(name: str | None) -> bool:
    """True for the types that take binarizers (QuantConv2D, QuantDense)."""
    t = layer_type(name)
    return bool(t and t.quantized)


def quantized_types() -> tuple[str, ...]:
    return tuple(t.name for t in LAYER_TYPES.values() if t.quantized)


def float_twin(name: str | None) -> str | None:
    """The full-precision type of the same layer (unknown names are returned as they are)."""
    t = layer_type(name)
    return t.float_twin if t else name


def keras_names() -> tuple[str, ...]:
    """Every Keras/Larq class name bnnlab can rebuild."""
    return tuple(alias for t in LAYER_TYPES.values() for alias in t.keras)
