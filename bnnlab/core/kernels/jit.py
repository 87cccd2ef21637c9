"""Numba compilation options shared by every kernel module, and what they are for."""

JIT = dict(nogil=True, cache=True, error_model="numpy")
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
