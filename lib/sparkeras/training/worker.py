"""One training worker: build the model from a spec, run the loop, write the result.

Runs in the driver process (``train.workers: 0``, MirroredStrategy) or as a fresh Python
process started by a Spark barrier task (``python -m sparkeras.training.worker SPEC``, with
``TF_CONFIG`` and ``CUDA_VISIBLE_DEVICES`` set by :mod:`sparkeras.training.launcher`). A
fresh process per attempt matters: TensorFlow's collective runtime is configured once per
process, and Spark reuses its Python workers.

The spec is JSON: the model and decoder specs, the cache files, batch sizes, steps, the
checkpoint and output folders, TensorFlow threads and precision, the petastorm converter
when ``train.feed`` is petastorm, and an optional fault to inject (``fault``: kill worker
``rank`` at the start of ``epoch``, once).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import feed, loop, petastorm_feed

FINAL_WEIGHTS = "final.weights.npz"
log = logging.getLogger(__name__)


def configure_devices(tf, precision: str) -> None:
    """Memory growth on every visible GPU; the Keras dtype policy for ``precision``."""
    import keras
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    keras.mixed_precision.set_global_policy(precision)


def run(spec: dict, strategy, rank: int, n_workers: int):
    """Train as worker ``rank`` of ``n_workers`` under ``strategy``; the chief (rank 0)
    writes the final weights. Returns (the worker's result, also written as JSON; model)."""
    import keras
    import tensorflow as tf

    from ..models import build_from_spec

    decoder = feed.decoder_from_spec(spec["decoder"])
    with strategy.scope():
        model = build_from_spec(spec["model"])
    keras.config.disable_interactive_logging()
    per_replica = spec["global_batch"] // strategy.num_replicas_in_sync
    train_files, val_files = spec["train_files"], spec["val_files"]

    readers = contextlib.ExitStack()      # petastorm readers stay open across epochs
    opened: dict = {}

    def make_dataset(ctx, epoch):
        files = feed.shard(train_files, ctx.input_pipeline_id, ctx.num_input_pipelines)
        seed = spec["seed"] + 1000 * epoch + ctx.input_pipeline_id
        batch = ctx.get_per_replica_batch_size(spec["global_batch"])
        # Mirrored on one worker takes one batch per local replica in every step.
        steps = spec["steps_per_epoch"] * (strategy.num_replicas_in_sync // ctx.num_input_pipelines)
        if spec.get("petastorm"):
            key = ctx.input_pipeline_id
            if key not in opened:
                opened[key] = petastorm_feed.open_dataset(
                    spec["petastorm"], decoder, batch, key, ctx.num_input_pipelines,
                    spec["seed"] + key, min(spec["shuffle_buffer"], 100_000), readers)
            return opened[key].take(steps).prefetch(2)

        def gen():
            yield from feed.fixed_steps(files, decoder, batch, steps, spec["shuffle_buffer"], seed)
        return tf.data.Dataset.from_generator(gen, output_signature=(
            {name: tf.TensorSpec((batch, *shape), tf.string if dtype == "string" else dtype)
             for name, (shape, dtype) in decoder.inputs.items()},
            tf.TensorSpec((batch,), decoder.label_dtype))).prefetch(2)

    def val_batches():
        return feed.iter_batches(val_files, decoder, max(per_replica, 256))

    fault = spec.get("fault")

    def before_epoch(epoch: int) -> None:
        if fault and fault["rank"] == rank and fault["epoch"] == epoch:
            marker = Path(fault["marker"])
            if not marker.exists():            # once: the retried attempt must get through
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"worker {rank} killed at the start of epoch {epoch + 1}\n")
                log.warning(f"fault injection: killing worker {rank} at the start of "
                            f"epoch {epoch + 1}")
                os._exit(17)

    def on_epoch_end(epoch: int, logs: dict) -> None:
        if rank == 0:
            log.info(loop.epoch_line(epoch, spec["epochs"], logs))

    settings = loop.LoopSettings(spec["epochs"], spec["steps_per_epoch"], spec["global_batch"],
                                 spec["patience"], spec.get("checkpoint_dir"), rank == 0,
                                 spec.get("task", "classification"))
    with readers:
        result = loop.train(strategy, model, make_dataset, val_batches, settings, on_epoch_end,
                            before_epoch)
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        weights = model.get_weights()
        with open(out / (FINAL_WEIGHTS + ".tmp"), "wb") as f:
            np.savez(f, *weights)
        os.replace(out / (FINAL_WEIGHTS + ".tmp"), out / FINAL_WEIGHTS)
    summary = {"rank": rank, "workers": n_workers, "replicas": strategy.num_replicas_in_sync,
               # the GPUs this worker was given (barrier tasks: Spark's assignment)
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "steps_per_epoch": spec["steps_per_epoch"], "global_batch": spec["global_batch"],
               "history": result.history, "epochs_run": result.epochs_run,
               "resumed_from_epoch": result.resumed_from_epoch, "best_epoch": result.best_epoch,
               "train_seconds": result.train_seconds,
               "weights_digest": loop.weights_digest(model)}
    return summary, model


def load_final_weights(model, output_dir: str) -> None:
    with np.load(Path(output_dir) / FINAL_WEIGHTS) as data:
        model.set_weights([data[f"arr_{i}"] for i in range(len(data.files))])


def main(argv=None) -> int:
    """Entry point of a barrier worker process: ``worker SPEC_JSON RESULT_JSON``;
    ``TF_CONFIG`` names the cluster."""
    argv = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ..logs import setup
    from ..tf_runtime import configure_tensorflow
    setup()
    tf = configure_tensorflow(spec["tensorflow"]["intra_op_threads"],
                              spec["tensorflow"]["inter_op_threads"])
    configure_devices(tf, spec["precision"])
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    n_workers = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    summary, _ = run(spec, strategy, int(task["index"]), n_workers)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
