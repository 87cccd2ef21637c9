"""bnnlab against Larq Compute Engine, Keras and Larq training, interleaved in one run.

    python benchmarks/peers.py --larq-python PY --data-dir DIR [--rounds 3] [--epochs 1]

PY is a Python with TensorFlow 2.15, Larq 0.14 and larq-compute-engine 0.16 (tests do
not need it). It runs a worker that builds the Larq tutorial network (as in
larq_reference_train.py), saves it as .h5 and converts it with LCE. This process
imports the same .h5 into bnnlab and runs it in the packed ``.bnn`` runtime. Then, in
alternation so that the machine's load hits both alike, it times a Larq training epoch
(``fit``, batch 64) against a bnnlab epoch (the Trainer, batch 64, 2 threads, from the
same initial weights) on the 60,000 training images; then, on the network Larq has
trained, saved again and converted, on the 10,000 MNIST test images: LCE's interpreter
(1 and 2 threads, one image per call, as LCE runs it) and Keras ``predict`` (batch 256)
against the bnnlab runtime (batch 256 on 1 and 2 threads, and one image per call). It
prints each figure (median over the rounds), the ratios, how often the peers' predicted
class equals the runtime's, the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Runs under PY. Reads one JSON command per line, answers one JSON line per command.
WORKER = r'''
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow as tf
import larq_compute_engine as lce
from larq_compute_engine.tflite.python.interpreter import Interpreter
from larq_reference_train import build_model, find, read_idx
from pathlib import Path

folder = Path(sys.argv[2]) / "mnist"
x_test = (read_idx(find(folder, "t10k-images-idx3-ubyte")).reshape(-1, 28, 28, 1) / 255.0
          ).astype(np.float32)
x_train = read_idx(find(folder, "train-images-idx3-ubyte")).reshape(-1, 28, 28, 1) / 255.0
y_train = read_idx(find(folder, "train-labels-idx1-ubyte"))
model = build_model(0)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x_train[:128], y_train[:128], batch_size=64, epochs=1, verbose=0)  # trace once
model.predict(x_test[:256], batch_size=256, verbose=0)
flat = None
interp = {}
say = lambda d: print(json.dumps(d), flush=True)
say({"ready": True, "tensorflow": tf.__version__, "lce": lce.__version__})
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "save":
        model.save(cmd["path"])
        flat = lce.convert_keras_model(model)
        say({"bytes": len(flat)})
    elif op == "lce":
        n = cmd["threads"]
        if n not in interp:
            interp[n] = Interpreter(flat, num_threads=n)
            interp[n].predict(x_test[:8])
        x = x_test[:cmd["images"]]
        t = time.perf_counter()
        out = interp[n].predict(x)
        say({"seconds": time.perf_counter() - t, "images": len(x),
             "argmax": np.asarray(out).reshape(len(x), -1).argmax(1).tolist()})
    elif op == "keras":
        x = x_test[:cmd["images"]]
        t = time.perf_counter()
        out = model.predict(x, batch_size=256, verbose=0)
        say({"seconds": time.perf_counter() - t, "images": len(x),
             "argmax": out.argmax(1).tolist()})
    elif op == "epoch":
        n = cmd["images"]
        t = time.perf_counter()
        model.fit(x_train[:n], y_train[:n], batch_size=64, epochs=1, verbose=0)
        say({"seconds": time.perf_counter() - t, "images": n})
'''


class Worker:
    def __init__(self, python: str, data_dir: str):
        self.proc = subprocess.Popen([python, "-c", WORKER, str(HERE), data_dir],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: the Larq worker stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def __call__(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True, metavar="PY")
    ap.add_argument("--data-dir", required=True, help="folder holding mnist/ (IDX files)")
    ap.add_argument("--rounds", type=int, default=3, help="inference rounds (default 3)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs each (default 1)")
    ap.add_argument("--images", type=int, default=10000, help="test images (default 10000)")
    ap.add_argument("--train-images", type=int, default=60000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from bnnlab.core.kernels import tune_process

    tune_process()
    import llvmlite.binding as llvm

    from bnnlab.core.optimizers import Adam
    from bnnlab.core.trainer import Trainer
    from bnnlab.data.idx import read_idx
    from bnnlab.deploy import to_model_file
    from bnnlab.deploy.larq_import import import_larq
    from bnnlab.deploy.runtime import Runtime

    def idx(name):
        folder = Path(args.data_dir) / "mnist"
        for cand in (folder / (name + ".gz"), folder / name):
            if cand.exists():
                return read_idx(cand)
        raise SystemExit(f"error: {name}(.gz) not found in {folder}")

    raw_test = idx("t10k-images-idx3-ubyte").reshape(-1, 28, 28, 1)[:args.images]
    x_train = (idx("train-images-idx3-ubyte").reshape(-1, 28, 28, 1)[:args.train_images]
               .astype(np.float32) / np.float32(255.0))
    y_train = idx("train-labels-idx1-ubyte")[:args.train_images].astype(np.int64)

    worker = Worker(args.larq_python, args.data_dir)
    rows: dict[str, list[float]] = {}
    agree = {}
    load = [_load()]
    import numba

    from bnnlab.core.kernels import warm_up

    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "larq_mnist_bnn.h5")
        worker(op="save", path=h5)  # the untrained network, for bnnlab's epochs
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))

        def our_epoch(x, y):
            trainer = Trainer(import_larq(h5), x, y, optimizer=Adam(1e-3), epochs=1,
                              batch_size=64, snapshot_every=50)
            t = time.perf_counter()
            for _ in trainer:
                pass
            return time.perf_counter() - t

        our_epoch(x_train[:128], y_train[:128])  # compile
        for _ in range(args.epochs):
            r = worker(op="epoch", images=len(x_train))
            rows.setdefault("Larq/Keras fit, 1 epoch, batch 64 (s)", []).append(r["seconds"])
            rows.setdefault("bnnlab Trainer, 1 epoch, batch 64, 2 threads (s)", []).append(
                our_epoch(x_train, y_train))
        load.append(_load())
        # Inference on the network Larq has just trained, converted by LCE and imported
        # into bnnlab from the same .h5.
        worker(op="save", path=h5)
        model = import_larq(h5)
        runtime = Runtime(to_model_file(model))
        n = len(raw_test)

        def ours(threads, batch):
            t = time.perf_counter()
            if batch == 1:
                for i in range(n):
                    runtime.logits(raw_test[i:i + 1], threads=1)
            else:
                for i in range(0, n, batch):
                    runtime.logits(raw_test[i:i + batch], threads=threads)
            return n / (time.perf_counter() - t)

        ours(2, 256)  # compile
        pred = runtime.logits(raw_test, threads=1).argmax(1)
        for _ in range(args.rounds):
            for nt in (1, 2):
                r = worker(op="lce", threads=nt, images=n)
                rows.setdefault(f"LCE interpreter, {nt} thread(s), 1 image per call", []).append(
                    r["images"] / r["seconds"])
                agree["lce"] = float(np.mean(np.array(r["argmax"]) == pred))
                rows.setdefault(f"bnnlab runtime, {nt} thread(s), batch 256", []).append(
                    ours(nt, 256))
            rows.setdefault("bnnlab runtime, 1 thread, 1 image per call", []).append(ours(1, 1))
            r = worker(op="keras", images=n)
            agree["keras"] = float(np.mean(np.array(r["argmax"]) == pred))
            rows.setdefault("Keras predict, batch 256", []).append(r["images"] / r["seconds"])
        load.append(_load())
    worker.close()

    med = {k: float(np.median(v)) for k, v in rows.items()}
    rt = {nt: med[f"bnnlab runtime, {nt} thread(s), batch 256"] for nt in (1, 2)}
    ratios = {
        "runtime 1T / LCE 1T": rt[1] / med["LCE interpreter, 1 thread(s), 1 image per call"],
        "runtime 2T / LCE 2T": rt[2] / med["LCE interpreter, 2 thread(s), 1 image per call"],
        "runtime 1 image per call / LCE 1T": (med["bnnlab runtime, 1 thread, 1 image per call"]
                                              / med["LCE interpreter, 1 thread(s), 1 image per call"]),
        "runtime 2T / Keras predict": rt[2] / med["Keras predict, batch 256"],
        "Larq epoch / bnnlab epoch": (med["Larq/Keras fit, 1 epoch, batch 64 (s)"]
                                      / med["bnnlab Trainer, 1 epoch, batch 64, 2 threads (s)"]),
    }
    out = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": llvm.get_host_cpu_name(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "peers": worker.hello,
           "load_average": load, "median": med, "all": rows, "ratios": ratios,
           "same_argmax_as_runtime": agree, "images": n, "train_images": len(x_train)}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['date']}, {out['cpu']} ({out['cpus']} CPUs); TensorFlow "
          f"{worker.hello['tensorflow']}, LCE {worker.hello['lce']}; load average "
          f"{' -> '.join(load)}; medians of {args.rounds} rounds, {n} test images")
    for k, v in med.items():
        unit = "" if k.endswith("(s)") else " images/s"
        print(f"  {k:<55} {v:>10,.1f}{unit}   (all: {', '.join(f'{x:,.1f}' for x in rows[k])})")
    for k, v in ratios.items():
        print(f"  {k:<55} {v:>10.2f}x")
    print(f"  same predictions as the runtime: LCE {agree['lce']:.4f}, Keras {agree['keras']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
