"""The layer-type registry agrees with the layer classes and with the summary's counts."""

import pytest

from bnnlab.core.layer_types import (
    LAYER_TYPES,
    QUANT_KEYS,
    SUMMARY_RULES,
    canonical_type,
    float_twin,
    is_quantized,
    keras_names,
    quantized_types,
)
from bnnlab.core.layers import _LAYERS, _QuantBase, layer_from_config, layer_types
from bnnlab.core.model import Sequential
from bnnlab.core.summary import profile_model
from bnnlab.deploy.larq_import import SUPPORTED_LAYERS


def test_registry_lists_exactly_the_layer_classes():
    assert set(LAYER_TYPES) == set(layer_types())
    for name, t in LAYER_TYPES.items():
        cls = _LAYERS[name]
        assert t.summary in SUMMARY_RULES
        assert (t.summary == "kernel") == issubclass(cls, _QuantBase)
        twin = LAYER_TYPES[t.float_twin]
        assert not twin.quantized and twin.summary == t.summary
        assert issubclass(cls, _LAYERS[t.float_twin]) or issubclass(_LAYERS[t.float_twin], cls)


def test_quantized_types_take_binarizers_and_twins_do_not():
    assert quantized_types() == ("QuantConv2D", "QuantDense")
    args = {"QuantConv2D": {"filters": 2}, "QuantDense": {"units": 2}}
    for name in quantized_types():
        layer = layer_from_config({"type": name, "kernel_quantizer": "ste_sign", **args[name]})
        assert set(QUANT_KEYS) <= set(layer.config())
        twin = layer_from_config({"type": float_twin(name), **args[name]})
        assert not set(QUANT_KEYS) & set(twin.config())
    assert is_quantized("QuantDense") and not is_quantized("Dense") and not is_quantized(None)
    assert float_twin("Unknown") == "Unknown"


def test_keras_names_resolve_to_bnnlab_types():
    assert canonical_type("BatchNormalization") == "BatchNorm"
    assert canonical_type("MaxPooling2D") == "MaxPool2D" and canonical_type("Nope") is None
    assert isinstance(layer_from_config({"type": "MaxPooling2D", "pool_size": 2}),
                      _LAYERS["MaxPool2D"])
    assert set(SUPPORTED_LAYERS) == set(keras_names()) | {"InputLayer"}


@pytest.mark.parametrize("name,cfg,params_32,macs", [
    ("BatchNorm", {}, 2 * 4, 0),
    ("MaxPool2D", {"pool_size": 2}, 0, 0),
    ("Flatten", {}, 0, 0),
    ("Activation", {"activation": "relu"}, 0, None),
])
def test_summary_counts_by_the_registry_rule(name, cfg, params_32, macs):
    first = layer_from_config({"type": "Conv2D", "filters": 4, "kernel_size": 3, "use_bias": False})
    model = Sequential([first, layer_from_config({"type": name, **cfg})], (6, 6, 1))
    conv, other = profile_model(model).layers
    assert conv.params_32bit == 36 and conv.macs_32bit == 36 * 16
    assert other.params_32bit == params_32 and other.macs_32bit == macs
