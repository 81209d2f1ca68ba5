"""Score stage: apply a registered Keras model to a table through an iterator pandas UDF.

Performance rules, measured in ``bench/score_incidents.py``:
- the model is loaded once per Python worker (:class:`ModelCache`), never per batch;
- the UDF returns one scalar double column per class, not an array (arrays cost ~4x);
- the predicted label, confidence and lineage columns are computed by Spark, outside the UDF;
- Arrow batches are large (``score.arrow_batch_rows``) so per-batch overhead stays small.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from . import tables
from .config import Config
from .workloads import incidents

BATCH_COL = "batch_id"


class ModelCache:
    """One loaded model per (model URI, tracking URI) per Python worker process.

    Spark reuses Python workers between tasks (``spark.python.worker.reuse``), so the
    load cost (TensorFlow import, artifact download) is paid once per worker.
    """
    _models: dict = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, model_uri: str, tracking_uri: str, registry_uri: str, n_features: int,
            threads: int):
        key = (model_uri, tracking_uri, registry_uri)
        with cls._lock:
            if key not in cls._models:
                cls._models[key] = cls._load(model_uri, tracking_uri, registry_uri, n_features,
                                             threads)
            return cls._models[key]

    @staticmethod
    def _load(model_uri, tracking_uri, registry_uri, n_features, threads):
        from .tf_runtime import configure_tensorflow
        # Spark runs one Python worker per task slot: more TF threads only oversubscribe.
        tf = configure_tensorflow(threads, threads)
        import mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        model = mlflow.tensorflow.load_model(model_uri)

        @tf.function(input_signature=[tf.TensorSpec((None, n_features), tf.float32)])
        @tf.autograph.experimental.do_not_convert
        def forward(x):
            return model(x, training=False)
        return lambda x: forward(x).numpy()


@dataclass
class ResolvedModel:
    uri: str            # a pinned URI: the same version on every worker
    name: str
    version: str
    features: list[str]
    labels: list[str]


def resolve_model(cfg: Config, model_uri: Optional[str]) -> ResolvedModel:
    """Pin ``models:/name@alias`` to its version on the driver, and read the model's
    feature and label vocabulary from its MLflow metadata."""
    from mlflow import MlflowClient
    from mlflow.models import get_model_info
    from .tracking import setup_mlflow
    setup_mlflow(cfg)
    uri = model_uri or f"models:/{cfg.registry.incident_model}@{cfg.registry.champion_alias}"
    name, version = uri, ""
    m = re.fullmatch(r"models:/([^/@]+)@(.+)", uri)
    if m:
        name = m.group(1)
        version = str(MlflowClient().get_model_version_by_alias(name, m.group(2)).version)
        uri = f"models:/{name}/{version}"
    else:
        m = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
        if m:
            name, version = m.group(1), m.group(2)
    meta = get_model_info(uri).metadata or {}
    features = meta.get("features", incidents.FEATURES)
    labels = meta.get("labels", incidents.LABELS)
    return ResolvedModel(uri, name, version, list(features), list(labels))


def probability_columns(labels: Sequence[str]) -> list[str]:
    return [f"probability_{label}" for label in labels]


def predict_udf(model: ResolvedModel, tracking_uri: str, registry_uri: str, threads: int = 1):
    """An iterator pandas UDF: struct of feature columns -> struct of probability doubles."""
    from pyspark.sql.functions import pandas_udf
    names = probability_columns(model.labels)
    # float32 crosses Arrow at half the bytes of double; Spark widens it in the JVM.
    schema = ", ".join(f"`{n}` float" for n in names)
    uri, n_features = model.uri, len(model.features)

    @pandas_udf(schema)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        forward = ModelCache.get(uri, tracking_uri, registry_uri, n_features, threads)
        for pdf in batches:
            x = pdf.to_numpy(dtype=np.float32)
            p = forward(x)
            yield pd.DataFrame({n: p[:, i] for i, n in enumerate(names)}, copy=False)
    return predict


def input_problems(features: Sequence[str], id_col: str):
    """A Spark column: why a row cannot be scored (null when it can)."""
    from pyspark.sql import functions as F
    checks = [F.when(F.col(id_col).isNull(), F.lit(f"missing {id_col}"))]
    for c in features:
        checks.append(F.when(F.col(c).isNull(), F.lit(f"missing {c}"))
                      .when(~F.coalesce(F.expr(f"try_cast(`{c}` AS double)").isin(0.0, 1.0),
                                        F.lit(False)),
                            F.concat(F.lit(f"{c} must be 0 or 1, got "), F.col(c).cast("string"))))
    reason = F.concat_ws("; ", *checks)
    return F.when(reason != "", reason)


def predict_columns(df, model: ResolvedModel, tracking_uri: str, registry_uri: str,
                    threads: int = 1):
    """``df`` + probability columns + ``predicted_label`` + ``confidence`` (pure transform)."""
    from pyspark.sql import functions as F
    udf = predict_udf(model, tracking_uri, registry_uri, threads)
    names = probability_columns(model.labels)
    # 0/1 signals travel to Python as int8 (validated upstream): the narrowest Arrow input.
    out = df.withColumn("_p", udf(F.struct(*[F.col(c).cast("tinyint") for c in model.features])))
    out = out.select("*", *[F.col(f"_p.`{n}`").cast("double").alias(n) for n in names]).drop("_p")
    confidence = F.greatest(*[F.col(n) for n in names])
    predicted = F.lit(None).cast("string")
    for label, n in reversed(list(zip(model.labels, names))):  # first max wins, as argmax
        predicted = F.when(F.col(n) == confidence, F.lit(label)).otherwise(predicted)
    return out.withColumn("confidence", confidence).withColumn("predicted_label", predicted)


@dataclass
class ScoreResult:
    input_rows: int
    scored_rows: int
    quarantined_rows: int
    table: str
    quarantine_table: str
    daily_view: str
    model_uri: str
    batch_ids: list[str]

    def summary(self) -> dict:
        return dict(self.__dict__)


def _default_batch(table: str) -> str:
    return "s" + hashlib.sha1(table.encode()).hexdigest()[:15]


def score_incidents(spark, cfg: Config, table: str, output: str,
                    model_uri: Optional[str] = None, batch_id: Optional[str] = None) -> ScoreResult:
    """Score ``table`` into ``output`` (+ ``output_quarantine``, + ``output_daily`` view).

    Each output batch is the input row's ``ingest_batch_id`` (or ``batch_id`` when given,
    or one id derived from the input table's name); re-scoring replaces those batches.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from .ingest import BATCH_COL as INGEST_BATCH, ReconciliationError

    src = spark.table(table)
    model = resolve_model(cfg, model_uri)
    tracking_uri = cfg.mlflow.tracking_uri
    registry_uri = cfg.mlflow.registry_uri or tracking_uri
    missing = [c for c in [incidents.ID, *model.features] if c not in src.columns]
    if missing:
        raise ValueError(f"table {table} lacks the model's input columns {missing}")
    if batch_id:
        batch = F.lit(batch_id)
    elif INGEST_BATCH in src.columns:
        batch = F.coalesce(F.col(INGEST_BATCH), F.lit(_default_batch(table)))
    else:
        batch = F.lit(_default_batch(table))
    df = src.withColumn("_batch", batch).withColumn("_reason", input_problems(model.features, incidents.ID))
    batch_ids = sorted(r[0] for r in df.select("_batch").distinct().collect())

    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.score.arrow_batch_rows))
    try:
        good_in = df.where(F.col("_reason").isNull())
        scored = predict_columns(good_in, model, tracking_uri, registry_uri,
                                 cfg.score.worker_threads)
        names = probability_columns(model.labels)
        finite = F.lit(True)
        for n in names:
            finite = finite & ~F.isnan(F.col(n)) & F.col(n).isNotNull()
        scored = scored.withColumn("_reason", F.when(~finite, F.lit(
            "the model returned non-finite probabilities"))).persist(StorageLevel.MEMORY_AND_DISK)
        now = F.current_timestamp()
        lineage = [F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version")]
        out = scored.where(F.col("_reason").isNull()).select(
            F.col(incidents.ID), F.col("predicted_label").alias("predicted_root_cause"),
            "confidence", *names, *lineage, now.alias("scored_at"), F.col("_batch").alias(BATCH_COL))
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in src.columns]))
        bad = (df.where(F.col("_reason").isNotNull())
               .unionByName(scored.where(F.col("_reason").isNotNull()).select(*df.columns))
               .select(F.col(incidents.ID), raw.alias("raw_record"), F.col("_reason").alias("reason"),
                       *lineage, now.alias("quarantined_at"), F.col("_batch").alias(BATCH_COL)))
        qtable = tables.quarantine_name(output)
        tables.write_batches(spark, out, output, BATCH_COL, batch_ids, cfg.tables.format)
        tables.write_batches(spark, bad, qtable, BATCH_COL, batch_ids, cfg.tables.format)
        scored.unpersist()
    finally:
        if previous is not None:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)

    daily = f"{output}_daily"
    tables.create_view(spark, daily,
                       f"SELECT to_date(scored_at) AS day, predicted_root_cause, "
                       f"COUNT(*) AS incidents, AVG(confidence) AS avg_confidence "
                       f"FROM {output} GROUP BY to_date(scored_at), predicted_root_cause")
    in_batches = F.col(BATCH_COL).isin(*batch_ids)
    input_rows = df.count()
    scored_rows = spark.table(output).where(in_batches).count()
    quarantined = spark.table(qtable).where(in_batches).count()
    if scored_rows + quarantined != input_rows:
        raise ReconciliationError(f"{input_rows} input rows but {scored_rows} scored and "
                                  f"{quarantined} quarantined")
    return ScoreResult(input_rows, scored_rows, quarantined, output, qtable, daily, model.uri,
                       batch_ids)
