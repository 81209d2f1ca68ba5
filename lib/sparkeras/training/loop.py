"""The strategy-aware training loop: one code path for the driver (MirroredStrategy over
its GPUs, or the CPU) and for N Spark barrier workers (MultiWorkerMirroredStrategy).

Keras builds and compiles the model; this loop drives it, because Keras 3 ``model.fit``
fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). Per step every
replica computes its loss scaled by the *global* batch (``tf.nn.compute_average_loss``) and
the strategy sums gradients across replicas. Every worker runs exactly ``steps_per_epoch``
steps per epoch, so collectives never wait for a worker that ran out of data.

Validation runs on each worker's copy of the (small) validation split with identical
weights; the resulting loss is all-reduced so every worker takes the same early-stopping
decision. After every epoch the chief writes a checkpoint (model and optimizer state,
history, early-stopping state) to ``checkpoint_dir``; a new attempt resumes from it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

STATE = "state.json"
LATEST = "latest.npz"
BEST = "best.npz"


@dataclass
class LoopSettings:
    epochs: int
    steps_per_epoch: int
    global_batch: int
    patience: int
    checkpoint_dir: Optional[str] = None
    is_chief: bool = True
    task: str = "classification"        # classification (cross-entropy) | regression (MSE)


@dataclass
class LoopResult:
    history: dict = field(default_factory=dict)
    epochs_run: int = 0
    resumed_from_epoch: int = 0         # epochs already done when this attempt started
    best_epoch: int = 0
    train_seconds: float = 0.0


# ------------------------------------------------------------------------- checkpoints
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _arrays(model) -> list[np.ndarray]:
    weights = [np.asarray(w) for w in model.get_weights()]
    return weights + [np.asarray(v) for v in model.optimizer.variables]


def _save_arrays(path: Path, model) -> None:
    arrays = _arrays(model)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays, n_weights=len(model.get_weights()))
    _atomic_write(path, write)


def _load_arrays(path: Path, model, optimizer_too: bool = True) -> None:
    with np.load(path) as data:
        n = int(data["n_weights"])
        arrays = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
    model.set_weights(arrays[:n])
    if optimizer_too:
        model.optimizer.build(model.trainable_variables)
        for var, value in zip(model.optimizer.variables, arrays[n:]):
            var.assign(value)


METRIC = {"classification": "accuracy", "regression": "mae"}


def epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """The progress line of a finished epoch (0-based ``epoch``)."""
    name, short = ("accuracy", "acc") if "accuracy" in logs else ("mae", "mae")
    line = (f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} {short} {logs[name]:.4f} "
            f"val_loss {logs['val_loss']:.4f} val_{short} {logs['val_' + name]:.4f}")
    return line + (f" ({logs['seconds']:.1f}s)" if "seconds" in logs else "")


def read_state(checkpoint_dir: Optional[str]) -> Optional[dict]:
    """The last completed epoch's state, or None when there is no checkpoint."""
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / STATE
    return json.loads(path.read_text()) if path.is_file() else None


# -------------------------------------------------------------------------------- loop
def train(strategy, model, make_dataset: Callable, val_batches: Callable[[], Iterator],
          settings: LoopSettings, on_epoch_end: Optional[Callable[[int, dict], None]] = None,
          before_epoch: Optional[Callable[[int], None]] = None) -> LoopResult:
    """Train ``model`` (built and compiled in ``strategy.scope()``).

    ``make_dataset(input_context, epoch)`` returns this input pipeline's ``tf.data`` of
    (x, y) batches of the per-replica batch size, at least ``steps_per_epoch`` of them;
    ``val_batches()`` yields the validation split as numpy (x, y) batches. x is a dict of
    the model's named inputs. Classification minimises cross-entropy and reports accuracy;
    regression minimises the mean squared error and reports the mean absolute error.
    """
    import keras
    import tensorflow as tf

    optimizer = model.optimizer
    s = settings
    regression = s.task == "regression"
    metric = METRIC[s.task]
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    ckpt = Path(s.checkpoint_dir) if s.checkpoint_dir else None
    keys = ("loss", metric, "val_loss", "val_" + metric)
    result = LoopResult(history={k: [] for k in keys})
    best_loss, wait, start = float("inf"), 0, 0
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    state = read_state(s.checkpoint_dir)
    if state is not None:
        with strategy.scope():
            _load_arrays(ckpt / LATEST, model)
        start = result.resumed_from_epoch = state["epochs_done"]
        result.history, best_loss, wait = state["history"], state["best_val_loss"], state["wait"]
        result.best_epoch = state["best_epoch"]
        if state.get("stopped"):
            start = s.epochs                       # early stopping had already ended it

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            out = model(x if len(x) > 1 else next(iter(x.values())), training=True)
            if regression:
                error = tf.cast(out[:, 0], tf.float32) - tf.cast(y, tf.float32)
                per_example = tf.square(error)
            else:
                per_example = cross_entropy(y, out)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=s.global_batch)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if regression:         # summed absolute errors: the mean absolute error, over steps
            return loss, tf.reduce_sum(tf.abs(error))
        predicted = tf.argmax(out, axis=1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y, tf.int32)), tf.float32))
        return loss, correct

    @tf.function
    def train_steps(iterator, steps):
        loss_sum = tf.constant(0.0)
        metric_sum = tf.constant(0.0)
        for _ in tf.range(steps):
            x, y = next(iterator)
            loss, metric_part = strategy.run(replica_step, args=(x, y))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            metric_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, metric_part, axis=None)
        return loss_sum, metric_sum

    @tf.function
    def predict(x):
        return model(x if len(x) > 1 else next(iter(x.values())), training=False)

    @tf.function
    def agree(value):
        """The mean of ``value`` over all replicas: identical on every worker."""
        per_replica = strategy.run(lambda: tf.identity(value))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    best_weights = None
    t0 = time.time()
    for epoch in range(start, s.epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        started = time.time()
        dist = strategy.distribute_datasets_from_function(
            lambda ctx, e=epoch: make_dataset(ctx, e))
        loss_sum, metric_sum = train_steps(iter(dist), tf.constant(s.steps_per_epoch))
        train_loss = float(loss_sum) / s.steps_per_epoch
        train_metric = float(metric_sum) / (s.steps_per_epoch * s.global_batch)
        val_loss_sum, val_metric_sum, val_n = 0.0, 0.0, 0
        for x, y in val_batches():
            out = predict({k: tf.constant(v) for k, v in x.items()}).numpy()
            if regression:
                error = out[:, 0].astype(np.float64) - y
                val_loss_sum += float(np.square(error).sum())
                val_metric_sum += float(np.abs(error).sum())
            else:
                p = np.clip(out[np.arange(len(y)), y], 1e-7, 1.0)
                val_loss_sum += float(-np.log(p).sum())
                val_metric_sum += int((out.argmax(axis=1) == y).sum())
            val_n += len(y)
        val_loss = float(agree(tf.constant(val_loss_sum / max(val_n, 1), tf.float32)))
        val_metric = float(agree(tf.constant(val_metric_sum / max(val_n, 1), tf.float32)))
        logs = {"loss": train_loss, metric: train_metric, "val_loss": val_loss,
                "val_" + metric: val_metric, "seconds": time.time() - started}
        for k in keys:
            result.history[k].append(logs[k])
        improved = val_loss < best_loss
        if improved:
            best_loss, wait, result.best_epoch = val_loss, 0, epoch + 1
            best_weights = model.get_weights()
        else:
            wait += 1
        stopped = wait >= s.patience
        if ckpt is not None and s.is_chief:
            ckpt.mkdir(parents=True, exist_ok=True)
            if improved:
                _save_arrays(ckpt / BEST, model)
            _save_arrays(ckpt / LATEST, model)
            state = {"epochs_done": epoch + 1, "history": result.history,
                     "best_val_loss": best_loss, "wait": wait, "best_epoch": result.best_epoch,
                     "stopped": stopped}
            text = json.dumps(state)
            _atomic_write(ckpt / STATE, lambda tmp, text=text: Path(tmp).write_text(text))
        if on_epoch_end is not None:
            on_epoch_end(epoch, logs)
        if stopped:
            break
    result.train_seconds = time.time() - t0
    result.epochs_run = len(result.history["loss"])
    # Restore the best epoch's weights (Keras' restore_best_weights): from memory, or from
    # the checkpoint when the best epoch ran before this attempt resumed.
    if best_weights is not None:
        model.set_weights(best_weights)
    elif ckpt is not None and (ckpt / BEST).is_file():
        _load_arrays(ckpt / BEST, model, optimizer_too=False)
    return result


def weights_digest(model) -> str:
    """A short hash of the model's weights: equal on workers that hold equal weights."""
    import hashlib
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]
