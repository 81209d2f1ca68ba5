"""The incident workload: the tabular workload with a preset schema (:data:`SCHEMA`: seven
0/1 signals and, when diagnosed, one of three root causes), plus a synthetic generator whose
best achievable accuracy is known exactly (docs/incidents.md).

Its part in the three stages (:func:`ingest_job`, :func:`training_job`, :func:`scoring_job`)
is the tabular workload's (:mod:`.tabular`) with that schema; the tables, model name and
output columns are those the incident pipeline always had.
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from ..errors import UsageError
from ..schema import Feature, TableSchema, Target

NAME = "incidents"
ID = "ID"
LABEL = "ROOT_CAUSE"
FEATURES = ["CPU_LOAD", "MEMORY_LEAK_LOAD", "DELAY",
            "ERROR_1000", "ERROR_1001", "ERROR_1002", "ERROR_1003"]
LABELS = ["MEMORY_LEAK", "NETWORK_DELAY", "DATABASE_ISSUE"]
COLUMNS = [ID] + FEATURES + [LABEL]
FORMATS = ("csv", "parquet", "json")

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


# ---------------------------------------------------------------------------- the stages
# The incident workload is the tabular workload with this schema (conf/schemas/incidents.yml
# declares the same; a test keeps them equal).
SCHEMA = TableSchema(
    name=NAME, id=ID, id_type="int", features=tuple(Feature(c, "binary") for c in FEATURES),
    target=Target(LABEL, "classification", tuple(LABELS), "root cause"),
    model="incident_root_cause", count_column="incidents")


def ingest_job(cfg, fmt: str = "csv"):
    """The incident workload's part in the ingest stage: read ``fmt`` files, validate."""
    from . import tabular
    if fmt not in FORMATS:
        raise UsageError(f"unknown incident format {fmt!r}; expected one of {list(FORMATS)}")
    return tabular.ingest_job(cfg, SCHEMA, fmt, workload=NAME)


def training_job(spark, cfg, table: str):
    """The incident workload's part in the training stage: the root-cause MLP on the
    labelled rows of ``table``, registered as ``registry.incident_model``."""
    from . import tabular
    return tabular.training_job(spark, cfg, SCHEMA, table, cfg.registry.incident_model, NAME)


def scoring_job(cfg, model):
    """The incident workload's part in the scoring stage: ID, predicted root cause,
    confidence and one probability per cause."""
    from . import tabular
    return tabular.scoring_job(cfg, model, workload=NAME)


def predict_columns(df, model):
    """The scoring transform of an incident model (see :func:`tabular.predict_columns`)."""
    from . import tabular
    return tabular.predict_columns(df, model, SCHEMA)
