"""The desktop app (PySide6 + pyqtgraph): the only package that imports Qt.

Start it with ``bnnlab`` or :func:`bnnlab.gui.app.main`.
"""

import sys


def _pyside_leaks_singletons() -> bool:
    """True for PySide6 6.12 on Python < 3.12 (read from package metadata: Qt not loaded)."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    from importlib import metadata

    for dist in ("PySide6-Essentials", "PySide6"):
        try:
            major, minor = (int(p) for p in metadata.version(dist).split(".")[:2])
        except (metadata.PackageNotFoundError, ValueError):
            continue
        return (major, minor) >= (6, 12)
    return False


def _pin_singletons() -> None:
    """Make None, True and False immortal, as Python 3.12 does (PEP 683).

    PySide6 6.12's bindings return None from void C++ methods, and True from
    ``Signal.emit``, without taking a reference: they rely on these objects being immortal,
    which they are only from Python 3.12. On 3.11 every call drops a reference and after
    some thousands (seconds of live plotting) the interpreter aborts with "none_dealloc".
    pyproject.toml excludes 6.12; this keeps an environment that has it anyway alive.
    Adding 2**40 references, which nothing will ever release, gives 3.11 the same guarantee.
    """
    if not _pyside_leaks_singletons():
        return
    import ctypes

    for obj in (None, True, False):
        refcount = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field
        if refcount.value < 1 << 40:
            refcount.value += 1 << 40


_pin_singletons()
