"""Tabular files -> raw records: every input record as strings, nothing dropped.

Each reader returns one row per input record with ``raw`` (the record as the file holds
it), ``source_file``, ``_parse_error`` (why the record could not even be split into fields,
null otherwise) and one string column per requested column (null when the file lacks it).
Validation and typing come after, from the workload's schema. Blank lines and header rows
are not records.
"""
from __future__ import annotations

from typing import Sequence

from .errors import UsageError

FORMATS = ("csv", "parquet", "json")
MAX_CSV_BYTES = 2**31 - 1 - (1 << 20)    # Spark reads a whole file as one value of < 2 GiB


def read_csv(spark, files, columns: Sequence[str], required: Sequence[str], key: str):
    """CSV files as RFC 4180 defines them (see :mod:`sparkeras.csv_records`): one Spark
    task parses each whole file, so quoted fields may hold commas, doubled quotes and line
    breaks, and every file has its own header. ``files`` is the source's
    :class:`~sparkeras.sources.SourceFiles`."""
    from pyspark.sql import functions as F

    from . import csv_records
    too_big = [(path, size) for path, size, _ in files.listing if size > MAX_CSV_BYTES]
    if too_big:
        path, size = too_big[0]
        raise UsageError(f"{path} has {size / 2**30:.1f} GiB: a CSV file is parsed whole by one "
                         f"task (quoted fields may span lines), and Spark reads files of at most "
                         f"2 GiB: split it (split -l keeps whole lines only if no quoted field "
                         f"holds a line break), or convert it to Parquet")
    columns, required = list(columns), list(required)
    names = ["raw", "source_file", "_parse_error", *columns]
    schema = ", ".join(f"`{n}` string" for n in names)

    def parse(batches):
        import pyarrow as pa
        arrow_schema = pa.schema([(n, pa.string()) for n in names])
        for rb in batches:
            paths, contents = rb.column("path"), rb.column("content")
            for i in range(rb.num_rows):
                path = paths[i].as_py()
                for chunk in csv_records.parse_file(contents[i].as_py(), columns, required, key):
                    n = len(chunk["raw"])
                    yield pa.RecordBatch.from_pydict(
                        {"raw": chunk["raw"], "source_file": [path] * n,
                         "_parse_error": chunk["error"], **{c: chunk[c] for c in columns}},
                        schema=arrow_schema)
    return (files.df.select(F.col("_metadata.file_path").alias("path"), "content")
            .mapInArrow(parse, schema))


def text_lines(spark, source: str):
    """Non-blank lines of text files with their source file; BOM and CR removed."""
    from pyspark.sql import functions as F
    df = spark.read.format("text").load(source)
    line = F.regexp_replace(F.regexp_replace(F.col("value"), "^\uFEFF", ""), "\r$", "")
    return (df.select(line.alias("raw"), F.col("_metadata.file_path").alias("source_file"))
              .where(F.trim(F.col("raw")) != ""))


def read_json(spark, source: str, columns: Sequence[str]):
    """JSON lines: one object per line; a line that is not a JSON object is a parse error."""
    from pyspark.sql import functions as F
    lines = text_lines(spark, source)
    schema = ", ".join(f"`{c}` string" for c in columns) + ", _corrupt string"
    parsed = F.from_json(F.col("raw"), schema,
                         {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    df = lines.withColumn("_j", parsed)
    parse_error = F.when(F.col("_j").isNull() | F.col("_j._corrupt").isNotNull(),
                         F.lit("malformed JSON line"))
    values = [F.trim(F.col(f"_j.`{c}`")).alias(c) for c in columns]
    return df.select("raw", "source_file", parse_error.alias("_parse_error"), *values)


def read_parquet(spark, source: str, columns: Sequence[str], required: Sequence[str]):
    """Parquet with any column types (matched by name, case ignored); required columns
    missing from the files' schema are a parse error of every record."""
    from pyspark.sql import functions as F
    df = spark.read.option("mergeSchema", "true").parquet(source)
    present = {c.upper(): c for c in df.columns}
    missing = [c for c in required if c.upper() not in present]
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    parse_error = (F.lit("missing column " + ", ".join(missing)) if missing
                   else F.lit(None).cast("string"))
    values = [(F.trim(F.col(f"`{present[c.upper()]}`").cast("string")) if c.upper() in present
               else F.lit(None).cast("string")).alias(c) for c in columns]
    return df.select(raw.alias("raw"), F.col("_metadata.file_path").alias("source_file"),
                     parse_error.alias("_parse_error"), *values)


def read(spark, files, fmt: str, columns: Sequence[str], required: Sequence[str], key: str):
    """Records of the source behind ``files`` in ``fmt`` (csv, parquet or json)."""
    if fmt == "csv":
        return read_csv(spark, files, columns, required, key)
    if fmt == "json":
        return read_json(spark, files.source, columns)
    if fmt == "parquet":
        return read_parquet(spark, files.source, columns, required)
    raise UsageError(f"unknown tabular format {fmt!r}; expected one of {list(FORMATS)}")
