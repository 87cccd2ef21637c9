"""Train one network for whole epochs in bnnlab and in Larq, and report where they drift.

    python benchmarks/larq_run_check.py --larq-python PYTHON [--scene larq-mnist-bnn]
           [--dataset NAME] [--epochs 2] [--every STEPS] [--seed 0] [--data-dir DIR]
           [--json OUT.json]

PYTHON is an interpreter with TensorFlow 2 (Keras 2) and larq (see larq_step_check.py).
bnnlab trains the scene with its own :class:`Trainer` (shuffling, the last partial batch
of each epoch, weight clipping: everything a real run does); the Keras side starts from
the same initial arrays and trains with ``train_on_batch`` on exactly the batches the
trainer drew, in the same order. At every checkpoint (every ``--every`` steps and at each
epoch's end) both sides' arrays are compared and four models are evaluated on the test
set, in both engines: each side's weights with its own batch-norm running statistics and
with the other side's swapped in. A gap between "own statistics" and "swapped" is a
difference in the running statistics (inference), a gap that survives the swap is one in
the trained weights, and a gap between the two engines on the same arrays is one in
inference itself.

Float32 rounding makes two runs of a binary network part sooner or later (a latent weight
on one side of zero flips a sign on the other; on Fashion-MNIST, seed 0, the losses were
equal to 1e-6 for 49 steps and step 50 parted them), so from then on the trajectories are
two runs of the same recipe, not one: look at the statistics (losses, test figures), not
at the arrays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from larq_step_check import KERAS_MODEL  # noqa: E402

# Runs in the Larq interpreter after KERAS_MODEL: train on the recorded batches, save the
# arrays at the checkpoints, and evaluate the four weight/statistics combinations.
KERAS_RUN = KERAS_MODEL + r'''
set_state("init/")
opt = tf.keras.optimizers.Adam(learning_rate=spec["learning_rate"], epsilon=spec["epsilon"])
model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
orders, b = d["orders"], int(spec["batch_size"])
checkpoints = set(spec["checkpoints"])
out, losses, step = {}, [], 0
stats = [w for w in model.weights if "moving_" in names[w.ref()]]

def state():
    return {names[w.ref()]: w.numpy() for w in model.weights}

def evaluate():
    loss, acc = model.evaluate(xt, yt, batch_size=256, verbose=0)
    return [float(loss), float(acc)]

evals = {}
for order in orders:
    for i in range(0, len(order), b):
        idx = order[i:i + b]
        losses.append(float(model.train_on_batch(x[idx], y[idx])[0]))
        step += 1
        if step in checkpoints:
            mine = state()
            out.update({f"keras/{step}/" + k: v for k, v in mine.items()})
            e = {"keras_weights_keras_stats": evaluate()}
            set_state(f"bnnlab/{step}/", only="moving_")
            e["keras_weights_bnnlab_stats"] = evaluate()
            set_state(f"bnnlab/{step}/")
            e["bnnlab_weights_bnnlab_stats"] = evaluate()
            set_state("", only="moving_", source=mine)
            e["bnnlab_weights_keras_stats"] = evaluate()
            set_state("", source=mine)
            evals[step] = e
out["losses"] = np.array(losses)
out["evals"] = np.array(json.dumps(evals))
out["versions"] = np.array(json.dumps({"tensorflow": tf.__version__, "larq": lq.__version__}))
np.savez(dst, **out)
'''

COMBOS = ("bnnlab_weights_bnnlab_stats", "bnnlab_weights_keras_stats",
          "keras_weights_keras_stats", "keras_weights_bnnlab_stats")


def run_ours(scene, data, epochs, every):
    """Train with bnnlab's Trainer; return the initial and checkpoint states, the per-step
    losses and the batch order it used."""
    from bnnlab.experiment import build_model, make_trainer

    model = build_model(scene, data.x_train.shape[1:], int(data.y_train.max()) + 1)
    init = {k: v.copy() for k, v in model.state_dict().items()}
    trainer = make_trainer(scene, model, data, epochs=epochs, telemetry=False)
    trainer.x_val = trainer.y_val = None  # both engines evaluate at the checkpoints instead
    trainer.snapshot_every = 1
    n, bs = len(data.x_train), scene.batch_size
    # The orders the trainer draws: one permutation per epoch from a generator seeded like
    # its own; checked below against the trainer's generator state after the run.
    replica = np.random.default_rng(scene.seed)
    orders = np.stack([replica.permutation(n) for _ in range(epochs)]).astype(np.int64)
    per_epoch = trainer.batches_per_epoch
    checkpoints = sorted({s for s in range(every, epochs * per_epoch + 1, every)}
                         | {e * per_epoch for e in range(1, epochs + 1)})
    states, losses, prev_sum = {}, [], 0.0
    for snap in trainer:
        seen = min(snap.batch * bs, n)
        total = snap.loss * seen
        losses.append(total - prev_sum if snap.batch > 1 else total)
        prev_sum = total
        if snap.step in checkpoints:
            states[snap.step] = {k: np.array(v) for k, v in snap.model_state.items()}
    if trainer._rng.bit_generator.state != replica.bit_generator.state:
        raise SystemExit("error: the trainer drew more random numbers than the batch orders; "
                         "this check cannot replay its batches")
    # per-step losses are batch means: divide out the batch sizes
    sizes = np.array([min(bs, n - (s % per_epoch) * bs) for s in range(len(losses))])
    return model, init, states, np.array(losses) / sizes, orders, checkpoints


def keras_replay(larq_python, scene, model, data, init, states, orders, checkpoints):
    """Train the Keras/Larq copy of ``model`` from ``init`` on the trainer's batch
    ``orders`` in ``larq_python``; return what it saved (see KERAS_RUN) and the arrays
    handed to it (``init/...`` and bnnlab's ``bnnlab/STEP/...``). RuntimeError on failure."""
    spec = {"layers": [layer.config() for layer in model.layers],
            "names": [layer.name for layer in model.layers],
            "input_shape": list(model.input_shape), "batch_size": scene.batch_size,
            "learning_rate": scene.learning_rate,
            "epsilon": scene.optimizer_options.get("epsilon", 1e-7), "checkpoints": checkpoints}
    arrays = {"init/" + k: v for k, v in init.items()}
    for step, st in states.items():
        arrays.update({f"bnnlab/{step}/{k}": v for k, v in st.items()})
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "bnnlab.npz", Path(tmp) / "keras.npz"
        np.savez(src, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
                 y_test=data.y_test, orders=orders, spec=np.array(json.dumps(spec)), **arrays)
        try:
            proc = subprocess.run([larq_python, "-c", KERAS_RUN, str(src), str(dst)],
                                  capture_output=True, text=True)
        except OSError as exc:
            raise RuntimeError(f"error: cannot run {larq_python}: {exc}") from exc
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        with np.load(dst) as f:
            return {k: f[k] for k in f.files}, arrays


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True, help="a Python with tensorflow and larq")
    ap.add_argument("--scene", default="larq-mnist-bnn")
    ap.add_argument("--dataset", help="train on this dataset instead of the scene's")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--every", type=int, default=0,
                    help="checkpoint every this many steps (default: a quarter epoch)")
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")

    from bnnlab.data import DatasetError
    from bnnlab.experiment import prepare_data
    from bnnlab.io.scenes import load_preset

    scene = load_preset(args.scene)
    if scene.optimizer != "adam":
        raise SystemExit(f"this check drives Keras's Adam; scene {args.scene} uses {scene.optimizer}")
    if args.dataset:
        scene.dataset = args.dataset
    scene.seed = args.seed
    try:
        data = prepare_data(scene, data_dir=args.data_dir)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    every = args.every or max(1, -(-len(data.x_train) // scene.batch_size) // 4)
    model, init, states, losses, orders, checkpoints = run_ours(scene, data, args.epochs, every)
    try:
        theirs, arrays = keras_replay(args.larq_python, scene, model, data, init, states, orders,
                                      checkpoints)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    keras_losses = theirs["losses"]
    keras_evals = {int(k): v for k, v in json.loads(str(theirs["evals"])).items()}

    report = compare(model, data, states, theirs, losses, keras_losses, keras_evals, checkpoints)
    print(f"scene {args.scene} on {scene.dataset}, seed {args.seed}, {args.epochs} epochs of "
          f"{len(orders[0]) // scene.batch_size + (len(orders[0]) % scene.batch_size > 0)} "
          f"steps (batch {scene.batch_size}); Keras side: {json.loads(str(theirs['versions']))}")
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _eval_bnnlab(model, state, x, y):
    model.load_state_dict(state)
    loss, acc = model.evaluate(x, y)
    return [float(loss), float(acc)]


def compare(model, data, states, theirs, losses, keras_losses, keras_evals, checkpoints):
    rows, prev = [], 0
    for step in checkpoints:
        ours = states[step]
        keras = {k: theirs[f"keras/{step}/{k}"] for k in ours}
        window = slice(prev, step)
        prev = step
        row = {"step": step,
               "loss_bnnlab": float(np.mean(losses[window])),
               "loss_keras": float(np.mean(keras_losses[window])),
               "loss_max_abs_diff": float(np.max(np.abs(losses[window] - keras_losses[window]))),
               "arrays": {}}
        for key in ours:
            a, b = ours[key].astype(np.float64), keras[key].astype(np.float64)
            entry = {"rel_diff": float(np.abs(a - b).max() / (1.0 + np.abs(b).max()))}
            if key.endswith("/kernel"):
                entry["signs_differ"] = float(np.mean(np.signbit(a) != np.signbit(b)))
                entry["at_clip_bnnlab"] = float(np.mean(np.abs(a) >= 1.0))
                entry["at_clip_keras"] = float(np.mean(np.abs(b) >= 1.0))
            if key.endswith("/moving_variance"):
                # > 0: bnnlab's running variance is larger than Keras's on average
                entry["mean_log_ratio"] = float(np.mean(np.log(a / b)))
            row["arrays"][key] = entry
        swapped_k = dict(keras)
        swapped_b = dict(ours)
        for key in ours:
            if "moving_" in key:
                swapped_k[key], swapped_b[key] = ours[key], keras[key]
        row["bnnlab_engine"] = {
            "bnnlab_weights_bnnlab_stats": _eval_bnnlab(model, ours, data.x_test, data.y_test),
            "bnnlab_weights_keras_stats": _eval_bnnlab(model, swapped_b, data.x_test, data.y_test),
            "keras_weights_keras_stats": _eval_bnnlab(model, keras, data.x_test, data.y_test),
            "keras_weights_bnnlab_stats": _eval_bnnlab(model, swapped_k, data.x_test, data.y_test)}
        row["keras_engine"] = keras_evals[step]
        rows.append(row)
    return {"checkpoints": rows,
            "losses_bnnlab": [float(v) for v in losses],
            "losses_keras": [float(v) for v in keras_losses]}


def print_report(report):
    rows = report["checkpoints"]
    print("\ntraining loss, mean over the steps since the previous checkpoint:")
    print(f"  {'step':>6}  {'bnnlab':>9}  {'Keras':>9}  {'max |diff| of a step':>20}")
    for r in rows:
        print(f"  {r['step']:6d}  {r['loss_bnnlab']:9.5f}  {r['loss_keras']:9.5f}  "
              f"{r['loss_max_abs_diff']:20.2e}")
    keys = list(rows[0]["arrays"])
    print("\nkernels: fraction of binary weights whose sign differs | fraction at the clip "
          "bound (bnnlab / Keras)")
    for key in (k for k in keys if k.endswith("/kernel")):
        cells = "  ".join(f"{r['arrays'][key]['signs_differ']:.4f}|"
                          f"{r['arrays'][key]['at_clip_bnnlab']:.3f}/"
                          f"{r['arrays'][key]['at_clip_keras']:.3f}" for r in rows)
        print(f"  {key:<34} {cells}")
    print("\nbatch norm: max |difference| / (1 + max |value|); for moving_variance also the "
          "mean log(bnnlab / Keras)")
    for key in (k for k in keys if not k.endswith("/kernel")):
        cells = "  ".join(
            f"{r['arrays'][key]['rel_diff']:8.2e}" + (
                f" ({r['arrays'][key]['mean_log_ratio']:+.3f})"
                if "mean_log_ratio" in r["arrays"][key] else "") for r in rows)
        print(f"  {key:<34} {cells}")
    print("\ntest set, (loss, accuracy) of weights x running statistics, evaluated in bnnlab "
          "| in Keras:")
    for r in rows:
        print(f"  step {r['step']}")
        for combo in COMBOS:
            lb, ab = r["bnnlab_engine"][combo]
            lk, ak = r["keras_engine"][combo]
            print(f"    {combo:<30} {lb:.4f} {ab * 100:6.2f}%  |  {lk:.4f} {ak * 100:6.2f}%")


if __name__ == "__main__":
    sys.exit(main())
