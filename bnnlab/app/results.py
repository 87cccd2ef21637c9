"""Tables of runs: the results table (one row per run) and the metrics curves (one row per
snapshot or epoch), and writing either as CSV."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence

from ..io.atomic import write_atomic
from .runs import Run

__all__ = ["METRICS_COLUMNS", "RESULT_COLUMNS", "metrics_rows", "result_rows", "seed_result_rows",
           "write_csv"]

# (key, heading) of the results table, in order.
RESULT_COLUMNS = (
    ("run", "run"),
    ("scene", "scene"),
    ("differs", "what differs"),
    ("seed", "seed"),
    ("state", "state"),
    ("epochs", "epochs"),
    ("loss", "loss"),
    ("accuracy", "accuracy"),
    ("val_loss", "val. loss"),
    ("val_accuracy", "val. accuracy"),
    ("seconds", "time (s)"),
    ("parameters", "parameters"),
)

METRICS_COLUMNS = ("run", "label", "kind", "step", "epoch", "loss", "accuracy", "val_loss",
                   "val_accuracy")


def _final(values) -> float | None:
    """The last finite value of a curve, or None."""
    for v in reversed(list(values)):
        v = float(v)
        if not math.isnan(v):
            return v
    return None


def result_rows(runs: Sequence[Run]) -> list[dict]:
    """One dict per run with the keys of :data:`RESULT_COLUMNS` (None where unknown).

    Loss and accuracy are the last finished epoch's training figures; validation is
    that epoch's evaluation on the test set. A model opened from a file has no epochs
    and took no training time: its validation accuracy is that of its latest complete
    evaluation (Evaluate) on its own dataset, if any.
    """
    rows = []
    for run in runs:
        s = run.snapshot
        h = s.history if s is not None else None
        epochs_done = int(h.epoch[-1]) if h is not None and len(h.epoch) else 0
        val_accuracy = _final(h.val_accuracy) if h is not None else None
        seconds = float(s.elapsed) if s is not None else None
        if run.opened is not None:
            seconds = None  # not trained here (the snapshot's time is the opening's)
            ev = run.evaluation
            own = run.opened.dataset or run.scene.dataset
            if val_accuracy is None and ev is not None and ev.complete and ev.dataset == own:
                val_accuracy = float(ev.accuracy)
        rows.append({
            "run": run.number,
            "scene": run.scene.name,
            "differs": run.label if run.number != (runs[0].number if runs else None) else "",
            "seed": run.scene.seed,
            "state": run.state.value,
            "epochs": epochs_done,
            "loss": _final(h.epoch_loss) if h is not None else None,
            "accuracy": _final(h.epoch_accuracy) if h is not None else None,
            "val_loss": _final(h.val_loss) if h is not None else None,
            "val_accuracy": val_accuracy,
            "seconds": seconds,
            "parameters": run.parameters,
        })
    return rows


def seed_result_rows(comparisons: Sequence) -> list[dict]:
    """One dict per finished training of each comparison over seeds
    (:class:`bnnlab.app.seeds.Comparison`), keyed like :func:`result_rows`; its "run" is
    "C<comparison>" and its state "seed run"."""
    rows = []
    for c in comparisons:
        for label in c.labels:
            for r in c.runs.get(label, ()):
                rows.append({
                    "run": f"C{c.number}", "scene": label, "differs": c.differs(label),
                    "seed": r.seed, "state": "seed run", "epochs": r.epochs,
                    "loss": r.loss, "accuracy": r.accuracy,
                    "val_loss": None if math.isnan(r.val_loss) else r.val_loss,
                    "val_accuracy": None if math.isnan(r.val_accuracy) else r.val_accuracy,
                    "seconds": r.seconds, "parameters": r.parameters,
                })
    return rows


def metrics_rows(runs: Sequence[Run]) -> list[list]:
    """Every run's curves: one row per snapshot ("train") and per epoch ("epoch")."""
    rows = []
    for run in runs:
        s = run.snapshot
        if s is None:
            continue
        h, bpe = s.history, s.batches_per_epoch
        for i in range(len(h.step)):
            rows.append([run.number, run.label, "train", int(h.step[i]),
                         round(h.step[i] / bpe, 4), h.loss[i], h.accuracy[i], None, None])
        for i in range(len(h.epoch)):
            rows.append([run.number, run.label, "epoch", int(h.epoch[i]) * bpe, int(h.epoch[i]),
                         h.epoch_loss[i], h.epoch_accuracy[i], h.val_loss[i], h.val_accuracy[i]])
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) or hasattr(v, "dtype"):
        v = float(v)
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a CSV atomically: numbers to 6 significant digits, None and NaN as empty."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    for row in rows:
        w.writerow([_cell(v) for v in row])
    data = text.getvalue().encode("utf-8")
    write_atomic(path, lambda f: f.write(data), suffix=".csv")
