"""The ``export``, ``run`` and ``import`` subcommands, and the ``.bnn`` side of ``train``.

``bnnlab/cli.py`` registers them; errors meant for the user are raised as
:class:`bnnlab.cli_base.CliError` (one line, exit status 2). The work itself is done by
the Qt-free API of :mod:`bnnlab.deploy`; this module only turns arguments into calls and
results into lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .cli_base import CliError, open_arg

__all__ = [
    "check_exportable",
    "cmd_export",
    "cmd_import",
    "cmd_run",
    "export_args",
    "write_trained",
]


def export_args(model, input_scale: str | None, dataset: str | None, meta: dict | None = None):
    """(input record, class names) for exporting ``model``, from options or checkpoint meta."""
    from .data import DatasetError, dataset_info
    from .deploy.fold import ExportError, input_spec_for

    meta = meta or {}
    dataset = dataset or meta.get("dataset")
    info = None
    if dataset:
        try:
            info = dataset_info(dataset)
        except DatasetError as exc:
            raise CliError(str(exc)) from None
    scale = input_scale or meta.get("input_scale")
    if scale is None and meta.get("scene"):
        from .io.scenes import SceneError, load_preset

        try:
            scale = load_preset(meta["scene"]).input_scale
        except SceneError:
            scale = None
    try:
        spec = input_spec_for(model.input_shape, scale or "unit", info.kind if info else None)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    names = info.class_names if info and model.output_shape == (len(info.class_names),) else ()
    return spec, names


def check_exportable(model, scene, dataset) -> None:
    """Fail before training when the scene's model has no ``.bnn`` form."""
    from .deploy import ExportError, to_model_file

    spec, names = export_args(model, scene.input_scale, dataset.name)
    try:
        to_model_file(model, spec, names)
    except ExportError as exc:
        raise CliError(f"--out: {exc}") from None


def write_trained(model, scene, dataset, results: list[dict], path: str) -> int:
    """Write a freshly trained model as ``.bnn``, with the accuracy the trainer reported."""
    from .deploy import ExportError, export_model

    spec, names = export_args(model, scene.input_scale, dataset.name)
    meta = {"name": scene.name, "dataset": dataset.name, "source": "bnnlab train",
            "epochs": str(len(results)), "seed": str(scene.seed)}
    if scene.limit_test:
        meta["limit_test"] = str(scene.limit_test)
    acc = results[-1]["val_accuracy"] if results else None
    if acc is not None:
        meta["test_accuracy"] = repr(float(acc))
    try:
        return export_model(model, path, spec, names, meta)
    except ExportError as exc:
        raise CliError(f"--out: {exc}") from None


def _check_out(path: str | None, what: str) -> None:
    """Refuse an output that cannot be written, before any work is done for it."""
    from .io.outputs import output_problem

    if path and (problem := output_problem(path)):
        raise CliError(f"{what}: {problem}")


def cmd_export(args) -> int:
    from .deploy import ExportError, ModelFileError, export_c, to_model_file, write_file

    h5 = getattr(args, "h5", None)
    if not args.out and not args.c and not h5:
        raise CliError("export: nothing to do; give OUT.bnn, --c DIR and/or --h5 OUT.h5")
    if h5 and not h5.lower().endswith(".h5"):
        raise CliError(f"export: {h5!r} must end in .h5")
    if args.out and not args.out.lower().endswith(".bnn"):
        raise CliError(f"export: {args.out!r} must end in .bnn")
    _check_out(args.out, "export")
    _check_out(h5, "export")
    src = args.source
    opened = open_arg(src, "model")
    model = opened.model  # for a .bnn, the file unfolded
    try:
        if opened.kind == "bnn":
            mf = opened.bnn
        elif h5 and not args.out and not args.c:  # only the .h5: no .bnn form needed
            mf = None
        else:
            meta = opened.metadata
            spec, names = export_args(model, args.input_scale, args.dataset, meta)
            info = {"name": meta.get("scene") or Path(src).stem, "source": Path(src).name}
            for key in ("seed", "limit_test"):
                if meta.get(key):
                    info[key] = str(meta[key])
            epochs = meta.get("epochs") or [{}]
            if isinstance(epochs[-1], dict) and epochs[-1].get("val_accuracy") is not None:
                info["test_accuracy"] = repr(float(epochs[-1]["val_accuracy"]))
            if meta.get("dataset") or args.dataset:
                info["dataset"] = args.dataset or meta["dataset"]
            mf = to_model_file(model, spec, names, info)
    except (ExportError, ModelFileError) as exc:
        raise CliError(str(exc)) from None
    report: dict = {}
    if args.out:
        from .core.summary import profile_model
        from .deploy.unfold import model_from_file

        size = write_file(args.out, mf)
        f32 = profile_model(model_from_file(mf)).total_params * 4
        report.update(bnn=args.out, bytes=size, float32_bytes=f32)
        if not args.json:
            print(f"wrote {args.out}: {size:,} bytes ({size / 1024:.2f} KiB); float-32 equivalent "
                  f"{f32:,} bytes, {f32 / size:.1f}x larger")
    if args.c:
        try:
            cx = export_c(mf, args.c)
        except ModelFileError as exc:  # e.g. a class name C cannot hold
            raise CliError(f"export: --c: {exc}") from None
        except OSError as exc:
            raise CliError(f"export: cannot write {args.c}: {exc.strerror or exc}") from None
        report.update(c_dir=args.c, c_files=cx.files, c_table_bytes=cx.table_bytes,
                      c_ram_bytes=cx.ram_bytes)
        if not args.json:
            planned = (f" (the peak of the graph's tensors placed by lifetime; "
                       f"{cx.plan.unplanned_bytes:,} bytes with a buffer each)" if cx.plan else "")
            print(f"wrote C99 to {args.c}/ (bnn_model.c, bnn_model.h, main.c, bnn_entry.c, "
                  f"Makefile): {cx.table_bytes:,} bytes of const tables, {cx.ram_bytes:,} bytes "
                  f"of static activation buffers{planned}; build with `make`, "
                  "`make cortex-m0plus`, `make cortex-m4`")
        report["c_sizes"] = _c_sizes(args.c, args.json)
    if h5:
        report.update(_export_h5(model, h5, args.json))
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def _c_sizes(folder: str, quiet: bool) -> dict:
    """Build the exported C for the host and for Cortex-M and print what each needs."""
    from .deploy.cbuild import TARGETS, measure_all

    sizes = measure_all(folder)
    if not quiet:
        print("flash and RAM of the model and its inference, linked without a C library (-Os; "
              "RAM = data + bss + the sum of the stack frames):")
        failed: dict[str, list[str]] = {}  # one line per reason (the Arm toolchain missing)
        for key, m in sizes.items():
            if isinstance(m, str):
                failed.setdefault(m, []).append(TARGETS[key].title)
                continue
            print(f"  {TARGETS[key].title:<14} flash {m['flash']:>9,} bytes ({m['code']:,} code)   "
                  f"RAM {m['ram']:>8,} bytes ({m['data'] + m['bss']:,} static + "
                  f"{m['stack_bound']:,} stack)   {m['compiler']}")
        for reason, titles in failed.items():
            print(f"  {', '.join(titles)}: not measured: {reason}")
    return sizes


def _export_h5(model, path: str, quiet: bool) -> dict:
    from .deploy.larq_export import LarqExportError, write_larq_h5

    try:
        size = write_larq_h5(model, path)
    except LarqExportError as exc:
        raise CliError(f"export: {exc}") from None
    except OSError as exc:
        raise CliError(f"export: cannot write {path}: {exc.strerror or exc}") from None
    if not quiet:
        print(f"wrote {path}: {size:,} bytes, a Keras 2 / Larq model (in Python with TensorFlow "
              "2 and larq: import larq; tf.keras.models.load_model(path))")
    return {"h5": path, "h5_bytes": size}


def run_inputs(rt, ds):
    """What ``bnnlab run`` feeds the runtime ``rt`` for dataset ``ds``'s test set: its images
    as the file's raw encoding (uint8 pixels), or its points as they are."""
    from .deploy.runtime import raw_from_unit

    return raw_from_unit(ds.x_test, rt.input.encoding) if ds.kind == "image" else ds.x_test


def cmd_run(args) -> int:
    import numpy as np

    from .data import DatasetError, load_dataset
    from .deploy import ExportError, ModelFileError
    from .deploy.runtime import available_cpus

    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")
    opened = open_arg(args.model, "model")
    try:  # a .bnn file runs as it is; a checkpoint or .h5 model is folded first
        rt = opened.runtime()
    except (ExportError, ModelFileError) as exc:
        raise CliError(f"{args.model}: {exc}") from None
    twin = None
    if args.bench:  # the float network it is compared with, found before any data is read
        from .deploy.bench import FloatTwin
        from .deploy.unfold import model_from_file

        try:
            twin = FloatTwin(model_from_file(rt.model_file))
        except (ExportError, ModelFileError, ValueError) as exc:
            raise CliError(f"{args.model}: --bench compares with the float network, which "
                           f"cannot be built from this file: {exc}") from None
    meta = opened.metadata
    # Built-in data sets are drawn from a seed: by default, the test set the model was scored on.
    seed = args.seed if args.seed is not None else _int(meta.get("seed"), 0)
    limit = args.limit if args.limit is not None else _int(meta.get("limit_test"), None)
    if limit is not None and limit < 1:
        raise CliError("--limit must be at least 1")
    try:
        ds = load_dataset(args.data, args.data_dir, limit_test=limit, seed=seed, splits=("test",))
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    if ds.input_shape != tuple(rt.input.shape):
        raise CliError(f"{args.model} reads inputs of shape {tuple(rt.input.shape)}, "
                       f"{ds.name} has {ds.input_shape}")
    raw = run_inputs(rt, ds)
    rt.warm_up()
    t = time.perf_counter()
    pred = rt.predict(raw, threads=args.threads)
    seconds = time.perf_counter() - t
    acc = float(np.mean(pred == ds.y_test))
    row = {"model": args.model, "dataset": ds.name, "images": len(raw), "accuracy": acc,
           "images_per_second": round(len(raw) / seconds, 1) if seconds else None,
           "threads": args.threads or available_cpus(),
           "recorded_accuracy": meta.get("test_accuracy")}
    if twin is not None:
        from .deploy.bench import time_float, time_runtime

        x = raw.astype(np.float32) * np.float32(rt.input.scale) + np.float32(rt.input.offset)
        rows = []
        for threads in (1, 2):
            for timing, p in (time_runtime(rt, raw, threads), time_float(twin, x, threads)):
                rows.append({"what": timing.what, "threads": threads,
                             "images_per_second": round(timing.images_per_second, 1),
                             "accuracy": float(np.mean(p == ds.y_test)),
                             "same_predictions": int(np.sum(p == pred))})
        row["bench"] = rows
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    rec = f" (training recorded {float(row['recorded_accuracy']):.4f})" if row["recorded_accuracy"] else ""
    print(f"{args.model}: accuracy {acc:.4f}{rec} on {len(raw):,} {ds.name} test images, "
          f"{row['images_per_second']:,.0f} images/s ({row['threads']} threads)")
    for r in row.get("bench", []):
        print(f"  {r['what']:<20} {r['threads']} thread{'s' if r['threads'] > 1 else ' '} "
              f"{r['images_per_second']:>10,.0f} images/s  accuracy {r['accuracy']:.4f}  "
              f"same predictions {r['same_predictions']:,}/{len(raw):,}")
    return 0


def _int(text, default):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def cmd_import(args) -> int:
    from .io.checkpoints import save_checkpoint
    from .core.summary import profile_model
    from .deploy import ExportError, export_model, model_file_bytes

    from .app.opening import KINDS, OpenError, sniff

    try:
        kind = sniff(args.model)
    except OpenError as exc:
        raise CliError(str(exc)) from None
    if kind != "keras":
        raise CliError(f"import: {args.model} is {KINDS[kind]}, not a Keras/Larq .h5 model")
    if args.out and not args.out.lower().endswith((".bnn", ".npz")):
        raise CliError(f"import: --out {args.out!r} must end in .bnn or .npz")
    _check_out(args.out, "import: --out")
    model = open_arg(args.model, "model").model
    spec, names = export_args(model, args.input_scale, args.dataset)
    meta = {"name": model.name, "source": Path(args.model).name}
    if args.dataset:
        meta["dataset"] = args.dataset
    prof = profile_model(model)
    try:
        size, error = len(model_file_bytes(model, spec, names, meta)), None
    except ExportError as exc:
        size, error = None, str(exc)
    row = {"model": args.model, "layers": [f"{ly.name} ({ly.type_name})" for ly in model.layers],
           "input_shape": list(model.input_shape), "params_1bit": prof.params_1bit,
           "params_32bit": prof.params_32bit, "float32_bytes": prof.total_params * 4,
           "bnn_bytes": size, "export_error": error, "out": args.out}
    if args.out:
        out = args.out.lower()
        if out.endswith(".bnn"):
            if error:
                raise CliError(f"import: {error}")
            export_model(model, args.out, spec, names, meta)
        elif out.endswith(".npz"):
            save_checkpoint(args.out, model, meta={"source": args.model, "dataset": args.dataset,
                                                   "input_scale": args.input_scale or "unit"})
        else:
            raise CliError(f"import: --out {args.out!r} must end in .bnn or .npz")
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    print(f"{args.model}: {len(model.layers)} layers, input {model.input_shape}, "
          f"{prof.params_1bit:,} binary and {prof.params_32bit:,} float parameters")
    print("  " + " -> ".join(row["layers"]))
    if size:
        print(f"  as .bnn: {size:,} bytes (float-32 equivalent {row['float32_bytes']:,} bytes)")
    else:
        print(f"  cannot be exported as .bnn: {error}")
    if args.out:
        print(f"saved {args.out}")
    return 0
