"""The incident workload: schema, synthetic generator, validation, and its part in the
three stages (:func:`ingest_job`, :func:`training_job`, :func:`scoring_job`).

One row per data-centre incident: seven 0/1 signals and, when diagnosed, a root cause.
Everything here is a pure DataFrame transform, except :func:`read_raw` (reads files) and
:func:`generate` (builds a DataFrame from ``spark.range``); the stages do the writing.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from ..errors import UsageError

NAME = "incidents"
ID = "ID"
LABEL = "ROOT_CAUSE"
FEATURES = ["CPU_LOAD", "MEMORY_LEAK_LOAD", "DELAY",
            "ERROR_1000", "ERROR_1001", "ERROR_1002", "ERROR_1003"]
LABELS = ["MEMORY_LEAK", "NETWORK_DELAY", "DATABASE_ISSUE"]
COLUMNS = [ID] + FEATURES + [LABEL]
REQUIRED = [ID] + FEATURES            # ROOT_CAUSE may be absent: not yet diagnosed
FORMATS = ("csv", "parquet", "json")
INT32_MAX = 2**31 - 1

# ----------------------------------------------------------------------------- generator
# The synthetic rule: the root cause is drawn uniformly, then each signal fires
# independently with the probability below for that cause (a naive-Bayes world).
# Signals overlap between causes on purpose, so some patterns are ambiguous and no model
# can be perfect; `bayes_accuracy()` computes the best achievable accuracy exactly.
SIGNAL_PROBABILITY = {
    #                CPU   MEM   DELAY E1000 E1001 E1002 E1003
    "MEMORY_LEAK":    [0.55, 0.85, 0.20, 0.65, 0.15, 0.20, 0.10],
    "NETWORK_DELAY":  [0.20, 0.10, 0.85, 0.15, 0.70, 0.40, 0.15],
    "DATABASE_ISSUE": [0.65, 0.20, 0.35, 0.20, 0.15, 0.60, 0.80],
}


def pattern_likelihoods() -> tuple[np.ndarray, np.ndarray]:
    """All 128 signal patterns and P(pattern | cause) for each cause: (128x7, 128x3)."""
    patterns = np.array(list(itertools.product([0, 1], repeat=len(FEATURES))), dtype=np.int8)
    probs = np.array([SIGNAL_PROBABILITY[c] for c in LABELS])          # 3 x 7
    like = np.prod(np.where(patterns[:, None, :] == 1, probs[None], 1 - probs[None]), axis=2)
    return patterns, like


def bayes_accuracy() -> float:
    """Best accuracy any classifier can reach on generated data (uniform prior)."""
    _, like = pattern_likelihoods()
    return float(like.max(axis=1).sum() / len(LABELS))


def _uniform(id_col, seed: int, stream: int):
    """A deterministic U[0,1) per (row id, seed, stream), independent of partitioning."""
    from pyspark.sql import functions as F
    h = F.xxhash64(id_col, F.lit(seed), F.lit(stream))
    return (h.bitwiseAND(F.lit(0x7FFFFFFFFFFFFFFF)) / F.lit(float(2**63)))


def generate(spark, rows: int, seed: int = 7, labeled: bool = True, partitions: Optional[int] = None):
    """``rows`` synthetic incidents with IDs 1..rows; same seed, same rows, on any cluster."""
    from pyspark.sql import functions as F
    partitions = partitions or max(2, rows // 1_000_000)
    df = spark.range(1, rows + 1, numPartitions=partitions).withColumnRenamed("id", ID)
    cause = F.floor(_uniform(F.col(ID), seed, 0) * len(LABELS)).cast("int")
    df = df.withColumn("_cause", cause)
    cols = [F.col(ID).cast("int").alias(ID)]
    for k, feature in enumerate(FEATURES):
        p = F.when(F.col("_cause") == 0, SIGNAL_PROBABILITY[LABELS[0]][k])
        for i in range(1, len(LABELS)):
            p = p.when(F.col("_cause") == i, SIGNAL_PROBABILITY[LABELS[i]][k])
        cols.append(F.when(_uniform(F.col(ID), seed, k + 1) < p, 1).otherwise(0).alias(feature))
    if labeled:
        cols.append(F.element_at(F.array(*[F.lit(c) for c in LABELS]), F.col("_cause") + 1).alias(LABEL))
    return df.select(*cols)


def write_generated(spark, rows: int, out: str, fmt: str = "csv", seed: int = 7,
                    labeled: bool = True) -> dict:
    """Write :func:`generate`'s incidents to the folder ``out`` as csv (with a header) or
    parquet part files; return a summary."""
    writer = generate(spark, rows, seed, labeled=labeled).write.mode("overwrite")
    if fmt == "csv":
        writer.option("header", True).csv(out)
    elif fmt == "parquet":
        writer.parquet(out)
    else:
        raise UsageError(f"unknown format {fmt!r}; expected csv or parquet")
    return {"rows": rows, "out": out, "format": fmt, "seed": seed, "labeled": labeled}


# -------------------------------------------------------------------------------- reading
def read_raw(spark, files, fmt: str):
    """Every record of the source behind ``files`` (a :class:`~sparkeras.sources.SourceFiles`)
    as strings + ``raw``, ``source_file``, ``_parse_error`` (see :mod:`sparkeras.readers`)."""
    from .. import readers
    if fmt not in FORMATS:
        raise UsageError(f"unknown incident format {fmt!r}; expected one of {list(FORMATS)}")
    return readers.read(spark, files, fmt, COLUMNS, REQUIRED, ID)


# ----------------------------------------------------------------------------- validation
def _quoted(c):
    from pyspark.sql import functions as F
    return F.concat(F.lit("'"), c, F.lit("'"))


def validate(raw):
    """Add ``reason`` (null for a valid row) and the typed key ``_key`` to :func:`read_raw`
    output.

    Reasons, joined with "; " when a row has several: missing/empty field, ID not a 32-bit
    integer, flag not exactly 0 or 1, unknown root cause, duplicate ID within the input.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def empty(c):
        return F.when(F.col(c).isNull(), F.lit(f"missing field {c}")) \
                .when(F.col(c) == "", F.lit(f"empty field {c}"))

    # CASE WHEN guards every cast: under ANSI mode (Spark 4) a bad cast raises.
    id_long = F.when(F.col(ID).rlike(r"^[+-]?[0-9]{1,10}$"), F.col(ID).cast("long"))
    id_ok = F.coalesce(F.abs(id_long) <= INT32_MAX, F.lit(False))
    checks = [F.coalesce(empty(ID), F.when(~id_ok, F.concat(F.lit("ID is not an integer: "),
                                                          _quoted(F.col(ID)))))]
    for c in FEATURES:
        checks.append(F.coalesce(empty(c), F.when(~F.col(c).isin("0", "1"), F.concat(
            F.lit(f"{c} must be 0 or 1, got "), _quoted(F.col(c))))))
    checks.append(F.when((F.col(LABEL) != "") & ~F.col(LABEL).isin(*LABELS),
                         F.concat(F.lit("unknown root cause "), _quoted(F.col(LABEL)))))
    field_reason = F.concat_ws("; ", *checks)
    reason = F.coalesce(F.col("_parse_error"), F.when(field_reason != "", field_reason))

    df = raw.select("*", reason.alias("reason"), F.when(id_ok, F.col(ID).cast("int")).alias("_key"))
    dup_count = F.count(F.lit(1)).over(Window.partitionBy("_key"))
    df = df.withColumn("_dups", F.when(F.col("reason").isNull(), dup_count))
    df = df.withColumn("reason", F.when(
        F.col("_dups") > 1,
        F.format_string("duplicate ID %d: %d rows with this ID in the input", F.col("_key"),
                        F.col("_dups"))).otherwise(F.col("reason")))
    return df.drop("_dups")


def valid_columns():
    """Typed output columns for valid rows of :func:`validate` output (table schema order)."""
    from pyspark.sql import functions as F
    return ([F.col("_key").alias(ID)]
            + [F.col(c).cast("int").alias(c) for c in FEATURES]
            + [F.when(F.col(LABEL) != "", F.col(LABEL)).alias(LABEL), F.col("source_file")])


# ---------------------------------------------------------------------------- the stages
def ingest_job(cfg, fmt: str = "csv"):
    """The incident workload's part in the ingest stage: read ``fmt`` files, validate."""
    from pyspark.sql import functions as F

    from ..ingest import IngestJob
    if fmt not in FORMATS:
        raise UsageError(f"unknown incident format {fmt!r}; expected one of {list(FORMATS)}")
    return IngestJob(
        workload=NAME, key=ID, table_format=cfg.tables.format,
        read=lambda spark, files: validate(read_raw(spark, files, fmt)),
        valid_columns=valid_columns(),
        quarantine_columns=[F.col("raw").alias("raw_record"), "reason", "source_file"])


def training_job(spark, cfg, table: str):
    """The incident workload's part in the training stage: the root-cause MLP on the
    labelled rows of ``table``."""
    import json

    from pyspark.sql import functions as F

    from ..columns import index_of
    from ..train import TrainingJob
    from ..training import feed
    tcfg = cfg.train
    df = spark.table(table).where(F.col(LABEL).isin(*LABELS))
    data = (feed.assign_split(df, ID, tcfg.split.train, tcfg.split.validation, tcfg.split.seed)
            .select(*[F.col(c).cast("float").alias(c) for c in FEATURES],
                    index_of(LABELS, F.col(LABEL)).cast("int").alias("label"), "split",
                    feed.BUCKET))
    return TrainingJob(
        cfg=cfg, workload=NAME, table=table, model_name=cfg.registry.incident_model,
        labels=list(LABELS), data=data, decoder=feed.FeatureDecoder(FEATURES),
        model_spec={"kind": "mlp", "n_features": len(FEATURES), "n_classes": len(LABELS),
                    "hidden_units": list(tcfg.hidden_units), "seed": tcfg.seed},
        input_name="features", params={"hidden_units": json.dumps(tcfg.hidden_units)},
        metadata={"features": list(FEATURES)}, shuffle_buffer=tcfg.shuffle_buffer)


def probability_columns(labels) -> list[str]:
    return [f"probability_{label}" for label in labels]


def predict_udf(model):
    """An iterator pandas UDF: struct of feature columns -> struct of probability floats."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    from ..scoring import keras_forward
    names = probability_columns(model.labels)
    # float32 crosses Arrow at half the bytes of double; Spark widens it in the JVM.
    schema = ", ".join(f"`{n}` float" for n in names)
    n_features = len(model.features)

    @pandas_udf(schema)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        forward = keras_forward(model, (n_features,), "float32")
        for pdf in batches:
            p = forward(pdf.to_numpy(dtype=np.float32))
            yield pd.DataFrame({n: p[:, i] for i, n in enumerate(names)}, copy=False)
    return predict


def input_problems(features, id_col: str = ID):
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


def predict_columns(df, model):
    """``df`` + probability columns + ``predicted_label`` + ``confidence`` + ``_reason``
    (non-finite probabilities) (pure transform)."""
    from pyspark.sql import functions as F
    udf = predict_udf(model)
    names = probability_columns(model.labels)
    # 0/1 signals travel to Python as int8 (validated upstream): the narrowest Arrow input.
    out = df.withColumn("_p", udf(F.struct(*[F.col(c).cast("tinyint") for c in model.features])))
    out = out.select("*", *[F.col(f"_p.`{n}`").cast("double").alias(n) for n in names]).drop("_p")
    confidence = F.greatest(*[F.col(n) for n in names])
    predicted = F.lit(None).cast("string")
    for label, n in reversed(list(zip(model.labels, names))):  # first max wins, as argmax
        predicted = F.when(F.col(n) == confidence, F.lit(label)).otherwise(predicted)
    finite = F.lit(True)
    for n in names:
        finite = finite & ~F.isnan(F.col(n)) & F.col(n).isNotNull()
    return (out.withColumn("confidence", confidence).withColumn("predicted_label", predicted)
               .withColumn("_reason", F.when(~finite, F.lit(
                   "the model returned non-finite probabilities"))))


def scoring_job(cfg, model):
    """The incident workload's part in the scoring stage: ID, predicted root cause,
    confidence and one probability per cause."""
    from pyspark.sql import functions as F

    from ..scoring import ScoringJob, check_workload
    check_workload(model, NAME)
    names = probability_columns(model.labels)
    return ScoringJob(
        workload=NAME, model=model, key=ID, required_columns=[ID, *model.features],
        required_hint="the model's input columns",
        problems=input_problems(model.features),
        predict=lambda df: predict_columns(df, model),
        output_columns=[F.col(ID), F.col("predicted_label").alias("predicted_root_cause"),
                        "confidence", *names],
        daily_label="predicted_root_cause", daily_count="incidents",
        table_format=cfg.tables.format, arrow_batch_rows=cfg.score.arrow_batch_rows)
