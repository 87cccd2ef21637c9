"""Engine inference of ``larq-mnist-bnn`` fused and layer by layer, beside the ``.bnn`` runtime.

    python benchmarks/inference_fused.py [--rounds 5] [--batch 256] [--json]

Builds the network and its runtime as ``bnnlab bench`` does (batch-norm statistics as
after training), checks that the fused pass gives the same logits as the layer-by-layer
one (``Sequential.forward(x, fused=False)``), then in each round, on 1 and then 2 threads,
times the fused engine pass, the layer-by-layer pass and the runtime one after another
(medians of at least 7 calls and 0.2 s each, as ``bnnlab bench``). Prints the median
images/s of the rounds, every round, the ratios, and the load average before and after:
the three are interleaved so that a busy moment slows all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from bnnlab.bench import larq_runtime, median_time, threads
    from bnnlab.core.kernels import tune_process

    tune_process()
    runtime, bnn, rng = larq_runtime()
    raw = rng.integers(0, 256, (args.batch, 28, 28, 1), dtype=np.uint8)
    x = raw.astype(np.float32) / np.float32(255.0)
    if not np.array_equal(bnn.forward(x).view(np.uint32),
                          bnn.forward(x, fused=False).view(np.uint32)):
        raise SystemExit("the fused pass and the layer-by-layer pass differ")
    load_before = os.getloadavg()
    cases = {"engine fused": lambda nt: bnn.forward(x),
             "engine layer by layer": lambda nt: bnn.forward(x, fused=False),
             "runtime": lambda nt: runtime.logits(raw, threads=nt)}
    rounds: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in cases}
    for _ in range(args.rounds):
        for nt in (1, 2):
            with threads(nt):
                for name, fn in cases.items():
                    t = median_time(lambda: fn(nt), 7, 0.2)
                    rounds[name][nt].append(args.batch / t)
    load_after = os.getloadavg()
    med = {name: {nt: float(np.median(v)) for nt, v in per.items()}
           for name, per in rounds.items()}
    out = {"batch": args.batch, "load_before": load_before, "load_after": load_after,
           "images_per_s": med, "rounds": rounds,
           "fused_over_runtime": {nt: med["engine fused"][nt] / med["runtime"][nt]
                                  for nt in (1, 2)},
           "fused_over_layer_by_layer": {nt: med["engine fused"][nt]
                                         / med["engine layer by layer"][nt] for nt in (1, 2)}}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"larq-mnist-bnn, batch {args.batch}, {args.rounds} rounds; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min, "
          f"{os.cpu_count()} CPUs)")
    for name, per in rounds.items():
        for nt, v in per.items():
            print(f"  {name:22s} {nt} thread{'s' if nt > 1 else ' '}  median "
                  f"{med[name][nt]:9,.0f} images/s  (rounds: {', '.join(f'{a:,.0f}' for a in v)})")
    for nt in (1, 2):
        print(f"  {nt} thread{'s' if nt > 1 else ' '}: fused / runtime "
              f"{out['fused_over_runtime'][nt]:.2f}, fused / layer by layer "
              f"{out['fused_over_layer_by_layer'][nt]:.2f}x")


if __name__ == "__main__":
    main()
