"""Layers that join branches of a graph model: :class:`Add` (the shortcut of residual
networks) and :class:`Concatenate` (along channels). They take a list of inputs."""

from __future__ import annotations

import numpy as np

from .layer_base import Layer

__all__ = ["Add", "Concatenate", "MergeLayer"]


class MergeLayer(Layer):
    """A layer with several inputs: ``build_many``, ``forward_many`` and ``backward_many``
    take and give one array per input, in the order of the layer's ``inputs``."""

    merge = True

    def build(self, input_shape, rng):
        raise ValueError(f"{self.type_name} takes several inputs")

    def build_many(self, input_shapes, rng):
        shapes = [tuple(int(s) for s in shape) for shape in input_shapes]
        self.input_shapes = shapes
        self.input_shape = shapes[0]
        self.output_shape = self.compute_output_shape_many(shapes)
        return self.output_shape

    def compute_output_shape_many(self, shapes):
        raise NotImplementedError

    def forward(self, x, training=False, rng=None):
        raise ValueError(f"{self.type_name} takes several inputs")

    def backward(self, dy):
        raise ValueError(f"{self.type_name} takes several inputs")


class Add(MergeLayer):
    """Element-wise sum of inputs of one shape (Keras ``Add``); the gradient goes to each."""

    type_name = "Add"
    keras_name = "add"

    def compute_output_shape_many(self, shapes):
        for s in shapes[1:]:
            if s != shapes[0]:
                raise ValueError(f"Add needs inputs of one shape, got "
                                 f"{' and '.join(str(t) for t in shapes)}")
        return shapes[0]

    def forward_many(self, xs, training=False, rng=None):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y

    def backward_many(self, dy):
        return [dy] * len(self.input_shapes)


class Concatenate(MergeLayer):
    """Inputs joined along the channel (last) axis (Keras ``Concatenate(axis=-1)``)."""

    type_name = "Concatenate"
    keras_name = "concatenate"

    def compute_output_shape_many(self, shapes):
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or s[:-1] != shapes[0][:-1]:
                raise ValueError(f"Concatenate needs inputs that differ only in the last axis, "
                                 f"got {' and '.join(str(t) for t in shapes)}")
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))

    def forward_many(self, xs, training=False, rng=None):
        return np.concatenate(xs, axis=-1)

    def backward_many(self, dy):
        cuts = np.cumsum([s[-1] for s in self.input_shapes])[:-1]
        return np.split(dy, cuts, axis=-1)
