"""Sizes of this CPU's data caches, which the binary GEMM sizes its blocks from.

Read once from Linux's sysfs (``/sys/devices/system/cpu/cpu0/cache``); where that is
missing or unreadable (other systems, containers hiding it) the sizes of a common
x86-64 core are assumed. Block sizes only change the speed, never a result.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULTS", "data_cache_bytes"]

# L1 data and L2 per core, as on most x86-64 cores since 2017 (Zen 1-4, Skylake client).
DEFAULTS = {1: 32 << 10, 2: 512 << 10}
_SYSFS = "/sys/devices/system/cpu/cpu0/cache"


def _parse_size(text: str) -> int | None:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * mult if digits.isdigit() else None


def data_cache_bytes(level: int, root: str = _SYSFS) -> int:
    """Size in bytes of the level-``level`` data (or unified) cache of CPU 0, from sysfs,
    else :data:`DEFAULTS`; sizes outside 4 KiB..64 MiB are taken as unreadable."""
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(root, entry)
            with open(os.path.join(path, "level")) as f:
                if int(f.read().strip()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() not in ("Data", "Unified"):
                    continue
            with open(os.path.join(path, "size")) as f:
                size = _parse_size(f.read())
            if size is not None and 4 << 10 <= size <= 64 << 20:
                return size
    except (OSError, ValueError):
        pass
    return DEFAULTS.get(level, 1 << 20)
