"""Incident telemetry: schema, synthetic generator, raw readers and validation.

One row per data-centre incident: seven 0/1 signals and, when diagnosed, a root cause.
Everything here is a pure DataFrame transform, except :func:`read_raw` (reads files) and
:func:`generate` (builds a DataFrame from ``spark.range``); the pipeline does the writing.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

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


# -------------------------------------------------------------------------------- reading
def _text_lines(spark, source: str):
    """Non-blank lines of text files with their source file; BOM and CR removed."""
    from pyspark.sql import functions as F
    df = spark.read.format("text").load(source)
    line = F.regexp_replace(F.regexp_replace(F.col("value"), "^\uFEFF", ""), "\r$", "")
    return (df.select(line.alias("raw"), F.col("_metadata.file_path").alias("source_file"))
              .where(F.trim(F.col("raw")) != ""))


def read_csv_records(spark, source: str, columns: Sequence[str], required: Sequence[str],
                     key: str):
    """CSV files as RFC 4180 defines them (see :mod:`sparkeras.csv_records`): one Spark
    task parses each whole file, so quoted fields may hold commas, doubled quotes and line
    breaks, and every file has its own header. Returns ``raw``, ``source_file``,
    ``_parse_error`` and one string column per name in ``columns``."""
    from pyspark.sql import functions as F
    from .. import csv_records
    columns, required = list(columns), list(required)
    files = (spark.read.format("binaryFile").load(source)
             .select(F.col("_metadata.file_path").alias("path"), "content"))
    schema = ("raw string, source_file string, _parse_error string, "
              + ", ".join(f"`{c}` string" for c in columns))

    def parse(batches):
        import pyarrow as pa
        arrow_schema = pa.schema([(n, pa.string()) for n in
                                  ["raw", "source_file", "_parse_error", *columns]])
        for rb in batches:
            paths = rb.column("path").to_pylist()
            for i, path in enumerate(paths):
                content = rb.column("content")[i].as_py()
                for chunk in csv_records.parse_file(content, columns, required, key):
                    n = len(chunk["raw"])
                    yield pa.RecordBatch.from_pydict(
                        {"raw": chunk["raw"], "source_file": [path] * n,
                         "_parse_error": chunk["error"], **{c: chunk[c] for c in columns}},
                        schema=arrow_schema)
    return files.mapInArrow(parse, schema)


def _read_csv(spark, source: str):
    return read_csv_records(spark, source, COLUMNS, REQUIRED, ID)


def _read_json(spark, source: str):
    """JSON lines: one object per line; a line that is not a JSON object is a parse error."""
    from pyspark.sql import functions as F
    lines = _text_lines(spark, source)
    schema = ", ".join(f"`{c}` string" for c in COLUMNS) + ", _corrupt string"
    parsed = F.from_json(F.col("raw"), schema,
                         {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    df = lines.withColumn("_j", parsed)
    parse_error = F.when(F.col("_j").isNull() | F.col("_j._corrupt").isNotNull(),
                         F.lit("malformed JSON line"))
    values = [F.trim(F.col(f"_j.{c}")).alias(c) for c in COLUMNS]
    return df.select("raw", "source_file", parse_error.alias("_parse_error"), *values)


def _read_parquet(spark, source: str):
    """Parquet with any column types; required columns missing from the schema are errors."""
    from pyspark.sql import functions as F
    df = spark.read.option("mergeSchema", "true").parquet(source)
    present = {c.upper(): c for c in df.columns}
    missing = [c for c in REQUIRED if c not in present]
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    parse_error = (F.lit("missing column " + ", ".join(missing)) if missing
                   else F.lit(None).cast("string"))
    values = [(F.trim(F.col(f"`{present[c]}`").cast("string")) if c in present
               else F.lit(None).cast("string")).alias(c) for c in COLUMNS]
    return df.select(raw.alias("raw"), F.col("_metadata.file_path").alias("source_file"),
                     parse_error.alias("_parse_error"), *values)


def read_raw(spark, source: str, fmt: str):
    """Read ``source`` (path or glob) into string columns + ``raw``, ``source_file``,
    ``_parse_error``. Nothing is dropped except blank lines and header rows."""
    readers = {"csv": _read_csv, "json": _read_json, "parquet": _read_parquet}
    if fmt not in readers:
        raise ValueError(f"unknown incident format {fmt!r}; expected one of {list(readers)}")
    return readers[fmt](spark, source)


# ----------------------------------------------------------------------------- validation
def _quoted(c):
    from pyspark.sql import functions as F
    return F.concat(F.lit("'"), c, F.lit("'"))


def validate(raw):
    """Add ``reason`` (null for a valid row) and typed columns to :func:`read_raw` output.

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

    typed = [F.when(id_ok, F.col(ID).cast("int")).alias("_id")]
    df = raw.select("*", reason.alias("reason"), *typed)
    dup_count = F.count(F.lit(1)).over(Window.partitionBy("_id"))
    df = df.withColumn("_dups", F.when(F.col("reason").isNull(), dup_count))
    df = df.withColumn("reason", F.when(
        F.col("_dups") > 1,
        F.format_string("duplicate ID %d: %d rows with this ID in the input", F.col("_id"),
                        F.col("_dups"))).otherwise(F.col("reason")))
    return df.drop("_dups")


def valid_columns():
    """Typed output columns for valid rows of :func:`validate` output (table schema order)."""
    from pyspark.sql import functions as F
    return ([F.col("_id").alias(ID)]
            + [F.col(c).cast("int").alias(c) for c in FEATURES]
            + [F.when(F.col(LABEL) != "", F.col(LABEL)).alias(LABEL), F.col("source_file")])
