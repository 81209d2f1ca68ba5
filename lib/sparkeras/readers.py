"""Tabular files -> raw records: every input record as strings, nothing dropped.

Each reader returns one row per input record with ``raw`` (the record as the file holds
it), ``source_file``, ``_parse_error`` (why the record could not even be split into fields,
null otherwise) and one string column per requested column (null when the file lacks it).
Validation and typing come after, from the workload's schema. Blank lines and header rows
are not records.
"""
from __future__ import annotations

import re
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


def read_parquet(spark, files, columns: Sequence[str], required: Sequence[str]):
    """Parquet with any column types (matched by name, case ignored); required columns
    missing from the files' schema are a parse error of every record. A file whose footer
    cannot be read (truncated, overwritten, not Parquet) is one record with the reason, and
    the other files are read."""
    from pyspark.sql import functions as F
    footers = parquet_footers(spark, [path for path, _, _ in files.listing])
    broken = {path: error for path, error in footers.items() if error}
    good = [path for path, _, _ in files.listing if path not in broken]
    nothing = F.lit(None).cast("string")
    parts = []
    if good:
        df = spark.read.option("mergeSchema", "true").parquet(*good)
        present = {c.upper(): c for c in df.columns}
        missing = [c for c in required if c.upper() not in present]
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
        parse_error = F.lit("missing column " + ", ".join(missing)) if missing else nothing
        values = [(F.trim(F.col(f"`{present[c.upper()]}`").cast("string"))
                   if c.upper() in present else nothing).alias(c) for c in columns]
        parts.append(df.select(raw.alias("raw"), F.col("_metadata.file_path").alias("source_file"),
                               parse_error.alias("_parse_error"), *values))
    if broken:
        rows = [("", path, f"unreadable Parquet file: {error}", *[None] * len(columns))
                for path, error in sorted(broken.items())]
        schema = ", ".join(f"`{n}` string" for n in ["raw", "source_file", "_parse_error",
                                                      *columns])
        parts.append(spark.createDataFrame(rows, schema))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def parquet_footers(spark, paths: Sequence[str]) -> dict:
    """path -> None (its footer reads) or why it does not, checked by Python tasks with
    pyarrow (only the footer is read). A path pyarrow cannot open (a file system it does not
    know) counts as readable: Spark's own reader decides, and fails loudly."""
    if not paths:
        return {}
    n = min(len(paths), 64)

    def check(batches):
        import pandas as pd
        for pdf in batches:
            yield pd.DataFrame({"path": pdf["path"],
                                "error": [_footer_error(p) for p in pdf["path"]]})
    listed = spark.createDataFrame([(p,) for p in paths], "path string").repartition(n)
    return {r.path: r.error for r in
            listed.mapInPandas(check, "path string, error string").collect()}


def local_copy(path: str):
    """Where this machine sees the file ``path`` names (``file:`` and ``dbfs:`` URIs), or None
    when it does not: ``dbfs:/Volumes/...`` at ``/Volumes/...``, other ``dbfs:/`` paths at
    ``/dbfs/...`` (Databricks' local mounts, where a cluster has them)."""
    import os

    from .sources import local_path
    if path.startswith("dbfs:/"):
        inner = "/" + path[len("dbfs:"):].lstrip("/")
        candidates = [inner, "/dbfs" + inner] if inner.startswith("/Volumes/") else \
            ["/dbfs" + inner]
    else:
        candidates = [local_path(path)] if path.startswith("file:") else []
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _footer_error(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        if re.match(r"^(file|dbfs):", path):
            # a path this machine cannot see (no /dbfs mount) is not checked here: Spark's
            # own reader reads it (before: dbfs:/mnt/a.parquet was opened as /mnt/a.parquet,
            # "not found", and every such file was quarantined as unreadable)
            source = local_copy(path)
            if source is None:
                return None
        else:
            fs, inner = pa.fs.FileSystem.from_uri(path)
            source = fs.open_input_file(inner)
    except Exception:                  # noqa: BLE001 - a file system pyarrow does not know
        return None
    try:
        pq.read_metadata(source)
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        return str(exc).splitlines()[0][:300] or type(exc).__name__


def read(spark, files, fmt: str, columns: Sequence[str], required: Sequence[str], key: str):
    """Records of the source behind ``files`` in ``fmt`` (csv, parquet or json)."""
    if fmt == "csv":
        return read_csv(spark, files, columns, required, key)
    if fmt == "json":
        return read_json(spark, files.source, columns)
    if fmt == "parquet":
        return read_parquet(spark, files, columns, required)
    raise UsageError(f"unknown tabular format {fmt!r}; expected one of {list(FORMATS)}")
