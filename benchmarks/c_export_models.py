"""Random valid .bnn models through the C export: each builds with its own Makefile under
-Werror and must predict what the runtime predicts on the same inputs.

    nice python benchmarks/c_export_models.py --models 1000 --inputs 100 --seed 0

Models come from bnnlab.deploy.samples (every block kind, 1..4 blocks). Prints one line
per failure and a summary; exits 1 if any model failed to build or disagreed.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bnnlab.deploy.cexport import export_c
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_inputs, random_model_file


def c_predictions(mf, raw: np.ndarray, folder: Path) -> np.ndarray:
    """Export, build with the shipped Makefile, run the demo on ``raw``; its predictions."""
    export_c(mf, folder)
    subprocess.run(["make", "-s"], cwd=folder, check=True, capture_output=True, text=True)
    data = folder / "inputs.bin"
    np.ascontiguousarray(raw, np.uint8 if mf.input.encoding == "uint8" else "<f4").tofile(data)
    res = subprocess.run([str(folder / "bnn_demo"), str(data)], check=True, capture_output=True,
                         text=True)
    return np.array([int(v) for v in res.stdout.split()], np.int64)


def block_kind(b) -> str:
    first = f"{b.input}/{b.kernel}/{b.acc}" if b.input == "raw" else "bits"
    return f"{b.kind}:{first}:{b.output}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    kinds: collections.Counter = collections.Counter()
    blocks = collections.Counter()
    failed = built = agreed = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnn-c-") as tmp:
        for i in range(args.models):
            mf = random_model_file(rng)
            raw = random_inputs(rng, mf, args.inputs)
            kinds.update(block_kind(b) for b in mf.blocks)
            blocks[len(mf.blocks)] += 1
            try:
                got = c_predictions(mf, raw, Path(tmp) / f"m{i}")
            except subprocess.CalledProcessError as exc:
                failed += 1
                print(f"model {i}: build or run failed: {(exc.stderr or '').strip()[:400]}")
                continue
            built += 1
            want = Runtime(mf).predict(raw, threads=1)
            if np.array_equal(got, want):
                agreed += 1
            else:
                failed += 1
                print(f"model {i}: {int((got != want).sum())} of {len(raw)} predictions differ")
            if (i + 1) % 50 == 0:
                print(f"{i + 1} models, {built} built, {agreed} agree, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"models {args.models}, built with make -Werror {built}, agree with the runtime on "
          f"{args.inputs} inputs {agreed}, failed {failed}, {time.perf_counter() - t0:.0f} s")
    print("blocks per model:", dict(sorted(blocks.items())))
    print("block kinds:", dict(sorted(kinds.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
