"""The training loop as a plain iterator of immutable snapshots.

``for snap in Trainer(...)`` trains and yields a :class:`Snapshot` every
``snapshot_every`` steps and at each epoch's end. The same iterator drives the GUI from
a worker thread: :meth:`Trainer.pause`, :meth:`Trainer.resume`, :meth:`Trainer.step_once`
and :meth:`Trainer.stop` are thread-safe and cooperative (they take effect between
batches). Snapshots hold copies, never live arrays, so a reader on another thread sees a
consistent picture.

At each epoch's end the trainer can re-estimate batch-norm running statistics from
training batches (``bn_reestimate_batches``; off by default, as in Keras), and evaluates
the validation set twice when the model has batch norms: with running statistics (the
figure a deployed model gives) and with batch statistics (what training saw). A large gap
between the two means the running statistics lag behind the weights.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .evaluation import batchnorm_layers, evaluate_batch_stats, reestimate_batchnorm
from .kernels.histogram import histogram_uniform
from .layers import _QuantBase
from .layerstats import LayerStats, flip_ratio, gated_fraction, grad_norm, layer_stats, weights_at_clip
from .model import Sequential, softmax_cross_entropy
from .optimizers import Optimizer, make_optimizer

__all__ = ["DivergenceWatch", "Trainer", "Snapshot", "LayerTelemetry", "History",
           "TrainingDiverged", "LayerStats", "smoothing_steps"]

WEIGHT_BINS = 60
PREACT_RANGE = 3.0
PREACT_BINS = 60


#: A run has diverged when its batch loss stays above this many times its reference loss (the
#: larger of the first batch's loss and chance level, ln(classes)) ...
DIVERGENCE_FACTOR = 10.0
#: ... for this many batches in a row (or a whole epoch, when epochs are shorter), or when a
#: whole epoch's mean loss is above it.
DIVERGENCE_BATCHES = 50


def smoothing_steps(batches_per_epoch: int) -> float:
    """Time constant (in steps) of the smoothed training curves: a quarter epoch, between
    5 and 50 steps, so a point averages several batches but follows the trend."""
    return float(min(50.0, max(5.0, batches_per_epoch / 4)))


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite, or stayed far above where it started (see
    :class:`DivergenceWatch`)."""


class DivergenceWatch:
    """Decides when a run has diverged, beyond NaN and infinity.

    Cross-entropy starts near chance level, ln(classes), and a healthy run brings it down;
    a learning rate far too large throws the weights about and the loss climbs orders of
    magnitude above that and stays there (at learning rate 1e9: about 1e9, at chance
    accuracy). The reference is the larger of the first batch's loss and chance level; the run
    has diverged when the batch loss exceeds ``DIVERGENCE_FACTOR`` times the reference for
    ``DIVERGENCE_BATCHES`` consecutive batches (fewer if an epoch is shorter), or when a whole
    epoch's mean loss exceeds it. A single spike never counts.
    """

    def __init__(self, num_classes: int, batches_per_epoch: int):
        self.chance = math.log(max(int(num_classes), 2))
        self.patience = max(1, min(DIVERGENCE_BATCHES, int(batches_per_epoch)))
        self.reference: float | None = None
        self.streak = 0

    @property
    def limit(self) -> float:
        return DIVERGENCE_FACTOR * (self.reference if self.reference is not None else self.chance)

    def batch(self, loss: float) -> str | None:
        """Record one batch's loss; the reason the run diverged, or None."""
        if self.reference is None:
            self.reference = max(float(loss), self.chance)
        self.streak = self.streak + 1 if loss > self.limit else 0
        if self.streak >= self.patience:
            return (f"the loss stayed above {self.limit:.4g} ({DIVERGENCE_FACTOR:g} times its "
                    f"starting value {self.reference:.4g}) for {self.streak} batches in a row, "
                    f"reaching {loss:.4g}")
        return None

    def epoch(self, mean_loss: float) -> str | None:
        """Record an epoch's mean loss; the reason the run diverged, or None."""
        if self.reference is not None and mean_loss > self.limit:
            return (f"the mean loss of the epoch, {mean_loss:.4g}, is above {self.limit:.4g} "
                    f"({DIVERGENCE_FACTOR:g} times its starting value {self.reference:.4g})")
        return None


def _frozen(a) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class LayerTelemetry:
    """What one quantized layer looked like at a snapshot (all plain copies)."""

    name: str
    type_name: str
    binary_kernel: bool
    weight_counts: np.ndarray  # histogram of latent weights
    weight_edges: np.ndarray
    clip: float | None  # weight_clip bound, or None when clipping is off
    frac_at_clip: float  # fraction of latent weights with |w| >= clip (or >= 1 if no clip)
    weight_abs_max: float
    flip_ratio: float  # fraction of weight signs changed since the previous snapshot
    preact_counts: np.ndarray | None  # histogram of the input quantizer's input
    preact_edges: np.ndarray | None
    gate_window: tuple[float, float] | None
    gated_fraction: float | None  # fraction of input gradients the STE zeroed
    grad_norm: float  # L2 norm of the kernel gradient


@dataclass(frozen=True)
class History:
    """Curves so far: one point per snapshot, and one per finished epoch.

    ``loss`` and ``accuracy`` are the smoothed running values (an exponential moving
    average over training batches, debiased, not restarted at epoch boundaries);
    ``epoch_loss``/``epoch_accuracy`` are each epoch's means. ``val_*_batch_stats`` are
    validation figures with batch statistics (NaN when not measured).
    """

    step: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    epoch: np.ndarray
    epoch_loss: np.ndarray
    epoch_accuracy: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    val_loss_batch_stats: np.ndarray
    val_accuracy_batch_stats: np.ndarray
    flip_ratio: np.ndarray  # (points, quant layers)
    gated_fraction: np.ndarray  # (points, quant layers); NaN where a layer has no STE
    # (points, quant layers): L2 norm of each latent-weight gradient at the point's last
    # batch; NaN without telemetry
    grad_norm: np.ndarray


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of training at one moment."""

    event: str  # "step", "epoch", "done" or "stopped"
    step: int  # batches done in all
    epoch: int  # 1-based epoch being trained (or just finished at "epoch")
    epochs: int
    batch: int  # batches done in this epoch
    batches_per_epoch: int
    loss: float  # running mean over this epoch
    accuracy: float
    val_loss: float | None  # with running batch-norm statistics
    val_accuracy: float | None
    learning_rate: float
    images_per_second: float
    elapsed: float
    layers: tuple[LayerTelemetry, ...]
    history: History
    model_config: dict  # Sequential.config() of the model being trained
    model_state: dict  # read-only copies of every array, for inference views (try-it, filters)
    val_seconds: float = 0.0  # time the validation at this epoch's end took (0 elsewhere)
    smoothed_loss: float = float("nan")  # moving average over batches, across epochs
    smoothed_accuracy: float = float("nan")
    # Validation with batch statistics (None when the model has no batch norm, or between
    # epoch ends); compare with val_accuracy to see whether running statistics lag.
    val_loss_batch_stats: float | None = None
    val_accuracy_batch_stats: float | None = None
    bn_reestimated: bool = False  # running statistics were re-estimated at this epoch's end
    epoch_layers: tuple[LayerStats, ...] = ()  # per quantized layer, at epoch ends only

    @property
    def progress(self) -> float:
        total = self.epochs * self.batches_per_epoch
        return self.step / total if total else 1.0


@dataclass
class _Curves:
    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    epoch: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=list)
    epoch_accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    val_loss_batch_stats: list = field(default_factory=list)
    val_accuracy_batch_stats: list = field(default_factory=list)
    flip_ratio: list = field(default_factory=list)
    gated_fraction: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)

    def freeze(self, n_layers: int) -> History:
        def arr2(rows):
            return _frozen(np.array(rows, dtype=np.float64).reshape(len(rows), n_layers))

        return History(
            step=_frozen(np.array(self.step, np.int64)),
            loss=_frozen(np.array(self.loss, np.float64)),
            accuracy=_frozen(np.array(self.accuracy, np.float64)),
            epoch=_frozen(np.array(self.epoch, np.int64)),
            epoch_loss=_frozen(np.array(self.epoch_loss, np.float64)),
            epoch_accuracy=_frozen(np.array(self.epoch_accuracy, np.float64)),
            val_loss=_frozen(np.array(self.val_loss, np.float64)),
            val_accuracy=_frozen(np.array(self.val_accuracy, np.float64)),
            val_loss_batch_stats=_frozen(np.array(self.val_loss_batch_stats, np.float64)),
            val_accuracy_batch_stats=_frozen(np.array(self.val_accuracy_batch_stats, np.float64)),
            flip_ratio=arr2(self.flip_ratio),
            gated_fraction=arr2(self.gated_fraction),
            grad_norm=arr2(self.grad_norm),
        )


class Trainer:
    """Trains ``model`` on (x, y) with mini-batches; iterate it to run.

    Parameters
    ----------
    model: the :class:`Sequential` to train (updated in place).
    x_train, y_train: float32 inputs (N, ...) and int labels (N,).
    x_val, y_val: optional validation set, evaluated at each epoch's end.
    optimizer: an :class:`Optimizer` or a name (``adam``, ``sgd``, ``bop``).
    seed: seeds shuffling and stochastic binarizers, so a run is repeatable.
    snapshot_every: yield a snapshot every this many steps (and at epoch ends).
    telemetry: compute per-layer histograms at snapshots (off for benchmarks).

    :attr:`snapshot_due`, when set (a callable without arguments), thins the snapshots
    of ordinary steps: one is built and yielded only when it returns True. Epoch ends,
    pauses, single steps and stops always yield. The curves still get a point every
    ``snapshot_every`` steps, with sign flips and gating counted over exactly those
    steps, so skipping a snapshot saves its histograms and copies and loses nothing.
    bn_reestimate_batches: at each epoch's end, recompute batch-norm running statistics
        from this many random training batches with the current weights (0: keep the
        moving averages alone, as Keras does). The batches are drawn from a generator of
        their own, so the weights train exactly as without re-estimation.
    validate_batch_stats: also evaluate the validation set with batch statistics.
    """

    def __init__(self, model: Sequential, x_train, y_train, x_val=None, y_val=None, *,
                 optimizer: Optimizer | str = "adam", epochs: int = 1, batch_size: int = 64,
                 seed: int = 0, snapshot_every: int = 20, telemetry: bool = True,
                 shuffle: bool = True, bn_reestimate_batches: int = 0,
                 validate_batch_stats: bool = True):
        if len(x_train) != len(y_train):
            raise ValueError(f"x_train has {len(x_train)} rows but y_train has {len(y_train)}")
        if len(x_train) == 0:
            raise ValueError("the training set is empty")
        if x_train.shape[1:] != model.input_shape:
            raise ValueError(f"data shape {x_train.shape[1:]} does not match the model's input "
                             f"{model.input_shape}")
        if int(bn_reestimate_batches) < 0:
            raise ValueError("bn_reestimate_batches must be 0 or more")
        if int(epochs) < 1 or int(batch_size) < 1 or int(snapshot_every) < 1:
            raise ValueError("epochs, batch_size and snapshot_every must be positive")
        n_out = model.output_shape[0]
        if int(np.max(y_train)) >= n_out or int(np.min(y_train)) < 0:
            raise ValueError(f"labels must be in [0, {n_out}), got [{np.min(y_train)}, {np.max(y_train)}]")
        self.model = model
        self.x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        self.y_train = np.asarray(y_train, dtype=np.int64)
        self.x_val = None if x_val is None else np.ascontiguousarray(x_val, dtype=np.float32)
        self.y_val = None if y_val is None else np.asarray(y_val, dtype=np.int64)
        self.optimizer = make_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.snapshot_every = int(snapshot_every)
        self.telemetry = bool(telemetry)
        self.shuffle = bool(shuffle)
        self.bn_reestimate_batches = int(bn_reestimate_batches)
        has_bn = bool(batchnorm_layers(model))
        self.validate_batch_stats = bool(validate_batch_stats) and has_bn
        self.batches_per_epoch = math.ceil(len(self.x_train) / self.batch_size)
        self._rng = np.random.default_rng(self.seed)
        self._params = [p for _, p in model.params()]
        self._quant = model.quant_layers
        self._prev_signs = [np.signbit(q.kernel.value).copy() for q in self._quant]
        self._epoch_signs = [s.copy() for s in self._prev_signs]
        self._smooth_alpha = 1.0 / smoothing_steps(self.batches_per_epoch)
        self._smooth = [0.0, 0.0, 0.0]  # weighted loss, weighted accuracy, total weight
        self._curves = _Curves()
        self._model_config = model.config()
        self._run = threading.Event()
        self._run.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._step_budget = 0
        self.last_snapshot: Snapshot | None = None
        self.snapshot_due: Callable[[], bool] | None = None

    # -- control (thread-safe)
    def pause(self) -> None:
        with self._lock:
            self._step_budget = 0
            self._run.clear()

    def resume(self) -> None:
        # Single steps still owed are void: a budget left over would pause the run again
        # once it ran out.
        with self._lock:
            self._step_budget = 0
            self._run.set()

    def step_once(self) -> None:
        """While paused, let exactly one more batch run (and yield its snapshot)."""
        with self._lock:
            self._step_budget += 1
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()

    @property
    def paused(self) -> bool:
        return not self._run.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _wait_turn(self) -> bool:
        """Block while paused; True if the next batch may run, False to stop."""
        while True:
            self._run.wait()
            if self._stop.is_set():
                return False
            with self._lock:
                if self._step_budget > 0:
                    self._step_budget -= 1
                    if self._step_budget == 0:
                        self._run.clear()
                    return True
            if self._run.is_set():
                return True

    # -- the loop
    def __iter__(self) -> Iterator[Snapshot]:
        model, opt = self.model, self.optimizer
        n = len(self.x_train)
        total_steps = self.epochs * self.batches_per_epoch
        start = time.perf_counter()
        step = 0
        val_loss = val_acc = None
        window_t, window_images = time.perf_counter(), 0
        ips = 0.0
        watch = DivergenceWatch(model.output_shape[0], self.batches_per_epoch)
        for epoch in range(1, self.epochs + 1):
            order = self._rng.permutation(n) if self.shuffle else np.arange(n)
            loss_sum = correct = seen = 0.0
            for b in range(self.batches_per_epoch):
                if not self._wait_turn():
                    yield self._snapshot("stopped", step, epoch, b, loss_sum, correct, seen,
                                         val_loss, val_acc, ips, start)
                    return
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                xb, yb = self.x_train[idx], self.y_train[idx]
                logits = model.forward(xb, training=True, rng=self._rng)
                loss, dlogits = softmax_cross_entropy(logits, yb)
                why = (f"the loss became {loss}" if not math.isfinite(loss)
                       else watch.batch(loss))
                if why:
                    raise TrainingDiverged(
                        f"{why} at step {step + 1} (epoch {epoch}); lower the learning rate "
                        f"(now {opt.current_lr:g}) or turn weight clipping on")
                model.backward(dlogits)
                opt.step(self._params)
                step += 1
                batch_correct = float(np.sum(logits.argmax(axis=1) == yb))
                loss_sum += loss * len(idx)
                correct += batch_correct
                seen += len(idx)
                self._update_smooth(loss, batch_correct / len(idx))
                window_images += len(idx)
                last = b == self.batches_per_epoch - 1
                why = watch.epoch(loss_sum / seen) if last else None
                if why:
                    raise TrainingDiverged(
                        f"{why} at epoch {epoch}; lower the learning rate (now "
                        f"{opt.current_lr:g}) or turn weight clipping on")
                paused_after = self.paused
                if step % self.snapshot_every == 0 or last or paused_after or self._stop.is_set():
                    due = self.snapshot_due
                    if not (last or paused_after or self._stop.is_set() or due is None or due()):
                        self._append_point(step, self._light_telemetry())
                        continue
                    now = time.perf_counter()
                    if now > window_t:
                        ips = window_images / (now - window_t)
                    window_t, window_images = now, 0
                    # Telemetry first: validation overwrites each layer's last input.
                    layers = self._all_telemetry()
                    val_seconds = 0.0
                    extra = {}
                    if last:
                        extra = self._epoch_end(epoch)
                        val_seconds = extra.pop("seconds")
                        window_t = time.perf_counter()  # validation is not training speed
                        if self.x_val is not None:
                            val_loss, val_acc = extra.pop("val")
                    event = "epoch" if last else "step"
                    if last and epoch == self.epochs:
                        event = "done"
                    yield self._snapshot(event, step, epoch, b + 1, loss_sum, correct, seen,
                                         val_loss, val_acc, ips, start, epoch_end=last,
                                         layers=layers, val_seconds=val_seconds, **extra)
        assert step == total_steps

    def _update_smooth(self, loss: float, acc: float) -> None:
        """Exponential moving average of batch loss and accuracy, debiased by the weight
        accumulated so far (so the first steps are not pulled towards zero)."""
        a = self._smooth_alpha
        sm = self._smooth
        sm[0] = (1 - a) * sm[0] + a * loss
        sm[1] = (1 - a) * sm[1] + a * acc
        sm[2] = (1 - a) * sm[2] + a

    @property
    def _smoothed(self) -> tuple[float, float]:
        w = self._smooth[2]
        return (self._smooth[0] / w, self._smooth[1] / w) if w else (float("nan"), float("nan"))

    def _epoch_end(self, epoch: int) -> dict:
        """Per-layer statistics, optional batch-norm re-estimation and validation; what
        the epoch's snapshot needs. Statistics come first: the passes after them overwrite
        each layer's last input."""
        stats = []
        for i, q in enumerate(self._quant):
            stats.append(layer_stats(q, self._epoch_signs[i]))
            self._epoch_signs[i] = np.signbit(q.kernel.value)
        out = {"epoch_layers": tuple(stats)}
        if self.bn_reestimate_batches:  # part of training: its time is not validation's
            rng = np.random.default_rng([self.seed, epoch, 0x42_4E])
            out["bn_reestimated"] = bool(reestimate_batchnorm(
                self.model, self.x_train, self.bn_reestimate_batches, self.batch_size, rng))
        t0 = time.perf_counter()
        if self.x_val is not None:
            out["val"] = self.model.evaluate(self.x_val, self.y_val)
            if self.validate_batch_stats:
                out["val_loss_batch_stats"], out["val_accuracy_batch_stats"] = evaluate_batch_stats(
                    self.model, self.x_val, self.y_val, self.batch_size)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _snapshot(self, event, step, epoch, batch, loss_sum, correct, seen, val_loss, val_acc,
                  ips, start, epoch_end=False, layers=None, val_seconds=0.0,
                  val_loss_batch_stats=None, val_accuracy_batch_stats=None,
                  bn_reestimated=False, epoch_layers=()) -> Snapshot:
        loss = loss_sum / seen if seen else float("nan")
        acc = correct / seen if seen else float("nan")
        if layers is None:
            layers = self._all_telemetry()
        c = self._curves
        sm_loss, sm_acc = self._smoothed
        if seen:
            self._append_point(step, [(t.flip_ratio, t.gated_fraction, t.grad_norm)
                                      for t in layers])
        if epoch_end:
            c.epoch.append(epoch)
            c.epoch_loss.append(loss)
            c.epoch_accuracy.append(acc)
            c.val_loss.append(np.nan if val_loss is None else val_loss)
            c.val_accuracy.append(np.nan if val_acc is None else val_acc)
            c.val_loss_batch_stats.append(
                np.nan if val_loss_batch_stats is None else val_loss_batch_stats)
            c.val_accuracy_batch_stats.append(
                np.nan if val_accuracy_batch_stats is None else val_accuracy_batch_stats)
        snap = Snapshot(
            event=event, step=step, epoch=epoch, epochs=self.epochs, batch=batch,
            batches_per_epoch=self.batches_per_epoch, loss=loss, accuracy=acc,
            val_loss=val_loss, val_accuracy=val_acc,
            learning_rate=self.optimizer.current_lr, images_per_second=ips,
            elapsed=time.perf_counter() - start, layers=layers,
            history=c.freeze(len(self._quant)),
            model_config=self._model_config,
            model_state={k: _frozen(v) for k, v in self.model.state_dict().items()},
            val_seconds=val_seconds,
            smoothed_loss=sm_loss, smoothed_accuracy=sm_acc,
            val_loss_batch_stats=val_loss_batch_stats,
            val_accuracy_batch_stats=val_accuracy_batch_stats,
            bn_reestimated=bn_reestimated, epoch_layers=tuple(epoch_layers),
        )
        self.last_snapshot = snap
        return snap

    def _append_point(self, step: int, per_layer) -> None:
        """One point of the curves: the smoothed loss and accuracy, and each layer's
        (flip ratio since the previous point, gated fraction, gradient norm) (empty: not
        measured)."""
        c = self._curves
        sm_loss, sm_acc = self._smoothed
        c.step.append(step)
        c.loss.append(sm_loss)
        c.accuracy.append(sm_acc)
        if not per_layer:
            per_layer = [(np.nan, None, np.nan)] * len(self._quant)
        c.flip_ratio.append([f for f, _, _ in per_layer])
        c.gated_fraction.append([np.nan if g is None else g for _, g, _ in per_layer])
        c.grad_norm.append([n for _, _, n in per_layer])

    def _light_telemetry(self) -> list[tuple[float, float | None, float]]:
        """Each layer's (flip ratio since the last point, gated fraction, gradient norm):
        the cheap part of the telemetry, for the curves' points between snapshots."""
        if not self.telemetry:
            return []
        return [(*self._flips_and_gating(i, q), grad_norm(q.kernel.grad))
                for i, q in enumerate(self._quant)]

    def _flips_and_gating(self, i: int, q: _QuantBase) -> tuple[float, float | None]:
        w = q.kernel.value
        flips = flip_ratio(self._prev_signs[i], w)
        self._prev_signs[i] = np.signbit(w)
        return flips, gated_fraction(q.input_quantizer, q.last_input)

    def _all_telemetry(self) -> tuple[LayerTelemetry, ...]:
        if not self.telemetry:
            return ()
        return tuple(self._layer_telemetry(i, q) for i, q in enumerate(self._quant))

    def _layer_telemetry(self, i: int, q: _QuantBase) -> LayerTelemetry:
        w = q.kernel.value
        clip = q.kernel.clip
        amax = float(np.max(np.abs(w))) if w.size else 0.0
        r = max(1.25, amax * 1.05)
        counts, edges = histogram_uniform(w, -r, r, WEIGHT_BINS)
        at_clip = weights_at_clip(w, clip)
        flips, gated = self._flips_and_gating(i, q)
        pc = pe = window = None
        iq = q.input_quantizer
        if iq is not None and q.last_input is not None:
            pc, pe = histogram_uniform(q.last_input, -PREACT_RANGE, PREACT_RANGE, PREACT_BINS)
            window = iq.gate_window()
        g = q.kernel.grad
        return LayerTelemetry(
            name=q.name, type_name=q.type_name, binary_kernel=q.kernel_binary,
            weight_counts=_frozen(counts), weight_edges=_frozen(edges), clip=clip,
            frac_at_clip=at_clip, weight_abs_max=amax, flip_ratio=flips,
            preact_counts=None if pc is None else _frozen(pc),
            preact_edges=None if pe is None else _frozen(pe),
            gate_window=window, gated_fraction=gated,
            grad_norm=grad_norm(g),
        )

    def run(self) -> Snapshot:
        """Train to the end and return the last snapshot."""
        last = None
        for last in self:
            pass
        return last
