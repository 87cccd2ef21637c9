"""Settings read from the environment, each checked in one place.

Light on purpose (no Numba): the command line checks them before it loads the kernels,
so a mistyped value is one clear line rather than a failure while compiling.
"""

from __future__ import annotations

import os

__all__ = ["POPCOUNT_CHOICES", "POPCOUNT_ENV", "popcount_setting"]

POPCOUNT_ENV = "BNNLAB_POPCOUNT"
POPCOUNT_CHOICES = ("auto", "bytes", "csa", "lanes")


def popcount_setting() -> str:
    """How bits are counted, from ``$BNNLAB_POPCOUNT``: ``auto`` (unset), ``bytes``, ``csa`` or ``lanes``."""
    value = os.environ.get(POPCOUNT_ENV, "").strip().lower() or "auto"
    if value not in POPCOUNT_CHOICES:
        raise ValueError(f"{POPCOUNT_ENV} must be {', '.join(POPCOUNT_CHOICES[:-1])} or "
                         f"{POPCOUNT_CHOICES[-1]}, not {value!r}")
    return value
