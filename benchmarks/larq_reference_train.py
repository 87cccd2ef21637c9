"""Train the Larq MNIST tutorial's binary network with Larq itself, as a reference.

    PY benchmarks/larq_reference_train.py [--dataset mnist] [--data-dir DIR] [--seed 0]
                                          [--epochs 6]

PY is a Python with TensorFlow 2 (Keras 2) and larq (see larq_step_check.py). The network
and the recipe (Keras defaults, Adam, batch 64, pixels in [0, 1]) are those of
``bnnlab train larq-mnist-bnn``. The data is any set of the MNIST family in the original
IDX files (gzipped or not): DIR/NAME/ when --data-dir is given, else
/usr/share/datasets/NAME (Debian's dataset-fashion-mnist puts Fashion-MNIST there).
Prints one JSON line per epoch, then the test loss and accuracy. Needs nothing from
bnnlab.
"""

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def read_idx(path: Path):
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def find(folder: Path, name: str) -> Path:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.exists():
            return candidate
    raise SystemExit(f"error: {name}(.gz) not found in {folder}")


def build_model(seed: int = 0):
    """The tutorial network in Larq (Keras defaults), not yet compiled."""
    import larq as lq
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                  kernel_constraint="weight_clip", use_bias=False)
    return tf.keras.models.Sequential([
        lq.layers.QuantConv2D(32, (3, 3), kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", use_bias=False,
                              input_shape=(28, 28, 1)),
        tf.keras.layers.MaxPooling2D((2, 2)),
        tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantConv2D(64, (3, 3), **binary),
        tf.keras.layers.MaxPooling2D((2, 2)),
        tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantConv2D(64, (3, 3), **binary),
        tf.keras.layers.BatchNormalization(scale=False),
        tf.keras.layers.Flatten(),
        lq.layers.QuantDense(64, **binary),
        tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantDense(10, **binary),
        tf.keras.layers.BatchNormalization(scale=False),
        tf.keras.layers.Activation("softmax"),
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist",
                    help="mnist, fashion-mnist, kmnist: any 28x28 set in the IDX layout")
    ap.add_argument("--data-dir", help="folder with one sub-folder per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()

    import larq as lq
    import tensorflow as tf

    if args.data_dir:
        folder = Path(args.data_dir) / args.dataset
    else:
        folder = Path("/usr/share/datasets") / args.dataset
    if not folder.is_dir():
        raise SystemExit(f"error: no folder {folder} for dataset {args.dataset}; pass --data-dir")
    x_train = read_idx(find(folder, "train-images-idx3-ubyte")).reshape(-1, 28, 28, 1) / 255.0
    y_train = read_idx(find(folder, "train-labels-idx1-ubyte"))
    x_test = read_idx(find(folder, "t10k-images-idx3-ubyte")).reshape(-1, 28, 28, 1) / 255.0
    y_test = read_idx(find(folder, "t10k-labels-idx1-ubyte"))

    model = build_model(args.seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class EpochLines(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            print(json.dumps({"epoch": epoch + 1, "seconds": round(time.perf_counter() - self.t0, 3),
                              **{k: float(v) for k, v in (logs or {}).items()}}), flush=True)

    model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0,
              callbacks=[EpochLines()])
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(json.dumps({"seed": args.seed, "dataset": args.dataset, "test_loss": loss,
                      "test_accuracy": acc, "tensorflow": tf.__version__,
                      "larq": lq.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
