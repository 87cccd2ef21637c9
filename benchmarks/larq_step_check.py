"""Train the same network on the same batches in bnnlab and in Larq, and compare.

    python benchmarks/larq_step_check.py --larq-python PYTHON [--scene larq-mnist-bnn]
           [--steps 10] [--seed 0] [--data-dir DIR]

PYTHON is an interpreter that has TensorFlow 2 (Keras 2) and larq, for example a venv
made with ``pip install "tensorflow-cpu==2.15.*" "larq==0.13.*"``. bnnlab builds the
scene's model, the Keras side takes the very same initial weights, and both train on the
same batches with Adam. Printed: the relative difference of every gradient at the first
step, the loss at every step, and how far every array (weights, batch-norm statistics)
lies apart after the last step.

Float32 sums in a different order differ in the last bits, and training amplifies that:
a binary network turns it into a flipped sign sooner or later, and Adam's first steps
move a weight by about the learning rate whatever the size of its gradient, so a
gradient near zero can change direction. The verdict (exit status 1 when it fails) is
therefore on the first gradients only; the losses and final arrays show how long the two
runs stay together (larq-mnist-bnn: to float32 precision over 10 steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Runs in the Larq interpreter, after ``src, dst = sys.argv[1:3]``: rebuild the model from
# bnnlab's layer configs (``spec`` in the file ``src``) and name every Keras variable as
# bnnlab names its array, so ``set_state(prefix)`` copies arrays in. Shared with
# larq_run_check.py.
KERAS_MODEL = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, larq as lq

src, dst = sys.argv[1], sys.argv[2]
d = np.load(src)
spec = json.loads(str(d["spec"]))

def quantizer(q):
    if q is None:
        return None
    if q["name"] == "ste_sign":
        return lq.quantizers.SteSign(clip_value=q.get("clip_value", 1.0))
    return q["name"]

def build(cfg, first, input_shape):
    t = cfg["type"]
    kw = {"input_shape": input_shape} if first else {}
    if t in ("QuantConv2D", "Conv2D"):
        common = dict(filters=cfg["filters"], kernel_size=tuple(cfg["kernel_size"]),
                      strides=cfg["strides"], padding=cfg["padding"], use_bias=cfg["use_bias"],
                      activation=cfg["activation"], **kw)
        if t == "Conv2D":
            return tf.keras.layers.Conv2D(**common)
        return lq.layers.QuantConv2D(input_quantizer=quantizer(cfg["input_quantizer"]),
                                     kernel_quantizer=quantizer(cfg["kernel_quantizer"]),
                                     kernel_constraint=cfg["kernel_constraint"],
                                     pad_values=cfg["pad_values"], **common)
    if t in ("QuantDense", "Dense"):
        common = dict(units=cfg["units"], use_bias=cfg["use_bias"],
                      activation=cfg["activation"], **kw)
        if t == "Dense":
            return tf.keras.layers.Dense(**common)
        return lq.layers.QuantDense(input_quantizer=quantizer(cfg["input_quantizer"]),
                                    kernel_quantizer=quantizer(cfg["kernel_quantizer"]),
                                    kernel_constraint=cfg["kernel_constraint"], **common)
    if t == "MaxPool2D":
        return tf.keras.layers.MaxPooling2D(cfg["pool_size"], cfg["strides"], **kw)
    if t == "BatchNorm":
        return tf.keras.layers.BatchNormalization(momentum=cfg["momentum"],
                                                  epsilon=cfg["epsilon"], center=cfg["center"],
                                                  scale=cfg["scale"], **kw)
    if t == "Flatten":
        return tf.keras.layers.Flatten(**kw)
    if t == "Activation":
        return tf.keras.layers.Activation(cfg["activation"], **kw)
    raise SystemExit(f"no Keras counterpart for layer type {t}")

model = tf.keras.models.Sequential(
    [build(c, i == 0, tuple(spec["input_shape"])) for i, c in enumerate(spec["layers"])])
names = {}
for layer, ours in zip(model.layers, spec["names"]):
    for w in layer.weights:
        names[w.ref()] = ours + "/" + w.name.split("/")[-1].split(":")[0]

def set_state(prefix, only=None, source=None):
    source = d if source is None else source
    for w in model.weights:
        k = names[w.ref()]
        if only is None or only in k:
            w.assign(source[prefix + k])
'''

# Then: copy the initial state, record the first gradients, train on the same batches.
KERAS_SIDE = KERAS_MODEL + r'''
set_state("init/")
x, y, b = d["x"], d["y"], int(spec["batch_size"])
with tf.GradientTape() as tape:
    p = model(x[:b], training=True)
    loss0 = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y[:b], p))
grads = tape.gradient(loss0, model.trainable_weights)
set_state("init/", only="moving_")  # the call above updated the running statistics
opt = tf.keras.optimizers.Adam(learning_rate=spec["learning_rate"], epsilon=spec["epsilon"])
model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
losses = [float(model.train_on_batch(x[s * b:(s + 1) * b], y[s * b:(s + 1) * b]))
          for s in range(len(x) // b)]
out = {"losses": np.array(losses), "loss0": np.array(float(loss0))}
out.update({"grad0/" + names[w.ref()]: g.numpy() for w, g in zip(model.trainable_weights, grads)})
out.update({"final/" + names[w.ref()]: w.numpy() for w in model.weights})
out["versions"] = np.array(json.dumps({"tensorflow": tf.__version__, "larq": lq.__version__}))
np.savez(dst, **out)
'''


def run_ours(scene_name, data_dir, steps, seed):
    from bnnlab.core.model import softmax_cross_entropy
    from bnnlab.experiment import build_model, make_trainer, prepare_data
    from bnnlab.io.scenes import load_preset

    scene = load_preset(scene_name)
    if scene.optimizer != "adam":
        raise SystemExit(f"this check drives Keras's Adam; scene {scene_name} uses {scene.optimizer}")
    data = prepare_data(scene, data_dir=data_dir)
    model = build_model(scene, data.x_train.shape[1:], int(data.y_train.max()) + 1)
    params = [p for _, p in model.params()]
    opt = make_trainer(scene, model, data).optimizer
    b = scene.batch_size
    order = np.random.default_rng(seed).permutation(len(data.x_train))[:steps * b]
    x, y = data.x_train[order], data.y_train[order].astype(np.int64)
    out = {"init/" + k: v.copy() for k, v in model.state_dict().items()}
    losses = []
    for s in range(steps):
        logits = model.forward(x[s * b:(s + 1) * b], training=True)
        loss, dlogits = softmax_cross_entropy(logits, y[s * b:(s + 1) * b])
        model.backward(dlogits)
        if s == 0:
            out.update({"grad0/" + n: p.grad.copy() for n, p in model.params()})
        opt.step(params)
        losses.append(loss)
    out.update({"final/" + k: v.copy() for k, v in model.state_dict().items()})
    spec = {"layers": [layer.config() for layer in model.layers],
            "names": [layer.name for layer in model.layers],
            "input_shape": list(model.input_shape), "batch_size": b,
            "learning_rate": scene.learning_rate,
            "epsilon": scene.optimizer_options.get("epsilon", 1e-7)}
    return out, np.array(losses), x, y, spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True, help="a Python with tensorflow and larq")
    ap.add_argument("--scene", default="larq-mnist-bnn")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="picks the batches")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--grad-tol", type=float, default=1e-4,
                    help="largest |difference| / largest |gradient| accepted at step 1")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    from bnnlab.data import DatasetError

    try:
        ours, losses, x, y, spec = run_ours(args.scene, args.data_dir, args.steps, args.seed)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "bnnlab.npz", Path(tmp) / "keras.npz"
        np.savez(src, x=x, y=y, spec=np.array(json.dumps(spec)), **ours)
        try:
            proc = subprocess.run([args.larq_python, "-c", KERAS_SIDE, str(src), str(dst)],
                                  capture_output=True, text=True)
        except OSError as exc:
            print(f"error: cannot run {args.larq_python}: {exc}", file=sys.stderr)
            return 2
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 2
        with np.load(dst) as f:
            theirs = {k: f[k] for k in f.files}

    print(f"scene {args.scene}, {args.steps} steps of {spec['batch_size']}, batches from seed "
          f"{args.seed}; Keras side: {json.loads(str(theirs['versions']))}")
    ok = True
    print("\ngradients at step 1 (max |difference| / max |gradient|):")
    for key in sorted(k for k in ours if k.startswith("grad0/")):
        a, b = ours[key], theirs[key]
        rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        ok &= rel <= args.grad_tol
        print(f"  {key[6:]:<36} {rel:9.2e}")
    print("\nloss per step (bnnlab, Keras):")
    for s, (l1, l2) in enumerate(zip(losses, theirs["losses"])):
        print(f"  {s + 1:5d}  {l1:.6f}  {l2:.6f}")
    print("\nafter the last step (max |difference| / (1 + max |value|)):")
    for key in sorted(k for k in ours if k.startswith("final/")):
        a, b = ours[key], theirs[key]
        rel = float(np.abs(a - b).max() / (1.0 + np.abs(b).max()))
        print(f"  {key[6:]:<40} {rel:9.2e}")
    print(f"\nfirst gradients agree within {args.grad_tol:g}" if ok else
          f"\nfirst gradients DIFFER by more than {args.grad_tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
