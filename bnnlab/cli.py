"""The ``bnnlab`` command: the app, and train / compare / summary / filters / shortcuts / bench /
export / run / import.

Every subcommand takes ``--json`` for machine-readable output. Bad arguments and bad
files exit with status 2 and a one-line reason on stderr; a run that fails (e.g. a
diverging loss) exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .cli_base import CliError, open_arg, parse_passes as _parse_passes
from .cli_base import progress_bar as _progress_bar
from .core.settings import popcount_setting

__all__ = ["main"]

SUBCOMMANDS = ("train", "compare", "summary", "filters", "shortcuts", "bench", "gui", "export", "run",
               "import", "install-desktop")
# The app's own options, which ``bnnlab`` without a command passes on to ``bnnlab gui``.
GUI_OPTIONS = ("--data-dir", "--measure-stall")


# --------------------------------------------------------------------------- helpers


def _load_scene_arg(arg: str):
    return open_arg(arg, "scene")


def _model_from_arg(arg):
    """A model from a scene or preset (freshly initialized, "scene") or from a model file
    (.bnn, .h5, .npz: trained weights, "checkpoint"). ``arg`` is a path or preset name, or
    what :func:`open_arg` made of one."""
    from .data import DatasetError, dataset_info
    from .experiment import build_model
    from .io.scenes import Scene, SceneError

    opened = open_arg(arg) if isinstance(arg, str) else arg
    if not isinstance(opened, Scene):
        if opened.model is None:  # a .bnn the engine cannot represent
            try:
                opened.require_engine("This command")
            except ValueError as exc:
                raise CliError(str(exc)) from None
        return opened.model, "checkpoint"
    try:
        info = dataset_info(opened.dataset)
        return build_model(opened, info.input_shape, len(info.class_names)), "scene"
    except (DatasetError, SceneError) as exc:
        raise CliError(str(exc)) from None


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .core.trainer import TrainingDiverged
    from .data import DatasetError
    from .experiment import build_model, epoch_record, make_trainer, prepare_data
    from .io.outputs import output_problem
    from .io.scenes import SceneError

    scene = _load_scene_arg(args.scene)
    if args.float:
        scene = scene.full_precision_twin()
    passes = _parse_passes(args.passes) if args.passes else None
    if args.seed is not None:
        scene.seed = args.seed
    if args.dataset is not None:
        scene.dataset = args.dataset
    if args.epochs is not None:
        if args.epochs < 1:
            raise CliError("--epochs must be at least 1")
        scene.epochs = args.epochs
    if args.limit_train is not None:
        scene.limit_train = args.limit_train
    if args.seed is not None and args.seed < 0:
        raise CliError(f"--seed must be a non-negative integer, not {args.seed}")
    if args.limit_train is not None and args.limit_train < 1:
        raise CliError(f"--limit-train must be at least 1, not {args.limit_train}")
    if args.out and (problem := output_problem(args.out)):
        raise CliError(f"--out: {problem}")
    to_bnn = bool(args.out) and args.out.lower().endswith(".bnn")
    show = not args.json  # progress bars: on a terminal only (see cli_base.progress_bar)
    bars = []

    def dl_progress(done, total):
        if not bars:
            bars.append(_progress_bar(None, f"downloading {scene.dataset}", show, unit="B",
                                      unit_scale=True, unit_divisor=1024))
        if done == 0:  # a new file, or a new attempt at one
            bars[0].reset(total if total >= 0 else None)
        bars[0].update(done - bars[0].n)

    try:
        data = prepare_data(scene, args.data_dir, progress=dl_progress)
        model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    except (DatasetError, SceneError) as exc:
        raise CliError(str(exc)) from None
    finally:
        for bar in bars:
            bar.close()
    if to_bnn:  # find out before training whether the model can be exported at all
        from .cli_deploy import check_exportable

        check_exportable(model, scene, data.dataset)
    if args.out:  # the arrays, uncompressed: an upper bound on either file
        need = sum(a.nbytes for a in model.state_dict().values()) + (1 << 16)
        if problem := output_problem(args.out, need):
            raise CliError(f"--out: {problem}")
    trainer = make_trainer(scene, model, data, telemetry=False)
    if not args.json:
        print(f"training {scene.name} on {data.dataset.name} ({len(data.x_train)} train, "
              f"{len(data.x_test)} test images), {scene.epochs} epochs, seed {scene.seed}")
    epoch_start = time.perf_counter()
    results = []
    bar = None
    try:
        for snap in trainer:
            figures = (f"loss {snap.loss:.4f} acc {snap.accuracy:.4f} "
                       f"{snap.images_per_second:,.0f} img/s")
            if bar is None:
                bar = _progress_bar(snap.batches_per_epoch, f"epoch {snap.epoch}/{snap.epochs}",
                                    show, unit="batch", postfix=figures)
            bar.set_postfix_str(figures, refresh=False)
            bar.update(snap.batch - bar.n)
            if snap.event in ("epoch", "done"):
                bar.close()  # erases itself: the epoch's line follows
                bar = None
                now = time.perf_counter()
                seconds = now - epoch_start
                epoch_start = now
                row = epoch_record(snap, seconds, len(data.x_train))
                results.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    va = "n/a" if snap.val_accuracy is None else f"{snap.val_accuracy:.4f}"
                    if snap.val_accuracy_batch_stats is not None:
                        va += f" (batch statistics {snap.val_accuracy_batch_stats:.4f})"
                    print(f"epoch {snap.epoch}/{snap.epochs}: loss {snap.loss:.4f} "
                          f"accuracy {snap.accuracy:.4f} val_accuracy {va} "
                          f"({seconds:.1f} s: training {row['train_seconds']:.1f} s, validation "
                          f"{row['val_seconds']:.1f} s; {row['images_per_second']:,.0f} img/s "
                          f"incl. validation)", flush=True)
    except TrainingDiverged as exc:
        print(f"bnnlab train: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        trainer.stop()
        print("\nbnnlab train: interrupted", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if passes:
        _print_passes(model, data, scene, passes, args.json)
    if args.out:
        return _save_trained(args.out, model, scene, data.dataset, results, quiet=args.json)
    return 0


def _save_trained(out: str, model, scene, dataset, results: list[dict], quiet: bool) -> int:
    """Write the trained model to ``out``; if that fails, to a fallback file (exit status 1)."""
    from .io.checkpoints import save_checkpoint
    from .io.outputs import fallback_dirs, save_to_fallback, save_with_fallback

    sizes = []
    meta = {"scene": scene.name, "dataset": dataset.name, "epochs": results,
            "input_scale": scene.input_scale, "seed": scene.seed, "limit_test": scene.limit_test}

    def save_npz(path):
        save_checkpoint(path, model, meta=meta)

    save = save_npz
    if out.lower().endswith(".bnn"):
        from .cli_deploy import write_trained

        def save(path):
            sizes.append(write_trained(model, scene, dataset, results, path))
    try:
        try:
            where, error = save_with_fallback(out, save)
        except CliError as exc:  # the trained model has no .bnn form: keep it as a checkpoint
            where = save_to_fallback(Path(out).with_suffix(".npz"), save_npz)
            print(f"bnnlab train: {exc}; the trained model was saved as a checkpoint, {where}",
                  file=sys.stderr)
            return 1
    except OSError as exc:
        print(f"bnnlab train: cannot write {out} ({exc.strerror or exc}), nor a copy in "
              f"{' or '.join(map(str, fallback_dirs()))}; the trained model is lost",
              file=sys.stderr)
        return 1
    if error is not None:
        print(f"bnnlab train: cannot write {out} ({error.strerror or error}); the trained model "
              f"was saved to {where} instead", file=sys.stderr)
        return 1
    if not quiet:
        print(f"saved {out}" + (f" ({sizes[-1]:,} bytes)" if sizes else ""))
    return 0


def _print_passes(model, data, scene, ks, as_json) -> None:
    """Validation accuracy with probabilities averaged over K stochastic passes."""
    from .core.evaluation import evaluate_averaged, is_stochastic

    res = evaluate_averaged(model, data.x_test, data.y_test, ks, seed=scene.seed)
    rows = [{"k": k, "val_accuracy": a, "val_loss": lo}
            for k, a, lo in zip(res.ks, res.accuracy, res.loss)]
    if as_json:
        print(json.dumps({"averaged_passes": rows, "stochastic": is_stochastic(model)}), flush=True)
        return
    if not is_stochastic(model):
        print("(no stochastic binarizer in this network: every K gives the same result)")
    for r in rows:
        print(f"averaged over {r['k']:>4d} stochastic passes: val_accuracy {r['val_accuracy']:.4f} "
              f"val_loss {r['val_loss']:.4f}")


def cmd_summary(args) -> int:
    from .core.summary import format_summary, profile_model

    target = open_arg(args.target)
    if getattr(target, "model", True) is None:  # a .bnn the engine cannot represent
        prof = target.profile()  # counted from the file's blocks
    else:
        prof = profile_model(_model_from_arg(target)[0])
    if args.json:
        print(json.dumps({
            "name": prof.name,
            "layers": [{
                "name": lp.name, "type": lp.type_name, "input_precision": lp.input_precision,
                "output_shape": list(lp.output_shape), "params_1bit": lp.params_1bit,
                "params_32bit": lp.params_32bit, "memory_kib": lp.memory_kib,
                "macs_1bit": lp.macs_1bit, "macs_32bit": lp.macs_32bit,
                "inputs": list(lp.inputs)} for lp in prof.layers],
            "params_1bit": prof.params_1bit, "params_32bit": prof.params_32bit,
            "total_params": prof.total_params, "trainable_params": prof.trainable_params,
            "non_trainable_params": prof.non_trainable_params, "memory_kib": prof.memory_kib,
            "memory_kib_8bit": prof.memory_kib_8bit, "float32_kib": prof.float32_kib,
            "compression_ratio": prof.compression_ratio, "macs_1bit": prof.macs_1bit,
            "macs_32bit": prof.macs_32bit, "binarized_mac_ratio": prof.binarized_mac_ratio,
            "energy_pj": prof.energy_pj, "energy_pj_float32": prof.energy_pj_float32,
        }, indent=1))
    else:
        print(format_summary(prof))
    return 0


def cmd_filters(args) -> int:
    from .core.filters import analyze_filters, pattern_grid

    model, origin = _model_from_arg(args.target)
    reports = analyze_filters(model, top=args.top)
    if args.json:
        print(json.dumps([{
            "layer": r.layer, "in_channels": r.in_channels, "out_channels": r.out_channels,
            "total": r.total, "unique": r.unique, "unique_up_to_sign": r.unique_up_to_sign,
            "top": [list(t) for t in r.top], "ops_total": r.ops_total, "ops_dedup": r.ops_dedup,
            "saving": r.saving} for r in reports], indent=1))
        return 0
    if not reports:
        print("no binary 3x3 convolutions in this model")
        return 0
    if origin == "scene":
        print("(freshly initialized weights: pass a checkpoint from `bnnlab train --out` "
              "to see a trained model)")
    for r in reports:
        print(f"{r.layer}: {r.in_channels} x {r.out_channels} = {r.total} 2-D filters; "
              f"{r.unique} unique of 512 patterns ({100 * r.unique_fraction:.1f}%), "
              f"{r.unique_up_to_sign} counting a filter and its inverse as one")
        print(f"  XNOR-popcount work: {r.ops_total:,} -> {r.ops_dedup:,} binary MACs if each "
              f"(input channel, pattern up to sign) is applied once: {100 * r.saving:.1f}% saved")
        tops = r.top[:6]
        grids = [pattern_grid(p) for p, _ in tops]
        print("  most common: " + "   ".join(f"#{p:<3d} x{c:<3d}" for p, c in tops))
        for row in range(3):
            print("               " + "   ".join(
                "".join("#" if v < 0 else "." for v in g[row]).ljust(9) for g in grids))
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_export(args) -> int:
    from .cli_deploy import cmd_export as run

    return run(args)


def cmd_run(args) -> int:
    from .cli_deploy import cmd_run as run

    return run(args)


def cmd_import(args) -> int:
    from .cli_deploy import cmd_import as run

    return run(args)


def cmd_gui(args) -> int:
    try:
        from .gui.app import main as gui_main
    except ImportError as exc:
        raise CliError(f"the desktop app cannot start: {exc}") from None
    argv = [args.scene] if args.scene else []
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.measure_stall is not None:
        argv += ["--measure-stall", str(args.measure_stall)]
    return gui_main(argv)


def cmd_install_desktop(args) -> int:
    from .io.desktop import install_desktop, uninstall_desktop

    try:
        if args.remove:
            paths = uninstall_desktop(args.data_home)
            verb = "removed"
        else:
            paths = install_desktop(args.data_home)
            verb = "wrote"
    except (OSError, ValueError) as exc:
        where = getattr(exc, "filename", None)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"{where}: {reason}" if where else reason) from None
    if args.json:
        print(json.dumps({"action": verb, "paths": [str(p) for p in paths]}))
    elif not paths:
        print("bnnlab: nothing to remove")
    else:
        for p in paths:
            print(f"{verb} {p}")
    return 0


# --------------------------------------------------------------------------- parser

from .bench import GROUPS as BENCH_GROUPS  # noqa: E402


def _bench_groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in groups if g not in BENCH_GROUPS]
    if bad or not groups:
        raise argparse.ArgumentTypeError(
            f"unknown group {', '.join(bad) or repr(text)} (choose from {', '.join(BENCH_GROUPS)})")
    return groups


def _gemm_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for spec in text.split(","):
        parts = spec.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and 0 < int(p) <= 1 << 16 for p in parts):
            raise argparse.ArgumentTypeError(
                f"{spec.strip()!r} is not MxKxN with sizes from 1 to 65536")
        shapes.append(tuple(int(p) for p in parts))
    return shapes



def _is_scene_ref(arg: str) -> bool:
    from .io.scenes import preset_names

    return Path(arg).is_file() or arg in preset_names()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnnlab", description="Explore, train and measure binarized neural networks. "
                "With no command (or a scene file), opens the desktop app.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a scene (file or preset name)")
    t.add_argument("scene")
    t.add_argument("--epochs", type=int)
    t.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    t.add_argument("--seed", type=int)
    t.add_argument("--dataset", help="train on this dataset instead of the scene's "
                                     "(e.g. fashion-mnist)")
    t.add_argument("--limit-train", type=int, help="use only the first N training examples")
    t.add_argument("--out", help="write a checkpoint (.npz) or a deployable model (.bnn) here")
    t.add_argument("--json", action="store_true", help="one JSON object per epoch")
    t.add_argument("--float", action="store_true",
                   help="train the scene's full-precision twin (as the app's Train full-precision twin)")
    t.add_argument("--passes", metavar="K[,K...]",
                   help="after training, evaluate with class probabilities averaged over K "
                        "stochastic passes, for each K (e.g. 1,2,4,8,16)")
    t.set_defaults(func=cmd_train)

    from .cli_compare import add_compare_parser

    add_compare_parser(sub)

    s = sub.add_parser("summary", help="Larq-style model summary of a scene, checkpoint, .bnn or .h5")
    s.add_argument("target")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_summary)

    f = sub.add_parser("filters", help="duplicate binary 3x3 filters of a scene, checkpoint, .bnn or .h5")
    f.add_argument("target")
    f.add_argument("--top", type=int, default=16)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_filters)

    from .cli_shortcuts import add_shortcuts_parser

    add_shortcuts_parser(sub)

    b = sub.add_parser("bench", help="binary kernels against float32 BLAS, measured in one run")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true", help="fewer repeats, skip the largest cases")
    b.add_argument("--repeats", type=int, default=None)
    b.add_argument("--only", type=_bench_groups, metavar="GROUP[,GROUP...]",
                   help="run only these groups of cases: " + ", ".join(BENCH_GROUPS))
    b.add_argument("--gemm", type=_gemm_shapes, metavar="MxKxN[,MxKxN...]",
                   help="binary GEMM shapes to time instead of the usual four")
    b.add_argument("--data-dir")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="write a .bnn model file, C99 sources and/or a Larq .h5 model")
    e.add_argument("source", help="checkpoint (.npz), Larq model (.h5) or .bnn")
    e.add_argument("out", nargs="?", help="the .bnn file to write")
    e.add_argument("--c", metavar="DIR", help="write dependency-free C99 sources into DIR")
    e.add_argument("--h5", metavar="OUT.h5",
                   help="write a Keras 2 / Larq HDF5 model (tf.keras.models.load_model reads it)")
    e.add_argument("--input-scale", choices=("unit", "symmetric"),
                   help="how images were scaled in training (default: from the checkpoint, else unit)")
    e.add_argument("--dataset", help="dataset whose class names to store (default: the checkpoint's)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="run a model on the packed integer runtime on a dataset's test "
                       "set: accuracy and images/s (.bnn; a .npz or .h5 is folded first)")
    r.add_argument("model")
    r.add_argument("--data", required=True, help="dataset name, e.g. mnist")
    r.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    r.add_argument("--limit", type=int, help="use only the first N test images")
    r.add_argument("--seed", type=int, help="seed of a built-in data set (default: the model's)")
    r.add_argument("--threads", type=int, help="threads for the runtime (default: all)")
    r.add_argument("--bench", action="store_true",
                   help="also time 1 and 2 threads against the float32 NumPy/BLAS network")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    im = sub.add_parser("import", help="read a Keras/Larq .h5 model; --out writes .bnn or .npz")
    im.add_argument("model")
    im.add_argument("--out")
    im.add_argument("--input-scale", choices=("unit", "symmetric"),
                    help="how the model's images were scaled (default: unit)")
    im.add_argument("--dataset", help="dataset whose class names to store")
    im.add_argument("--json", action="store_true")
    im.set_defaults(func=cmd_import)

    d = sub.add_parser("install-desktop",
                       help="add bnnlab to the desktop's application menu (freedesktop entry and icon)")
    d.add_argument("--data-home", metavar="DIR",
                   help="where to write (default: $XDG_DATA_HOME, else ~/.local/share)")
    d.add_argument("--remove", action="store_true", help="remove the entry and the icon")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_install_desktop)

    g = sub.add_parser("gui", help="open the desktop app")
    g.add_argument("scene", nargs="?", help="a scene file (.toml), a preset name, or a model "
                   "file (.bnn, .h5, .npz) to inspect")
    g.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    g.add_argument("--measure-stall", type=float, metavar="SECONDS",
                   help="train for SECONDS, print the longest event-loop stall, and quit")
    g.set_defaults(func=cmd_gui)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0].split("=")[0] in GUI_OPTIONS:  # bnnlab --data-dir DIR [SCENE]
            argv = ["gui", *argv]
        if not argv or (argv[0] not in SUBCOMMANDS and not argv[0].startswith("-")):
            if argv and not _is_scene_ref(argv[0]):
                raise CliError(f"{argv[0]!r} is not a command, a scene file or a preset; "
                               f"commands: {', '.join(SUBCOMMANDS)} (bnnlab --help)")
            argv = ["gui", *argv]
        args = build_parser().parse_args(argv)
        if args.version:
            from .app.about import version

            print(f"bnnlab {version()}")
            return 0
        try:
            popcount_setting()
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if args.command is None:
            build_parser().print_help()
            return 0
        from .core.kernels import tune_process

        tune_process()
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.func(args) or 0)
    except CliError as exc:
        msg = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(msg if msg.startswith("bnnlab") else f"bnnlab: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a file that could not be read or written after the checks
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bnnlab: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A preset or scene that cannot be read where no command expected it (e.g. an
        # installation without its presets) is still a one-line error.
        scenes = sys.modules.get("bnnlab.io.scenes")
        if scenes is not None and isinstance(exc, scenes.SceneError):
            print(f"bnnlab: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

