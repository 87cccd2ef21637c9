"""Record a short whole run of Larq as a test fixture, so tests can hold bnnlab to it.

    python benchmarks/larq_run_fixture.py --larq-python PYTHON
           [--scene tests/data/larq_run_small.toml] [--out tests/data/larq_run_small.npz]

PYTHON is an interpreter with TensorFlow 2 (Keras 2) and larq (see larq_step_check.py).
The scene (a narrow copy of the Larq tutorial network on 300 built-in digits) is trained
for its epochs by bnnlab's own Trainer, and Keras starts from the same initial arrays and
trains on the same batches in the same order, exactly as ``larq_run_check.py`` does. The
file keeps what a test needs to replay the run without TensorFlow: the images (16 grey
levels, so the file stays small), the labels, the batch orders, the initial arrays, and
Keras's per-step losses, its batch-norm running statistics after every epoch, all its
arrays after the last step, and its test loss and accuracy with its own running
statistics after every epoch.

Everything a real run does between the ten steps of ``larq_step_check.py`` is in it: the
last partial batch of every epoch (300 = 4 x 64 + 44), reshuffling at each epoch, weight
clipping after each update, and batch-norm running statistics carried across epochs.
``tests/test_larq_run_fixture.py`` replays it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from larq_run_check import keras_replay, run_ours  # noqa: E402

LEVELS = 15  # pixels are stored as k / 15, k in 0..15


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-python", required=True, help="a Python with tensorflow and larq")
    ap.add_argument("--scene", default=str(ROOT / "tests" / "data" / "larq_run_small.toml"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "larq_run_small.npz"))
    args = ap.parse_args(argv)

    from bnnlab.experiment import Prepared, prepare_data
    from bnnlab.io.atomic import write_atomic
    from bnnlab.io.scenes import load_scene

    scene_text = Path(args.scene).read_text()
    scene = load_scene(args.scene)
    raw = prepare_data(scene, download=False)
    levels = {k: np.rint(getattr(raw, k) * LEVELS).astype(np.uint8) for k in ("x_train", "x_test")}
    data = Prepared(raw.dataset, levels["x_train"].astype(np.float32) / LEVELS, raw.y_train,
                    levels["x_test"].astype(np.float32) / LEVELS, raw.y_test)
    per_epoch = -(-len(data.x_train) // scene.batch_size)
    model, init, states, losses, orders, checkpoints = run_ours(scene, data, scene.epochs, per_epoch)
    try:
        theirs, arrays = keras_replay(args.larq_python, scene, model, data, init, states,
                                      orders, checkpoints)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2

    evals = json.loads(str(theirs["evals"]))
    out = {"scene": np.array(scene_text), "levels": np.array(LEVELS),
           "x_train": levels["x_train"], "y_train": data.y_train.astype(np.uint8),
           "x_test": levels["x_test"], "y_test": data.y_test.astype(np.uint8),
           "orders": orders.astype(np.int16), "checkpoints": np.array(checkpoints),
           "keras_losses": theirs["losses"].astype(np.float32),
           "keras_test": np.array([evals[str(s)]["keras_weights_keras_stats"] for s in checkpoints]),
           "versions": theirs["versions"],
           **{k: v for k, v in arrays.items() if k.startswith("init/")},
           # every array after the last step; the running statistics after every epoch
           **{k: v for k, v in theirs.items() if k.startswith(f"keras/{checkpoints[-1]}/")
              or (k.startswith("keras/") and "moving_" in k)}}
    write_atomic(args.out, lambda f: np.savez_compressed(f, **out))
    gap = np.abs(losses - theirs["losses"])
    print(f"wrote {args.out} ({Path(args.out).stat().st_size:,} bytes): {len(losses)} steps, Keras "
          f"{json.loads(str(theirs['versions']))}; bnnlab - Keras per-step loss: max |diff| "
          f"{gap.max():.2e}")
    for s, row in zip(checkpoints, out["keras_test"]):
        print(f"  after step {s:3d}: Keras test loss {row[0]:.5f}, accuracy {row[1] * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
