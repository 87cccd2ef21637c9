"""Compile (or load from Numba's cache) every kernel once, on tiny inputs.

:func:`warm_up` does it in this process. :func:`compile_in_children` does the compiling in
child processes, one per core, each taking a share of the kernels and writing them to
Numba's on-disk cache: the work runs in parallel, and the parent's threads (a GUI's event
loop) never wait for the compiler. A :func:`warm_up` afterwards only loads from the cache.
:func:`prepare_kernels` picks between the two. Run as
``python -m bnnlab.core.kernels.warmup PART PARTS``, this module compiles its share
``PART`` of ``PARTS`` and prints one line per kernel done.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time

import numpy as np

from .batchnorm import bn_backward_train, bn_forward_train, scale_shift
from .chains import ChainGeometry, binary_conv_chain, chain_bits, float_conv_chain
from .conv import col2im, conv_backward, conv_forward_direct, im2col
from .float_gemm import matmul
from .histogram import histogram_uniform
from .optimizer import adam_update
from .packing import pack_conv_input, pack_patches_parallel
from .pooling import maxpool_backward, maxpool_forward
from .sign import sign_pack, signs_differ, ste_gate
from .xnor import xnor_gemm

__all__ = ["child_main", "compile_in_children", "prepare_kernels", "prepare_steps", "run_steps",
           "warm_up"]

# A kernel that loads from Numba's cache is ready in tens of milliseconds; one that
# compiles takes seconds. The first kernel's time tells which case this start-up is.
CACHED_SECONDS = 0.5


def prepare_kernels(progress=None, cancelled=None) -> bool:
    """Make every kernel ready in this process the quickest way, without stalling its other
    threads: the first kernel is loaded here; if it had to be compiled (a cold cache), the
    rest is compiled by :func:`compile_in_children` before :func:`warm_up` loads it.
    ``progress(done, total)``. Returns True when the children compiled."""
    return prepare_steps(_steps(), __name__, progress, cancelled)


def prepare_steps(steps: list, module: str, progress=None, cancelled=None) -> bool:
    """:func:`prepare_kernels` for any list of warm-up ``steps`` (callables): ``module``
    is the module that, run as ``python -m MODULE PART PARTS``, runs its share of the
    same steps (see :func:`child_main`); higher layers warm their own kernels this way."""
    total = len(steps) + 1
    if progress is not None:
        progress(0, total)  # started: the first step may take seconds on a cold cache
    t0 = time.perf_counter()
    steps[0]()
    cold = time.perf_counter() - t0 > CACHED_SECONDS
    if cold:
        compile_in_children(None if progress is None else lambda d, n: progress(d, total),
                            cancelled=cancelled, module=module, total=len(steps))
    run_steps(steps, None if progress is None else
              lambda d, n: progress(total if d == n else d, total))
    return cold


def warm_up(progress=None, part: int = 0, parts: int = 1) -> None:
    """Compile (or load from cache) every kernel on tiny inputs.

    ``progress(i, total)`` reports each kernel done. Both the serial and the parallel
    variants are touched, by asking each wrapper for one thread and for two
    (``threads=``); nothing global changes. ``part`` of ``parts`` takes every
    ``parts``-th kernel from the ``part``-th on (for :func:`compile_in_children`).
    """
    run_steps(_steps(), progress, part, parts)


def run_steps(steps: list, progress=None, part: int = 0, parts: int = 1) -> None:
    """Run every ``parts``-th of ``steps`` from the ``part``-th on; ``progress(i, total)``."""
    steps = steps[part::parts]
    for i, step in enumerate(steps):
        step()
        if progress is not None:
            progress(i + 1, len(steps))


def _steps() -> list:
    steps = []
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 3)).astype(np.float32)
    xb = np.random.default_rng(1).standard_normal((4, 9, 9, 64)).astype(np.float32)
    steps.append(lambda: pack_conv_input(x, 3, 3, 1, (1, 1), (5, 5), 0))
    steps.append(lambda: histogram_uniform(x, -1.0, 1.0, 4))
    w4 = np.zeros(4, np.float32)
    for nt in (1, 2):
        steps.append(lambda nt=nt: scale_shift(xb.reshape(-1, 64), w4.repeat(16), w4.repeat(16),
                                               threads=nt))
    steps.append(lambda: adam_update(w4, w4.copy(), w4.copy(), w4.copy(), 0.9, 0.999, 1e-3,
                                     1e-7, 1.0))
    a = np.zeros((4, 1), np.uint64)
    bt = np.zeros((1, 3), np.uint64)
    for parallel in (False, True):
        steps.append(lambda parallel=parallel: xnor_gemm(a, bt, 9, parallel=parallel))
        steps.append(lambda parallel=parallel: xnor_gemm(a, bt, 9, out=np.empty((4, 3), np.float32),
                                                         parallel=parallel))
        # With panels made beforehand (empty here: fewer than 16 columns), as inference.
        steps.append(lambda parallel=parallel: xnor_gemm(
            a, bt, 9, out=np.empty((4, 3), np.float32), parallel=parallel,
            panels=np.zeros(0, np.uint64)))
    steps.append(lambda: signs_differ(np.zeros((9, 3), np.float32), np.zeros((1, 3), np.uint64)))
    cols = np.empty((25, 27), np.float32)
    steps.append(lambda: im2col(x, 3, 3, 1, 1, 1, 5, 5, np.float32(0), cols))
    steps.append(lambda: col2im(cols, 1, 5, 5, 3, 3, 3, 1, 1, 1, 5, 5, np.empty_like(x)))
    wt = np.zeros((16, 3, 3, 64), np.float32)
    for nt in (1, 2):
        for method in ("sparse", "dense"):
            dz = np.ones((4, 7, 7, 16), np.float32)
            steps.append(lambda nt=nt, method=method, dz=dz: conv_backward(
                xb, wt, dz, 1, 0, 0, True, np.empty_like(wt), np.empty_like(xb), method=method,
                threads=nt))
        steps.append(lambda nt=nt: conv_forward_direct(
            x, np.zeros((3, 3, 3, 16), np.float32), 1, 1, 1, np.float32(0),
            np.empty((1, 5, 5, 16), np.float32), threads=nt))
        steps.append(lambda nt=nt: sign_pack(xb, threads=nt))
        steps.append(lambda nt=nt: ste_gate(xb, xb, 1.0, threads=nt))
        steps.append(lambda nt=nt: matmul(xb.reshape(-1, 64), wt.reshape(-1, 64)[:64], threads=nt))
        steps.append(lambda nt=nt: bn_forward_train(xb.reshape(-1, 64), np.ones(64, np.float32),
                                                    np.zeros(64, np.float32), 1e-3, threads=nt))
        steps.append(lambda nt=nt: bn_backward_train(xb.reshape(-1, 64), xb.reshape(-1, 64),
                                                     np.zeros(64, np.float32),
                                                     np.ones(64, np.float32),
                                                     np.ones(64, np.float32), threads=nt))
        steps.append(lambda nt=nt: pack_patches_parallel(np.zeros((4 * 81, 1), np.uint64), 4, 9, 9,
                                                         64, 3, 3, 1, 0, 0, 7, 7, 0, threads=nt))
        out = np.empty((4, 4, 4, 64), np.float32)
        arg = np.empty((4, 4, 4, 64), np.int32)
        steps.append(lambda nt=nt, out=out, arg=arg: maxpool_forward(xb, 2, 2, out, arg,
                                                                     threads=nt))
        steps.append(lambda nt=nt, out=out, arg=arg: maxpool_backward(out, arg, 2, 2,
                                                                      np.empty_like(xb),
                                                                      threads=nt))
    # The fused inference chains (bnnlab.core.inference), each serial and parallel: two
    # images of 64 x 64 pixels make two blocks. (Names of their own: the lambdas above
    # read their variables when they run.)
    c_ones, c_zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    c_geo = ChainGeometry(64, 64, 8, 2, 2, c_ones, c_zeros)
    c_pix = np.zeros((2 * 66 * 66, 1), np.uint64)
    c_bt = np.zeros((1, 8), np.uint64)
    for nt in (1, 2):
        steps.append(lambda nt=nt: chain_bits(np.zeros((2, 64, 64, 8), np.float32), c_geo,
                                              threads=nt))
        steps.append(lambda nt=nt: float_conv_chain(
            np.zeros((2, 66, 66, 1), np.float32), np.zeros((3, 3, 1, 8), np.float32), 1, 0, 0,
            np.float32(0), None, False, c_geo, threads=nt))
        steps.append(lambda nt=nt: binary_conv_chain(c_pix, 2, (66, 66, 3), (3, 3), 1, (0, 0),
                                                     0, c_bt, 27, None, None, False, c_geo,
                                                     threads=nt))
    return steps


_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


@atexit.register
def _stop_children() -> None:
    """Closing the app mid-compile must not leave compilers running."""
    with _children_lock:
        for proc in list(_children):
            proc.kill()


def compile_in_children(progress=None, processes: int | None = None,
                        cancelled=None, *, module: str = __name__,
                        total: int | None = None) -> bool:
    """Compile every kernel into Numba's cache in ``processes`` child processes (default:
    one per core this process may use, at most 4); ``progress(done, total)`` counts
    kernels over all of them. Returns True when every child finished cleanly; False when
    one failed or ``cancelled()`` turned true (the children are then stopped), and then
    :func:`warm_up` compiles what is missing in this process. ``module`` and ``total``:
    another module's steps and their number (see :func:`prepare_steps`)."""
    if total is None:
        total = len(_steps())
    if processes is None:
        processes = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else (os.cpu_count() or 1))
    processes = max(1, min(processes, total))
    done = 0
    lock = threading.Lock()
    procs = []
    try:
        for part in range(processes):
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(part), str(processes)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
            with _children_lock:
                _children.add(proc)
            procs.append(proc)

        def follow(proc):
            nonlocal done
            for line in proc.stdout:
                if line.strip() == "done":
                    with lock:
                        done += 1
                        if progress is not None:
                            progress(done, total)

        readers = [threading.Thread(target=follow, args=(p,), daemon=True) for p in procs]
        for r in readers:
            r.start()
        while any(r.is_alive() for r in readers):
            if cancelled is not None and cancelled():
                return False
            for r in readers:
                r.join(0.05)
        return all(p.wait() == 0 for p in procs)
    except OSError:
        return False
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            with _children_lock:
                _children.discard(proc)


def child_main(steps: list, argv: list[str]) -> int:
    """The body of ``python -m MODULE PART PARTS``: run that share of ``steps``, printing
    ``done`` after each; stop when the parent has gone."""
    part, parts = int(argv[0]), int(argv[1])
    parent = os.getppid()

    def report(_i, _n):
        print("done", flush=True)
        if os.getppid() != parent:  # the parent is gone: stop compiling for nobody
            raise SystemExit(1)

    run_steps(steps, report, part, parts)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(_steps(), sys.argv[1:]))
