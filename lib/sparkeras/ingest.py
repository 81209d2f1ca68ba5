"""Ingest stage: raw files -> validated table + quarantine table, one batch at a time.

The batch id is derived from the source files (path, size, modification time), so ingesting
the same source again replaces that batch instead of duplicating it. IDs must be unique in
the table: an ID already ingested by another batch is quarantined. Counts reconcile always:
``input_rows == valid_rows + quarantined_rows`` is checked against what was written.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

from . import tables
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


def source_batch_id(spark, source: str) -> str:
    """A stable id for the files behind ``source``: same files, same id."""
    listing = (spark.read.format("binaryFile").load(source)
               .select("path", "length", "modificationTime").collect())
    if not listing:
        raise FileNotFoundError(f"no input files match {source}")
    h = hashlib.sha1()
    for r in sorted(listing, key=lambda r: r.path):
        h.update(f"{r.path}|{r.length}|{r.modificationTime}\n".encode())
    return "b" + h.hexdigest()[:15]


def _mark_ids_seen_elsewhere(spark, df, table: str, batch_id: str):
    """Quarantine valid rows whose ID is already in ``table`` under another batch."""
    from pyspark.sql import functions as F
    if not tables.table_exists(spark, table):
        return df
    seen = (spark.table(table).where(F.col(BATCH_COL) != batch_id)
            .groupBy(F.col(incidents.ID).alias("_id"))
            .agg(F.min(BATCH_COL).alias("_seen_in")))
    df = df.join(seen, "_id", "left")
    return df.withColumn("reason", F.when(
        F.col("reason").isNull() & F.col("_seen_in").isNotNull(),
        F.concat(F.lit("ID already ingested in batch "), F.col("_seen_in")))
        .otherwise(F.col("reason"))).drop("_seen_in")


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
    classified = _mark_ids_seen_elsewhere(spark, classified, table, batch_id)
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

    valid_rows = spark.table(table).where(F.col(BATCH_COL) == batch_id).count()
    quarantined = spark.table(qtable).where(F.col(BATCH_COL) == batch_id).count()
    if valid_rows + quarantined != input_rows:
        raise ReconciliationError(
            f"batch {batch_id}: {input_rows} input rows but {valid_rows} written to {table} "
            f"and {quarantined} to {qtable}")
    return IngestResult(input_rows, valid_rows, quarantined, table, qtable, batch_id)
