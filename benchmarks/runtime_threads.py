"""The ``.bnn`` runtime of ``larq-mnist-bnn`` on 1 and 2 threads, and one image per call.

    python benchmarks/runtime_threads.py [--rounds 15] [--json]

Builds the runtime as ``bnnlab bench`` does (the Larq MNIST network with batch-norm
statistics as after training), then in each round, in alternating order, times a batch
of 256 on 1 thread and on 2 threads and the mean of 200 one-image calls. Prints the
medians (images/s, the 2-thread speed-up, microseconds per image) in wall time and per
second of this process's CPU time, with the load average before and after: on a busy
machine wall time is what other processes left over, while CPU time per image shows
whether two threads do more work per image than one. The least CPU time of any round
comes closest to a quiet machine's (other processes also slow a round down through the
caches they share).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _timed(fn, calls=1):
    w, c = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - w) / calls, (time.process_time() - c) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from bnnlab.bench import larq_runtime

    rt, _, rng = larq_runtime()
    raw = rng.integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
    one = raw[:1]
    for nt in (1, 2):
        rt.logits(raw, threads=nt)
    rt.logits(one)
    load0 = open("/proc/loadavg").read().split()[:3]
    cases = {"batch256_t1": lambda: _timed(lambda: rt.logits(raw, threads=1)),
             "batch256_t2": lambda: _timed(lambda: rt.logits(raw, threads=2)),
             "batch1": lambda: _timed(lambda: rt.logits(one), 200)}
    got: dict[str, list] = {k: [] for k in cases}
    names = list(cases)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            got[name].append(cases[name]())
    load1 = open("/proc/loadavg").read().split()[:3]
    med = {k: (float(np.median([v[0] for v in vals])), float(np.median([v[1] for v in vals])))
           for k, vals in got.items()}
    least_cpu = {k: min(v[1] for v in vals) for k, vals in got.items()}
    res = {
        "rounds": args.rounds, "loadavg_before": load0, "loadavg_after": load1,
        "images_per_s_t1": 256 / med["batch256_t1"][0],
        "images_per_s_t2": 256 / med["batch256_t2"][0],
        "speedup_t2": med["batch256_t1"][0] / med["batch256_t2"][0],
        "cpu_us_per_image_t1": 1e6 * med["batch256_t1"][1] / 256,
        "cpu_us_per_image_t2": 1e6 * med["batch256_t2"][1] / 256,
        "batch1_us": 1e6 * med["batch1"][0], "batch1_cpu_us": 1e6 * med["batch1"][1],
        "least_cpu_us_per_image_t1": 1e6 * least_cpu["batch256_t1"] / 256,
        "least_cpu_us_per_image_t2": 1e6 * least_cpu["batch256_t2"] / 256,
        "least_batch1_cpu_us": 1e6 * least_cpu["batch1"],
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"load {' '.join(load0)} -> {' '.join(load1)}; medians of {args.rounds} rounds")
    print(f"  batch 256, 1 thread : {res['images_per_s_t1']:9,.0f} images/s; "
          f"{res['cpu_us_per_image_t1']:.1f} us CPU per image")
    print(f"  batch 256, 2 threads: {res['images_per_s_t2']:9,.0f} images/s "
          f"({res['speedup_t2']:.2f}x); {res['cpu_us_per_image_t2']:.1f} us CPU per image")
    print(f"  batch 1             : {res['batch1_us']:.1f} us ({res['batch1_cpu_us']:.1f} us CPU)")
    print(f"  least CPU time of any round: {res['least_cpu_us_per_image_t1']:.1f} and "
          f"{res['least_cpu_us_per_image_t2']:.1f} us per image (batch 256, 1 and 2 threads), "
          f"{res['least_batch1_cpu_us']:.1f} us (batch 1)")


if __name__ == "__main__":
    main()
