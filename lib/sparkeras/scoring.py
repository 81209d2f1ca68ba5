"""Score stage: apply a registered Keras model to a table through an iterator pandas UDF.

Performance rules, measured in ``bench/score_incidents.py`` and ``bench/score_images.py``:
- the model is loaded once per Python worker (:class:`ModelCache`), never per batch;
- the UDF returns scalar columns, not arrays (arrays cost ~4x): one probability per class
  for incidents, the top-k class indices and probabilities for images;
- label names, confidence and lineage columns are computed by Spark, outside the UDF;
- Arrow batches are large (``score.arrow_batch_rows``, capped by bytes for images) so the
  per-batch overhead stays small, and the forward pass runs in bounded chunks.

The stage itself (:func:`score_table`) is written once: batch ids, quarantine of rows
that cannot be scored, idempotent writes, the daily view and the reconciliation
``input = scored + quarantined``.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from . import tables
from .config import Config

BATCH_COL = "batch_id"
TOP_K = 3


class ModelCache:
    """One loaded model per (model URI, tracking URI, input spec) per Python worker process.

    Spark reuses Python workers between tasks (``spark.python.worker.reuse``), so the
    load cost (TensorFlow import, artifact download) is paid once per worker.
    """
    _models: dict = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, model_uri: str, tracking_uri: str, registry_uri: str,
            input_shape: Sequence[int], dtype: str, threads: int):
        key = (model_uri, tracking_uri, registry_uri, tuple(input_shape), dtype)
        with cls._lock:
            if key not in cls._models:
                cls._models[key] = cls._load(model_uri, tracking_uri, registry_uri,
                                             tuple(input_shape), dtype, threads)
            return cls._models[key]

    @staticmethod
    def _load(model_uri, tracking_uri, registry_uri, input_shape, dtype, threads):
        from .tf_runtime import configure_tensorflow
        # Spark runs one Python worker per task slot: more TF threads only oversubscribe.
        tf = configure_tensorflow(threads, threads)
        import mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        model = mlflow.tensorflow.load_model(model_uri)

        @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), dtype)])
        @tf.autograph.experimental.do_not_convert
        def forward(x):
            return model(x, training=False)
        return lambda x: forward(x).numpy()


@dataclass
class ResolvedModel:
    uri: str            # a pinned URI: the same version on every worker
    name: str
    version: str
    workload: str
    labels: list[str]
    features: list[str]             # incidents: the input columns, in order
    input_shape: list[int]          # images: [height, width, channels]


def resolve_model(cfg: Config, model_uri: Optional[str], default_name: str) -> ResolvedModel:
    """Pin ``models:/name@alias`` to its version on the driver, and read the model's
    workload, labels and input contract from its MLflow metadata."""
    from mlflow import MlflowClient
    from mlflow.models import get_model_info
    from .tracking import setup_mlflow
    setup_mlflow(cfg)
    uri = model_uri or f"models:/{default_name}@{cfg.registry.champion_alias}"
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
    if "labels" not in meta:
        raise ValueError(f"model {uri} has no sparkeras metadata (labels): it was not "
                         f"trained by sparkeras")
    return ResolvedModel(uri, name, version, meta.get("workload", ""), list(meta["labels"]),
                         list(meta.get("features", [])), list(meta.get("input_shape", [])))


def _check_workload(model: ResolvedModel, workload: str) -> None:
    if model.workload and model.workload != workload:
        raise ValueError(f"model {model.uri} was trained on {model.workload}, not {workload}")


# ----------------------------------------------------------------------------- incidents
def probability_columns(labels: Sequence[str]) -> list[str]:
    return [f"probability_{label}" for label in labels]


def predict_udf(model: ResolvedModel, tracking_uri: str, registry_uri: str, threads: int = 1):
    """An iterator pandas UDF: struct of feature columns -> struct of probability floats."""
    from pyspark.sql.functions import pandas_udf
    names = probability_columns(model.labels)
    # float32 crosses Arrow at half the bytes of double; Spark widens it in the JVM.
    schema = ", ".join(f"`{n}` float" for n in names)
    uri, n_features = model.uri, len(model.features)

    @pandas_udf(schema)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        forward = ModelCache.get(uri, tracking_uri, registry_uri, (n_features,), "float32",
                                 threads)
        for pdf in batches:
            x = pdf.to_numpy(dtype=np.float32)
            p = forward(x)
            yield pd.DataFrame({n: p[:, i] for i, n in enumerate(names)}, copy=False)
    return predict


def input_problems(features: Sequence[str], id_col: str):
    """A Spark column: why an incident row cannot be scored (null when it can)."""
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
    return out.withColumn("confidence", confidence).withColumn("predicted_label", predicted) \
              .withColumn("_reason", F.lit(None).cast("string"))


# -------------------------------------------------------------------------------- images
def predict_chunk_rows(input_shape: Sequence[int], configured: int) -> int:
    """Images per forward pass: ``score.predict_chunk_rows``, capped at ~16 MiB of pixels.

    Small chunks suit one TF thread per worker: the classic CNN on 28x28 scores ~34k
    images/s with 128-image chunks and ~28k with 1024 (bench/score_images.py, 2 cores)."""
    return int(max(1, min(configured, (16 << 20) // int(np.prod(input_shape)))))


def images_to_array(images: pd.Series, heights, widths, channels, shape: Sequence[int]):
    """Model inputs for a batch of image rows: (``uint8[m, *shape]``, positions of those
    rows, reasons per row or None). Raw images already at ``shape`` take a zero-copy path;
    other sizes are resized, encoded images (no height) decoded; failures get a reason."""
    from .workloads import image_formats as fmt_
    n = len(images)
    h, w, c = (int(v) for v in shape)
    size = h * w * c
    lengths = np.fromiter((len(v) if v is not None else -1 for v in images), np.int64, n)
    if heights is None:          # encoded images: every row is decoded
        fast = np.zeros(n, dtype=bool)
    else:
        fast = ((lengths == size) & (heights.to_numpy() == h) & (widths.to_numpy() == w)
                & (channels.to_numpy() == c))
    if fast.all():
        return fmt_.stack_raw(images.tolist(), (h, w, c)), np.arange(n), None
    reasons: list[Optional[str]] = [None] * n
    arrays, positions = [], []
    for i in range(n):
        data = images.iat[i]
        if fast[i]:
            arrays.append(np.frombuffer(data, np.uint8).reshape(h, w, c))
            positions.append(i)
            continue
        src = None
        if heights is not None and not pd.isna(heights.iat[i]):
            src = (int(heights.iat[i]), int(widths.iat[i]), int(channels.iat[i]))
        try:
            arrays.append(fmt_.to_tensor(data, src, h, w, c)[0])
            positions.append(i)
        except fmt_.ImageError as exc:
            reasons[i] = str(exc)
    x = np.stack(arrays) if arrays else np.empty((0, h, w, c), np.uint8)
    return x, np.asarray(positions, dtype=np.int64), reasons


def top_k_columns(k: int) -> list[str]:
    return [f"top_{i}_{part}" for i in range(1, k + 1) for part in ("index", "probability")]


def image_predict_udf(model: ResolvedModel, tracking_uri: str, registry_uri: str,
                      threads: int = 1, with_dims: bool = True, chunk_rows: int = 128):
    """An iterator pandas UDF: (image[, height, width, channels]) -> struct of ``reason``
    and the top-k class indices and probabilities."""
    from pyspark.sql.functions import pandas_udf
    shape = tuple(model.input_shape)
    k = min(TOP_K, len(model.labels))
    cols = top_k_columns(k)
    schema = "reason string, " + ", ".join(
        f"{c} {'int' if c.endswith('index') else 'float'}" for c in cols)
    uri, chunk = model.uri, predict_chunk_rows(shape, chunk_rows)

    @pandas_udf(schema)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        forward = ModelCache.get(uri, tracking_uri, registry_uri, shape, "uint8", threads)
        for pdf in batches:
            dims = (pdf["height"], pdf["width"], pdf["channels"]) if with_dims else (None,) * 3
            x, positions, reasons = images_to_array(pdf["image"], *dims, shape)
            probs = np.concatenate([forward(x[i:i + chunk]) for i in range(0, len(x), chunk)]) \
                if len(x) else np.empty((0, len(model.labels)), np.float32)
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            n = len(pdf)
            out = {"reason": reasons if reasons is not None else [None] * n}
            missing = np.ones(n, bool)       # rows without a prediction get nulls
            missing[positions] = False
            for j in range(k):
                index = np.zeros(n, np.int32)
                prob = np.full(n, np.nan, np.float32)   # NaN crosses Arrow as null
                index[positions] = top[:, j]
                prob[positions] = np.take_along_axis(probs, top[:, j:j + 1], axis=1)[:, 0]
                out[f"top_{j + 1}_index"] = pd.arrays.IntegerArray(index, missing)
                out[f"top_{j + 1}_probability"] = prob
            yield pd.DataFrame(out)
    return predict


def predict_image_columns(df, model: ResolvedModel, tracking_uri: str, registry_uri: str,
                          threads: int = 1, chunk_rows: int = 128):
    """``df`` + ``predicted_label``, ``confidence``, ``top_<i>_label``/``_probability`` and
    ``_reason`` (why a row has no prediction) (pure transform)."""
    from pyspark.sql import functions as F
    with_dims = all(c in df.columns for c in ("height", "width", "channels"))
    udf = image_predict_udf(model, tracking_uri, registry_uri, threads, with_dims, chunk_rows)
    args = [F.col("image")] + ([F.col("height"), F.col("width"), F.col("channels")]
                               if with_dims else [])
    out = df.withColumn("_p", udf(F.struct(*[a.alias(n) for a, n in zip(
        args, ["image", "height", "width", "channels"])])))
    names = F.array(*[F.lit(x) for x in model.labels])
    k = min(TOP_K, len(model.labels))
    tops = []
    for i in range(1, k + 1):
        tops += [F.try_element_at(names, F.col(f"_p.top_{i}_index") + 1).alias(f"top_{i}_label"),
                 F.col(f"_p.top_{i}_probability").cast("double").alias(f"top_{i}_probability")]
    out = out.select("*", F.col("_p.reason").alias("_reason"), *tops).drop("_p")
    return (out.withColumn("predicted_label", F.col("top_1_label"))
               .withColumn("confidence", F.col("top_1_probability")))


# --------------------------------------------------------------------------- the stage
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


def score_table(spark, cfg: Config, table: str, output: str, model: ResolvedModel, id_col: str,
                problems, predict: Callable, output_columns: list, label_col: str,
                count_name: str, batch_id: Optional[str] = None,
                arrow_batch_rows: Optional[int] = None,
                input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score ``table`` into ``output`` (+ ``output_quarantine``, + ``output_daily`` view).

    ``problems`` is a column naming why a row cannot be scored (null if it can);
    ``predict(df)`` adds prediction columns and ``_reason`` (a row the model could not
    score); ``output_columns`` are the scored columns to keep. Each output batch is the
    input row's ``ingest_batch_id`` (or ``batch_id`` when given, or an id derived from the
    input table's name); re-scoring replaces those batches. ``input_batches`` limits the
    input to rows of those ingest batches (a daily job scores only the day's batch).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from .ingest import BATCH_COL as INGEST_BATCH, ReconciliationError
    from .session import temporary_conf

    src = spark.table(table)
    if input_batches:
        if INGEST_BATCH not in src.columns:
            raise ValueError(f"table {table} has no {INGEST_BATCH} column to select batches by")
        src = src.where(F.col(INGEST_BATCH).isin(*input_batches))
    if batch_id:
        batch = F.lit(batch_id)
    elif INGEST_BATCH in src.columns:
        batch = F.coalesce(F.col(INGEST_BATCH), F.lit(_default_batch(table)))
    else:
        batch = F.lit(_default_batch(table))
    df = src.withColumn("_batch", batch).withColumn("_problem", problems)
    batch_ids = sorted(r[0] for r in df.select("_batch").distinct().collect())
    qtable = tables.quarantine_name(output)
    rows = arrow_batch_rows or cfg.score.arrow_batch_rows

    with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": rows}):
        scored = predict(df.where(F.col("_problem").isNull())).persist(StorageLevel.MEMORY_AND_DISK)
        now = F.current_timestamp()
        lineage = [F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version")]
        out = scored.where(F.col("_reason").isNull()).select(
            *output_columns, *lineage, now.alias("scored_at"), F.col("_batch").alias(BATCH_COL))
        keep = [c for c in src.columns if c != "image"]      # never copy image bytes
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in keep]))
        failed = scored.where(F.col("_reason").isNotNull()).select(
            *df.columns[:-1], F.col("_reason").alias("_problem"))
        bad = (df.where(F.col("_problem").isNotNull()).unionByName(failed)
               .select(F.col(id_col), raw.alias("raw_record"), F.col("_problem").alias("reason"),
                       *lineage, now.alias("quarantined_at"), F.col("_batch").alias(BATCH_COL)))
        tables.write_batches(spark, out, output, BATCH_COL, batch_ids, cfg.tables.format)
        tables.write_batches(spark, bad, qtable, BATCH_COL, batch_ids, cfg.tables.format)
        scored.unpersist()

    daily = f"{output}_daily"
    tables.create_view(spark, daily,
                       f"SELECT to_date(scored_at) AS day, {label_col}, COUNT(*) AS {count_name}, "
                       f"AVG(confidence) AS avg_confidence FROM {output} "
                       f"GROUP BY to_date(scored_at), {label_col}")
    in_batches = F.col(BATCH_COL).isin(*batch_ids)
    input_rows = df.count()
    scored_rows = spark.table(output).where(in_batches).count()
    quarantined = spark.table(qtable).where(in_batches).count()
    if scored_rows + quarantined != input_rows:
        raise ReconciliationError(f"{input_rows} input rows but {scored_rows} scored and "
                                  f"{quarantined} quarantined")
    return ScoreResult(input_rows, scored_rows, quarantined, output, qtable, daily, model.uri,
                       batch_ids)


def score_incidents(spark, cfg: Config, table: str, output: str,
                    model_uri: Optional[str] = None, batch_id: Optional[str] = None,
                    input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score incidents: ID, predicted root cause, confidence, one probability per cause."""
    from pyspark.sql import functions as F
    from .workloads import incidents
    src_columns = spark.table(table).columns      # a missing table fails first
    model = resolve_model(cfg, model_uri, cfg.registry.incident_model)
    _check_workload(model, incidents.NAME)
    missing = [c for c in [incidents.ID, *model.features] if c not in src_columns]
    if missing:
        raise ValueError(f"table {table} lacks the model's input columns {missing}")
    tracking_uri = cfg.mlflow.tracking_uri
    registry_uri = cfg.mlflow.registry_uri or tracking_uri
    names = probability_columns(model.labels)

    def predict(df):
        scored = predict_columns(df, model, tracking_uri, registry_uri, cfg.score.worker_threads)
        finite = F.lit(True)
        for n in names:
            finite = finite & ~F.isnan(F.col(n)) & F.col(n).isNotNull()
        return scored.withColumn("_reason", F.when(~finite, F.lit(
            "the model returned non-finite probabilities")))
    columns = [F.col(incidents.ID), F.col("predicted_label").alias("predicted_root_cause"),
               "confidence", *names]
    return score_table(spark, cfg, table, output, model, incidents.ID,
                       input_problems(model.features, incidents.ID), predict, columns,
                       "predicted_root_cause", "incidents", batch_id,
                       input_batches=input_batches)


def score_images(spark, cfg: Config, table: str, output: str, model_uri: Optional[str] = None,
                 batch_id: Optional[str] = None,
                 input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score images: image_id, predicted label, confidence, the top 3 labels with their
    probabilities. The table needs ``image_id`` and ``image`` (raw bytes with ``height``,
    ``width``, ``channels`` as ingested, or encoded JPEG/PNG bytes without them); labels
    are not needed."""
    from pyspark.sql import functions as F
    from .workloads import images
    src_columns = spark.table(table).columns      # a missing table fails first
    model = resolve_model(cfg, model_uri, cfg.registry.image_model)
    _check_workload(model, images.NAME)
    missing = [c for c in (images.ID, "image") if c not in src_columns]
    if missing:
        raise ValueError(f"table {table} lacks the columns {missing} (an image table has "
                         f"image_id and image)")
    tracking_uri = cfg.mlflow.tracking_uri
    registry_uri = cfg.mlflow.registry_uri or tracking_uri
    problems = (F.when(F.col(images.ID).isNull(), F.lit(f"missing {images.ID}"))
                 .when(F.col("image").isNull(), F.lit("missing image")))

    def predict(df):
        scored = predict_image_columns(df, model, tracking_uri, registry_uri,
                                       cfg.score.worker_threads, cfg.score.predict_chunk_rows)
        bad_output = F.isnan(F.col("confidence")) | F.col("confidence").isNull()
        return scored.withColumn("_reason", F.coalesce(F.col("_reason"), F.when(
            bad_output, F.lit("the model returned non-finite probabilities"))))
    k = min(TOP_K, len(model.labels))
    columns = [F.col(images.ID), "predicted_label", "confidence",
               *[c for i in range(1, k + 1) for c in (f"top_{i}_label", f"top_{i}_probability")]]
    rows = images.decode_batch_rows(*model.input_shape, cfg.score.arrow_batch_rows)
    return score_table(spark, cfg, table, output, model, images.ID, problems, predict, columns,
                       "predicted_label", "images", batch_id, rows, input_batches)
