"""What the command-line modules share: the user-error exception and the progress bar.

``bnnlab/cli.py`` (the parser and the train / summary / filters / gui commands) and
``bnnlab/cli_deploy.py`` (export / run / import) both raise :class:`CliError`; keeping it
here lets them import it without importing each other.
"""

from __future__ import annotations

__all__ = ["CliError", "progress_bar"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def progress_bar(done: int, total: int, text: str, width: int = 28) -> str:
    """A one-line text progress bar that redraws itself (starts with a carriage return)."""
    frac = done / total if total else 1.0
    n = int(round(frac * width))
    return f"\r[{'#' * n}{'.' * (width - n)}] {100 * frac:5.1f}% {text}"
