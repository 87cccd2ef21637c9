import os as _os

# Numba's OpenMP workers busy-wait after each parallel region before they sleep. A
# training step runs some twenty regions with Python in between, and on this kind of
# virtual machine waking a sleeping worker is slow: with no spinning a step took 9.5 ms,
# with 100k spins (about a millisecond) 6.7 ms, no better with libgomp's default 300k.
# Spinning only hurts when another process holds a core, and then the kernels run
# serially anyway (see kernels._Contention). libgomp reads this once, when Numba first
# loads it, so it has to be set before that.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")
