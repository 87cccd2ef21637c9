"""This CPU's own limits, measured: register-only probes for the binary and float32 peaks.

Each probe runs the arithmetic of a kernel's inner loop on values that never leave the
registers, so its rate is what the execution units sustain and nothing else:

- binary: XOR + population count + accumulate, with the popcount method the binary GEMM
  uses in this process (:data:`~.simd.POPCOUNT_MODE`; in the "csa" mode, the split-nibble
  count its tiles use whenever A has enough rows) on 256-bit vectors, folding byte
  counters into lanes as often as the GEMM does. One XOR-popcount of a 64-bit word counts as 128 binary
  operations (the usual convention: an XNOR and an add per bit).
- float32: fused multiply-adds on eight-float vectors, twelve independent chains (more
  than latency x throughput of any current x86 core), 16 FLOPs per vector FMA.

The operands pass through an empty inline-assembly statement every iteration (no
instruction, but LLVM must assume they changed), so it cannot hoist the work out of the
loop or fold it into a closed form; the tests look at the compiled loop to make sure of
that. The probes release the GIL, so running one
per Python thread measures the peak of several cores together.
"""

from __future__ import annotations

import threading
import time

import numba as nb
import numpy as np

from .jit import JIT, JIT_FLOAT, JIT_INLINE
from .simd import (HOST_FEATURES, POPCOUNT_MODE, uadd, ubytesum, ucadd, ucsa, ucsa_rest,
                   unibpop, uopaque, upopadd, usplat, ustore, utimes8, uxor, uxor_popadd, uzero,
                   vadd, vfma, vopaque, vsplat, vstore)

__all__ = ["binary_probe", "binary_probe_csa", "binary_probe_nibbles", "float_probe", "probe",
           "measure_roofline", "popcount_method", "isa", "binary_probe_ref",
           "binary_probe_csa_ref", "binary_probe_nibbles_ref", "float_probe_ref"]

# Binary operations per 64-bit word XOR-popcounted (an XNOR and an add per bit).
OPS_PER_WORD = 128
# Words per binary_probe iteration: 6 accumulators x 4 words, 31 times.
_WORDS_PER_ITER = 6 * 4 * 31
# Words per binary_probe_csa iteration: 2 column groups x 4 words, 31 blocks of 8.
_CSA_WORDS_PER_ITER = 2 * 4 * 31 * 8
# Words per binary_probe_nibbles iteration: 4 accumulators x 4 words, 31 times.
_NIB_WORDS_PER_ITER = 4 * 4 * 31
# FLOPs per float_probe iteration: 12 vector FMAs of 8 lanes, 2 FLOPs each.
_FLOPS_PER_ITER = 12 * 8 * 2


@nb.njit(**JIT)
def binary_probe(iters, a, b, c, d):
    """``iters`` rounds of 31 XOR-popcount-accumulates on six accumulators (every pair of
    four operands), then a fold of the byte counters into lanes, as the GEMM does every
    31 words; returns a checksum. Six accumulators, four operands, the two constants of
    the byte count and its temporaries fill the sixteen AVX2 registers without a spill."""
    va = usplat(a)
    vb = usplat(b)
    vc = usplat(c)
    vd = usplat(d)
    t0 = uzero()
    t1 = uzero()
    t2 = uzero()
    t3 = uzero()
    t4 = uzero()
    t5 = uzero()
    for _ in range(iters):
        c0 = uzero()
        c1 = uzero()
        c2 = uzero()
        c3 = uzero()
        c4 = uzero()
        c5 = uzero()
        for _w in range(31):
            va = uopaque(va)
            vb = uopaque(vb)
            vc = uopaque(vc)
            vd = uopaque(vd)
            c0 = uxor_popadd(c0, va, vb)
            c1 = uxor_popadd(c1, va, vc)
            c2 = uxor_popadd(c2, va, vd)
            c3 = uxor_popadd(c3, vb, vc)
            c4 = uxor_popadd(c4, vb, vd)
            c5 = uxor_popadd(c5, vc, vd)
        t0 = uadd(t0, ubytesum(c0))
        t1 = uadd(t1, ubytesum(c1))
        t2 = uadd(t2, ubytesum(c2))
        t3 = uadd(t3, ubytesum(c3))
        t4 = uadd(t4, ubytesum(c4))
        t5 = uadd(t5, ubytesum(c5))
    out = np.empty(4, np.uint64)
    ustore(out, 0, uadd(uadd(uadd(t0, t1), uadd(t2, t3)), uadd(t4, t5)))
    return out.sum()


@nb.njit(**JIT_INLINE)
def _csa_pair(va, vb, vc, ones0, ones1):
    # Two words of the row (va, made opaque each time) against two column groups (vb, vc)
    # into the weight-1 vectors; returns the weight-2 carries and the new weight-1 vectors.
    va = uopaque(va)
    x0 = uxor(va, vb)
    x1 = uxor(va, vc)
    va = uopaque(va)
    c0, ones0 = ucsa(ones0, x0, uxor(va, vb))
    c1, ones1 = ucsa(ones1, x1, uxor(va, vc))
    return va, c0, c1, ones0, ones1


@nb.njit(**JIT)
def binary_probe_csa(iters, a, b, c):
    """The inner loop of the Harley-Seal binary GEMM (popcount mode "csa") on registers:
    ``iters`` rounds of 31 blocks of eight words of one row (``a``, made opaque every word)
    XORed with two groups of four columns (``b``, ``c``), each block summed by seven
    carry-save adders and one population count per group, the counts folded into lanes
    every 31 blocks as the GEMM does; returns the total count of set bits."""
    va = usplat(a)
    vb = usplat(b)
    vc = usplat(c)
    t0 = uzero()
    t1 = uzero()
    ones0 = uzero()
    ones1 = uzero()
    twos0 = uzero()
    twos1 = uzero()
    fours0 = uzero()
    fours1 = uzero()
    for _ in range(iters):
        e0 = uzero()
        e1 = uzero()
        for _b in range(31):
            va, ta0, ta1, ones0, ones1 = _csa_pair(va, vb, vc, ones0, ones1)
            va, tb0, tb1, ones0, ones1 = _csa_pair(va, vb, vc, ones0, ones1)
            fa0, twos0 = ucsa(twos0, ta0, tb0)
            fa1, twos1 = ucsa(twos1, ta1, tb1)
            va, ta0, ta1, ones0, ones1 = _csa_pair(va, vb, vc, ones0, ones1)
            va, tb0, tb1, ones0, ones1 = _csa_pair(va, vb, vc, ones0, ones1)
            fb0, twos0 = ucsa(twos0, ta0, tb0)
            fb1, twos1 = ucsa(twos1, ta1, tb1)
            eights0, fours0 = ucsa(fours0, fa0, fb0)
            eights1, fours1 = ucsa(fours1, fa1, fb1)
            e0 = upopadd(e0, eights0)
            e1 = upopadd(e1, eights1)
        t0 = uadd(t0, ubytesum(e0))
        t1 = uadd(t1, ubytesum(e1))
    t = utimes8(uadd(t0, t1))
    r = ucadd(ucsa_rest(ones0, twos0, fours0), ucsa_rest(ones1, twos1, fours1))
    out = np.empty(4, np.uint64)
    ustore(out, 0, uadd(t, ubytesum(r)))
    return out.sum()


_NIB_LO = np.uint64(0x0F0F0F0F0F0F0F0F)


@nb.njit(**JIT)
def binary_probe_nibbles(iters, a, b, c, d):
    """The inner loop of the split-nibble binary GEMM (popcount mode "csa", enough rows)
    on registers: ``iters`` rounds of 31 words of one row (the nibbles of ``a``, made
    opaque every word) against four column vectors (the nibbles of ``b``, ``c``, ``d``,
    ``a ^ d``), two table lookups per vector, the byte counters folded into lanes every
    31 words as the GEMM does; returns the total count of set bits."""
    four = np.uint64(4)
    lo = usplat(a & _NIB_LO)
    hi = usplat((a >> four) & _NIB_LO)
    e = a ^ d
    b0 = usplat(b & _NIB_LO)
    b1 = usplat((b >> four) & _NIB_LO)
    b2 = usplat(c & _NIB_LO)
    b3 = usplat((c >> four) & _NIB_LO)
    b4 = usplat(d & _NIB_LO)
    b5 = usplat((d >> four) & _NIB_LO)
    b6 = usplat(e & _NIB_LO)
    b7 = usplat((e >> four) & _NIB_LO)
    t0 = uzero()
    t1 = uzero()
    t2 = uzero()
    t3 = uzero()
    for _ in range(iters):
        c0 = uzero()
        c1 = uzero()
        c2 = uzero()
        c3 = uzero()
        for _w in range(31):
            lo = uopaque(lo)
            hi = uopaque(hi)
            c0 = unibpop(unibpop(c0, lo, b0), hi, b1)
            c1 = unibpop(unibpop(c1, lo, b2), hi, b3)
            c2 = unibpop(unibpop(c2, lo, b4), hi, b5)
            c3 = unibpop(unibpop(c3, lo, b6), hi, b7)
        t0 = uadd(t0, ubytesum(c0))
        t1 = uadd(t1, ubytesum(c1))
        t2 = uadd(t2, ubytesum(c2))
        t3 = uadd(t3, ubytesum(c3))
    out = np.empty(4, np.uint64)
    ustore(out, 0, uadd(uadd(t0, t1), uadd(t2, t3)))
    return out.sum()


@nb.njit(**JIT_FLOAT)
def float_probe(iters, x, m, c):
    """``iters`` rounds of twelve independent vector FMAs ``acc = acc * m + c``; returns a
    checksum. With 0 < m < 1 the values stay normal (no denormal slow path)."""
    vm = vsplat(m)
    vc = vsplat(c)
    a0 = vsplat(x)
    a1 = vsplat(x + np.float32(1))
    a2 = vsplat(x + np.float32(2))
    a3 = vsplat(x + np.float32(3))
    a4 = vsplat(x + np.float32(4))
    a5 = vsplat(x + np.float32(5))
    a6 = vsplat(x + np.float32(6))
    a7 = vsplat(x + np.float32(7))
    a8 = vsplat(x + np.float32(8))
    a9 = vsplat(x + np.float32(9))
    a10 = vsplat(x + np.float32(10))
    a11 = vsplat(x + np.float32(11))
    for _ in range(iters):
        vm = vopaque(vm)
        a0 = vfma(a0, vm, vc)
        a1 = vfma(a1, vm, vc)
        a2 = vfma(a2, vm, vc)
        a3 = vfma(a3, vm, vc)
        a4 = vfma(a4, vm, vc)
        a5 = vfma(a5, vm, vc)
        a6 = vfma(a6, vm, vc)
        a7 = vfma(a7, vm, vc)
        a8 = vfma(a8, vm, vc)
        a9 = vfma(a9, vm, vc)
        a10 = vfma(a10, vm, vc)
        a11 = vfma(a11, vm, vc)
    out = np.empty(8, np.float32)
    s = vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7)))
    vstore(out, 0, vadd(s, vadd(vadd(a8, a9), vadd(a10, a11))))
    return out.sum()


def popcount_method() -> str:
    """How the binary kernels count bits in this process, in words."""
    if POPCOUNT_MODE == "lanes" and not HOST_FEATURES.get("avx512vpopcntdq"):
        return ("XOR + a per-64-bit-lane count + add, forced on a CPU without AVX-512 "
                "VPOPCNTDQ: LLVM spells each lane's count in the instructions it has "
                "(vpshufb nibble tables + vpsadbw on AVX2), not vpopcntq")
    return {"lanes": "XOR + vpopcntq per 64-bit lane + add (AVX-512 VPOPCNTDQ)",
            "bytes": "XOR + per-byte nibble-table counts (vpshufb) + byte adds, "
                     "folded to lanes with vpsadbw every 31 words",
            "csa": "XOR of nibbles split beforehand + nibble-table counts (vpshufb) + "
                   "byte adds, folded to lanes with vpsadbw every 31 words (calls of "
                   "fewer rows: Harley-Seal carry-save adders over 8 words)"}[POPCOUNT_MODE]


def isa() -> str:
    """The widest vector ISA LLVM compiles for on this CPU."""
    f = HOST_FEATURES
    if f.get("avx512f"):
        extra = "+VPOPCNTDQ" if f.get("avx512vpopcntdq") else ""
        return f"AVX-512{extra} (kernels use 256-bit vectors)"
    if f.get("avx2"):
        return "AVX2+FMA" if f.get("fma") else "AVX2"
    return "SSE (no AVX2)"


# Each call lasts about 2.5 ms on a 3 GHz AVX2 core (Zen 3: binary 2.6 ms with byte
# tables, 2.4 ms with carry-save adders, 2.4 ms with split nibbles; float 2.5 ms), long against the 0.05 ms that
# threads take to be released together.
_BIN_ITERS = 30_000
_NIB_ITERS = 40_000
_FLT_ITERS = 1_300_000


_WORDS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03),
          np.uint64(0x8CB92BA72F3D8DD7), np.uint64(0x5851F42D4C957F2D))


def _run_nibbles():
    binary_probe_nibbles(_NIB_ITERS, *_WORDS)
    return _NIB_ITERS * _NIB_WORDS_PER_ITER


def _run_csa():
    binary_probe_csa(_NIB_ITERS // 4, *_WORDS[:3])
    return _NIB_ITERS // 4 * _CSA_WORDS_PER_ITER


def _run_bytes():
    binary_probe(_BIN_ITERS, *_WORDS)
    return _BIN_ITERS * _WORDS_PER_ITER


# The probes of the counts the GEMM uses in each mode, the main one first: in the "csa"
# mode the split nibbles (A with enough rows), then the carry-save adders and byte
# tables of calls with fewer rows; "bytes" and "lanes" have one each.
METHOD_PROBES = {"csa": {"nibbles": _run_nibbles, "csa": _run_csa, "bytes": _run_bytes},
                 "bytes": {"bytes": _run_bytes}, "lanes": {"lanes": _run_bytes}}[POPCOUNT_MODE]
_run_binary = next(iter(METHOD_PROBES.values()))


def _run_float():
    float_probe(_FLT_ITERS, np.float32(1.0), np.float32(0.999), np.float32(0.001))


def _timed(run, threads):
    """(wall seconds, CPU seconds) of ``threads`` concurrent calls of ``run``, one per
    Python thread. Several threads are released together by a barrier and each times its
    own call, so starting and joining threads (about 0.5 ms, as long as a short probe)
    is not counted: wall time is the longest call, CPU time the sum of the threads'."""
    if threads == 1:
        c = time.thread_time()
        t = time.perf_counter()
        run()
        return time.perf_counter() - t, time.thread_time() - c
    barrier = threading.Barrier(threads)
    walls, cpus = [], []

    def work():
        barrier.wait()
        c = time.thread_time()
        t = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - c)

    ws = [threading.Thread(target=work) for _ in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    return max(walls), sum(cpus)


def probe(threads: int = 1, cpu_time: bool = False) -> tuple[float, float]:
    """One measurement, now: (binary ops/s, float32 FLOP/s) of ``threads`` threads together.

    With ``cpu_time``, per second of CPU time this process got instead of per second of
    wall time: on a machine shared with other processes that is what a core sustains
    while it runs this work, however often it was taken away.
    """
    k = 1 if cpu_time else 0
    words = []
    tb = _timed(lambda: words.append(_run_binary()), threads)[k]
    tf = _timed(_run_float, threads)[k]
    return (words[0] * threads * OPS_PER_WORD / max(tb, 1e-9),
            _FLT_ITERS * _FLOPS_PER_ITER * threads / max(tf, 1e-9))


def method_peaks(rounds: int = 5) -> dict:
    """{method: T binary ops/s on one thread} for every count the GEMM may use in this
    process (see :data:`METHOD_PROBES`), each the median of ``rounds`` interleaved probes."""
    got = {name: [] for name in METHOD_PROBES}
    for _ in range(rounds):
        for name, run in METHOD_PROBES.items():
            t = time.perf_counter()
            words = run()
            got[name].append(words * OPS_PER_WORD / max(time.perf_counter() - t, 1e-9) / 1e12)
    return {name: float(np.median(v)) for name, v in got.items()}


def measure_roofline(thread_counts=(1, 2), seconds: float = 0.6) -> dict:
    """Binary and float32 peaks of this CPU, per thread and for each thread count.

    Returns ``binary_tops_per_thread`` (T binary ops/s), ``float32_gflops_per_thread``,
    ``method``, ``isa``, ``popcount_mode``, ``by_threads``: {n: {binary_tops,
    float32_gflops}} for n threads together, and ``by_method``: the one-thread binary
    peak of each count the GEMM may use here (:func:`method_peaks`; the first is the
    binary peak's). Each figure is the median of probes of some 2.5 ms, taken for about
    ``seconds`` per thread count.
    """
    probe(1)  # compile or load from the cache
    by_method = method_peaks()
    by = {}
    for n in thread_counts:
        rates = []
        t_end = time.perf_counter() + seconds
        while len(rates) < 5 or (time.perf_counter() < t_end and len(rates) < 200):
            rates.append(probe(n))
        by[str(n)] = {"binary_tops": float(np.median([r[0] for r in rates])) / 1e12,
                      "float32_gflops": float(np.median([r[1] for r in rates])) / 1e9}
    one = by.get("1") or next(iter(by.values()))
    return {"binary_tops_per_thread": one["binary_tops"],
            "float32_gflops_per_thread": one["float32_gflops"],
            "method": popcount_method(), "popcount_mode": POPCOUNT_MODE, "isa": isa(),
            "by_threads": by, "by_method": by_method}


# --------------------------------------------------------------------------- twins


def binary_probe_ref(iters, a, b, c, d):
    """What :func:`binary_probe` returns: each of the six pairs XOR-popcounted 31 times per
    round in each of the four lanes."""
    words = [int(a), int(b), int(c), int(d)]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    per_round = sum(bin(words[i] ^ words[j]).count("1") for i, j in pairs)
    return 4 * 31 * int(iters) * per_round


def binary_probe_csa_ref(iters, a, b, c):
    """What :func:`binary_probe_csa` returns: 31 * 8 words per round against each of the
    two column groups, in each of the four lanes."""
    per_word = bin(int(a) ^ int(b)).count("1") + bin(int(a) ^ int(c)).count("1")
    return 4 * 31 * 8 * int(iters) * per_word


def binary_probe_nibbles_ref(iters, a, b, c, d):
    """What :func:`binary_probe_nibbles` returns: ``a`` against ``b``, ``c``, ``d`` and
    ``a ^ d`` (whose XOR with ``a`` is ``d``), 31 words per round in each of four lanes."""
    a, b, c, d = (int(v) for v in (a, b, c, d))
    per_word = sum(bin(a ^ x).count("1") for x in (b, c, d, a ^ d))
    return 4 * 31 * int(iters) * per_word


def float_probe_ref(iters, x, m, c):
    """What :func:`float_probe` returns, in float64 (the probe rounds in float32)."""
    acc = np.float64(x) + np.arange(12, dtype=np.float64)
    for _ in range(int(iters)):
        acc = acc * np.float64(m) + np.float64(c)
    return float(8 * acc.sum())
