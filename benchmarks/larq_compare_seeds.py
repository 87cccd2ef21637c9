"""Train the Larq tutorial network over several seeds in bnnlab and in Larq, and compare.

    python benchmarks/larq_compare_seeds.py --larq-python PY --dataset fashion-mnist
           [--seeds 0-7] [--scene larq-mnist-bnn] [--epochs 6] [--data-dir DIR]
           [--results DIR] [--json]

For every seed, ``bnnlab train SCENE --dataset NAME --seed S --json`` and
``PY larq_reference_train.py --dataset NAME --seed S`` run one after the other (PY is a
Python with TensorFlow 2 and larq). Then the final test accuracy and loss of each side are
summarized (mean, sample sd) and the difference bnnlab - Larq gets Welch's 95% confidence
interval (the runs of the two sides are independent: a seed does not give the same initial
weights in both).

Every run's output is kept in ``--results`` (default ``larq-compare-runs``), one file per
run, and a run whose file is complete is not repeated: an interrupted comparison resumes,
and adding seeds trains only the new ones. bnnlab's files carry a hash of bnnlab's source
(engine, data, scene glue) and of the scene, so changing either trains bnnlab again; Larq's are keyed by dataset,
epochs and seed. The Larq side always trains the tutorial network: ``--scene`` is for
bnnlab variants of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise ValueError(f"cannot read seeds {text!r}; write e.g. 0-7 or 0,2,5")
    return sorted(set(seeds))


def code_tag(scene_arg: str) -> str:
    """Hash of the sources that decide a training run (engine, data, scene glue) and of
    the scene, so a run is redone exactly when its result could change."""
    import bnnlab
    from bnnlab.io.scenes import load_preset, load_scene

    h = hashlib.sha256()
    root = Path(bnnlab.__file__).resolve().parent
    sources = [root / "experiment.py", root / "io" / "scenes.py",
               *sorted((root / "core").rglob("*.py")), *sorted((root / "data").rglob("*.py"))]
    for path in sources:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    scene = load_scene(scene_arg) if Path(scene_arg).is_file() else load_preset(scene_arg)
    h.update(repr(scene).encode())
    return h.hexdigest()[:10]


def last_json(path: Path, key: str) -> dict | None:
    """The last JSON line of a finished run's output holding ``key``, else None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get(key) is not None:
            return row
    return None


def run_to(cmd: list[str], out: Path, what: str) -> None:
    tmp = out.with_name(out.name + ".part")
    print(f"  {what} ...", file=sys.stderr, flush=True)
    with open(tmp, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True, help="a Python with tensorflow and larq")
    ap.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, kmnist")
    ap.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 0,3,5 (default 0-7)")
    ap.add_argument("--scene", default="larq-mnist-bnn", help="bnnlab's scene (file or preset)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--data-dir", help="folder with one sub-folder per dataset")
    ap.add_argument("--results", default="larq-compare-runs", help="folder for the runs' outputs")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ap.add_argument("--bnnlab-code", metavar="TAG",
                    help="reuse the bnnlab runs kept under this code hash instead of the current "
                         "one (when you know a change does not touch training)")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(str(exc))
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")

    from bnnlab.app.compare import summarize, welch_difference

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    tag = args.bnnlab_code or code_tag(args.scene)
    scene_label = Path(args.scene).stem
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    rows = []
    for seed in seeds:
        ours = results / f"bnnlab-{scene_label}-{tag}-{args.dataset}-e{args.epochs}-s{seed}.jsonl"
        theirs = results / f"larq-{args.dataset}-e{args.epochs}-s{seed}.jsonl"
        if last_json(ours, "val_accuracy") is None or _epochs(ours) < args.epochs:
            run_to([sys.executable, "-m", "bnnlab", "train", args.scene, "--dataset", args.dataset,
                    "--seed", str(seed), "--epochs", str(args.epochs), "--json", *data_dir],
                   ours, f"bnnlab seed {seed}")
        if last_json(theirs, "test_accuracy") is None:
            run_to([args.larq_python, str(HERE / "larq_reference_train.py"), "--dataset",
                    args.dataset, "--seed", str(seed), "--epochs", str(args.epochs), *data_dir],
                   theirs, f"Larq seed {seed}")
        a, b = last_json(ours, "val_accuracy"), last_json(theirs, "test_accuracy")
        rows.append({"seed": seed, "bnnlab_accuracy": a["val_accuracy"],
                     "bnnlab_loss": a["val_loss"], "larq_accuracy": b["test_accuracy"],
                     "larq_loss": b["test_loss"]})

    report = {"dataset": args.dataset, "scene": args.scene, "epochs": args.epochs,
              "seeds": seeds, "runs": rows, "bnnlab_code": tag}
    for metric in ("accuracy", "loss"):
        ours_v = [r[f"bnnlab_{metric}"] for r in rows]
        theirs_v = [r[f"larq_{metric}"] for r in rows]
        s_ours, s_theirs = summarize(ours_v), summarize(theirs_v)
        d = welch_difference(ours_v, theirs_v)
        report[metric] = {"bnnlab_mean": s_ours.mean, "bnnlab_sd": s_ours.std,
                          "larq_mean": s_theirs.mean, "larq_sd": s_theirs.std,
                          "difference": d.mean, "ci95": [d.ci_low, d.ci_high], "df": d.df}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.scene} on {args.dataset}, {args.epochs} epochs, seeds {args.seeds} "
          f"(bnnlab code {tag})")
    print(f"  {'seed':>4}  {'bnnlab acc':>10}  {'Larq acc':>9}  {'bnnlab loss':>11}  {'Larq loss':>9}")
    for r in rows:
        print(f"  {r['seed']:4d}  {r['bnnlab_accuracy'] * 100:9.2f}%  {r['larq_accuracy'] * 100:8.2f}%"
              f"  {r['bnnlab_loss']:11.4f}  {r['larq_loss']:9.4f}")
    for metric, scale, unit in (("accuracy", 100, " points"), ("loss", 1, "")):
        m = report[metric]
        lo, hi = m["ci95"]
        print(f"test {metric}: bnnlab {m['bnnlab_mean'] * scale:.3f} (sd {m['bnnlab_sd'] * scale:.3f}), "
              f"Larq {m['larq_mean'] * scale:.3f} (sd {m['larq_sd'] * scale:.3f}); bnnlab - Larq "
              f"{m['difference'] * scale:+.3f}{unit}, 95% CI [{lo * scale:+.3f}, {hi * scale:+.3f}] "
              f"(Welch, {m['df']:.1f} df)")
    return 0


def _epochs(path: Path) -> int:
    row = last_json(path, "epoch")
    return int(row["epoch"]) if row else 0


if __name__ == "__main__":
    sys.exit(main())
