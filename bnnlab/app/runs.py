"""Runs: one training of a frozen scene (or one opened model), its state and its results.

A run's state is a :class:`RunState`; the session moves it along as its job reports and
as the person presses Start, Pause, Stop. A full-precision twin is a run of its own that
names the run it is the twin of (:attr:`Run.twin_of`), so views compare a run with its own
twin and nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..io.scenes import Scene
from .describe import describe_scene

__all__ = ["RUN_COLORS", "Focus", "Probe", "Run", "RunState", "RunView"]

# Run colours: far apart in hue and lightness, none close to the red used for clip bounds.
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
              "#7f7f7f", "#bcbd22", "#393b79"]


class RunState(enum.Enum):
    """Where a run is. The value is what the window shows."""

    LOADING_DATA = "loading data"
    BUILDING_MODEL = "building model"
    COMPILING = "compiling kernels"
    TRAINING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    ERROR = "error"
    OPENED = "opened"  # a model opened from a file: nothing trains it

    @property
    def live(self) -> bool:
        """True while a thread works on the run."""
        return self not in (RunState.STOPPED, RunState.FINISHED, RunState.ERROR, RunState.OPENED)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RunView:
    """What the views draw of a run: plain, immutable data."""

    number: int
    title: str
    color: str
    visible: bool
    selected: bool
    state: RunState
    snapshot: Any  # trainer.Snapshot or None
    full_precision: bool = False
    twin_of: int | None = None
    opened: Any = None  # models.OpenedModel of a run opened from a file
    evaluation: Any = None  # models.Evaluation, the latest one
    input_scale: str = "unit"  # how the run's scene scales images ("unit" or "symmetric")
    batch_size: int = 64  # the run's scene's training batch size
    seed: int = 0  # the run's scene's seed (its initial weights)


@dataclass(eq=False)
class Run:
    """One training run: its frozen scene, its colour, and the latest snapshot."""

    number: int
    scene: Scene
    color: str
    label: str = ""
    visible: bool = True
    state: RunState = RunState.LOADING_DATA
    snapshot: Any = None  # trainer.Snapshot
    prepared: Any = None  # experiment.Prepared
    model_config: dict | None = None
    fp_config: dict | None = None
    error: str = ""
    twin_of: int | None = None  # number of the run this one is the full-precision twin of
    parameters: int | None = None  # of the model, counted as the summary counts them
    opened: Any = None  # models.OpenedModel: the run is a model opened from a file
    evaluation: Any = None  # models.Evaluation of the run's model, the latest one
    saved: bool = False  # written to a workspace file since it last changed

    @property
    def title(self) -> str:
        return f"#{self.number} {self.label}"

    @property
    def full_precision(self) -> bool:
        if self.opened is not None:
            return not self.opened.is_binary
        return describe_scene(self.scene)["precision"] == "full precision"

    def view(self, selected: bool) -> RunView:
        return RunView(self.number, self.title, self.color, self.visible, selected, self.state,
                       self.snapshot, self.full_precision, self.twin_of, self.opened,
                       self.evaluation, self.scene.input_scale, self.scene.batch_size,
                       self.scene.seed)


@dataclass(frozen=True, eq=False)
class Probe:
    """The input Try it shows (a drawing or a test image), for panels that explain it.

    ``x`` is one dataset input, (H, W, C) in [0, 1] for images; ``label`` says what it is.
    """

    x: Any
    label: str


@dataclass(frozen=True)
class Focus:
    """What the panels show at one moment: every run (for overlays), the selected run with
    its data and model, and that run's own full-precision twin."""

    runs: tuple[RunView, ...] = ()
    run: RunView | None = None
    twin: RunView | None = None
    prepared: Any = None  # experiment.Prepared of the selected run (None before it loads)
    model_config: dict | None = None  # the selected run's model, else the scene's
    fp_config: dict | None = None
    results: tuple[dict, ...] = ()  # results.result_rows of every run
    evaluating: bool = False  # an evaluation is running
    comparison: Any = None  # seeds.Comparison, the newest comparison over seeds
    probe: Probe | None = None  # Try it's current input
    runtime_ready: bool = True  # the .bnn runtime's kernels are compiled (or loaded)
    runtime_progress: tuple[int, int] = (0, 0)  # (done, total) while they compile
    engine_ready: bool = True  # the training engine's kernels are
    engine_progress: tuple[int, int] = (0, 0)
    evaluation_waits_on: str = ""  # "runtime" or "engine": an evaluation waits for its kernels
    version: int = 0

    def kernels_wait(self, computes_on: str) -> str:
        """"" when a model computed on ``computes_on`` ("runtime": a ``.bnn`` file's packed
        integers, "engine") can run now; else what it waits for: the kernels the start-up
        warm-up still compiles, and how far it is. Running it meanwhile would compile them
        a second time, in this process, for seconds."""
        if computes_on == "runtime":
            ready, (done, total), what = (self.runtime_ready, self.runtime_progress,
                                          "the packed runtime's kernels")
        else:
            ready, (done, total), what = (self.engine_ready, self.engine_progress,
                                          "the engine's kernels")
        if ready:
            return ""
        count = f" ({done} of {total} steps done)" if total else ""
        return f"Waiting for {what} to compile{count}"
