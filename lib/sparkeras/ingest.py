"""Ingest stage: raw files -> validated table + quarantine table, one batch at a time.

One implementation for every workload (:func:`ingest`); a workload contributes an
:class:`IngestJob` (built once from the configuration by ``<workload>.ingest_job(cfg, ...)``):
how its files become records, which records are valid and why not, and the columns of its
table and quarantine table.

The batch id is derived from the source files (path, size, modification time), so ingesting
the same source again replaces that batch instead of duplicating it. Keys must be unique in
the table: a key already ingested by another batch is quarantined, and so (for workloads that
ask, :attr:`IngestJob.unique_in_input`) is every record of a key the input holds twice.
Counts reconcile always: ``input_rows == valid_rows + quarantined_rows`` is checked against
what was written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import tables
from .errors import ReconciliationError
from .sources import SourceFiles
from .tables import INGEST_BATCH

log = logging.getLogger(__name__)
KEY = "_key"           # records: the typed key (null when the record has none)


@dataclass
class IngestJob:
    """What a workload brings to the shared ingest stage.

    ``read(spark, files)`` returns every input record of the :class:`SourceFiles` with
    ``reason`` (null when valid) and :data:`KEY`; ``valid_columns`` and
    ``quarantine_columns`` are the columns written for valid and refused records (the stage
    appends the timestamp and the batch id)."""
    workload: str
    key: str                                  # the table's unique key column
    read: Callable[[Any, SourceFiles], Any]
    valid_columns: list
    quarantine_columns: list
    table_format: str = "parquet"
    recursive: bool = False                   # read sub-folders (class folders)
    spark_conf: dict = field(default_factory=dict)   # SQL settings while reading
    one_record_per_file: bool = False         # photo folders: checked by the stage
    unique_in_input: bool = False             # refuse keys repeated in the input (tabular)
    prepare_valid: Optional[Callable[[Any], Any]] = None   # e.g. class numbers of a folder
    describe: Optional[Callable[[Any, str, str, SourceFiles], dict]] = None  # summary extras
    table_properties: dict = field(default_factory=dict)    # set on the table (its schema)


@dataclass
class IngestResult:
    input_rows: int
    valid_rows: int
    quarantined_rows: int
    table: str
    quarantine_table: str
    batch_id: str
    extra: dict = field(default_factory=dict)   # what the workload adds (images: labels...)

    def __getattr__(self, name: str):
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(name)

    def summary(self) -> dict:
        return {"input_rows": self.input_rows, "valid_rows": self.valid_rows,
                "quarantined_rows": self.quarantined_rows, "table": self.table,
                "quarantine_table": self.quarantine_table, "batch_id": self.batch_id,
                **self.extra}


def _keys_seen_elsewhere(spark, table: str, batch_id: str, key: str, name: str):
    """The keys already in ``table`` under batches other than ``batch_id`` (as column
    ``name``), each with the earliest such batch (``_seen_in``); None before the table exists."""
    from pyspark.sql import functions as F
    if not tables.table_exists(spark, table):
        return None
    return (spark.table(table).where(F.col(INGEST_BATCH) != batch_id)
            .groupBy(F.col(key).alias(name)).agg(F.min(INGEST_BATCH).alias("_seen_in")))


def _seen_reason(key: str):
    from pyspark.sql import functions as F
    return F.concat(F.lit(f"{key} already ingested in batch "), F.col("_seen_in"))


def _mark_keys_seen_elsewhere(spark, df, table: str, batch_id: str, key: str):
    """Quarantine valid records whose key is already in ``table`` under another batch (for
    workloads that do not check keys within the input: joined into the read, before the
    checkpoint, which measured faster for images than a separate pass over the keys)."""
    from pyspark.sql import functions as F
    seen = _keys_seen_elsewhere(spark, table, batch_id, key, "_seen_key")
    if seen is None:
        return df
    df = df.join(seen, df[KEY] == seen["_seen_key"], "left").drop("_seen_key")
    return df.withColumn("reason", F.when(
        F.col("reason").isNull() & F.col("_seen_in").isNotNull(), _seen_reason(key))
        .otherwise(F.col("reason"))).drop("_seen_in")


# Keys with a problem (repeated in the input, or ingested before) are joined back to the
# records by broadcast up to this many; beyond it by a shuffle join, checkpointed once.
BROADCAST_MAX_KEYS = 1_000_000


def key_problems(spark, records, table: str, batch_id: str, key: str):
    """The keys of ``records`` that are not unique, one row each: ``_dups``, how many records
    of the input hold it (when more than one), and ``_seen_in``, the earliest other batch of
    ``table`` that holds it (null when none). Only keys are shuffled, never records."""
    from pyspark.sql import functions as F
    # Every key once, with its count: one aggregation serves both checks.
    counts = (records.where(F.col(KEY).isNotNull()).groupBy(KEY)
              .agg(F.count(F.lit(1)).alias("_dups")))
    problems = counts.where(F.col("_dups") > 1)
    seen = _keys_seen_elsewhere(spark, table, batch_id, key, KEY)
    if seen is None:
        problems = problems.withColumn("_seen_in", F.lit(None).cast("string"))
    else:
        problems = problems.join(seen.join(counts.select(KEY), KEY, "left_semi"), KEY,
                                 "full_outer")
    return problems.localCheckpoint(eager=True)


def _mark_key_problems(spark, records, table: str, batch_id: str, key: str):
    """Refuse valid records whose key is repeated in the input (every record holding it) or
    already in ``table`` under another batch, in that order of reasons."""
    from pyspark.sql import functions as F
    problems = key_problems(spark, records, table, batch_id, key)
    n = problems.count()
    if n == 0:
        return records
    small = n <= BROADCAST_MAX_KEYS
    records = records.join(F.broadcast(problems) if small else problems, KEY, "left")
    records = records.withColumn("reason", F.coalesce(
        F.col("reason"),
        F.when(F.col("_dups") > 1, F.format_string(
            f"duplicate {key} %s: %d rows with this {key} in the input", F.col(KEY),
            F.col("_dups"))),
        F.when(F.col("_seen_in").isNotNull(), _seen_reason(key)),
    )).drop("_dups", "_seen_in")
    # Read three more times (counts and two writes): a shuffle join is made once.
    return records if small else records.localCheckpoint(eager=True)


def _reconcile(spark, table: str, qtable: str, batch_id: str, input_rows: int) -> tuple[int, int]:
    from pyspark.sql import functions as F
    valid_rows = spark.table(table).where(F.col(INGEST_BATCH) == batch_id).count()
    quarantined = spark.table(qtable).where(F.col(INGEST_BATCH) == batch_id).count()
    if valid_rows + quarantined != input_rows:
        raise ReconciliationError(
            f"batch {batch_id}: {input_rows} input rows but {valid_rows} written to {table} "
            f"and {quarantined} to {qtable}")
    return valid_rows, quarantined


def ingest(spark, job: IngestJob, source: str, table: str,
           batch_id: Optional[str] = None) -> IngestResult:
    """Validate ``source`` into ``table`` and ``table_quarantine`` as one batch; see the
    module docstring. Every input record is a row of one of the two tables."""
    from pyspark.sql import functions as F

    from .session import temporary_conf

    tables.look_up_soon(spark, table)     # the metastore starts while the input is read
    files = SourceFiles(spark, source, job.recursive)        # listed once for all below
    batch_id = batch_id or files.batch_id()
    qtable = tables.quarantine_name(table)
    now = F.current_timestamp()
    log.info(f"reading {len(files.paths):,} file(s) of {source} as {job.workload} "
             f"(batch {batch_id})")
    with temporary_conf(spark, job.spark_conf):
        records = job.read(spark, files)
        if not job.unique_in_input:
            records = _mark_keys_seen_elsewhere(spark, records, table, batch_id, job.key)
        # Read and validate once; cut the lineage (the table is read and written below).
        records = records.localCheckpoint(eager=True)
    if job.unique_in_input:     # keys checked from the keys alone, after the checkpoint
        records = _mark_key_problems(spark, records, table, batch_id, job.key)
    # One pass over the checkpoint: how many records, and how many of them are valid.
    outcome = {r[0]: r[1] for r in records.groupBy(F.col("reason").isNull()).count().collect()}
    input_rows = sum(outcome.values())
    if job.one_record_per_file and input_rows != len(files.paths):
        raise ReconciliationError(f"{len(files.paths)} files in {source} but {input_rows} "
                                  f"records")
    valid = records.where(F.col("reason").isNull())
    if job.prepare_valid is not None:
        valid = job.prepare_valid(valid)
    valid = valid.select(*job.valid_columns, now.alias("ingested_at"),
                         F.lit(batch_id).alias(INGEST_BATCH))
    bad = records.where(F.col("reason").isNotNull()).select(
        *job.quarantine_columns, now.alias("quarantined_at"), F.lit(batch_id).alias(INGEST_BATCH))
    log.info(f"writing {table} and {qtable}")
    tables.write_batches(spark, valid, table, INGEST_BATCH, [batch_id], job.table_format,
                         written=[batch_id] if outcome.get(True) else [])
    tables.write_batches(spark, bad, qtable, INGEST_BATCH, [batch_id], job.table_format,
                         written=[batch_id] if outcome.get(False) else [])
    valid_rows, quarantined = _reconcile(spark, table, qtable, batch_id, input_rows)
    if job.table_properties:
        tables.set_properties(spark, table, job.table_properties)
    extra = job.describe(spark, table, batch_id, files) if job.describe else {}
    return IngestResult(input_rows, valid_rows, quarantined, table, qtable, batch_id, extra)


def ingest_incidents(spark, cfg, source: str, table: str, fmt: str = "csv",
                     batch_id: Optional[str] = None) -> IngestResult:
    """Ingest incident exports (csv, parquet or json) into ``table`` + its quarantine."""
    from .workloads import incidents
    return ingest(spark, incidents.ingest_job(cfg, fmt), source, table, batch_id)


def ingest_images(spark, cfg, source: str, table: str, fmt: str, labeled: bool = True,
                  batch_id: Optional[str] = None, size=None) -> IngestResult:
    """Ingest an image dataset (idx, cifar or folder) into ``table`` + its quarantine, as
    tensors of ``size`` (default ``images.size.<fmt>``); ``labeled=False`` for new images
    (labels ignored)."""
    from .workloads import images
    return ingest(spark, images.ingest_job(cfg, fmt, labeled, size), source, table, batch_id)


def ingest_tabular(spark, cfg, schema, source: str, table: str, fmt: str = "csv",
                   batch_id: Optional[str] = None) -> IngestResult:
    """Ingest files of a table declared by ``schema`` (csv, parquet or json) into ``table``
    + its quarantine; the table remembers its schema (a table property)."""
    from .workloads import tabular
    return ingest(spark, tabular.ingest_job(cfg, schema, fmt), source, table, batch_id)
