"""Warnings a training run deserves, as plain text for the window and the terminal."""

from __future__ import annotations

__all__ = ["BN_GAP_POINTS", "batchnorm_gap_warning"]

BN_GAP_POINTS = 3.0  # warn when the two validation figures differ by more than this


def batchnorm_gap_warning(snapshot, threshold_points: float = BN_GAP_POINTS) -> str | None:
    """A sentence explaining why validation with running batch-norm statistics differs from
    validation with batch statistics, or None when they agree (or were not measured).

    ``snapshot`` is a trainer snapshot taken at an epoch's end."""
    run = snapshot.val_accuracy
    batch = snapshot.val_accuracy_batch_stats
    if run is None or batch is None:
        return None
    gap = 100.0 * (batch - run)
    if abs(gap) <= threshold_points:
        return None
    momenta = sorted({float(lc.get("momentum", 0.99)) for lc in snapshot.model_config["layers"]
                      if lc.get("type") == "BatchNorm"})
    m = momenta[-1] if momenta else 0.99
    memory = 1.0 / (1.0 - m) if m < 1 else float("inf")
    head = (f"Validation with the batch norms' running statistics is {100 * run:.1f}%, with "
            f"batch statistics {100 * batch:.1f}% ({gap:+.1f} points).")
    if snapshot.bn_reestimated:
        why = (" The running statistics were re-estimated with the current weights, so the "
               "difference comes from normalizing each validation batch by its own statistics "
               "(small or unusual batches) rather than from stale statistics.")
    else:
        why = (f" The running statistics are moving averages (momentum {m:g}: about the last "
               f"{memory:.0f} batches), so they still describe earlier weights that have since "
               f"changed; after {snapshot.step} steps they have not caught up. Set "
               f"bn_reestimate_batches in the scene to recompute them at each epoch's end, "
               f"lower the momentum, or train longer with a decaying learning rate.")
    return head + why
