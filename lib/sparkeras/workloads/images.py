"""The image workload: its part in the three stages (:func:`ingest_job`,
:func:`training_job`, :func:`scoring_job`) and the conversion of images to tensors.

Sources (IDX, CIFAR-10 binary batches, class folders) are read into records by
:mod:`.image_sources`; :func:`to_tensors` then decodes, converts and resizes every payload
to the configured size in a pandas UDF. Records that cannot become an image carry a
``reason`` and end in the quarantine table; nothing is dropped.

Stored image representation (see docs/images.md): raw ``uint8`` HWC bytes at the model's
input size, with ``height``, ``width`` and ``channels`` columns. Decoding happens once,
at ingest, not in every training epoch and every scoring run.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from .. import serving
from ..errors import DataError, UsageError
from . import image_formats as fmt_
from . import image_sources

NAME = "images"
ID = "image_id"
LABEL = "label"
FORMATS = image_sources.FORMATS
TOP_K = 3
TENSOR_SCHEMA = ("image binary, height int, width int, channels int, original_height int, "
                 "original_width int, reason string")


def tensor_udf(height: int, width: int, channels: int):
    """A pandas UDF: (payload, src_height, src_width, src_channels) -> struct of
    :data:`TENSOR_SCHEMA`; a payload that cannot become an image gets a ``reason``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(TENSOR_SCHEMA)
    def convert(payload: pd.Series, h: pd.Series, w: pd.Series, c: pd.Series) -> pd.DataFrame:
        out = {k: [] for k in ("image", "height", "width", "channels", "original_height",
                               "original_width", "reason")}
        for data, sh, sw, sc in zip(payload, h, w, c):
            src = None if pd.isna(sh) else (int(sh), int(sw), int(sc))
            try:
                tensor, oh, ow = fmt_.to_tensor(data, src, height, width, channels)
                values = (tensor.tobytes(), height, width, channels, oh, ow, None)
            except fmt_.ImageError as exc:
                values = (None, None, None, None, None, None, str(exc))
            for k, v in zip(out, values):
                out[k].append(v)
        return pd.DataFrame({
            "image": out["image"], "reason": out["reason"],
            **{k: pd.array(out[k], dtype="Int32") for k in
               ("height", "width", "channels", "original_height", "original_width")},
        })[[c.split()[0] for c in TENSOR_SCHEMA.split(", ")]]
    # never copied by the optimizer under a filter on its outputs (see tabular.predict_udf)
    return convert.asNondeterministic()


def to_tensors(records, height: int, width: int, channels: int):
    """Records -> tensors at ``height x width x channels``; ``reason`` keeps the first
    problem (from reading, else from decoding)."""
    from pyspark.sql import functions as F
    udf = tensor_udf(height, width, channels)
    readable = F.col("reason").isNull()
    t = udf(F.when(readable, F.col("payload")), "src_height", "src_width", "src_channels")
    df = records.withColumn("_t", t)
    return df.select(
        *[c for c in records.columns if c not in ("payload", "src_height", "src_width",
                                                   "src_channels", "reason")],
        F.col("_t.image").alias("image"), F.col("_t.height").alias("height"),
        F.col("_t.width").alias("width"), F.col("_t.channels").alias("channels"),
        F.col("_t.original_height").alias("original_height"),
        F.col("_t.original_width").alias("original_width"),
        F.coalesce(F.col("reason"), F.col("_t.reason")).alias("reason"))


def decode_batch_rows(height: int, width: int, channels: int, configured: int) -> int:
    """Arrow batch rows for image UDFs: the configured count, capped at ~64 MiB of tensors."""
    return max(16, min(configured, (64 << 20) // (height * width * channels)))


# ----------------------------------------------------------------------------- ingest
def ingest_job(cfg, fmt: str, labeled: bool = True, size: Optional[Sequence[int]] = None):
    """The image workload's part in the ingest stage: read ``fmt`` (idx, cifar, folder),
    convert every image to ``size`` (default ``images.size.<fmt>``); every record is a row
    or a quarantine row."""
    from pyspark.sql import functions as F

    from ..columns import index_of
    from ..ingest import KEY, IngestJob
    if fmt not in FORMATS:
        raise UsageError(f"unknown image format {fmt!r}; expected one of {list(FORMATS)}")
    icfg = cfg.images
    height, width, channels = size or getattr(icfg.size, fmt)
    rows = decode_batch_rows(height, width, channels, icfg.decode_batch_rows)

    def read(spark, files):
        records = image_sources.read_raw(spark, files, fmt, icfg.class_names, labeled)
        return to_tensors(records, height, width, channels).withColumn(KEY, F.col(ID))

    def prepare_valid(valid):
        if fmt != "folder":
            return valid
        # class numbers: the sorted class folder names of this batch
        names = sorted(r[0] for r in valid.select(LABEL).distinct().collect() if r[0] is not None)
        return valid.withColumn("label_index", index_of(names, F.col(LABEL)))

    def describe(spark, table, batch_id, files):
        from ..tables import INGEST_BATCH
        labels = {(r[0] if r[0] is not None else "(unlabelled)"): r[1] for r in
                  spark.table(table).where(F.col(INGEST_BATCH) == batch_id)
                  .groupBy(LABEL).count().orderBy(LABEL).collect()}
        return {"input_files": len(files.paths), "format": fmt,
                "image_size": [height, width, channels], "labels": labels}

    return IngestJob(
        workload=NAME, key=ID, read=read, table_format=cfg.tables.format, recursive=True,
        spark_conf={"spark.sql.execution.arrow.maxRecordsPerBatch": rows},
        one_record_per_file=(fmt == "folder"), prepare_valid=prepare_valid, describe=describe,
        valid_columns=[ID, LABEL, "label_index", "split", "source", "height", "width",
                       "channels", "original_height", "original_width", "image"],
        quarantine_columns=[ID, "source", "reason"])


# ----------------------------------------------------------------------------- training
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
        raise DataError(f"table {table} holds images of sizes {sorted(shapes)}: training needs "
                         f"one size (ingest with one images.size setting)")
    return shapes[0]


def training_job(spark, cfg, table: str):
    """The image workload's part in the training stage: a classifier (classic CNN, folder
    CNN or transfer backbone) on the labelled rows of ``table``."""
    import json

    from pyspark.sql import functions as F

    from ..columns import index_of
    from ..models import resolve_architecture
    from ..train import TrainingJob
    from ..training import feed
    tcfg, icfg = cfg.train, cfg.images
    df = spark.table(table).where(F.col(LABEL).isNotNull())
    labels = image_vocabulary(df)
    if len(labels) < 2:
        raise DataError(f"table {table} has {len(labels)} labelled class(es); training needs 2 "
                         f"or more")
    shape = image_shape(df, table)
    arch = resolve_architecture(icfg.architecture, shape[0], shape[1])
    data = feed.assign_split(df.withColumnRenamed("split", "source_split"), ID,
                             tcfg.split.train, tcfg.split.validation, tcfg.split.seed,
                             source_split="source_split")
    data = data.select("image", index_of(labels, F.col(LABEL)).cast("int").alias("label"),
                       "split", feed.BUCKET)
    decoder = feed.ImageDecoder(shape)
    shuffle = max(1, min(tcfg.shuffle_buffer, (icfg.shuffle_memory_mb << 20) // decoder.row_bytes))
    params = {"architecture": arch, "image_shape": json.dumps(list(shape)),
              "augment": icfg.augment if arch != "classic_cnn" else False}
    if arch == "transfer":
        params.update({"backbone": icfg.backbone, "backbone_weights": icfg.backbone_weights,
                       "freeze_backbone": icfg.freeze_backbone})
    return TrainingJob(
        cfg=cfg, workload=NAME, table=table, model_name=cfg.registry.image_model, labels=labels,
        data=data, decoder=decoder,
        model_spec={"kind": "image", "shape": list(shape), "n_classes": len(labels),
                    "architecture": arch, "seed": tcfg.seed, "augment": icfg.augment,
                    "backbone": icfg.backbone, "backbone_weights": icfg.backbone_weights,
                    "freeze_backbone": icfg.freeze_backbone},
        input_name="image", params=params,
        metadata={"input_shape": list(shape), "architecture": arch},
        serving=serving.image_config(shape, labels),
        shuffle_buffer=shuffle, misclassified_grid=icfg.misclassified_grid)


# ------------------------------------------------------------------------------ scoring
def predict_chunk_rows(input_shape: Sequence[int], configured: int) -> int:
    """Images per forward pass: ``score.predict_chunk_rows``, capped at ~16 MiB of pixels.

    Small chunks suit one TF thread per worker: the classic CNN on 28x28 scores ~34k
    images/s with 128-image chunks and ~28k with 1024 (bench/score_images.py, 2 cores)."""
    return int(max(1, min(configured, (16 << 20) // int(np.prod(input_shape)))))


def images_to_array(images: pd.Series, heights, widths, channels, shape: Sequence[int]):
    """Model inputs for a batch of image rows: (``uint8[m, *shape]``, positions of those
    rows, reasons per row or None). Raw images already at ``shape`` take a zero-copy path;
    other sizes are resized, encoded images (no height) decoded; failures get a reason."""
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


def image_predict_udf(model, with_dims: bool = True, chunk_rows: int = 128):
    """An iterator pandas UDF: (image[, height, width, channels]) -> struct of ``reason``
    and the top-k class indices and probabilities."""
    from pyspark.sql.functions import pandas_udf

    from ..scoring import FirstPrediction, WarmStart
    shape = tuple(model.input_shape)
    k = min(TOP_K, len(model.labels))
    cols = top_k_columns(k)
    schema = "reason string, " + ", ".join(
        f"{c} {'int' if c.endswith('index') else 'float'}" for c in cols)
    chunk = predict_chunk_rows(shape, chunk_rows)

    def scored(pdf: pd.DataFrame, forward) -> pd.DataFrame:
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
        return pd.DataFrame(out)

    @pandas_udf(schema)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        engine = None
        for pdf in batches:
            if engine is None:
                timer = FirstPrediction()
                engine = WarmStart(model, {"image": (shape, "uint8")})
            # The numpy pass scores a batch in growing slices, each yielded at once (an
            # iterator UDF may split its output: only the total row count must match), so
            # the first predictions leave before the batch is done; TensorFlow's pass
            # scores the rest of the batch in one go.
            start, piece = 0, chunk
            while start < len(pdf):
                stop = len(pdf) if engine.ready else min(len(pdf), start + piece)
                yield scored(pdf.iloc[start:stop], engine.forward)
                timer.predicted()
                start, piece = stop, min(2 * piece, 8 * chunk)
    # never copied by the optimizer under a filter on its outputs (see tabular.predict_udf)
    return predict.asNondeterministic()


def predict_image_columns(df, model, chunk_rows: int = 128):
    """``df`` + ``predicted_label``, ``confidence``, ``top_<i>_label``/``_probability`` and
    ``_reason`` (why a row has no prediction) (pure transform)."""
    from pyspark.sql import functions as F
    with_dims = all(c in df.columns for c in ("height", "width", "channels"))
    udf = image_predict_udf(model, with_dims, chunk_rows)
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
    bad_output = F.isnan(F.col("top_1_probability")) | F.col("top_1_probability").isNull()
    return (out.withColumn("predicted_label", F.col("top_1_label"))
               .withColumn("confidence", F.col("top_1_probability"))
               .withColumn("_reason", F.coalesce(F.col("_reason"), F.when(
                   bad_output, F.lit("the model returned non-finite probabilities")))))


def scoring_job(cfg, model):
    """The image workload's part in the scoring stage: image_id, predicted label,
    confidence, the top 3 labels with their probabilities. The input table needs
    ``image_id`` and ``image`` (raw bytes with ``height``, ``width``, ``channels`` as
    ingested, or encoded JPEG/PNG bytes without them); labels are not needed."""
    from pyspark.sql import functions as F

    from ..scoring import ScoringJob, check_workload
    check_workload(model, NAME)
    k = min(TOP_K, len(model.labels))
    def problems(df):
        return (F.when(F.col(ID).isNull(), F.lit(f"missing {ID}"))
                 .when(F.col("image").isNull(), F.lit("missing image")))
    return ScoringJob(
        workload=NAME, model=model, key=ID, required_columns=[ID, "image"],
        required_hint="the columns", problems=problems,
        predict=lambda df: predict_image_columns(df, model, cfg.score.predict_chunk_rows),
        output_columns=[F.col(ID), "predicted_label", "confidence",
                        *[c for i in range(1, k + 1)
                          for c in (f"top_{i}_label", f"top_{i}_probability")]],
        daily_label="predicted_label", daily_count="images", table_format=cfg.tables.format,
        arrow_batch_rows=decode_batch_rows(*model.input_shape, cfg.score.arrow_batch_rows))
