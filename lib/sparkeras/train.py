"""Train stage: a table -> MLflow run + registered model (+ champion alias).

One implementation for every workload (:func:`run_training`); a workload contributes a
:class:`TrainingJob`: how its rows become model inputs, its labels, its model builder and
what is logged with the model. :func:`train_incidents` and :func:`train_images` build one.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import tracking
from .config import Config
from .tf_runtime import configure_tensorflow, make_strategy
from .training import evaluate as ev
from .training import feed


def _progress(message: str) -> None:
    print(f"[sparkeras] {message}", file=sys.stderr, flush=True)


def progress_callback(total_epochs: int):
    import keras

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            _progress(f"epoch {epoch + 1}/{total_epochs}: loss {logs.get('loss', 0):.4f} "
                      f"acc {logs.get('accuracy', 0):.4f} val_loss {logs.get('val_loss', 0):.4f} "
                      f"val_acc {logs.get('val_accuracy', 0):.4f} ({time.time() - self._t0:.1f}s)")
    return _Progress()


@dataclass
class TrainingJob:
    """What a workload brings to the shared training stage."""
    workload: str
    table: str
    model_name: str
    labels: list[str]
    data: Any                          # DataFrame: decoder columns, label (int), split
    decoder: Any                       # feed.FeatureDecoder | feed.ImageDecoder
    build_model: Callable[[], Any]     # called inside strategy.scope()
    input_name: str
    params: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    shuffle_buffer: int = 65536
    misclassified_grid: int = 0        # > 0: log a PNG grid of that many test errors


def train_incidents(spark, cfg: Config, table: str) -> dict:
    """Train the root-cause MLP on the labelled rows of ``table``; log, register, gate."""
    from pyspark.sql import functions as F
    from .models import build_mlp
    from .workloads import incidents
    tcfg = cfg.train
    features, labels = incidents.FEATURES, incidents.LABELS
    df = spark.table(table).where(F.col(incidents.LABEL).isin(*labels))
    label_index = F.array_position(F.array(*[F.lit(x) for x in labels]), F.col(incidents.LABEL)) - 1
    data = (feed.assign_split(df, incidents.ID, tcfg.split.train, tcfg.split.validation,
                              tcfg.split.seed)
            .select(*[F.col(c).cast("float").alias(c) for c in features],
                    label_index.cast("int").alias("label"), "split"))
    job = TrainingJob(
        workload=incidents.NAME, table=table, model_name=cfg.registry.incident_model,
        labels=list(labels), data=data, decoder=feed.FeatureDecoder(features),
        build_model=lambda: build_mlp(len(features), len(labels), tcfg.hidden_units,
                                      tcfg.learning_rate, tcfg.seed),
        input_name="features", params={"hidden_units": json.dumps(tcfg.hidden_units)},
        metadata={"features": list(features)}, shuffle_buffer=tcfg.shuffle_buffer)
    return run_training(spark, cfg, job)


def image_vocabulary(df) -> list[str]:
    """Class names of a labelled image table, ordered by the source's class number (then
    name): MNIST's digits stay 0..9, folders sort by name."""
    from pyspark.sql import functions as F
    rows = (df.where(F.col("label").isNotNull()).groupBy("label")
            .agg(F.min("label_index").alias("k")).collect())
    return [r.label for r in sorted(rows, key=lambda r: (r.k if r.k is not None else 1 << 30,
                                                          r.label))]


def image_shape(df, table: str) -> tuple[int, int, int]:
    """The one (height, width, channels) of the images in ``df``; an error if mixed."""
    shapes = [tuple(r) for r in df.select("height", "width", "channels").distinct().collect()]
    if len(shapes) != 1:
        raise ValueError(f"table {table} holds images of sizes {sorted(shapes)}: training needs "
                         f"one size (ingest with one images.size setting)")
    return shapes[0]


def train_images(spark, cfg: Config, table: str) -> dict:
    """Train an image classifier on the labelled rows of ``table``; log, register, gate."""
    from pyspark.sql import functions as F
    from .models import build_image_model, resolve_architecture
    from .workloads import images
    tcfg, icfg = cfg.train, cfg.images
    df = spark.table(table).where(F.col(images.LABEL).isNotNull())
    labels = image_vocabulary(df)
    if len(labels) < 2:
        raise ValueError(f"table {table} has {len(labels)} labelled class(es); training needs 2 "
                         f"or more")
    shape = image_shape(df, table)
    arch = resolve_architecture(icfg.architecture, shape[0], shape[1])
    label_index = F.array_position(F.array(*[F.lit(x) for x in labels]), F.col(images.LABEL)) - 1
    data = feed.assign_split(df.withColumnRenamed("split", "source_split"), images.ID,
                             tcfg.split.train, tcfg.split.validation, tcfg.split.seed,
                             source_split="source_split")
    data = data.select("image", label_index.cast("int").alias("label"), "split")
    decoder = feed.ImageDecoder(shape)
    shuffle = max(1, min(tcfg.shuffle_buffer, (icfg.shuffle_memory_mb << 20) // decoder.row_bytes))
    params = {"architecture": arch, "image_shape": json.dumps(list(shape)),
              "augment": icfg.augment if arch != "classic_cnn" else False}
    if arch == "transfer":
        params.update({"backbone": icfg.backbone, "backbone_weights": icfg.backbone_weights,
                       "freeze_backbone": icfg.freeze_backbone})
    job = TrainingJob(
        workload=images.NAME, table=table, model_name=cfg.registry.image_model, labels=labels,
        data=data, decoder=decoder,
        build_model=lambda: build_image_model(
            shape, len(labels), arch, tcfg.learning_rate, tcfg.seed, icfg.augment,
            icfg.backbone, icfg.backbone_weights, icfg.freeze_backbone),
        input_name="image", params=params,
        metadata={"input_shape": list(shape), "architecture": arch},
        shuffle_buffer=shuffle, misclassified_grid=icfg.misclassified_grid)
    return run_training(spark, cfg, job)


def run_training(spark, cfg: Config, job: TrainingJob) -> dict:
    """Write the training cache, fit, evaluate, log to MLflow, register, gate the champion."""
    configure_tensorflow(cfg.tensorflow.intra_op_threads, cfg.tensorflow.inter_op_threads)
    tracking.setup_mlflow(cfg)
    tracking.use_experiment(cfg, job.workload)
    cache_root = str(Path(cfg.train.cache_dir) / f"{job.workload}-{uuid.uuid4().hex[:12]}")
    _progress(f"writing the training cache for {job.table} to {cache_root}")
    try:
        cache = feed.write_cache(job.data, cache_root)
        if min(cache.rows.values()) == 0:
            raise ValueError(f"table {job.table} has too few labelled rows to split: {cache.rows}")
        _progress(f"rows per split: {cache.rows}")
        return _fit_log_register(cfg, job, cache)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


def _fit_log_register(cfg: Config, job: TrainingJob, cache: feed.Cache) -> dict:
    import keras
    import mlflow
    tcfg = cfg.train
    labels = job.labels
    strategy = make_strategy(tcfg.strategy)
    with strategy.scope():
        model = job.build_model()
    keras.config.disable_interactive_logging()   # no progress bars: we print our own lines
    train_ds = feed.make_dataset(cache.files("train"), job.decoder, tcfg.batch_size,
                                 cache.rows["train"], job.shuffle_buffer, tcfg.seed)
    val_ds = feed.make_dataset(cache.files("validation"), job.decoder, tcfg.batch_size,
                               cache.rows["validation"])

    def test_batches():
        return feed.iter_batches(cache.files("test"), job.decoder, 1024)

    params = {"table": job.table, "epochs": tcfg.epochs, "batch_size": tcfg.batch_size,
              "learning_rate": tcfg.learning_rate, "patience": tcfg.patience,
              "strategy": tcfg.strategy, "replicas": strategy.num_replicas_in_sync,
              "shuffle_buffer": job.shuffle_buffer, "split_seed": tcfg.split.seed,
              "split": json.dumps([tcfg.split.train, tcfg.split.validation, tcfg.split.test]),
              "classes": len(labels), **job.params,
              **{f"rows_{k}": v for k, v in cache.rows.items()}}
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=tcfg.patience,
                                          restore_best_weights=True),
            tracking.epoch_logger(),
            progress_callback(tcfg.epochs),
        ]
        t0 = time.time()
        history = model.fit(train_ds, validation_data=val_ds, epochs=tcfg.epochs,
                            callbacks=callbacks, shuffle=False, verbose=0)
        train_seconds = time.time() - t0
        epochs_run = len(history.history.get("loss", []))
        mlflow.log_metrics({"train_seconds": train_seconds, "epochs_run": epochs_run,
                            "train_samples_per_second":
                                cache.rows["train"] * epochs_run / max(train_seconds, 1e-9)})

        errors: list = []
        test, cm = ev.evaluate_model(model, test_batches(), labels, errors, job.misclassified_grid)
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if k != "rows"})
        mlflow.log_dict({"labels": list(labels), "matrix": cm.tolist(),
                         "axis": "rows are true labels, columns are predictions"},
                        "evaluation/confusion_matrix.json")
        mlflow.log_figure(ev.plot_confusion(cm, labels), "evaluation/confusion_matrix.png")
        mlflow.log_figure(ev.plot_history(history.history), "evaluation/training_curves.png")
        if job.misclassified_grid:
            mlflow.log_figure(ev.plot_misclassified(errors, labels),
                              "evaluation/misclassified.png")
        mlflow.log_dict({"labels": list(labels), **job.metadata}, "label_vocabulary.json")

        x_example, _ = next(feed.iter_batches(cache.files("test"), job.decoder, 3))
        with warnings.catch_warnings():  # MLflow predicts on the example with a bare array
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            info = mlflow.tensorflow.log_model(
                model, name="model",
                signature=tracking.tensor_signature(job.decoder.shape, len(labels),
                                                    job.decoder.dtype, job.input_name),
                input_example=x_example[:3], registered_model_name=job.model_name,
                metadata={"workload": job.workload, "labels": list(labels),
                          "test_macro_f1": test["macro_f1"], **job.metadata})
        version = str(info.registered_model_version)
        _progress(f"registered {job.model_name} version {version}: test accuracy "
                  f"{test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}")

        def champion_f1(champion_model) -> float:
            return ev.evaluate_model(champion_model, test_batches(), labels)[0]["macro_f1"]
        decision = tracking.champion_gate(cfg, job.model_name, version, test["macro_f1"],
                                          champion_f1, {"labels": list(labels), **job.metadata})
        mlflow.set_tags({"champion_decision": decision.reason,
                         "became_champion": str(decision.became_champion).lower()})
        if decision.previous_macro_f1 is not None:
            mlflow.log_metric("champion_test_macro_f1", decision.previous_macro_f1)
        _progress(decision.reason)

    return {"run_id": run.info.run_id, "model_name": job.model_name, "model_version": version,
            "became_champion": decision.became_champion, "champion_reason": decision.reason,
            "epochs_run": epochs_run, "rows": cache.rows, "labels": list(labels),
            "test_metrics": {k: round(v, 6) if isinstance(v, float) else v
                             for k, v in test.items()},
            "test_confusion_matrix": cm.tolist()}
