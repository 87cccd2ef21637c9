"""Plain-text reports of model files."""

from __future__ import annotations

__all__ = ["model_report"]


def model_report(path: str) -> str:
    """Sizes, the Larq-style summary and duplicate filters of a .bnn, .h5 or .npz file
    (see :meth:`bnnlab.app.models.OpenedModel.report`)."""
    from .opening import open_any

    return open_any(path, want="model").report()
