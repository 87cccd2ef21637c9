"""When a kernel splits its work over threads, and the process-wide tuning for that.

Every threaded wrapper asks :func:`chunks` how many pieces to cut its work into. Small
work stays on one thread; a caller can ask for a given count (``threads=``), which the
tests and :func:`~bnnlab.core.kernels.warm_up` use to reach the serial and the parallel
kernels whatever the input size.

Importing the kernels changes nothing in the process. The entry points (the ``bnnlab``
command, the desktop app, the benchmark scripts) call :func:`tune_process` once, before
any kernel runs: it keeps freed memory mapped, makes idle OpenMP workers spin briefly,
and turns on contention sampling, which sends kernels to one thread while other
processes hold the CPUs.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import numba as nb

__all__ = ["keep_serial", "set_contention_sampling", "PARALLEL_MIN_ROWS", "PARALLEL_MIN_WORK", "REDUCE_PARTS", "ContentionSampler",
           "chunks", "contended", "reduce_parts", "tune_process"]

# Below this many output rows a parallel region costs more than it saves.
PARALLEL_MIN_ROWS = 512

# Below about this much work (multiply-adds, or element visits) one thread beats two.
PARALLEL_MIN_WORK = 1 << 18

# Sums over the batch (weight gradients, batch-norm statistics) are split into this many
# partial sums whatever the thread count, and the partials are added in a fixed order.
# A chunk of a parallel kernel computes whole partials, so the result has the same bits
# on one thread or many, busy machine or idle: a seed makes a run repeatable.
REDUCE_PARTS = 8

# OpenMP workers busy-wait this many iterations after each parallel region before they
# sleep. A training step runs some twenty regions with Python in between, and on this kind
# of virtual machine waking a sleeping worker is slow: with no spinning a step took 9.5 ms,
# with 100k spins (about a millisecond) 6.7 ms, no better with libgomp's default 300k.
# Spinning only hurts when another process holds a core, and then the kernels run
# serially anyway (see ContentionSampler).
GOMP_SPINCOUNT = "100000"


class ContentionSampler:
    """Whether other processes kept the CPUs busy lately (Linux; sampled every 0.25 s).

    An OpenMP parallel region ends only when every worker has run its chunk. When another
    process holds one of two cores, each region waits for the worker's next time slice,
    and a step took 17-19 ms where one thread takes 12.4 ms; sleeping workers avoid that
    but cost ~3 ms of wake-ups per step on an idle machine. So the workers spin (see
    :data:`GOMP_SPINCOUNT`) and the kernels go serial while others use over half a core:
    CPU time of the whole machine (including time stolen by the hypervisor) minus this
    process's own.
    """

    PERIOD = 0.25
    THRESHOLD = 0.5  # cores used by others

    def __init__(self):
        self.contended = False
        self._last = None
        try:
            self._hz = os.sysconf("SC_CLK_TCK") if os.path.exists("/proc/stat") else None
        except (ValueError, AttributeError, OSError):
            self._hz = None

    def _sample(self):
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # not idle
        t = os.times()
        return time.monotonic(), busy / self._hz, t.user + t.system

    def check(self) -> bool:
        if self._hz is None:
            return False
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.PERIOD:
            return self.contended
        try:
            s = self._sample()
        except (OSError, ValueError):
            return self.contended
        if self._last is not None:
            others = (s[1] - self._last[1]) - (s[2] - self._last[2])
            self.contended = others / max(s[0] - self._last[0], 1e-9) > self.THRESHOLD
        self._last = s
        return self.contended


# The sampler the kernels consult, or None (the default: no sampling, threads by size).
contention: ContentionSampler | None = None


def contended() -> bool:
    """True while the sampler (if :func:`tune_process` turned it on) sees a busy machine."""
    return contention is not None and contention.check()


_local = threading.local()


def keep_serial() -> None:
    """From now on, kernels called by this thread run on it alone (unless a call asks
    for threads).

    OpenMP (libgomp) gives every thread that starts a parallel region a pool of workers,
    kept for as long as that thread lives. Once the process holds more such threads than
    there are CPUs, libgomp stops letting workers spin between regions (every pool's), so
    each region waits for sleeping workers to wake. With a second pool alive, a training
    step in a worker thread ran about a quarter slower (``larq-mnist-bnn``: 4,719 against
    6,377 images/s in the main thread; 7,318 in a thread when no other pool existed).
    Long-lived threads that only run small inference (the window's background workers)
    call this, so that only the thread that trains holds a pool.
    """
    _local.serial = True


def chunks(items: int, work: int, threads: int | None = None) -> int:
    """Number of equal chunks to split ``items`` into for a parallel kernel.

    ``threads`` given: that many (at most ``items``), whatever the work and the load.
    Otherwise one below :data:`PARALLEL_MIN_WORK`, while the machine is contended or in
    a thread that called :func:`keep_serial`, else one per Numba thread.
    """
    if threads is not None:
        return max(1, min(int(items), int(threads)))
    if work < PARALLEL_MIN_WORK or getattr(_local, "serial", False) or contended():
        return 1
    return max(1, min(int(items), nb.get_num_threads()))


def reduce_parts(items: int) -> int:
    """Number of partial sums for a reduction over ``items`` (see :data:`REDUCE_PARTS`)."""
    return max(1, min(int(items), REDUCE_PARTS))


def _keep_freed_memory_mapped() -> bool:
    """Ask glibc to keep freed large blocks instead of returning them to the kernel.

    A training step allocates and frees some 25 MB of arrays. By default glibc gives
    blocks above its (adaptive) mmap threshold back at once and trims the heap top, so
    the next step takes a page fault for every 4 KiB it touches again: about a tenth of
    the step. Its MALLOC_* variables are read at process start only, hence mallopt here.
    Set BNNLAB_KEEP_MALLOC=1, or any MALLOC_MMAP_THRESHOLD_ yourself, to leave it alone.
    """
    if os.environ.get("BNNLAB_KEEP_MALLOC") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # the largest value glibc accepts on 64-bit
    mallopt(m_trim_threshold, 256 << 20)
    return True


def set_contention_sampling(on: bool) -> bool:
    """Turn the sampler the kernels consult on or off; returns whether it was on. A
    benchmark turns it off so that a case run on two threads is timed on two threads."""
    global contention
    was = contention is not None
    if on and contention is None:
        contention = ContentionSampler()
    elif not on:
        contention = None
    return was


def tune_process(sample_contention: bool = True) -> dict:
    """Process-wide settings for fast kernels; entry points call this once, early.

    - glibc keeps freed memory mapped (see ``_keep_freed_memory_mapped``);
    - ``GOMP_SPINCOUNT`` defaults to :data:`GOMP_SPINCOUNT` (libgomp reads it once, when
      Numba first starts its OpenMP workers, so this must run before any parallel
      kernel; a value already in the environment is kept);
    - with ``sample_contention``, kernels go serial while other processes hold the CPUs.

    Returns what was done, for logging. Calling it again changes nothing more.
    """
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    done = {"malloc": _keep_freed_memory_mapped(), "gomp_spincount": os.environ["GOMP_SPINCOUNT"],
            "contention_sampling": False}
    if sample_contention:
        set_contention_sampling(True)
        done["contention_sampling"] = True
    return done
