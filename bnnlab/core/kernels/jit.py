"""Numba compilation options shared by every kernel module, and what they are for; and
the popcount mode, which decides whether compiled kernels may be kept on disk."""

from llvmlite import binding as llvm_binding

from ..settings import popcount_setting

HOST_FEATURES = llvm_binding.get_host_cpu_features()


def automatic_popcount_mode() -> str:
    """The popcount mode this CPU gets unless ``BNNLAB_POPCOUNT`` forces another (see
    :mod:`.simd`): ``lanes`` with AVX-512 VPOPCNTDQ and VL, else ``csa``."""
    has = all(HOST_FEATURES.get(f, False) for f in ("avx512vpopcntdq", "avx512vl"))
    return "lanes" if has else "csa"


def _popcount_mode() -> str:
    forced = popcount_setting()
    return automatic_popcount_mode() if forced == "auto" else forced


POPCOUNT_MODE = _popcount_mode()
# The mode is a constant inside the compiled kernels, and Numba's on-disk cache does not
# know it: a kernel compiled in one mode would be loaded in another. The cache is keyed
# on the CPU, and the automatic mode follows from the CPU, so kernels of the automatic
# mode are cached; a forced other mode compiles afresh in each process and leaves the
# cache alone.
CACHE = POPCOUNT_MODE == automatic_popcount_mode()

JIT = dict(nogil=True, cache=CACHE, error_model="numpy")
JIT_FLOAT = dict(JIT, fastmath=True)
JIT_PAR = dict(JIT_FLOAT, parallel=True)
# Helpers called from hot loops are inlined in Numba's IR: a real call passes each array
# as a struct and costs atomic reference-count updates.
JIT_INLINE = dict(JIT_FLOAT, inline="always")

# Performance notes for these kernels:
# - Slicing a view inside a hot loop costs an atomic reference-count update, so loops
#   index flat 2-D arrays instead; compare-and-select loops keep every lane 32 bits wide
#   so LLVM can vectorize them without branches.
# - ``a[base + k]`` with a signed index that Numba cannot prove non-negative gets a
#   per-element negative-wraparound select, which stops vectorization: index 2-D rows
#   with ``range`` columns, or use the raw ``ld``/``vload`` intrinsics of :mod:`.simd`.
# - In a ``parallel=True`` function every array expression (``s[:] = 0``, ``.sum()``)
#   becomes a parallel region of its own; those functions hold one ``prange`` only.
# - ``nb.get_num_threads()`` (a ctypes call) inside a jitted function makes it
#   uncacheable; the chunk count is chosen in Python and passed in.
# - fastmath lets LLVM assume no NaNs; kernels whose result must follow NumPy on NaN
#   (sign, the STE gate) are compiled without it.
