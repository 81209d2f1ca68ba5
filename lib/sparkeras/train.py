"""Train stage: a table -> MLflow run + registered model (+ champion alias).

One implementation for every workload (:func:`train`); a workload contributes a
:class:`TrainingJob` (built once by ``<workload>.training_job(spark, cfg, table)``): how its
rows become model inputs, its labels, its model builder and what is logged with the model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import logs, serving, tracking
from .config import Config
from .errors import DataError
from .tf_runtime import configure_tensorflow, make_strategy
from .training import evaluate as ev
from .training import feed
from .training import settings as settings_

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """What a workload brings to the shared training stage."""
    cfg: Config
    workload: str
    table: str
    model_name: str
    labels: list[str]
    data: Any                          # DataFrame: decoder columns, label (int), split
    decoder: Any                       # feed.TabularDecoder | feed.ImageDecoder
    model_spec: dict                   # models.build_from_spec: built in strategy.scope()
    input_name: str
    params: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    shuffle_buffer: int = 65536
    misclassified_grid: int = 0        # > 0: log a PNG grid of that many test errors
    task: str = "classification"       # classification | regression
    serving: dict = field(default_factory=dict)  # the pyfunc's model_config (serving.py)


def train(spark, job: TrainingJob) -> dict:
    """Write the training cache, fit, evaluate, log to MLflow, register, gate the champion."""
    cfg = job.cfg
    if cfg.train.feed == "petastorm":     # fail before any work when it cannot import
        from .training import petastorm_feed
        petastorm_feed.require(spark)
    cache_root = str(Path(cfg.train.cache_dir) / f"{job.workload}-{uuid.uuid4().hex[:12]}")
    log.info(f"writing the training cache for {job.table} to {cache_root}")
    try:
        # Several files per split, of near-equal rows: each barrier worker reads its share.
        files = max(2, 2 * cfg.train.workers)
        # Spark writes the cache from a thread while this one imports TensorFlow and opens
        # MLflow (in a new process ~4-6 s and ~2 s, otherwise spent before the cache). The
        # import stays on this thread: it holds back TensorFlow's start-up lines on stderr.
        with ThreadPoolExecutor(1, thread_name_prefix="sparkeras-cache") as pool:
            writing = pool.submit(feed.write_cache, job.data, cache_root, files=files)
            configure_tensorflow(cfg.tensorflow.intra_op_threads,
                                 cfg.tensorflow.inter_op_threads)
            tracking.setup_mlflow(cfg)
            tracking.use_experiment(cfg, job.workload)
        cache = writing.result()
        total = sum(cache.rows.values())
        if min(cache.rows.values()) == 0 and total >= 3:
            # A handful of rows: hashing left a split empty; split them by rank instead.
            log.info(f"{total} rows leave a split empty ({cache.rows}): splitting by the rank "
                     f"of their hash bucket, at least one row each")
            data = feed.split_by_rank(job.data, cfg.train.split.train, cfg.train.split.validation)
            cache = feed.write_cache(data, cache_root, files=files)
        if min(cache.rows.values()) == 0:
            raise DataError(f"table {job.table} has too few labelled rows to split: {cache.rows}")
        log.info(f"rows per split: {cache.rows}")
        return _fit_log_register(spark, cfg, job, cache)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


def _spec(spark, cfg: Config, job: TrainingJob,
          cache: feed.Cache) -> tuple[dict, settings_.Settings]:
    """What every training worker needs, as JSON (see training/worker.py), and the
    training settings chosen for this data (see training/settings.py)."""
    tcfg = cfg.train
    train_files = cache.files("train")
    pipelines = max(tcfg.workers, 1)
    if tcfg.feed == "petastorm":
        # The readers run endlessly: each worker's steps are its share of the rows.
        shard_rows = [cache.rows["train"] // pipelines] * pipelines
    else:
        rows = feed.parquet_rows(train_files)
        shard_rows = [sum(rows[i::pipelines]) for i in range(pipelines)]
    chosen = settings_.resolve(tcfg.batch_size, tcfg.epochs, tcfg.patience, tcfg.learning_rate,
                               shard_rows, _replicas_per_worker(spark, cfg))
    petastorm = None
    if tcfg.feed == "petastorm":      # (after the settings: a batch that cannot work fails first)
        from .training import petastorm_feed
        petastorm = petastorm_feed.materialize(spark, cache.root, cache.rows["train"],
                                               job.decoder, pipelines)
    spec = {"model": {**job.model_spec, "learning_rate": chosen.learning_rate},
            "decoder": job.decoder.spec, "train_files": train_files,
            "val_files": cache.files("validation"), "epochs": chosen.epochs,
            "global_batch": chosen.global_batch, "steps_per_epoch": chosen.steps_per_epoch,
            "patience": chosen.patience, "seed": tcfg.seed, "shuffle_buffer": job.shuffle_buffer,
            "output_dir": str(Path(cache.root) / "_output"),
            "tensorflow": {"intra_op_threads": cfg.tensorflow.intra_op_threads,
                           "inter_op_threads": cfg.tensorflow.inter_op_threads},
            "precision": tcfg.precision, "task": job.task, "petastorm": petastorm}
    return spec, chosen


def _run_key(spark, job: TrainingJob, spec: dict, cache: feed.Cache) -> str:
    """The same training of the same data has the same key, so an interrupted command
    (Ctrl-C, a killed driver) resumes from its checkpoints when it runs again: the table's
    files (any write changes them), the split sizes and everything the workers train with
    except paths."""
    stable = {k: v for k, v in spec.items()
              if k not in ("train_files", "val_files", "output_dir", "petastorm")}
    files = sorted(spark.table(job.table).inputFiles())
    text = json.dumps({"workload": job.workload, "table": job.table, "model": job.model_name,
                       "workers": job.cfg.train.workers, "rows": cache.rows, "files": files,
                       "spec": stable}, sort_keys=True, default=str)
    return f"{job.workload}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def _replicas_per_worker(spark, cfg: Config) -> int:
    """Devices that share each worker's batch: the driver's GPUs under MirroredStrategy,
    or the GPUs Spark gives each barrier task (``spark.task.resource.gpu.amount``)."""
    if cfg.train.workers == 0:
        if cfg.train.strategy != "mirrored":
            return 1
        tf = configure_tensorflow(cfg.tensorflow.intra_op_threads, cfg.tensorflow.inter_op_threads)
        return max(1, len(tf.config.list_logical_devices("GPU")))
    try:
        return max(1, int(float(spark.conf.get("spark.task.resource.gpu.amount", "0"))))
    except (ValueError, TypeError):
        return 1


def _fault(checkpoint_dir: str, run_key: str) -> Optional[dict]:
    """Fault injection for drills and tests: ``SPARKERAS_KILL_WORKER=<rank>:<epoch>`` kills
    that worker's process once, at the start of that epoch (1-based)."""
    text = os.environ.get("SPARKERAS_KILL_WORKER")
    if not text:
        return None
    rank, epoch = (int(v) for v in text.split(":"))
    return {"rank": rank, "epoch": epoch - 1,
            "marker": str(Path(checkpoint_dir) / run_key / "fault-injected")}


def _fit(cfg: Config, spec: dict, spark=None):
    """Train on the driver (``train.workers: 0``) or on N barrier workers; return the
    trained model (in this process) and the chief's result."""
    from .models import build_from_spec
    from .training import launcher, worker
    workers = cfg.train.workers
    if workers == 0:
        import keras
        tf = configure_tensorflow(cfg.tensorflow.intra_op_threads, cfg.tensorflow.inter_op_threads)
        previous = keras.mixed_precision.global_policy().name
        worker.configure_devices(tf, cfg.train.precision)
        try:
            strategy = make_strategy(cfg.train.strategy)
            result, model = worker.run(spec, strategy, 0, 1)
        finally:   # the dtype policy is process-wide: leave it as it was
            keras.mixed_precision.set_global_policy(previous)
        return model, {**result, "attempts": 1, "all_workers": [result]}
    results = launcher.run_workers(spark, spec, workers, cfg.train.max_attempts,
                                   cfg.train.slot_wait_seconds)
    model = build_from_spec(spec["model"])
    model.optimizer.build(model.trainable_variables)  # saved with its slots, as on the workers
    worker.load_final_weights(model, spec["output_dir"])
    return model, {**results[0], "all_workers": results}


def _fit_log_register(spark, cfg: Config, job: TrainingJob, cache: feed.Cache) -> dict:
    import keras
    import mlflow
    tcfg = cfg.train
    labels = job.labels
    classification = job.task == "classification"
    gate = tracking.MACRO_F1 if classification else tracking.RMSE
    keras.config.disable_interactive_logging()   # no progress bars: we print our own lines

    def test_batches():
        return feed.iter_batches(cache.files("test"), job.decoder, 1024)

    spec, chosen = _spec(spark, cfg, job, cache)
    run_key = _run_key(spark, job, spec, cache)    # (before the run-key paths join the spec)
    spec["checkpoint_dir"] = str(Path(tcfg.checkpoint_dir) / run_key)
    spec["fault"] = _fault(tcfg.checkpoint_dir, run_key)
    from .training.loop import read_state
    if read_state(spec["checkpoint_dir"]) is not None:
        log.info(f"an interrupted run of this training was found ({spec['checkpoint_dir']}): "
                 f"it resumes after its last completed epoch")
    log.info(chosen.describe())
    params = {"table": job.table, "epochs": chosen.epochs, "batch_size": chosen.global_batch,
              "learning_rate": chosen.learning_rate, "patience": chosen.patience,
              "auto_settings": ",".join(sorted(k for k, v in chosen.why.items()
                                               if v.startswith("auto"))) or "none",
              "strategy": tcfg.strategy if tcfg.workers == 0 else "multi_worker_mirrored",
              "workers": tcfg.workers, "precision": tcfg.precision, "feed": tcfg.feed,
              "shuffle_buffer": job.shuffle_buffer, "split_seed": tcfg.split.seed,
              "split": json.dumps([tcfg.split.train, tcfg.split.validation, tcfg.split.test]),
              "classes": len(labels), "task": job.task, **job.params,
              **{f"rows_{k}": v for k, v in cache.rows.items()}}
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        model, fit = _fit(cfg, spec, spark)
        history = fit["history"]
        for i in range(len(history["loss"])):
            mlflow.log_metrics({k: v[i] for k, v in history.items()}, step=i + 1)
        epochs_run = fit["epochs_run"]
        steps = fit["steps_per_epoch"]
        mlflow.log_params({"replicas": fit["replicas"], "steps_per_epoch": steps,
                           "global_batch": fit["global_batch"]})
        trained_epochs = epochs_run - fit["resumed_from_epoch"]
        mlflow.log_metrics({"train_seconds": fit["train_seconds"], "epochs_run": epochs_run,
                            "attempts": fit["attempts"],
                            "resumed_from_epoch": fit["resumed_from_epoch"],
                            "train_samples_per_second": steps * fit["global_batch"] * trained_epochs
                            / max(fit["train_seconds"], 1e-9)})

        test, cm = _evaluate_and_plot(job, model, test_batches, history)
        x_example, _ = next(feed.iter_batches(cache.files("test"), job.decoder, 3))
        with warnings.catch_warnings(), logs.python_stderr_to_log():
            # MLflow predicts on the example, and prints its own "Successfully registered"
            # lines: ours below say the same.
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            info = serving.log_model(
                model, job.serving, serving.input_example(job.serving, x_example),
                job.model_name,
                metadata={"workload": job.workload, "labels": list(labels),
                          f"test_{gate.key}": test[gate.key], **job.metadata})
        version = str(info.registered_model_version)
        said = (f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}"
                if classification else
                f"test RMSE {test['rmse']:.4g}, MAE {test['mae']:.4g}, R^2 {test['r2']:.4f}")
        log.info(f"registered {job.model_name} version {version}: {said}")

        def champion_score(champion_model) -> float:
            return _test_metrics(job, champion_model, test_batches())[gate.key]
        decision = tracking.champion_gate(cfg, job.model_name, version, test[gate.key],
                                          champion_score, {"labels": list(labels),
                                                           **job.metadata}, gate)
        mlflow.set_tags({"champion_decision": decision.reason,
                         "became_champion": str(decision.became_champion).lower()})
        if decision.previous_score is not None:
            mlflow.log_metric(f"champion_test_{gate.key}", decision.previous_score)
        log.info(decision.reason)
        # trained, logged and registered: nothing left to resume
        shutil.rmtree(spec["checkpoint_dir"], ignore_errors=True)
        from .mlflow_servers import where_to_look
        log.info(where_to_look(cfg, run.info.experiment_id, run.info.run_id))

    out = {"run_id": run.info.run_id, "model_name": job.model_name, "model_version": version,
           "became_champion": decision.became_champion, "champion_reason": decision.reason,
           "epochs_run": epochs_run, "workers": tcfg.workers, "attempts": fit["attempts"],
           "resumed_from_epoch": fit["resumed_from_epoch"],
           "weights_digests": [w["weights_digest"] for w in fit["all_workers"]],
           "worker_gpus": [w["cuda_visible_devices"] for w in fit["all_workers"]],
           "rows": cache.rows, "labels": list(labels), "task": job.task,
           "settings": chosen.summary(),
           "test_metrics": {k: round(v, 6) if isinstance(v, float) else v
                            for k, v in test.items()}}
    if classification:
        out["test_confusion_matrix"] = cm.tolist()
    return out


def _test_metrics(job: TrainingJob, model, batches) -> dict:
    """The test metrics of ``model`` for the job's task (the champion gate's too)."""
    if job.task == "regression":
        return ev.evaluate_regression(model, batches)[0]
    return ev.evaluate_model(model, batches, job.labels)[0]


def _evaluate_and_plot(job: TrainingJob, model, test_batches, history: dict):
    """Evaluate on the test split and log metrics and plots to the active run: (metrics,
    confusion matrix or None)."""
    import mlflow
    labels = job.labels
    if job.task == "regression":
        test, y, pred = ev.evaluate_regression(model, test_batches())
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if k != "rows"})
        target = json.loads(job.metadata["schema"])["target"]["column"]
        ev.log_figure(ev.plot_predicted_vs_actual(y, pred, target),
                      "evaluation/predicted_vs_actual.png")
        ev.log_figure(ev.plot_residuals(y, pred, target), "evaluation/residuals.png")
        ev.log_figure(ev.plot_history(history), "evaluation/training_curves.png")
        mlflow.log_dict(job.metadata, "model_inputs.json")
        return test, None
    errors: list = []
    test, cm = ev.evaluate_model(model, test_batches(), labels, errors, job.misclassified_grid)
    mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if k != "rows"})
    mlflow.log_dict({"labels": list(labels), "matrix": cm.tolist(),
                     "axis": "rows are true labels, columns are predictions"},
                    "evaluation/confusion_matrix.json")
    ev.log_figure(ev.plot_confusion(cm, labels), "evaluation/confusion_matrix.png")
    ev.log_figure(ev.plot_history(history), "evaluation/training_curves.png")
    if job.misclassified_grid:
        ev.log_figure(ev.plot_misclassified(errors, labels), "evaluation/misclassified.png")
    mlflow.log_dict({"labels": list(labels), **job.metadata}, "label_vocabulary.json")
    return test, cm


def train_incidents(spark, cfg: Config, table: str) -> dict:
    """Train the root-cause MLP on the labelled rows of ``table``; log, register, gate."""
    from .workloads import incidents
    return train(spark, incidents.training_job(spark, cfg, table))


def train_images(spark, cfg: Config, table: str) -> dict:
    """Train an image classifier on the labelled rows of ``table``; log, register, gate."""
    from .workloads import images
    return train(spark, images.training_job(spark, cfg, table))


def train_tabular(spark, cfg: Config, schema, table: str) -> dict:
    """Train a model for ``schema`` (classification or regression) on the rows of ``table``
    whose target is known; log, register, gate."""
    from .workloads import tabular
    return train(spark, tabular.training_job(spark, cfg, schema, table))
