"""Ingest stage: raw files -> validated table + quarantine table, one batch at a time.

The batch id is derived from the source files (path, size, modification time), so ingesting
the same source again replaces that batch instead of duplicating it. IDs must be unique in
the table: an ID already ingested by another batch is quarantined. Counts reconcile always:
``input_rows == valid_rows + quarantined_rows`` is checked against what was written.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

from . import tables
from .columns import index_of
from .workloads import incidents

BATCH_COL = "ingest_batch_id"


class ReconciliationError(RuntimeError):
    """Rows were lost or duplicated between input and output: never expected."""


@dataclass
class IngestResult:
    input_rows: int
    valid_rows: int
    quarantined_rows: int
    table: str
    quarantine_table: str
    batch_id: str

    def summary(self) -> dict:
        return {"input_rows": self.input_rows, "valid_rows": self.valid_rows,
                "quarantined_rows": self.quarantined_rows, "table": self.table,
                "quarantine_table": self.quarantine_table, "batch_id": self.batch_id}


def source_batch_id(spark, source: str, recursive: bool = False, files=None) -> str:
    """A stable id for the files behind ``source``: same files, same id. ``files`` is a
    ``binaryFile`` DataFrame of them when the caller has one already."""
    if files is None:
        reader = spark.read.format("binaryFile")
        if recursive:
            reader = reader.option("recursiveFileLookup", "true")
        files = reader.load(source)
    listing = files.select("path", "length", "modificationTime").collect()
    if not listing:
        raise FileNotFoundError(f"no input files match {source}")
    h = hashlib.sha1()
    for r in sorted(listing, key=lambda r: r.path):
        h.update(f"{r.path}|{r.length}|{r.modificationTime}\n".encode())
    return "b" + h.hexdigest()[:15]


def _mark_ids_seen_elsewhere(spark, df, table: str, batch_id: str, table_id: str, df_id: str):
    """Quarantine valid rows whose id (``df_id`` in ``df``, ``table_id`` in the table) is
    already in ``table`` under another batch."""
    from pyspark.sql import functions as F
    if not tables.table_exists(spark, table):
        return df
    seen = (spark.table(table).where(F.col(BATCH_COL) != batch_id)
            .groupBy(F.col(table_id).alias("_seen_id"))
            .agg(F.min(BATCH_COL).alias("_seen_in")))
    df = df.join(seen, df[df_id] == seen["_seen_id"], "left").drop("_seen_id")
    return df.withColumn("reason", F.when(
        F.col("reason").isNull() & F.col("_seen_in").isNotNull(),
        F.concat(F.lit(f"{table_id} already ingested in batch "), F.col("_seen_in")))
        .otherwise(F.col("reason"))).drop("_seen_in")


def _reconcile(spark, table: str, qtable: str, batch_id: str, input_rows: int) -> tuple[int, int]:
    from pyspark.sql import functions as F
    valid_rows = spark.table(table).where(F.col(BATCH_COL) == batch_id).count()
    quarantined = spark.table(qtable).where(F.col(BATCH_COL) == batch_id).count()
    if valid_rows + quarantined != input_rows:
        raise ReconciliationError(
            f"batch {batch_id}: {input_rows} input rows but {valid_rows} written to {table} "
            f"and {quarantined} to {qtable}")
    return valid_rows, quarantined


def ingest_incidents(spark, source: str, table: str, fmt: str = "csv",
                     table_format: str = "parquet", batch_id: Optional[str] = None) -> IngestResult:
    """Validate ``source`` into ``table`` and ``table_quarantine``; see module docstring."""
    from pyspark.sql import functions as F

    if fmt not in incidents.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(incidents.FORMATS)}")
    batch_id = batch_id or source_batch_id(spark, source)
    qtable = tables.quarantine_name(table)
    now = F.current_timestamp()

    classified = incidents.validate(incidents.read_raw(spark, source, fmt))
    classified = _mark_ids_seen_elsewhere(spark, classified, table, batch_id, incidents.ID, "_id")
    # Cut the lineage: the table may be read above and overwritten below.
    classified = classified.localCheckpoint(eager=True)
    input_rows = classified.count()

    valid = (classified.where(F.col("reason").isNull())
             .select(*incidents.valid_columns(), now.alias("ingested_at"),
                     F.lit(batch_id).alias(BATCH_COL)))
    bad = (classified.where(F.col("reason").isNotNull())
           .select(F.col("raw").alias("raw_record"), "reason", "source_file",
                   now.alias("quarantined_at"), F.lit(batch_id).alias(BATCH_COL)))
    tables.write_batches(spark, valid, table, BATCH_COL, [batch_id], table_format)
    tables.write_batches(spark, bad, qtable, BATCH_COL, [batch_id], table_format)

    valid_rows, quarantined = _reconcile(spark, table, qtable, batch_id, input_rows)
    return IngestResult(input_rows, valid_rows, quarantined, table, qtable, batch_id)


@dataclass
class ImageIngestResult(IngestResult):
    input_files: int = 0
    fmt: str = ""
    image_size: tuple = ()
    labels: Optional[dict] = None

    def summary(self) -> dict:
        return {"input_files": self.input_files, **super().summary(), "format": self.fmt,
                "image_size": list(self.image_size), "labels": self.labels}


def ingest_images(spark, source: str, table: str, fmt: str, size: Sequence[int],
                  table_format: str = "parquet", batch_id: Optional[str] = None,
                  class_names: Sequence[str] = (), labeled: bool = True,
                  decode_batch_rows: int = 256) -> ImageIngestResult:
    """Read images in ``fmt`` from ``source``, convert them to ``size`` (h, w, c) tensors and
    write ``table`` + ``table_quarantine``.

    Every input record (an image in an IDX/CIFAR file, a file in a folder, or a whole file
    that cannot be read) is either a row or a quarantine row with its reason.
    """
    from pyspark.sql import functions as F
    from .session import temporary_conf
    from .workloads import images

    if fmt not in images.FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {list(images.FORMATS)}")
    height, width, channels = size
    files = images.list_files(spark, source)          # listed once, for all that follows
    batch_id = batch_id or source_batch_id(spark, source, files=files.df)
    input_files = len(files.paths)
    qtable = tables.quarantine_name(table)
    now = F.current_timestamp()
    rows = images.decode_batch_rows(height, width, channels, decode_batch_rows)
    with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": rows}):
        records = images.read_raw(spark, source, fmt, class_names, labeled, files)
        converted = images.to_tensors(records, height, width, channels)
        converted = _mark_ids_seen_elsewhere(spark, converted, table, batch_id, images.ID,
                                             images.ID)
        # Decode once; cut the lineage (the table may be read above and overwritten below).
        converted = converted.localCheckpoint(eager=True)
    input_rows = converted.count()
    if fmt == "folder" and input_rows != input_files:
        raise ReconciliationError(f"{input_files} files in {source} but {input_rows} records")
    valid = converted.where(F.col("reason").isNull())
    if fmt == "folder":   # class numbers: the sorted class folder names of this batch
        names = sorted(r[0] for r in valid.select(images.LABEL).distinct().collect()
                       if r[0] is not None)
        valid = valid.withColumn("label_index", index_of(names, F.col(images.LABEL)))
    valid = valid.select(images.ID, images.LABEL, "label_index", "split", "source", "height",
                         "width", "channels", "original_height", "original_width", "image",
                         now.alias("ingested_at"), F.lit(batch_id).alias(BATCH_COL))
    bad = converted.where(F.col("reason").isNotNull()).select(
        images.ID, "source", "reason", now.alias("quarantined_at"),
        F.lit(batch_id).alias(BATCH_COL))
    tables.write_batches(spark, valid, table, BATCH_COL, [batch_id], table_format)
    tables.write_batches(spark, bad, qtable, BATCH_COL, [batch_id], table_format)
    valid_rows, quarantined = _reconcile(spark, table, qtable, batch_id, input_rows)
    labels = {(r[0] if r[0] is not None else "(unlabelled)"): r[1] for r in
              spark.table(table).where(F.col(BATCH_COL) == batch_id)
              .groupBy(images.LABEL).count().orderBy(images.LABEL).collect()}
    return ImageIngestResult(input_rows, valid_rows, quarantined, table, qtable, batch_id,
                             input_files, fmt, (height, width, channels), labels)
