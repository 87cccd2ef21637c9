"""The three AVX2 ways of counting bits in the binary GEMM, interleaved in one process.

    python benchmarks/popcount_ab.py [--rounds 9] [--shapes MxKxN,...] [--force]

Per-word byte tables ("bytes"), Harley-Seal carry-save adders ("csa") and nibbles split
beforehand ("nibbles"): in each round, in rotating order, the register-only probe of
each method and the 1-thread binary GEMM with each, on the same operands; and the GEMM
as the ``.bnn`` runtime calls it ("panels": nibbles, with B's panels made once
beforehand by ``gemm_panels``, measured against the nibble probe). A sample of a small
shape is the mean of calls back to back lasting about 2 ms. Prints the
medians in T binary ops/s (2 per bit), each GEMM as a fraction of its own method's probe
and of the fastest probe, and the speed-up of each method over "bytes", both per second
of wall time and per second of this thread's CPU time (which other processes on a
shared machine disturb much less), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _timed(fn, calls=1):
    w, c = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - w) / calls, (time.thread_time() - c) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--shapes", default="5184x576x64,1024x4608x256,4096x4096x4096")
    ap.add_argument("--force", action="store_true",
                    help="carry-save adders on every row length (the kernels use them on "
                         "rows of at least xnor.CSA_MIN_WORDS words)")
    args = ap.parse_args()

    import numba

    numba.set_num_threads(1)
    from bnnlab.core.kernels import roofline, xnor
    from bnnlab.core.kernels.roofline import OPS_PER_WORD

    words = [np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03),
             np.uint64(0x8CB92BA72F3D8DD7), np.uint64(0x5851F42D4C957F2D)]
    probes = {
        "bytes": (lambda: roofline.binary_probe(1000, *words), 1000 * 6 * 4 * 31),
        "csa": (lambda: roofline.binary_probe_csa(300, *words[:3]), 300 * 2 * 4 * 31 * 8),
        "nibbles": (lambda: roofline.binary_probe_nibbles(1200, *words), 1200 * 4 * 4 * 31),
    }
    methods = tuple(probes)
    rng = np.random.default_rng(0)
    cases = []
    for spec in args.shapes.split(","):
        m, k, n = (int(v) for v in spec.split("x"))
        kw = (k + 63) // 64
        a = rng.integers(0, 2**63, (m, kw), dtype=np.uint64)
        bt = rng.integers(0, 2**63, (kw, n), dtype=np.uint64)
        cases.append((spec, m, k, n, a, bt, np.empty((m, n), np.int32),
                      xnor.nibble_panels(bt, n // 16 * 16)))
    # (csa, nib) arguments of the GEMM for each method.
    csa_arg = {"bytes": (np.int64(0), np.int64(0)),
               "csa": (np.int64(1 if args.force else xnor.CSA_MIN_WORDS), np.int64(0)),
               "nibbles": (np.int64(0), np.int64(1))}
    load0 = open("/proc/loadavg").read().split()[:3]
    for fn, _ in probes.values():  # compile or load
        fn()
    # A sample of a small shape is as many calls back to back as take about 2 ms: one
    # lone call would time a cold cache after the largest shape's calls.
    calls = {}
    for spec, m, k, n, a, bt, out, bp in cases:
        for c in csa_arg.values():
            xnor.xnor_gemm_serial(a, bt, np.int64(k), out, *c)
        xnor.xnor_gemm_prepared(a, bt, bp, np.int64(k), out)
        one = _timed(lambda: xnor.xnor_gemm_prepared(a, bt, bp, np.int64(k), out))[0]
        calls[spec] = max(1, min(1000, round(2e-3 / max(one, 1e-9))))
    got: dict[tuple, list] = {}
    for r in range(args.rounds):
        order = methods[r % 3:] + methods[:r % 3]
        for method in order:
            fn, nwords = probes[method]
            w, c = _timed(fn)
            got.setdefault(("probe", method), []).append((nwords * OPS_PER_WORD / w,
                                                          nwords * OPS_PER_WORD / c))
        for spec, m, k, n, a, bt, out, bp in cases:
            for method in order + ("panels",) if r % 2 else ("panels",) + order:
                if method == "panels":
                    w, c = _timed(lambda: xnor.xnor_gemm_prepared(a, bt, bp, np.int64(k), out),
                                  calls[spec])
                else:
                    w, c = _timed(lambda: xnor.xnor_gemm_serial(a, bt, np.int64(k), out,
                                                                *csa_arg[method]), calls[spec])
                got.setdefault((spec, method), []).append((2 * m * n * k / w, 2 * m * n * k / c))
    load1 = open("/proc/loadavg").read().split()[:3]
    med = {key: [float(np.median([v[i] for v in vals])) / 1e12 for i in (0, 1)]
           for key, vals in got.items()}
    result = {"cpu": _cpu_name(), "rounds": args.rounds, "loadavg_before": load0,
              "loadavg_after": load1, "tops": {f"{a}/{b}": v for (a, b), v in med.items()}}
    print(f"{result['cpu']}; load {' '.join(load0)} -> {' '.join(load1)}; "
          f"medians of {args.rounds} interleaved rounds, T binary ops/s (wall | CPU time)")
    for method in methods:
        w, c = med[("probe", method)]
        print(f"  probe {method:7s}  {w:.3f} | {c:.3f}")
    top = [max(med[("probe", m)][i] for m in methods) for i in (0, 1)]
    for spec, *_ in cases:
        print(f"  {spec}")
        for method in methods + ("panels",):
            w, c = med[(spec, method)]
            pw, pc = med[("probe", "nibbles" if method == "panels" else method)]
            sw = w / med[(spec, "bytes")][0]
            sc = c / med[(spec, "bytes")][1]
            print(f"    {method:7s} {w:.3f} | {c:.3f}  ({100 * w / pw:.0f}% | {100 * c / pc:.0f}% "
                  f"of its probe, {100 * w / top[0]:.0f}% | {100 * c / top[1]:.0f}% of the "
                  f"fastest)  {sw:.2f}x | {sc:.2f}x bytes")
    print(json.dumps(result))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


if __name__ == "__main__":
    main()
