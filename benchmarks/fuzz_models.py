"""A bounded fuzz campaign against the .bnn reader and runtime.

    nice python benchmarks/fuzz_models.py --files 100000 --seed 0

Takes valid model files (a Larq-MNIST-shaped network, a small CNN, a float-input MLP and
random models of every block kind), mutates each copy (bit flips, bytes, 32-bit words,
insertions, deletions, truncation; the checksum always and the size field mostly fixed
up, so the parser is reached), and for every mutated file, under an address-space limit
of 64 MB + 4 x the file's size above what the process already uses (Linux RLIMIT_AS):

1. decodes it; anything but a returned model or ModelFileError is an error;
2. if accepted, builds the runtime (which checks its memory and work limits: a refusal
   there is a ModelFileError too) and runs it on two inputs on one thread;
3. compares the accepted file's logits with the NumPy oracle (outside the limit).

glibc's malloc is told (by environment, the script re-executes itself to set it) to map
every block of 64 KiB or more on its own and to give freed memory back, so a large
allocation always grows the address space and meets the limit, however much the process
freed before. ``--bound-mb 0.05`` shows that the check bites.

A MemoryError inside the limit is retried once without it (the first run of a kernel
may compile it) and then with it again; failing twice counts as over the memory bound.
Prints the counts and exits 1 on any error, mismatch or memory violation.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import struct
import sys
import time
import zlib

import numpy as np

from bnnlab.deploy import format as F
from bnnlab.deploy.fold import fold_model
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime
from bnnlab.deploy.samples import random_inputs, random_model_file

MB = 1_000_000


def base_files(seed: int) -> list[bytes]:
    from bnnlab.core.layers import BatchNorm, Flatten, MaxPool2D, QuantConv2D, QuantDense
    from bnnlab.core.model import Sequential
    from bnnlab.experiment import build_model
    from bnnlab.io.scenes import load_preset

    b = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    models = [
        build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10),
        Sequential([QuantConv2D(6, 3, kernel_quantizer="ste_sign", use_bias=False), MaxPool2D(2),
                    BatchNorm(), QuantConv2D(8, 3, padding="same", **b), BatchNorm(), Flatten(),
                    QuantDense(5, **b), BatchNorm()], (10, 10, 1), seed=seed),
        Sequential([QuantDense(16, kernel_quantizer="ste_sign"), BatchNorm(),
                    QuantDense(3, **b), BatchNorm()], (4,), seed=seed),
    ]
    files = [F.encode(fold_model(m, class_names=[str(i) for i in range(m.output_shape[-1])],
                                 metadata={"name": "fuzz"})) for m in models]
    rng = np.random.default_rng(seed)
    files += [F.encode(random_model_file(rng)) for _ in range(12)]
    return files


def mutate(rng: np.random.Generator, good: bytes) -> bytes:
    blob = bytearray(good)
    for _ in range(int(rng.integers(1, 5))):
        if len(blob) < 21:
            break
        op = rng.integers(6)
        # Headers hold the fields that matter most: aim half the edits at the first 160 bytes.
        hi = len(blob) - 4 if rng.random() < 0.5 else min(len(blob) - 4, 160)
        i = int(rng.integers(0, max(hi, 1)))
        if op == 0:
            blob[i] ^= 1 << int(rng.integers(8))
        elif op == 1:
            blob[i] = int(rng.integers(256))
        elif op == 2:
            word = int(rng.choice([0, 1, 2, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000]))
            blob[i:i + 4] = struct.pack("<I", word)[:len(blob) - i]
        elif op == 3:
            blob[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif op == 4:
            del blob[i:i + int(rng.integers(1, 9))]
        else:
            del blob[max(i, 4):-4]
    if len(blob) >= 16 and rng.random() < 0.8:
        blob[12:16] = struct.pack("<I", len(blob))
    if len(blob) >= 4:
        blob[-4:] = struct.pack("<I", zlib.crc32(bytes(blob[:-4])))
    return bytes(blob)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


class Limited:
    """RLIMIT_AS at the current address space plus ``extra`` bytes, for a ``with`` block."""

    def __init__(self, extra: int):
        self.extra = extra

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + self.extra, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.saved)
        return False


def attempt(blob: bytes, raw_for):
    """('rejected' | 'refused' | 'ran', mf, logits, raw) for one file; raises what escapes."""
    try:
        mf = F.decode(blob)
    except F.ModelFileError:
        return "rejected", None, None, None
    try:
        rt = Runtime(mf, file_bytes=len(blob))
    except F.ModelFileError:
        return "refused", mf, None, None
    raw = raw_for(mf)
    return "ran", mf, rt.logits(raw, threads=1), raw


_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
           "MALLOC_TOP_PAD_": "0"}


def main(argv=None) -> int:
    if argv is None and any(os.environ.get(k) != v for k, v in _MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="errors to print in full")
    ap.add_argument("--bound-mb", type=float, default=64,
                    help="the fixed part of the memory bound (a small value shows the check bites)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    bases = base_files(args.seed)
    counts = collections.Counter()
    errors: collections.Counter = collections.Counter()
    shown = 0

    def raw_for(mf):
        return random_inputs(np.random.default_rng(len(mf.blocks)), mf, 2)

    for good in bases:  # load every kernel once, outside the limit
        attempt(good, raw_for)
    t0 = time.perf_counter()
    for n in range(args.files):
        blob = mutate(rng, bases[n % len(bases)])
        bound = int(args.bound_mb * MB) + 4 * len(blob)
        try:
            try:
                with Limited(bound):
                    outcome, mf, logits, raw = attempt(blob, raw_for)
            except MemoryError:
                attempt(blob, raw_for)  # compile or cache whatever the first run needed
                try:
                    with Limited(bound):
                        outcome, mf, logits, raw = attempt(blob, raw_for)
                except MemoryError:
                    counts["over the memory bound"] += 1
                    continue
        except Exception as exc:  # anything but ModelFileError is a finding
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            errors[key] += 1
            counts["other exceptions"] += 1
            if shown < args.show:
                shown += 1
                np.save(f"fuzz-error-{n}.npy", np.frombuffer(blob, np.uint8))
                print(f"file {n}: {key} (saved fuzz-error-{n}.npy)", flush=True)
            continue
        counts[outcome] += 1
        if outcome == "ran":
            want = reference_logits(mf, raw)
            if not np.array_equal(logits, want, equal_nan=True):
                counts["runtime differs from the oracle"] += 1
                if shown < args.show:
                    shown += 1
                    np.save(f"fuzz-differs-{n}.npy", np.frombuffer(blob, np.uint8))
                    print(f"file {n}: the runtime differs from the oracle "
                          f"(saved fuzz-differs-{n}.npy)", flush=True)
        if (n + 1) % 10_000 == 0:
            print(f"{n + 1:,} files, {time.perf_counter() - t0:.0f} s: {dict(counts)}", flush=True)
    elapsed = time.perf_counter() - t0
    print(f"files {args.files:,} from {len(bases)} valid models ({min(map(len, bases)):,}.."
          f"{max(map(len, bases)):,} bytes), {elapsed:.0f} s")
    print(f"  rejected by the reader (ModelFileError): {counts['rejected']:,}")
    print(f"  accepted, refused by the runtime limits (ModelFileError): {counts['refused']:,}")
    print(f"  accepted and run: {counts['ran']:,}; differing from the NumPy oracle: "
          f"{counts['runtime differs from the oracle']:,}")
    print(f"  exceptions other than ModelFileError: {counts['other exceptions']:,}")
    print(f"  over {args.bound_mb:g} MB + 4 x file size of address space: "
          f"{counts['over the memory bound']:,}")
    for key, c in errors.most_common(10):
        print(f"    {c:,} x {key}")
    bad = (counts["other exceptions"] + counts["over the memory bound"]
           + counts["runtime differs from the oracle"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
