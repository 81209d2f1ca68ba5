"""Train stage: a table of incidents -> MLflow run + registered model (+ champion alias)."""
from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import warnings

from . import tracking
from .config import Config
from .models import build_mlp
from .tf_runtime import configure_tensorflow, make_strategy
from .training import evaluate as ev
from .training import feed
from .workloads import incidents


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


def train_incidents(spark, cfg: Config, table: str) -> dict:
    """Train the root-cause MLP on the labelled rows of ``table``; log, register, gate."""
    tcfg = cfg.train
    tf = configure_tensorflow(cfg.tensorflow.intra_op_threads, cfg.tensorflow.inter_op_threads)
    mlflow = tracking.setup_mlflow(cfg)
    tracking.use_experiment(cfg, incidents.NAME)
    model_name = cfg.registry.incident_model
    features, labels = incidents.FEATURES, incidents.LABELS

    cache_root = str(Path(tcfg.cache_dir) / f"{incidents.NAME}-{uuid.uuid4().hex[:12]}")
    _progress(f"writing the training cache for {table} to {cache_root}")
    try:
        cache = feed.write_cache(spark.table(table), cache_root, features, incidents.LABEL,
                                 labels, incidents.ID, tcfg.split.train, tcfg.split.validation,
                                 tcfg.split.seed)
        if min(cache.rows.values()) == 0:
            raise ValueError(f"table {table} has too few labelled rows to split: {cache.rows}")
        _progress(f"rows per split: {cache.rows}")
        return _fit_log_register(cfg, tf, mlflow, cache, table, model_name, features, labels)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


def _fit_log_register(cfg, tf, mlflow, cache, table, model_name, features, labels) -> dict:
    import keras
    tcfg = cfg.train
    strategy = make_strategy(tcfg.strategy)
    with strategy.scope():
        model = build_mlp(len(features), len(labels), tcfg.hidden_units, tcfg.learning_rate,
                          tcfg.seed)
    keras.config.disable_interactive_logging()   # no progress bars: we print our own lines
    train_ds = feed.make_dataset(cache.files("train"), features, tcfg.batch_size,
                                 cache.rows["train"], tcfg.shuffle_buffer, tcfg.seed)
    val_ds = feed.make_dataset(cache.files("validation"), features, tcfg.batch_size,
                               cache.rows["validation"])

    def test_batches():
        return feed.iter_batches(cache.files("test"), features, 8192)

    params = {"table": table, "epochs": tcfg.epochs, "batch_size": tcfg.batch_size,
              "hidden_units": json.dumps(tcfg.hidden_units), "learning_rate": tcfg.learning_rate,
              "patience": tcfg.patience, "strategy": tcfg.strategy,
              "replicas": strategy.num_replicas_in_sync, "split_seed": tcfg.split.seed,
              "split": json.dumps([tcfg.split.train, tcfg.split.validation, tcfg.split.test]),
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

        test, cm = ev.evaluate_model(model, test_batches(), labels)
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if k != "rows"})
        mlflow.log_dict({"labels": list(labels), "matrix": cm.tolist(),
                         "axis": "rows are true labels, columns are predictions"},
                        "evaluation/confusion_matrix.json")
        mlflow.log_figure(ev.plot_confusion(cm, labels), "evaluation/confusion_matrix.png")
        mlflow.log_figure(ev.plot_history(history.history), "evaluation/training_curves.png")
        mlflow.log_dict({"labels": list(labels), "features": list(features)}, "label_vocabulary.json")

        x_example, _ = next(feed.iter_batches(cache.files("test"), features, 5))
        with warnings.catch_warnings():  # MLflow predicts on the example with a bare array
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            info = mlflow.tensorflow.log_model(
                model, name="model",
                signature=tracking.tensor_signature(len(features), len(labels)),
                input_example=x_example[:5], registered_model_name=model_name,
                metadata={"workload": incidents.NAME, "features": list(features),
                          "labels": list(labels), "test_macro_f1": test["macro_f1"]})
        version = str(info.registered_model_version)
        _progress(f"registered {model_name} version {version}: test accuracy "
                  f"{test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}")

        def champion_f1(champion_model) -> float:
            return ev.evaluate_model(champion_model, test_batches(), labels)[0]["macro_f1"]
        decision = tracking.champion_gate(cfg, model_name, version, test["macro_f1"], champion_f1)
        mlflow.set_tags({"champion_decision": decision.reason,
                         "became_champion": str(decision.became_champion).lower()})
        if decision.previous_macro_f1 is not None:
            mlflow.log_metric("champion_test_macro_f1", decision.previous_macro_f1)
        _progress(decision.reason)

    return {"run_id": run.info.run_id, "model_name": model_name, "model_version": version,
            "became_champion": decision.became_champion, "champion_reason": decision.reason,
            "epochs_run": epochs_run, "rows": cache.rows,
            "test_metrics": {k: round(v, 6) if isinstance(v, float) else v
                             for k, v in test.items()},
            "test_confusion_matrix": cm.tolist()}
