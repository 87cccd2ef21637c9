"""Plain-text reports of model files."""

from __future__ import annotations

__all__ = ["model_report"]


def model_report(path: str) -> str:
    """Sizes, the Larq-style summary and duplicate filters of a .bnn, .h5 or .npz file."""
    from ..core.filters import analyze_filters
    from ..core.summary import format_summary, profile_model
    from ..deploy import describe_file, open_model

    info = describe_file(path)
    model = open_model(path)
    ratio = info["float32_bytes"] / max(info["bnn_bytes"], 1)
    lines = [f"{path}",
             f".bnn size: {info['bnn_bytes']:,} bytes; float-32 equivalent: "
             f"{info['float32_bytes']:,} bytes ({ratio:.1f}x larger)",
             "", format_summary(profile_model(model)), ""]
    for r in analyze_filters(model):
        lines.append(f"{r.layer}: {r.unique} unique 3x3 patterns of {r.total} filters "
                     f"({r.unique_up_to_sign} up to sign); reuse would save "
                     f"{100 * r.saving:.1f}% of the work")
    return "\n".join(lines)
