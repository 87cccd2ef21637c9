"""Random valid .bnn models through the C export: each builds with its own Makefile under
-Werror and must predict what the runtime predicts on the same inputs.

    nice python benchmarks/c_export_models.py --models 1000 --inputs 100 --seed 0 [--graphs]

Models come from bnnlab.deploy.samples (every block kind, 1..4 blocks; with --graphs,
random graphs of blocks, adds, concatenations and max pooling). Prints one line per
failure and a summary; exits 1 if any model failed to build or disagreed.

    python benchmarks/c_export_models.py --presets all --data-dir DIR [--epochs 1]

trains each preset scene that has a .bnn form (``bnnlab train NAME --epochs N --out``),
exports it to C and prints a Markdown table of the flash and RAM it needs on the host and
on Cortex-M0+ / M4 (see bnnlab/deploy/cbuild.py for what the figures count).

    python benchmarks/c_export_models.py --accuracy MODEL.bnn --data mnist --data-dir DIR

exports a trained model to C, builds the demo with its Makefile, runs it on the dataset's
test images and prints its accuracy beside the runtime's and how many predictions differ
(exits 1 if any does).
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
from bnnlab.deploy.samples import random_graph_file, random_inputs, random_model_file


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


def preset_sizes(names: list[str], data_dir: str | None, epochs: int) -> int:
    """Train, export and measure each preset; print one Markdown row per preset."""
    from bnnlab.deploy import ExportError, read_file
    from bnnlab.deploy.cbuild import TARGETS, measure_all
    from bnnlab.io.scenes import preset_names

    if names == ["all"]:
        names = preset_names()
    titles = [TARGETS[k].title for k in TARGETS]
    print("| preset | `.bnn` bytes | " + " | ".join(f"{t} flash / RAM" for t in titles) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in titles) + " |")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bnn-sizes-") as tmp:
        for name in names:
            bnn = Path(tmp) / f"{name}.bnn"
            cmd = [sys.executable, "-m", "bnnlab", "train", name, "--epochs", str(epochs),
                   "--out", str(bnn), "--json"]
            if data_dir:
                cmd += ["--data-dir", data_dir]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                last = (res.stderr or res.stdout).strip().splitlines()[-1:]
                print(f"<!-- {name}: not exported: {last[0] if last else res.returncode} -->")
                continue
            try:
                mf = read_file(bnn)
                export_c(mf, Path(tmp) / name)
            except ExportError as exc:
                print(f"<!-- {name}: {exc} -->")
                continue
            sizes = measure_all(Path(tmp) / name)
            cells = []
            for key in TARGETS:
                m = sizes[key]
                if isinstance(m, str):
                    failed += 1
                    cells.append(f"not measured: {m}")
                else:
                    cells.append(f"{m['flash']:,} / {m['ram']:,}")
            print(f"| `{name}` | {bnn.stat().st_size:,} | " + " | ".join(cells) + " |", flush=True)
    compilers = {k: m["compiler"] for k, m in sizes.items() if not isinstance(m, str)} if names else {}
    print("compilers:", ", ".join(f"{TARGETS[k].title}: {c}" for k, c in compilers.items()))
    return 1 if failed else 0


def c_accuracy(path: str, data: str, data_dir: str | None) -> int:
    """The host C build of a model against the runtime on a dataset's test images."""
    from bnnlab.data import load_dataset
    from bnnlab.deploy import read_file
    from bnnlab.deploy.runtime import raw_from_unit

    mf = read_file(path)
    ds = load_dataset(data, data_dir, splits=("test",))
    raw = raw_from_unit(ds.x_test, mf.input.encoding) if ds.kind == "image" else ds.x_test
    with tempfile.TemporaryDirectory(prefix="bnn-acc-") as tmp:
        got = c_predictions(mf, raw, Path(tmp) / "c")
    want = Runtime(mf).predict(raw)
    y = np.asarray(ds.y_test)
    print(f"{path}: {len(raw):,} {data} test inputs; C {np.mean(got == y):.2%}, runtime "
          f"{np.mean(want == y):.2%}; predictions that differ: {int(np.sum(got != want))}")
    return int(np.any(got != want))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphs", action="store_true", help="random graphs (.bnn version 2)")
    ap.add_argument("--presets", help="'all' or comma-separated preset names: print their sizes")
    ap.add_argument("--data-dir", help="for --presets and --accuracy: the folder of datasets "
                    "(DIR/mnist/...)")
    ap.add_argument("--epochs", type=int, default=1, help="for --presets: epochs to train")
    ap.add_argument("--accuracy", metavar="MODEL.bnn",
                    help="the host C build of a trained model against the runtime")
    ap.add_argument("--data", default="mnist", help="for --accuracy: the dataset")
    args = ap.parse_args(argv)
    if args.accuracy:
        return c_accuracy(args.accuracy, args.data, args.data_dir)
    if args.presets:
        return preset_sizes(args.presets.split(","), args.data_dir, args.epochs)
    rng = np.random.default_rng(args.seed)
    kinds: collections.Counter = collections.Counter()
    blocks = collections.Counter()
    failed = built = agreed = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnn-c-") as tmp:
        for i in range(args.models):
            mf = random_graph_file(rng) if args.graphs else random_model_file(rng)
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
