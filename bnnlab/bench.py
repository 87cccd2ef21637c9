"""``bnnlab bench``: binary kernels against float32 BLAS, measured in the same run.

Every figure is the median of several repeats, and every ratio compares two figures
measured here, now, on this CPU, with the same thread count.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager

import numpy as np

__all__ = ["run_bench", "cpu_features"]

GEMM_SHAPES = [(64, 576, 64), (5184, 576, 64), (1024, 4608, 256), (4096, 4096, 4096)]


def cpu_features() -> dict:
    """CPU name and the features the binary kernels care about (as LLVM sees them)."""
    import llvmlite.binding as llvm

    from .core.kernels import POPCOUNT_MODE

    feats = llvm.get_host_cpu_features()
    keys = ("popcnt", "avx2", "avx512f", "avx512vpopcntdq", "avx512bw")
    return {"cpu": llvm.get_host_cpu_name(), "machine": platform.machine(),
            **{k: bool(feats.get(k, False)) for k in keys},
            "popcount": {"lanes": "vpopcntq per 64-bit lane",
                         "bytes": "per-byte table lookup (vpshufb), byte counters"}[POPCOUNT_MODE]}


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
    fn()  # warm caches and compile
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeats or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 10 * repeats:
            break
    return float(np.median(times))


def bench_gemm(m, k, n, repeats, nthreads=1):
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
    with threads(nthreads):
        tb = median_time(lambda: K.xnor_gemm(abits, bt, k, out, parallel=nthreads > 1), repeats, 0.2)
        tf = median_time(lambda: np.matmul(a, b, out=fout), repeats, 0.2)
    return {"case": f"gemm {m}x{k}x{n}", "threads": nthreads,
            "binary_tops": ops / tb / 1e12, "float32_gflops": ops / tf / 1e9,
            "binary_ms": tb * 1e3, "float32_ms": tf * 1e3, "ratio": tf / tb}


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


def bench_layers(repeats, batch=256):
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
                tb = median_time(lambda: lb.forward(xin), repeats, 0.2)
                tf = median_time(lambda: lf.forward(xin), repeats, 0.2)
                rows.append({"case": f"layer {lb.name} {tuple(lb.input_shape)}->{tuple(lb.output_shape)}",
                             "batch": batch, "threads": 1, "binary_ms": tb * 1e3,
                             "float32_ms": tf * 1e3, "ratio": tf / tb})
    return rows


def bench_inference(repeats):
    bnn, fp = _larq_models()
    rng = np.random.default_rng(2)
    rows = []
    for batch in (1, 256):
        x = rng.random((batch, 28, 28, 1), dtype=np.float32)
        for nt in (1, 2):
            rows.append(_throughput(f"larq-mnist-bnn inference batch {batch}", nt, batch,
                                    lambda: bnn.forward(x), lambda: fp.forward(x), repeats))
    return rows


def _throughput(case, nt, batch, binary_fn, float_fn, repeats):
    """Images/s and latency of a binary and a float32 pass over one batch, on nt threads."""
    with threads(nt):
        tb = median_time(binary_fn, repeats, 0.3)
        tf = median_time(float_fn, repeats, 0.3)
    return {"case": case, "threads": nt,
            "binary_images_per_s": batch / tb, "float32_images_per_s": batch / tf,
            "binary_latency_ms": tb * 1e3, "float32_latency_ms": tf * 1e3, "ratio": tf / tb}


def bench_runtime(repeats):
    """The ``.bnn`` runtime (integer kernels, fused epilogues) against the float32 twin
    that a float framework would run: im2col + BLAS sgemm, float batch norm and sign."""
    from .deploy import to_model_file
    from .deploy.bench import FloatTwin
    from .deploy.runtime import Runtime

    bnn, _ = _larq_models()
    # Batch-norm statistics as after training, so that the thresholds are not all alike.
    rng = np.random.default_rng(4)
    for layer in bnn.layers:
        if hasattr(layer, "moving_mean"):
            layer.moving_mean[...] = rng.normal(0, 3, layer.moving_mean.shape)
            layer.moving_variance[...] = rng.uniform(5, 50, layer.moving_variance.shape)
    runtime = Runtime(to_model_file(bnn))
    twin = FloatTwin(bnn)
    rows = []
    for batch in (1, 256):
        raw = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
        x = raw.astype(np.float32) / np.float32(255.0)
        for nt in (1, 2):
            rows.append(_throughput(f".bnn runtime batch {batch}", nt, batch,
                                    lambda: runtime.logits(raw, threads=nt),
                                    lambda: twin.logits(x), repeats))
    return rows


def bench_epoch(nthreads=2, n=60000):
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
        trainer = Trainer(bnn, x, y, optimizer=Adam(1e-3), epochs=1, batch_size=64,
                          snapshot_every=50)
        t = time.perf_counter()
        for _ in trainer:
            pass
        seconds = time.perf_counter() - t
    return [{"case": f"larq-mnist-bnn training epoch ({n} images, batch 64, 1 run)",
             "threads": nthreads, "epoch_s": seconds, "images_per_s": n / seconds}]


def bench_training(steps):
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
    for nt in (1, 2):
        with threads(nt):
            t = median_time(step, steps)
        rows.append({"case": "larq-mnist-bnn training step, batch 64", "threads": nt,
                     "step_ms": t * 1e3, "epoch_s_estimate": t * 938})
    return rows


def _fmt(row) -> str:
    case = row["case"]
    if "binary_tops" in row:
        return (f"{case:<34} {row['threads']}T  binary {row['binary_tops']:.3f} Tops/s "
                f"({row['binary_ms']:.3f} ms)  float32 {row['float32_gflops']:.1f} GFLOP/s "
                f"({row['float32_ms']:.3f} ms)  ratio {row['ratio']:.1f}x")
    if "binary_images_per_s" in row:
        return (f"{case:<34} {row['threads']}T  binary {row['binary_images_per_s']:,.0f} img/s "
                f"({row['binary_latency_ms']:.3f} ms)  float32 {row['float32_images_per_s']:,.0f} "
                f"img/s  ratio {row['ratio']:.1f}x")
    if "epoch_s" in row:
        return (f"{case:<34} {row['threads']}T  {row['epoch_s']:.2f} s "
                f"({row['images_per_s']:,.0f} img/s)")
    if "step_ms" in row:
        return (f"{case:<34} {row['threads']}T  {row['step_ms']:.2f} ms/step, "
                f"~{row['epoch_s_estimate']:.1f} s per 938-step epoch")
    return (f"{case:<34} {row['threads']}T  binary {row['binary_ms']:.3f} ms  float32 "
            f"{row['float32_ms']:.3f} ms  ratio {row['ratio']:.1f}x")


def run_bench(args) -> int:
    from .core.kernels import warm_up

    quick = bool(getattr(args, "quick", False))
    repeats = args.repeats or (5 if quick else 15)
    warm_up()
    out = {"cpu": cpu_features(), "repeats": repeats, "results": []}
    if not args.json:
        c = out["cpu"]
        print(f"cpu {c['cpu']} ({c['machine']}): popcnt={c['popcnt']} avx2={c['avx2']} "
              f"avx512vpopcntdq={c['avx512vpopcntdq']}; popcount: {c['popcount']}; "
              f"medians of >= {repeats} runs")

    def emit(rows):
        for r in rows:
            out["results"].append(r)
            if not args.json:
                print(_fmt(r), flush=True)

    for shape in GEMM_SHAPES:
        if quick and shape == (4096, 4096, 4096):
            continue
        emit([bench_gemm(*shape, repeats=repeats, nthreads=1)])
        if shape[0] >= 1024:
            emit([bench_gemm(*shape, repeats=repeats, nthreads=2)])
    emit(bench_layers(repeats))
    emit(bench_inference(repeats))
    emit(bench_runtime(repeats))
    emit(bench_training(max(5, repeats)))
    if not quick:
        emit(bench_epoch())
    if args.json:
        print(json.dumps(out, indent=1))
    return 0
