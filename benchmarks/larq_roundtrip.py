"""Check the way from bnnlab to Larq and Larq Compute Engine on the MNIST test set.

    python benchmarks/larq_roundtrip.py --larq-python PY [--model MODEL.npz|MODEL.h5]
           [--scene larq-mnist-bnn] [--epochs 1] [--dataset mnist] [--data-dir DIR]
           [--keep DIR]

PY is a Python with TensorFlow 2.15, larq 0.14 and larq-compute-engine 0.16. Without
--model, bnnlab first trains SCENE for --epochs. Then:

1. ``bnnlab export MODEL --h5`` writes the Keras/Larq file (``bnnlab.deploy.larq_export``),
   and bnnlab's importer reads it back: every array and the configuration must be equal.
2. In PY, ``tf.keras.models.load_model`` loads the file and predicts the test images;
   ``larq_compute_engine.convert_keras_model`` converts it and LCE's interpreter predicts
   them again.
3. Printed: how many of the test images get the same class in bnnlab and in Keras, and in
   bnnlab and in LCE, and for every image that differs whether it is a near-tie, an image
   on which some binarized activation in bnnlab lies within 1e-4 of the sign threshold
   (float32 rounding in another engine can turn such a value to the other side), or whose
   two largest outputs lie within 1e-4.

Exit status 0 when the import is exact and each engine differs from bnnlab on at most
--max-differ images (default 10), all of them near-ties.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LARQ_SIDE = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, larq as lq, larq_compute_engine as lce
from larq_compute_engine.tflite.python.interpreter import Interpreter

h5, src, dst, tfl = sys.argv[1:5]
x = np.load(src)["x"]
model = tf.keras.models.load_model(h5)
keras_probs = model.predict(x, batch_size=500, verbose=0)
flat = lce.convert_keras_model(model)
with open(tfl, "wb") as f:
    f.write(flat)
lce_probs = Interpreter(flat, num_threads=1).predict(x)
np.savez(dst, keras=keras_probs, lce=lce_probs, versions=np.array(json.dumps({
    "tensorflow": tf.__version__, "larq": lq.__version__, "lce": lce.__version__})))
'''

NEAR_TIE = 1e-4


def trained_model(args):
    from bnnlab.experiment import build_model, make_trainer, prepare_data
    from bnnlab.io.scenes import load_preset

    scene = load_preset(args.scene)
    scene.dataset = args.dataset
    data = prepare_data(scene, args.data_dir)
    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    make_trainer(scene, model, data, epochs=args.epochs, telemetry=False).run()
    return model, data.x_test, data.y_test


def load_model_and_data(args):
    from bnnlab.data import load_dataset
    from bnnlab.deploy.larq_import import import_larq
    from bnnlab.io.checkpoints import load_checkpoint

    scale = "unit"
    if args.model.lower().endswith(".npz"):
        model, meta = load_checkpoint(args.model)
        scale = meta.get("input_scale", "unit")
    else:  # a Keras/Larq .h5 (a .bnn keeps only signs: export it from its .npz)
        model = import_larq(args.model)
    ds = load_dataset(args.dataset, args.data_dir)
    x = ds.x_test if scale == "unit" else (ds.x_test * 2.0 - 1.0).astype(np.float32)
    return model, x, ds.y_test


def min_margins(model, x, batch=500):
    """Per image: the smallest |value| any binary input quantizer sees in bnnlab, or the gap
    between the two largest outputs when that is smaller."""
    out = np.full(len(x), np.inf)
    quant = [q for q in model.quant_layers if q.input_quantizer is not None
             and q.input_quantizer.binary]
    for i in range(0, len(x), batch):
        top2 = np.sort(model.forward(x[i:i + batch]), axis=1)[:, -2:]
        out[i:i + batch] = top2[:, 1] - top2[:, 0]
        for q in quant:
            v = np.abs(q.last_input.reshape(len(x[i:i + batch]), -1)).min(axis=1)
            out[i:i + batch] = np.minimum(out[i:i + batch], v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True)
    ap.add_argument("--model", help="a checkpoint (.npz) or a Keras/Larq .h5; else train SCENE")
    ap.add_argument("--scene", default="larq-mnist-bnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--max-differ", type=int, default=10)
    ap.add_argument("--keep", help="keep the .h5 and .tflite files in this folder")
    args = ap.parse_args(argv)

    from bnnlab.deploy.larq_export import write_larq_h5
    from bnnlab.deploy.larq_import import import_larq

    model, x, y = load_model_and_data(args) if args.model else trained_model(args)
    ours = model.predict_logits(x).argmax(axis=1)
    margins = min_margins(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        h5, tfl = folder / "model.h5", folder / "model.tflite"
        size = write_larq_h5(model, h5)
        back = import_larq(h5)
        a, b = model.state_dict(), back.state_dict()
        exact = (a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                 and model.config()["layers"] == back.config()["layers"])
        src, dst = Path(tmp) / "x.npz", Path(tmp) / "out.npz"
        np.savez(src, x=x)
        proc = subprocess.run([args.larq_python, "-c", LARQ_SIDE, str(h5), str(src), str(dst),
                               str(tfl)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 2
        with np.load(dst) as f:
            keras, lce = f["keras"], f["lce"]
            versions = json.loads(str(f["versions"]))
        tfl_size = tfl.stat().st_size
    print(f"model: {args.model or f'{args.scene} trained {args.epochs} epoch(s) in bnnlab'}; "
          f"{len(x)} {args.dataset} test images; {versions}")
    print(f"  .h5 written: {size:,} bytes; bnnlab's importer reads back the same model bit for "
          f"bit: {'yes' if exact else 'NO'}")
    print(f"  bnnlab accuracy {np.mean(ours == y) * 100:.2f}%")
    ok = exact
    for name, probs in (("Keras/Larq load_model", keras), (f"LCE interpreter ({tfl_size:,} "
                                                                 "byte .tflite)", lce)):
        pred = probs.argmax(axis=1)
        differ = np.flatnonzero(pred != ours)
        ties = int(np.sum(margins[differ] < NEAR_TIE))
        print(f"  {name}: same class on {len(x) - len(differ):,} / {len(x):,} images "
              f"(accuracy {np.mean(pred == y) * 100:.2f}%); {len(differ)} differ, {ties} of "
              f"them near-ties" + (f" (images {', '.join(map(str, differ[:20]))})" if len(differ) else ""))
        ok &= len(differ) <= args.max_differ and ties == len(differ)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
