"""Training settings that follow the data: batch size, epochs, patience and learning rate.

Every one of ``train.batch_size``, ``train.epochs``, ``train.patience`` and
``train.learning_rate`` is a value or ``auto`` (the default). An explicit value always wins;
``auto`` is chosen here from the training rows each worker holds, so the defaults suit a
1,000-row export as well as a million generated rows (measurements: docs/training.md).

- **batch size** (the global batch, split evenly between workers): the largest power of two
  that still gives an epoch at least :data:`MIN_STEPS` steps, between :data:`MIN_BATCH` and
  :data:`MAX_BATCH`; never more rows than the smallest worker's share. It is chosen from all
  training rows, so N workers run the same global batch and steps as one.
- **epochs**: an epoch has at least :data:`MIN_EPOCH_STEPS` steps: a set too small for that
  (a few dozen rows) is cycled within the epoch, each pass freshly shuffled, so early
  stopping judges progress over enough updates. Then enough epochs for at least
  :data:`TARGET_STEPS` optimizer steps, between
  :data:`MIN_EPOCHS` and :data:`MAX_EPOCHS`, and more than 10 only while the whole run stays
  under :data:`MAX_EXTRA_SAMPLES` training samples: small sets get the passes they need,
  sets of 20,000 rows or more keep the 10 epochs they always had. Early stopping on
  validation loss (with the best epoch's weights restored) decides when to stop: this is a
  ceiling.
- **patience**: an eighth of the epochs, between 3 and 10 (small validation sets are noisy).
- **learning rate**: Adam's 0.001 for batches up to :data:`MAX_BATCH`; above that (an explicit
  large batch) it grows with the square root of the batch (the square-root scaling rule for
  adaptive optimizers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

from ..config import AUTO
from ..errors import DataError, UsageError

MIN_STEPS = 50
MIN_BATCH = 32
MAX_BATCH = 1024
TARGET_STEPS = 1000
MIN_EPOCH_STEPS = 25
MIN_EPOCHS = 10
MAX_EPOCHS = 100
MAX_EXTRA_SAMPLES = 200_000
BASE_LEARNING_RATE = 1e-3


@dataclass
class Settings:
    """The settings a training run uses, and why (``why`` maps each name to its reason)."""
    global_batch: int
    per_worker_batch: int
    steps_per_epoch: int
    epochs: int
    patience: int
    learning_rate: float
    why: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"batch_size": self.global_batch, "per_worker_batch": self.per_worker_batch,
                "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
                "patience": self.patience, "learning_rate": self.learning_rate,
                "why": dict(self.why)}

    def describe(self) -> str:
        """One line for the training log."""
        return "; ".join(f"{name} {value} ({self.why[name]})" for name, value in (
            ("batch_size", self.global_batch), ("epochs", self.epochs),
            ("patience", self.patience), ("learning_rate", f"{self.learning_rate:g}")))


def _power_of_two_at_most(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(x)))) if x >= 1 else 1


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def resolve(batch_size: Union[int, str], epochs: Union[int, str], patience: Union[int, str],
            learning_rate: Union[float, str], shard_rows: Sequence[int],
            replicas_per_worker: int = 1) -> Settings:
    """Settings for workers holding ``shard_rows`` training rows each (one entry per
    worker; the driver counts as one), each with ``replicas_per_worker`` devices (GPUs) that
    split its batch. Raises UsageError when an explicit batch cannot give every worker one
    full step, DataError when a worker has no rows."""
    workers = len(shard_rows)
    total, smallest = int(sum(shard_rows)), int(min(shard_rows))
    if smallest < 1:
        raise DataError(f"a training worker has no training rows ({list(shard_rows)} rows per "
                         f"worker): lower train.workers or add data")
    rows = _plural(total, "training row")
    on = "" if workers == 1 else f" on {workers} workers"
    why: dict[str, str] = {}
    replicas = max(1, int(replicas_per_worker))
    if batch_size == AUTO:
        target = _power_of_two_at_most(total / MIN_STEPS)
        global_batch = min(max(target, MIN_BATCH), MAX_BATCH)
        per_worker = min(max(1, global_batch // workers), smallest)
        per_worker = max(replicas, per_worker // replicas * replicas)   # whole per device
        global_batch = per_worker * workers
        steps = smallest // per_worker
        why["batch_size"] = f"auto: {rows}{on}, {_plural(steps, 'step')} per pass"
    else:
        per_worker = int(batch_size) // workers
        if per_worker < 1:
            raise UsageError(f"train.batch_size {batch_size} is smaller than the {workers} "
                             f"workers")
        if per_worker % replicas:
            raise UsageError(f"train.batch_size {batch_size} gives each worker {per_worker} rows, "
                             f"which its {replicas} devices cannot share evenly: use a multiple "
                             f"of {workers * replicas}")
        global_batch = per_worker * workers
        steps = smallest // per_worker
        if steps < 1:
            raise UsageError(f"{smallest} training rows per worker are fewer than one batch of "
                             f"{per_worker}: lower train.batch_size or train.workers (or leave "
                             f"train.batch_size at auto)")
        why["batch_size"] = "set"
    if epochs == AUTO:
        passes = math.ceil(MIN_EPOCH_STEPS / steps) if steps < MIN_EPOCH_STEPS else 1
        steps *= passes
        wanted = min(max(math.ceil(TARGET_STEPS / steps), MIN_EPOCHS), MAX_EPOCHS)
        affordable = max(MIN_EPOCHS, MAX_EXTRA_SAMPLES // max(total, 1))
        n_epochs = min(wanted, affordable)
        cycled = f" ({passes} passes over the rows each)" if passes > 1 else ""
        why["epochs"] = (f"auto: at most {n_epochs} of {steps} steps{cycled}; early stopping "
                         f"decides" if n_epochs > MIN_EPOCHS or cycled else
                         f"auto: at most {n_epochs}; early stopping decides")
    else:
        n_epochs = int(epochs)
        why["epochs"] = "set"
    if patience == AUTO:
        n_patience = min(max(n_epochs // 8, 3), 10)
        why["patience"] = "auto: epochs / 8, between 3 and 10"
    else:
        n_patience = int(patience)
        why["patience"] = "set"
    if learning_rate == AUTO:
        lr = BASE_LEARNING_RATE
        why["learning_rate"] = f"auto: Adam's {BASE_LEARNING_RATE:g}"
        if global_batch > MAX_BATCH:
            lr = BASE_LEARNING_RATE * math.sqrt(global_batch / MAX_BATCH)
            why["learning_rate"] = (f"auto: {BASE_LEARNING_RATE:g} x sqrt({global_batch} / "
                                    f"{MAX_BATCH}), the square-root rule for Adam")
    else:
        lr = float(learning_rate)
        why["learning_rate"] = "set"
    return Settings(global_batch, per_worker, steps, n_epochs, n_patience, round(lr, 8), why)
