"""Compile (or load from Numba's cache) the ``.bnn`` runtime's kernels ahead of use.

The runtime's compiled loops (:mod:`.runtime_kernels`, :mod:`.runtime_chain`) are not
the training engine's, so :func:`bnnlab.core.kernels.prepare_kernels` leaves them alone;
on a cold cache they used to compile when a window first ran a model on the runtime
(seconds). Numba compiles one version per argument type, not per shape, so a few tiny
models whose blocks are of every kind the app folds cover them: the preset networks
``quickstart`` (a one-channel first convolution on pixels, then a chain of binary
blocks), ``binarynet-mlp`` (a dense first layer on pixels), ``bireal-mnist`` (a graph:
real-valued outputs, shortcuts added in float32) and ``toy-spiral`` (float inputs), each
with its initial weights, folded as the app folds a run. Each runs one input through
:meth:`~bnnlab.deploy.runtime.Runtime.logits` (the one-call chain) and block by block as
the Bits panel traces it.

:func:`prepare_runtime_kernels` does it the way
:func:`~bnnlab.core.kernels.prepare_kernels` does (compiling in child processes on a cold
cache). Run as ``python -m bnnlab.deploy.warmup PART PARTS``, this module runs its share.
"""

from __future__ import annotations

import sys

import numpy as np

from ..core.kernels.warmup import child_main, prepare_steps, run_steps

__all__ = ["WARM_UP_PRESETS", "prepare_runtime_kernels", "warm_up_runtime"]

WARM_UP_PRESETS = ("quickstart", "binarynet-mlp", "bireal-mnist", "toy-spiral")


def _runtime(preset: str, _built: dict = {}):  # noqa: B006 - one runtime per process
    """(runtime, one zero input) of ``preset``'s network at its initial weights."""
    got = _built.get(preset)
    if got is None:
        import importlib.resources

        from ..data import dataset_info
        from ..experiment import build_model
        from ..io.scenes import load_scene
        from . import to_model_file
        from .fold import input_spec_for
        from .runtime import Runtime

        # The package's own presets, also when $BNNLAB_SCENES_DIR replaces them.
        with importlib.resources.as_file(
                importlib.resources.files("bnnlab.presets") / f"{preset}.toml") as path:
            scene = load_scene(path)
        info = dataset_info(scene.dataset)
        model = build_model(scene, info.input_shape, len(info.class_names))
        spec = input_spec_for(model.input_shape, scene.input_scale)
        rt = Runtime(to_model_file(model, spec))
        raw = np.zeros((1, *spec.shape), np.uint8 if spec.encoding == "uint8" else np.float32)
        got = _built[preset] = (rt, raw)
    return got


def _logits(preset: str) -> None:
    rt, raw = _runtime(preset)
    rt.logits(raw)


def _blocks(preset: str) -> None:
    rt, raw = _runtime(preset)
    if rt.model_file.nodes:
        rt.node_outputs(raw)
    else:
        rt.trace(raw)


def _steps() -> list:
    # The first step is timed to tell a cold cache from a warm one: a small kernel that
    # compiles in a moment, not the one-call chain (seconds, in this process).
    first = ("toy-spiral", _blocks)
    rest = [(p, f) for p in WARM_UP_PRESETS for f in (_logits, _blocks) if (p, f) != first]
    return [lambda p=p, f=f: f(p) for p, f in [first, *rest]]


def warm_up_runtime(progress=None, part: int = 0, parts: int = 1) -> None:
    """Compile (or load from cache) the runtime's kernels in this process;
    ``progress(i, total)`` after each step; ``part`` of ``parts`` as in
    :func:`bnnlab.core.kernels.warm_up`."""
    run_steps(_steps(), progress, part, parts)


def prepare_runtime_kernels(progress=None, cancelled=None) -> bool:
    """Make the runtime's kernels ready in this process without stalling its other
    threads (on a cold cache they compile in child processes first);
    ``progress(done, total)``. Returns True when the children compiled."""
    _runtime("toy-spiral")  # built before the first step, which is timed
    return prepare_steps(_steps(), __name__, progress, cancelled)


if __name__ == "__main__":
    sys.exit(child_main(_steps(), sys.argv[1:]))
