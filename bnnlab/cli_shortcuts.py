"""``bnnlab shortcuts``: per-layer gradient norms of a residual model with its shortcuts
and with them cut, from the same weights on the same training batches (the figures of the
app's Shortcuts page; :mod:`bnnlab.core.shortcuts` computes them)."""

from __future__ import annotations

import json

from .cli_base import CliError, open_arg

__all__ = ["add_shortcuts_parser", "cmd_shortcuts", "format_effect"]


def add_shortcuts_parser(sub) -> None:
    s = sub.add_parser("shortcuts", help="gradient norms per layer of a residual model, with its "
                       "shortcuts and with them cut (same weights, same training batches)")
    s.add_argument("target", help="a scene or preset (its initial weights) or a model file "
                   "(.npz, .h5: its trained weights)")
    s.add_argument("--dataset", help="training data (default: the scene's, or the model's)")
    s.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    s.add_argument("--batches", type=int, default=4, help="training batches measured (default 4)")
    s.add_argument("--batch-size", type=int,
                   help="images per batch (default: the scene's; 64 for a model file)")
    s.add_argument("--split", choices=("train", "test"), default="train",
                   help="the images measured (default: the training set)")
    s.add_argument("--limit-train", type=int,
                   help="use only the first N training images (default: the scene's, or all)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed that picks the batches (default 0, as the app)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_shortcuts)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def format_effect(effect) -> str:
    """The comparison as a table: one row per quantized layer."""
    lines = ["shortcuts cut: " + "; ".join(
        f"{s.add} keeps {', '.join(s.kept)}, loses {', '.join(s.cut)}" for s in effect.shortcuts)]
    lines.append(f"mean over {effect.batches} batches of {effect.batch_size} (seed "
                 f"{effect.seed}), batch statistics, the same weights in both graphs")
    lines.append(f"loss: {sum(effect.loss_with) / effect.batches:.4f} with shortcuts, "
                 f"{sum(effect.loss_without) / effect.batches:.4f} without")
    width = max(len(g.name) for g in effect.with_shortcuts)
    lines.append(f"{'layer':<{width}}  |dL/dW| with  without   ratio   |dL/dx| with  without   ratio")
    for a, b in zip(effect.with_shortcuts, effect.without_shortcuts):
        wr = a.weight_mean / b.weight_mean if b.weight_mean else None
        ai, bi = a.input_mean, b.input_mean
        ir = ai / bi if ai is not None and bi else None
        lines.append(f"{a.name:<{width}}  {_fmt(a.weight_mean):>12} {_fmt(b.weight_mean):>8} "
                     f"{_fmt(wr):>7}   {_fmt(ai):>12} {_fmt(bi):>8} {_fmt(ir):>7}")
    lines.append("|dL/dW|: L2 norm of the latent-weight gradient; |dL/dx|: of the gradient "
                 "reaching the tensor the layer reads (- for the data)")
    return "\n".join(lines)


def _require_shortcuts(model, target: str) -> None:
    """Refuse a model without a shortcut in one line, before any data is loaded."""
    from .core.shortcuts import find_shortcuts

    if not find_shortcuts(model):
        raise CliError(f"{target}: model {model.name!r} has no shortcut to cut (no Add joins a "
                       "branch with weights and a parameter-free path around it); try a "
                       "residual model such as the bireal-mnist preset")


def cmd_shortcuts(args) -> int:
    from .core.shortcuts import NoShortcuts, compare_shortcuts
    from .data import DatasetError, dataset_info, load_dataset
    from .experiment import build_model, scale_inputs
    from .io.scenes import Scene, SceneError

    if not 1 <= args.batches <= 1000:
        raise CliError(f"--batches must be between 1 and 1000, got {args.batches}")
    if args.limit_train is not None and args.limit_train < 1:
        raise CliError(f"--limit-train must be at least 1, got {args.limit_train}")
    if args.batch_size is not None and not 1 <= args.batch_size <= 100_000:
        raise CliError(f"--batch-size must be between 1 and 100000, got {args.batch_size}")
    target = open_arg(args.target)
    try:
        if isinstance(target, Scene):
            dataset = args.dataset or target.dataset
            info = dataset_info(dataset)  # the shapes, from the registry: no data yet
            model = build_model(target, info.input_shape, len(info.class_names))
            _require_shortcuts(model, args.target)
            ds = load_dataset(dataset, args.data_dir, seed=target.seed,
                              limit_train=args.limit_train or target.limit_train or None,
                              limit_test=target.limit_test or None, splits=(args.split,))
            x, y = (ds.x_train, ds.y_train) if args.split == "train" else (ds.x_test, ds.y_test)
            x = scale_inputs(x, target.input_scale, ds.kind)
            batch_size = args.batch_size or target.batch_size
        else:
            if target.model is None:
                target.require_engine("bnnlab shortcuts")
            _require_shortcuts(target.model, args.target)
            dataset = args.dataset or target.dataset
            if dataset is None:
                raise CliError(f"{target.source}: does not say its dataset; pass --dataset")
            ds = load_dataset(dataset, args.data_dir, seed=target.seed,
                              limit_train=args.limit_train, splits=(args.split,))
            x, y = (ds.x_train, ds.y_train) if args.split == "train" else (ds.x_test, ds.y_test)
            model = target.model
            x = target.engine_inputs(x)
            batch_size = args.batch_size or 64
        effect = compare_shortcuts(model, x, y, batches=args.batches,
                                   batch_size=batch_size, seed=args.seed)
    except (DatasetError, SceneError, NoShortcuts, ValueError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps({"target": args.target, "dataset": dataset, "split": args.split,
                          **effect.as_dict()}))
    else:
        print(format_effect(effect))
    return 0
