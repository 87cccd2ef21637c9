"""The Larq-style summary of a ``.bnn`` file read from its blocks, without the engine.

:func:`profile_from_file` counts the layers :func:`bnnlab.deploy.unfold.model_from_file`
would build (conv or dense, max pool, batch norm, softmax) by the rules of
:mod:`bnnlab.core.summary`, from the blocks' shapes alone. It serves files the engine
cannot represent (padding that is neither Keras 'valid' nor 'same'), whose summary is
still a fact of the file; for the others it gives what profiling the unfolded model gives.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.summary import LayerProfile, ModelProfile
from .format import ModelFile

__all__ = ["profile_from_file"]


def profile_from_file(mf: ModelFile, *, float_twin: bool = False, name: str | None = None) -> ModelProfile:
    """The summary of ``mf``; ``float_twin`` counts every weight and MAC as 32-bit (the
    same network without binarization)."""
    layers: list[LayerProfile] = []
    used: dict[str, int] = {}

    def named(stem: str) -> str:
        k = used.get(stem, 0)
        used[stem] = k + 1
        return stem if k == 0 else f"{stem}_{k}"

    flat = len(mf.input.shape) == 1
    for i, b in enumerate(mf.blocks):
        binary_kernel = b.kernel == "bits" and not float_twin
        binary_input = b.input == "bits" and not float_twin
        k = b.out_channels * b.fan_in
        if b.kind == "conv2d":
            stem, type_name = ("quant_conv2d", "QuantConv2D")
            out = tuple(b.conv_shape)
            pixels = out[0] * out[1]
        else:
            if not flat:
                h, w, c = b.in_shape
                layers.append(LayerProfile(named("flatten"), "Flatten", None, (h * w * c,),
                                           0, 0, 0, 0, 0))
            stem, type_name = ("quant_dense", "QuantDense")
            out = (b.out_channels,)
            pixels = 1
        binary = binary_kernel and binary_input
        layers.append(LayerProfile(
            named(stem), type_name, 1 if binary_input else None, out,
            k if binary_kernel else 0, 0 if binary_kernel else k, k,
            k * pixels if binary else 0, 0 if binary else k * pixels))
        if b.pool[0]:
            layers.append(LayerProfile(named("max_pooling2d"), "MaxPool2D", None,
                                       tuple(b.out_shape), 0, 0, 0, 0, 0))
        shape = tuple(b.out_shape) if b.kind == "conv2d" else (b.out_channels,)
        layers.append(LayerProfile(named("batch_normalization"), "BatchNorm", None, shape,
                                   0, 2 * b.out_channels, 0, 0, 0))
        flat = b.kind == "dense"
    n = mf.blocks[-1].out_channels if mf.blocks else 0
    layers.append(LayerProfile(named("activation"), "Activation", None, (n,), 0, 0, 0, None, None))
    # A chain: each layer reads the one before it, the first reads the input.
    layers = [replace(lp, inputs=(layers[i - 1].name if i else "input",))
              for i, lp in enumerate(layers)]
    title = name or mf.metadata.get("name") or "bnn-model"
    return ModelProfile(f"{title} (float twin)" if float_twin else title, tuple(layers))

