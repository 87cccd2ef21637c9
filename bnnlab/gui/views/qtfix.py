"""A guard against a reference-counting bug in PySide6 6.12 on CPython < 3.12.

``SignalInstance.emit()`` returns ``True`` without taking a new reference to it, so every
signal emitted from Python (pyqtgraph emits several per redraw) removes one reference from
the ``True`` singleton. After a few thousand emits its count reaches zero and the
interpreter aborts with "Fatal Python error: bool_dealloc: deallocating True or False",
mid-session or at exit. CPython 3.12 made ``True`` immortal, which hides the bug there.

:func:`keep_true_alive` adds a very large number of references to ``True`` once, so the
lost references never add up to its real count. ``True`` is never freed anyway, so this
changes nothing else.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_true_alive"]

_PINNED = 1 << 40  # ~10^12 emits before the count could reach zero
_done = False


def keep_true_alive() -> None:
    """Pin ``True`` against PySide6's lost references (idempotent; no-op on CPython >= 3.12)."""
    global _done
    if _done or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    # ob_refcnt is the first field of every CPython object (Py_ssize_t).
    ctypes.c_ssize_t.from_address(id(True)).value += _PINNED
    _done = True
