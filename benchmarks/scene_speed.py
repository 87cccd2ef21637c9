"""Training and inference speed of scenes' models, measured in alternation.

    python benchmarks/scene_speed.py bireal-mnist larq-mnist-bnn [--rounds 5] [--threads 1]

Each round times, for every scene in turn, 20 training steps (forward, backward and the
optimizer update on batches of the scene's size) and inference on 2,048 inputs (batches
of 256), on random data of the scene's input shape (MNIST: 28 x 28 x 1). Printed: the
median images/s of each over the rounds, and the range. Alternating the scenes inside
every round spreads the load of other processes over both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    from bnnlab.core.model import softmax_cross_entropy
    from bnnlab.core.optimizers import make_optimizer
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset, load_scene

    rng = np.random.default_rng(0)
    setups = []
    for name in args.scenes:
        scene = load_scene(name) if name.endswith(".toml") else load_preset(name)
        model = build_model(scene, (28, 28, 1), 10)
        opt = make_optimizer(scene.optimizer, learning_rate=scene.learning_rate,
                             **scene.optimizer_options)
        params = [p for _, p in model.params()]
        x = rng.random((2048, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, 2048)
        setups.append((name, scene.batch_size, model, opt, params, x, y))
    train = {s[0]: [] for s in setups}
    infer = {s[0]: [] for s in setups}
    for r in range(args.rounds + 1):  # round 0 compiles and warms the caches
        for name, bs, model, opt, params, x, y in setups:
            t = time.perf_counter()
            for i in range(20):
                xb, yb = x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]
                _, g = softmax_cross_entropy(model.forward(xb, training=True, rng=rng), yb)
                model.backward(g)
                opt.step(params)
            t_train = time.perf_counter() - t
            t = time.perf_counter()
            model.predict_logits(x, batch_size=256)
            t_infer = time.perf_counter() - t
            if r:
                train[name].append(20 * bs / t_train)
                infer[name].append(len(x) / t_infer)
    for name, *_ in setups:
        tr, inf = train[name], infer[name]
        print(f"{name}: training {statistics.median(tr):,.0f} images/s "
              f"({min(tr):,.0f}-{max(tr):,.0f}), inference {statistics.median(inf):,.0f} "
              f"images/s ({min(inf):,.0f}-{max(inf):,.0f}), {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
