"""What Help > About and ``bnnlab --version`` say: the version, the libraries, the CPU
features the kernels use, and the folders the program reads and writes."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["version", "about_sections"]


def version() -> str:
    """The installed distribution's version (pyproject.toml is its only source)."""
    try:
        return metadata.version("bnnlab")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_rows() -> list[tuple[str, str]]:
    """The CPU features the compiled kernels were built for, and how bits are counted."""
    from llvmlite import binding as llvm

    from ..core import kernels

    features = llvm.get_host_cpu_features()
    wanted = ("avx2", "fma", "avx512f", "avx512vl", "avx512vpopcntdq")
    have = [f for f in wanted if features.get(f, False)]
    forced = os.environ.get("BNNLAB_POPCOUNT", "").strip()
    from ..core.kernels.roofline import popcount_method

    mode = kernels.POPCOUNT_MODE
    how = popcount_method()
    import numba

    return [
        ("CPU", _cpu_name()),
        ("LLVM target", f"{llvm.get_host_cpu_name()}; features used: {', '.join(have) or 'none'}"),
        ("Popcount", f"{mode}: {how}" + (f" (forced by BNNLAB_POPCOUNT={forced})" if forced else "")),
        ("Threads", f"{numba.config.NUMBA_NUM_THREADS} (Numba, {numba.threading_layer() if _layer_ready() else 'threading layer not started yet'})"),
    ]


def _layer_ready() -> bool:
    import numba

    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def _folder_rows(data_dir: str | None) -> list[tuple[str, str]]:
    from ..data.registry import FILE_DATASETS, cache_root, dataset_folders
    from ..io.scenes import SceneError, preset_dir

    rows: list[tuple[str, str]] = []
    try:
        rows.append(("Presets", str(preset_dir())))
    except SceneError as exc:
        rows.append(("Presets", str(exc)))
    rows.append(("Download cache", str(cache_root())))
    for name in FILE_DATASETS:
        places = dataset_folders(name, data_dir)
        used = next((f for _, f, n in places if f is not None and n == 4), None)
        rows.append((f"Dataset {name}", str(used) if used else
                     "not found (looked in: " + ", ".join(
                         str(f) for _, f, _ in places if f is not None) + ")"))
    return rows


def about_sections(data_dir: str | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(section title, [(label, value), ...]), ...]`` for the About box."""
    libs = [("Python", f"{platform.python_version()} ({sys.executable})")]
    libs += [(n, _dist_version(d)) for n, d in (
        ("NumPy", "numpy"), ("Numba", "numba"), ("llvmlite", "llvmlite"),
        ("pyqtgraph", "pyqtgraph"))]
    qt = _dist_version("PySide6-Essentials")
    libs.append(("PySide6", qt if qt != "not installed" else _dist_version("PySide6")))
    return [
        ("bnnlab", [("Version", version()), ("Package", os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))]),
        ("Libraries", libs),
        ("Kernels", _kernel_rows()),
        ("Folders", _folder_rows(data_dir)),
    ]
