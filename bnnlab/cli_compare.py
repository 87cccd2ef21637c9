"""``bnnlab compare``: train scenes over seeds and compare their final validation accuracy."""

from __future__ import annotations

import json
import sys

from .cli_base import CliError, open_arg, parse_passes, progress_bar

__all__ = ["cmd_compare", "add_compare_parser"]


def add_compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="train scenes with seeds 0..N-1 and compare their final "
                       "validation accuracy (mean, spread, difference with a 95%% CI)")
    c.add_argument("scenes", nargs="+", metavar="SCENE", help="two or more scene files or presets")
    c.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per scene (default 5)")
    c.add_argument("--epochs", type=int, help="override every scene's epochs")
    c.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    c.add_argument("--passes", metavar="K[,K...]",
                   help="also evaluate networks with stochastic binarizers averaging K passes")
    c.add_argument("--json", action="store_true", help="one JSON object with every figure")
    c.set_defaults(func=cmd_compare)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def cmd_compare(args) -> int:
    from .app.compare import CompareCancelled, comparison_json, run_seeds
    from .core.trainer import TrainingDiverged
    from .data import DatasetError
    from .io.scenes import SceneError

    if len(args.scenes) < 2:
        raise CliError("compare needs at least two scenes")
    if len(set(args.scenes)) != len(args.scenes):
        raise CliError("compare: each scene may be named once")
    if not 1 <= args.seeds <= 1000:
        raise CliError(f"--seeds must be between 1 and 1000, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise CliError("--epochs must be at least 1")
    passes = parse_passes(args.passes) if args.passes else ()
    scenes = [(arg, open_arg(arg, "scene")) for arg in args.scenes]
    total = len(scenes) * args.seeds
    bars = []

    def progress(label, seed, epoch, epochs):
        if not bars:
            bars.append(progress_bar(total * epochs, "compare", unit="epoch"))
        done = seed * len(scenes) + [lb for lb, _ in scenes].index(label)
        bars[0].set_description_str(f"{label} seed {seed} epoch {epoch}/{epochs}", refresh=False)
        bars[0].update(done * epochs + epoch - bars[0].n)

    try:
        results = run_seeds(scenes, args.seeds, epochs=args.epochs, data_dir=args.data_dir,
                            passes=passes, progress=progress)
    except (DatasetError, SceneError) as exc:
        raise CliError(str(exc)) from None
    except TrainingDiverged as exc:
        print(f"bnnlab compare: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, CompareCancelled):
        print("\nbnnlab compare: interrupted", file=sys.stderr)
        return 130
    finally:
        for bar in bars:
            bar.close()
    doc = comparison_json(results)
    if args.json:
        print(json.dumps(doc))
        return 0
    width = max(len(s["scene"]) for s in doc["scenes"])
    print(f"final validation accuracy over seeds 0..{args.seeds - 1}")
    print(f"{'scene':<{width}}   n     mean  std(pt)      min      max")
    for s in doc["scenes"]:
        std = "n/a" if s["val_accuracy_std"] is None else f"{100 * s['val_accuracy_std']:.2f}"
        print(f"{s['scene']:<{width}} {s['n']:>3d} {_pct(s['val_accuracy_mean']):>8} {std:>8} "
              f"{_pct(s['val_accuracy_min']):>8} {_pct(s['val_accuracy_max']):>8}")
        for a in s.get("averaged_passes", []):
            print(f"{'':<{width}}     averaged over {a['k']} stochastic passes: "
                  f"mean {_pct(a['val_accuracy_mean'])}")
    d = doc["difference"]
    lo, hi = d["ci_low"], d["ci_high"]
    ci = ("no interval with one seed" if lo is None else
          f"95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] points")
    print(f"{d['scenes'][0]} - {d['scenes'][1]}: {100 * d['val_accuracy_difference']:+.2f} points, "
          f"{ci} ({d['method']})")
    p = d.get("paired")
    if p and p["ci_low"] is not None:
        print(f"  paired by seed: 95% CI [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] points")
    return 0
