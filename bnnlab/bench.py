"""``bnnlab bench``: binary kernels against float32 BLAS and against this CPU's own limits,
measured in the same run.

Before the cases, register-only probes measure the binary peak (XOR + popcount +
accumulate, with the popcount method the kernels use here) and the float32 FMA peak, on
one thread and on each thread count used (:mod:`bnnlab.core.kernels.roofline`). The
same probes run again after every timed call of a case, on the case's thread count, so
each case is compared with what the CPU offered while it ran (``roofline_alongside``,
the medians of those probes): on a shared machine the peaks move with the load. The
same comparison in CPU seconds of this process (``fraction_of_roofline_cpu``) is what
the kernels achieve while they hold a core, however often other processes take it away
(measured on one thread only: the waiting of idle parallel workers counts as CPU
time). Every
case reports ``fraction_of_roofline``: GEMMs against the binary peak; layers,
networks and training steps against the time their dense operation counts need at the
two peaks (binary MACs at the binary peak, 32-bit MACs at the float peak, 2 operations
per MAC; training adds the float products of the backward pass). Zeros skipped by a
kernel still count as work, so skipping them shows as a higher fraction.

A GEMM sample is the mean of back-to-back calls lasting about 2 ms (see :func:`timed`).
Every figure is the median of several repeats, and every ratio compares two figures
measured here, now, on this CPU, with the same thread count. The load average of the
machine is recorded before and after, since other processes disturb the timings.
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager

import numpy as np

__all__ = ["run_bench", "cpu_features", "larq_runtime"]

GEMM_SHAPES = [(64, 576, 64), (5184, 576, 64), (1024, 4608, 256), (4096, 4096, 4096)]
# GEMM cases time back-to-back calls lasting about this long per sample (see timed).
GEMM_SAMPLE_S = 2e-3
# The groups of cases, in the order they run; ``--only`` picks some.
GROUPS = ("gemm", "layers", "inference", "runtime", "training", "epoch")


def cpu_features() -> dict:
    """CPU name and the features the binary kernels care about (as LLVM sees them)."""
    import llvmlite.binding as llvm

    from .core.kernels.roofline import popcount_method

    feats = llvm.get_host_cpu_features()
    keys = ("popcnt", "avx2", "avx512f", "avx512vpopcntdq", "avx512bw")
    return {"cpu": llvm.get_host_cpu_name(), "machine": platform.machine(),
            **{k: bool(feats.get(k, False)) for k in keys}, "popcount": popcount_method()}


@contextmanager
def threads(n: int):
    """Limit both Numba and BLAS to n threads inside the block."""
    import numba
    from threadpoolctl import threadpool_limits

    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(old)


def median_time(fn, repeats: int, min_time: float = 0.0) -> float:
    return timed(fn, repeats, min_time)[0]


def timed(fn, repeats: int, min_time: float = 0.0, probe_threads: int | None = None,
          sample_s: float = 0.0):
    """(median seconds of fn(), peaks) over at least ``repeats`` samples and ``min_time``.

    A sample is one call, or with ``sample_s`` as many back-to-back calls as last about
    that long (counted from a first timed call), divided by their number: the rate of a
    kernel called again and again, as inside a network, where threads that finished one
    call are still awake for the next. A lone call after a pause also pays for waking
    them (some 0.05-0.1 ms on this kind of virtual machine).

    With ``probe_threads``, each call of fn is followed by one register-only probe on
    that many threads, and peaks is {"binary_tops", "float32_gflops"}: the medians of
    those probes, i.e. what the CPU offered while fn was being timed, plus "cpu": the
    same three figures (fn's median and both peaks) in CPU seconds of this process, which
    other processes on a shared machine disturb much less; only on one thread, since
    idle OpenMP workers spin and would count as CPU time. Otherwise peaks is None.
    """
    from .core.kernels.roofline import probe

    fn()  # warm caches and compile
    calls = 1
    if sample_s > 0:
        t = time.perf_counter()
        fn()
        calls = max(1, min(1000, round(sample_s / max(time.perf_counter() - t, 1e-9))))
    times, cpu, probes, cpu_probes = [], [], [], []
    t_end = time.perf_counter() + min_time
    while len(times) < repeats or time.perf_counter() < t_end:
        c = time.process_time()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls)
        cpu.append((time.process_time() - c) / calls)
        if probe_threads:
            probes.append(probe(probe_threads))
            if probe_threads == 1:
                cpu_probes.append(probe(1, cpu_time=True))
        if len(times) >= 10 * repeats:
            break
    peaks = None
    if probes:
        peaks = _medians(probes)
        if cpu_probes:
            peaks["cpu"] = dict(_medians(cpu_probes), seconds=float(np.median(cpu)))
    return float(np.median(times)), peaks


def _medians(probes):
    return {"binary_tops": float(np.median([p[0] for p in probes])) / 1e12,
            "float32_gflops": float(np.median([p[1] for p in probes])) / 1e9}


def needed_seconds(peaks, binary_macs, float_macs):
    """Time the dense work needs at the given peaks: 2 operations per MAC."""
    return (2.0 * binary_macs / (peaks["binary_tops"] * 1e12)
            + 2.0 * float_macs / (peaks["float32_gflops"] * 1e9))


def _with_fraction(row, peaks, needed_s, took_s):
    """Adds the peaks measured alongside a case and its fraction of that roofline, in
    wall time and (when measured) in CPU time."""
    if peaks is not None:
        row["roofline_alongside"] = {k: v for k, v in peaks.items() if k != "cpu"}
        row["fraction_of_roofline"] = needed_s(peaks) / took_s
        if "cpu" in peaks:
            row["fraction_of_roofline_cpu"] = needed_s(peaks["cpu"]) / peaks["cpu"]["seconds"]
    return row


def model_macs(model, training=False):
    """(binary MACs, float MACs) per image: forward as counted by the summary; training
    adds the backward products in float32 (weight gradients of every conv/dense layer,
    input gradients of all but the first)."""
    from .core.summary import profile_model

    layers = [lp for lp in profile_model(model).layers if lp.macs_1bit or lp.macs_32bit]
    binary = sum(lp.macs_1bit or 0 for lp in layers)
    flt = sum(lp.macs_32bit or 0 for lp in layers)
    if training:
        total = [(lp.macs_1bit or 0) + (lp.macs_32bit or 0) for lp in layers]
        flt += sum(total) + sum(total[1:])
    return binary, flt


def bench_gemm(m, k, n, repeats, nthreads=1, roofline=False):
    from .core import kernels as K

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    abits = np.empty((m, K.words_for(k)), np.uint64)
    K.pack_rows(a, abits)
    bt = K.pack_weights(np.where(b >= 0, 1.0, -1.0).astype(np.float32))
    out = np.empty((m, n), np.int32)
    fout = np.empty((m, n), np.float32)
    ops = 2.0 * m * n * k
    probe_threads = nthreads if roofline else None
    with threads(nthreads):
        tb, peaks = timed(lambda: K.xnor_gemm(abits, bt, k, out, parallel=nthreads > 1),
                          repeats, 0.2, probe_threads, sample_s=GEMM_SAMPLE_S)
        tf = timed(lambda: np.matmul(a, b, out=fout), repeats, 0.2, sample_s=GEMM_SAMPLE_S)[0]
    row = {"case": f"gemm {m}x{k}x{n}", "threads": nthreads,
           "binary_tops": ops / tb / 1e12, "float32_gflops": ops / tf / 1e9,
           "binary_ms": tb * 1e3, "float32_ms": tf * 1e3, "ratio": tf / tb}
    return _with_fraction(row, peaks, lambda p: needed_seconds(p, m * n * k, 0), tb)


def _larq_models():
    from .experiment import build_model
    from .io.scenes import load_preset

    scene = load_preset("larq-mnist-bnn")
    bnn = build_model(scene, (28, 28, 1), 10)
    fp = build_model(scene.full_precision_twin(), (28, 28, 1), 10)
    for layer, twin in zip(bnn.layers, fp.layers):
        # The float twin gets the same (binarized) weights so both do the same arithmetic.
        for p, q in zip(layer.params(), twin.params()):
            q.value[...] = np.where(p.value >= 0, 1.0, -1.0)
    return bnn, fp


def bench_layers(repeats, batch=256, roofline=False):
    from .core.summary import profile_model

    bnn, fp = _larq_models()
    rng = np.random.default_rng(1)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    rows = []
    with threads(1):
        acts = [x]
        for layer in bnn.layers:
            acts.append(layer.forward(acts[-1]))
        for i, (lb, lf) in enumerate(zip(bnn.layers, fp.layers)):
            if getattr(lb, "binary", False):
                xin = np.where(acts[i] >= 0, 1.0, -1.0).astype(np.float32)
                tb, peaks = timed(lambda: lb.forward(xin), repeats, 0.2, 1 if roofline else None)
                tf = median_time(lambda: lf.forward(xin), repeats, 0.2)
                row = {"case": f"layer {lb.name} {tuple(lb.input_shape)}->{tuple(lb.output_shape)}",
                       "batch": batch, "threads": 1, "binary_ms": tb * 1e3,
                       "float32_ms": tf * 1e3, "ratio": tf / tb}
                lp = profile_model(bnn).layers[i]
                rows.append(_with_fraction(row, peaks, lambda p: needed_seconds(
                    p, batch * (lp.macs_1bit or 0), batch * (lp.macs_32bit or 0)), tb))
    return rows


def bench_inference(repeats, roofline=False):
    bnn, fp = _larq_models()
    macs = model_macs(bnn)
    rng = np.random.default_rng(2)
    rows = []
    for batch in (1, 256):
        x = rng.random((batch, 28, 28, 1), dtype=np.float32)
        for nt in (1, 2):
            rows.append(_throughput(f"larq-mnist-bnn inference batch {batch}", nt, batch,
                                    lambda: bnn.forward(x), lambda: fp.forward(x), repeats,
                                    roofline, macs))
    return rows


# One image per call: each sample is as many calls back to back as take this long (the
# latency of a stream of single images); a lone call is timed on its own as well.
STREAM_SAMPLE_S = 0.005
LONE_PAUSE_S = 0.003


def lone_call_seconds(fn, calls: int = 15, pause_s: float = LONE_PAUSE_S) -> float:
    """Median time of ``fn()`` called alone, each call after ``pause_s`` of sleep: what one
    request after a quiet moment waits, with caches and the CPU no longer warm (on a
    virtual machine an idle CPU is given back to the host, and taking it again costs
    tens of microseconds)."""
    fn()
    times = []
    for _ in range(calls):
        time.sleep(pause_s)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _throughput(case, nt, batch, binary_fn, float_fn, repeats, roofline=False, macs=None):
    """Images/s and latency of a binary and a float32 pass over one batch, on nt threads;
    for one image, calls back to back (see :data:`STREAM_SAMPLE_S`) and a lone call."""
    stream = STREAM_SAMPLE_S if batch == 1 else 0.0
    with threads(nt):
        tb, peaks = timed(binary_fn, repeats, 0.3, nt if roofline and macs else None, stream)
        tf = timed(float_fn, repeats, 0.3, None, stream)[0]
        lone = lone_call_seconds(binary_fn) if batch == 1 else None
    row = {"case": case, "threads": nt,
           "binary_images_per_s": batch / tb, "float32_images_per_s": batch / tf,
           "binary_latency_ms": tb * 1e3, "float32_latency_ms": tf * 1e3, "ratio": tf / tb}
    if lone is not None:
        row["binary_lone_call_ms"] = lone * 1e3
    if peaks is not None:
        row["roofline_images_per_s"] = batch / needed_seconds(peaks, batch * macs[0],
                                                              batch * macs[1])
    return _with_fraction(row, peaks, lambda p: needed_seconds(p, batch * macs[0],
                                                               batch * macs[1]), tb)


def larq_runtime():
    """(runtime, model, rng): the ``.bnn`` runtime of ``larq-mnist-bnn`` with batch-norm
    statistics as after training (so that the thresholds are not all alike), the model,
    and the random generator that set them, to draw inputs from."""
    from .deploy import to_model_file
    from .deploy.runtime import Runtime

    bnn, _ = _larq_models()
    rng = np.random.default_rng(4)
    for layer in bnn.layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean[...] = rng.normal(0, 3, layer.moving_mean.shape)
            layer.moving_variance[...] = rng.uniform(5, 50, layer.moving_variance.shape)
    return Runtime(to_model_file(bnn)), bnn, rng


def bench_runtime(repeats, roofline=False):
    """The ``.bnn`` runtime (integer kernels, fused epilogues) against the float32 twin
    that a float framework would run: im2col + BLAS sgemm, float batch norm and sign."""
    from .deploy.bench import FloatTwin

    runtime, bnn, rng = larq_runtime()
    twin = FloatTwin(bnn)
    rows = []
    for batch in (1, 256):
        raw = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
        x = raw.astype(np.float32) / np.float32(255.0)
        for nt in (1, 2):
            rows.append(_throughput(f".bnn runtime batch {batch}", nt, batch,
                                    lambda: runtime.logits(raw, threads=nt),
                                    lambda: twin.logits(x), repeats, roofline, model_macs(bnn)))
    return rows


def bench_epoch(nthreads=2, n=60000, roofline=False):
    """One real epoch of larq-mnist-bnn through the Trainer, with shuffling and telemetry
    as ``bnnlab train`` runs it but no validation, on random images of MNIST's shape
    (the speed does not depend on the pixels)."""
    from .core.trainer import Trainer
    from .core.optimizers import Adam

    bnn, _ = _larq_models()
    rng = np.random.default_rng(5)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    with threads(nthreads):
        if roofline:
            from .core.kernels.roofline import probe

            before = [probe(nthreads) for _ in range(5)]
        trainer = Trainer(bnn, x, y, optimizer=Adam(1e-3), epochs=1, batch_size=64,
                          snapshot_every=50)
        t = time.perf_counter()
        for _ in trainer:
            pass
        seconds = time.perf_counter() - t
    row = {"case": f"larq-mnist-bnn training epoch ({n} images, batch 64, 1 run)",
           "threads": nthreads, "epoch_s": seconds, "images_per_s": n / seconds}
    if roofline:
        # One long run: the peaks are measured just before and after it.
        from .core.kernels.roofline import probe

        mb, mf = model_macs(bnn, training=True)
        peaks = _medians(before + [probe(nthreads) for _ in range(5)])
        _with_fraction(row, peaks, lambda p: needed_seconds(p, n * mb, n * mf), seconds)
    return [row]


def bench_training(steps, roofline=False):
    from .core.model import softmax_cross_entropy
    from .core.optimizers import Adam

    bnn, _ = _larq_models()
    rng = np.random.default_rng(3)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    opt = Adam(1e-3)
    params = [p for _, p in bnn.params()]

    def step():
        logits = bnn.forward(x, training=True)
        _, g = softmax_cross_entropy(logits, y)
        bnn.backward(g)
        opt.step(params)

    rows = []
    mb, mf = model_macs(bnn, training=True)
    for nt in (1, 2):
        with threads(nt):
            t, peaks = timed(step, steps, 0.0, nt if roofline else None)
        row = {"case": "larq-mnist-bnn training step, batch 64", "threads": nt,
               "step_ms": t * 1e3, "epoch_s_estimate": t * 938}
        rows.append(_with_fraction(row, peaks, lambda p: needed_seconds(p, 64 * mb, 64 * mf), t))
    return rows


def _fmt(row) -> str:
    text = _fmt_times(row)
    if "fraction_of_roofline" in row:
        text += f"  {100 * row['fraction_of_roofline']:.0f}% of roofline"
        if "fraction_of_roofline_cpu" in row:
            text += f" ({100 * row['fraction_of_roofline_cpu']:.0f}% in CPU time)"
    return text


def _fmt_roofline(roof) -> list[str]:
    lines = [f"roofline ({roof['isa']}; binary: {roof['method']}):"]
    for n, by in roof["by_threads"].items():
        lines.append(f"  {n} thread{'s' if n != '1' else ' '}  binary {by['binary_tops']:.3f} "
                     f"T ops/s  float32 FMA {by['float32_gflops']:.1f} GFLOP/s  "
                     f"(ratio {1e3 * by['binary_tops'] / by['float32_gflops']:.1f}x)")
    if len(roof.get("by_method", {})) > 1:
        lines.append("  1 thread, each count the GEMM may use: " + ", ".join(
            f"{name} {tops:.3f}" for name, tops in roof["by_method"].items()) + " T ops/s")
    return lines


def _fmt_times(row) -> str:
    case = row["case"]
    if "binary_tops" in row:
        return (f"{case:<34} {row['threads']}T  binary {row['binary_tops']:.3f} Tops/s "
                f"({row['binary_ms']:.3f} ms)  float32 {row['float32_gflops']:.1f} GFLOP/s "
                f"({row['float32_ms']:.3f} ms)  ratio {row['ratio']:.1f}x")
    if "binary_images_per_s" in row:
        lone = (f"  (a lone call: {row['binary_lone_call_ms']:.3f} ms)"
                if "binary_lone_call_ms" in row else "")
        return (f"{case:<34} {row['threads']}T  binary {row['binary_images_per_s']:,.0f} img/s "
                f"({row['binary_latency_ms']:.3f} ms)  float32 {row['float32_images_per_s']:,.0f} "
                f"img/s  ratio {row['ratio']:.1f}x{lone}")
    if "epoch_s" in row:
        return (f"{case:<34} {row['threads']}T  {row['epoch_s']:.2f} s "
                f"({row['images_per_s']:,.0f} img/s)")
    if "step_ms" in row:
        return (f"{case:<34} {row['threads']}T  {row['step_ms']:.2f} ms/step, "
                f"~{row['epoch_s_estimate']:.1f} s per 938-step epoch")
    return (f"{case:<34} {row['threads']}T  binary {row['binary_ms']:.3f} ms  float32 "
            f"{row['float32_ms']:.3f} ms  ratio {row['ratio']:.1f}x")


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def measure_roofline(thread_counts=(1, 2), seconds=0.6) -> dict:
    """This CPU's binary and float32 peaks (see :mod:`bnnlab.core.kernels.roofline`)."""
    import numba

    from .core.kernels.roofline import measure_roofline as measure

    counts = tuple(n for n in thread_counts if n <= numba.config.NUMBA_NUM_THREADS) or (1,)
    return measure(counts, seconds)


def run_bench(args) -> int:
    from .core.kernels import warm_up

    quick = bool(getattr(args, "quick", False))
    repeats = args.repeats or (5 if quick else 15)
    from .core.kernels.threads import set_contention_sampling

    warm_up()
    # Each case asks for its thread count. With the sampler on, the training kernels
    # would go serial on their own while another process is busy, and a "2 threads"
    # row would time one thread.
    set_contention_sampling(False)
    out = {"cpu": cpu_features(), "repeats": repeats, "load_average_before": _load(),
           "contention_sampling": False}
    roof = measure_roofline((1, 2), 0.3 if quick else 0.8)
    out["roofline"] = roof
    out["results"] = []
    if not args.json:
        c = out["cpu"]
        print(f"cpu {c['cpu']} ({c['machine']}): popcnt={c['popcnt']} avx2={c['avx2']} "
              f"avx512vpopcntdq={c['avx512vpopcntdq']}; popcount: {c['popcount']}; "
              f"medians of >= {repeats} runs; load average {out['load_average_before']}")
        print("\n".join(_fmt_roofline(roof)), flush=True)

    def emit(rows):
        for r in rows:
            out["results"].append(r)
            if not args.json:
                print(_fmt(r), flush=True)

    only = set(getattr(args, "only", None) or GROUPS)
    shapes = getattr(args, "gemm", None) or [s for s in GEMM_SHAPES
                                             if not (quick and s == (4096, 4096, 4096))]
    if "gemm" in only:
        for shape in shapes:
            emit([bench_gemm(*shape, repeats=repeats, nthreads=1, roofline=True)])
            if shape[0] >= 1024:
                emit([bench_gemm(*shape, repeats=repeats, nthreads=2, roofline=True)])
    if "layers" in only:
        emit(bench_layers(repeats, roofline=True))
    if "inference" in only:
        emit(bench_inference(repeats, roofline=True))
    if "runtime" in only:
        emit(bench_runtime(repeats, roofline=True))
    if "training" in only:
        emit(bench_training(max(5, repeats), roofline=True))
    if "epoch" in only and not quick:
        emit(bench_epoch(roofline=True))
    out["load_average_after"] = _load()
    if not args.json:
        print(f"load average after: {out['load_average_after']} (1, 5, 15 min; "
              f"{os.cpu_count()} CPUs)")
    if args.json:
        print(json.dumps(out, indent=1))
    return 0
