"""Output-size rules shared by the layers, the reference twins and the summary."""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) along one spatial axis, with TensorFlow's rules.

    'valid' uses no padding; 'same' gives ceil(size / stride) outputs and puts the odd
    padding pixel after, as TensorFlow and Larq do.
    """
    if padding == "valid":
        return (size - kernel) // stride + 1, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, total // 2
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
