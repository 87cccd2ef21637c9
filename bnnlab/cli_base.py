"""What the command-line modules share: the user-error exception and the progress bar.

``bnnlab/cli.py`` (the parser and the train / summary / filters / gui commands) and
``bnnlab/cli_deploy.py`` (export / run / import) both raise :class:`CliError`; keeping it
here lets them import it without importing each other.
"""

from __future__ import annotations

__all__ = ["CliError", "progress_bar", "open_arg", "parse_passes"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def progress_bar(total: int | None, desc: str, enabled: bool = True, **options):
    """A progress bar on stderr (``tqdm``), drawn only when stderr is a terminal: it fits the
    terminal's width, shows the rate and the time left, and erases itself when closed so
    the lines printed meanwhile stay clean. ``total`` None means unknown."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.1, disable=not (enabled and sys.stderr.isatty()), **options)


def open_arg(arg: str, want: str | None = None):
    """A command-line argument opened: an existing file through
    :func:`bnnlab.app.opening.open_any` (an ``OpenedModel`` or a ``Scene``), anything else as
    a preset name (a ``Scene``). ``want`` is ``"model"``, ``"scene"`` or None (either)."""
    from pathlib import Path

    from .app.opening import SUFFIXES, OpenError, open_any
    from .io.scenes import SceneError, load_preset, preset_names

    p = Path(arg)
    if p.exists() or want == "model" or p.suffix.lower() in SUFFIXES:
        try:
            return open_any(p, want)
        except OpenError as exc:
            raise CliError(str(exc)) from None
    try:
        return load_preset(arg)
    except SceneError:
        what = "a scene file" if want == "scene" else "a model or scene file"
        raise CliError(f"{arg!r} is neither {what} nor a preset; presets: "
                       f"{', '.join(preset_names())}") from None


def parse_passes(text: str) -> list[int]:
    """``--passes 1,4,16``: sorted distinct K values in 1..1000."""
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise CliError(f"--passes: expected numbers like 1,4,16, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 1000:
        raise CliError(f"--passes: each K must be between 1 and 1000, got {text!r}")
    return ks
