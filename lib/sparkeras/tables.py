"""Managed tables written batch by batch, so that re-running a batch replaces it.

Every sparkeras table has a batch column as its last (partition) column. Writing a batch
replaces exactly the named batches: parquet tables use dynamic partition overwrite (and drop
batches that now have no rows); Delta tables use ``replaceWhere`` in one transaction.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

from .errors import DataError
from .session import temporary_conf

INGEST_BATCH = "ingest_batch_id"    # ingested tables: the source files' batch
SCORE_BATCH = "batch_id"            # scored tables: the input row's ingest batch


def quarantine_name(table: str) -> str:
    return f"{table}_quarantine"


def table_exists(spark, table: str) -> bool:
    return spark.catalog.tableExists(table)


def look_up_soon(spark, table: str) -> None:
    """Start a lookup of ``table`` in a thread and return at once.

    In a new process the first catalog access waits on the metastore's start (~2.5 s for
    the local Derby metastore, in the JVM); started early, it overlaps what the caller does
    meanwhile (reading its input) instead of following it. The answer is not kept: later
    lookups are quick, and raise any error themselves. PySpark's own thread class: with
    pinned threads it closes its JVM connection when done (a plain thread's would stay open
    for the session's life), and it carries the caller's job properties into the thread."""
    import inspect

    from pyspark import InheritableThread

    def look_up():
        try:
            table_exists(spark, table)
        except Exception as exc:            # noqa: BLE001 - raised again by the next lookup
            logging.getLogger(__name__).debug(f"early lookup of {table}: {exc}")
    # PySpark 4 takes the session (Spark Connect needs it); 3.5's class has no such argument
    given = {"session": spark} if "session" in inspect.signature(InheritableThread).parameters \
        else {}
    InheritableThread(look_up, name="sparkeras-metastore", daemon=True, **given).start()


def sql_literal(value: str) -> str:
    """``value`` as a Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_where(batch_col: str, batch_ids: Iterable[str]) -> str:
    """The Delta ``replaceWhere`` predicate that selects exactly ``batch_ids``."""
    ids = sorted(set(batch_ids))
    if not ids:
        raise ValueError("replace_where needs at least one batch id")
    return f"`{batch_col}` IN ({', '.join(sql_literal(b) for b in ids)})"


def ensure_database(spark, table: str) -> None:
    """Create the table's database when it is a two-part name (``db.table``)."""
    parts = table.split(".")
    if len(parts) == 2:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{parts[0]}`")


def write_batches(spark, df, table: str, batch_col: str, batch_ids: Iterable[str],
                  fmt: str, written: Optional[Iterable[str]] = None) -> None:
    """Replace batches ``batch_ids`` of ``table`` with the rows of ``df``.

    ``df`` must hold only rows of those batches, with ``batch_col`` as its last column.
    The table is created, partitioned by ``batch_col``, when it does not exist.
    ``written``: the batches that have rows in ``df``, when the caller has counted them
    (saves a pass over ``df``; none: ``df`` is not read at all).
    """
    batch_ids = sorted(set(batch_ids))
    if df.columns[-1] != batch_col:
        raise ValueError(f"the batch column {batch_col!r} must be the last column of the data")
    if written is not None and not set(written):
        df = df.limit(0)                 # nothing to write: no need to compute ``df``
    if not table_exists(spark, table):
        ensure_database(spark, table)
        df.write.format(fmt).partitionBy(batch_col).saveAsTable(table)
        return
    target_cols = spark.table(table).columns
    if sorted(target_cols) != sorted(df.columns):
        raise DataError(f"table {table} has columns {target_cols}, the data has {df.columns}: "
                        f"write to a new table, or drop this one if its layout is outdated")
    df = df.select(*target_cols)
    if fmt == "delta":
        # One transaction; Delta refuses rows outside the predicate, and named batches that
        # now have no rows end up empty.
        (df.write.format("delta").mode("overwrite")
         .option("replaceWhere", replace_where(batch_col, batch_ids)).saveAsTable(table))
        return
    written = set(written) if written is not None else \
        {r[0] for r in df.select(batch_col).distinct().collect()}
    if not written <= set(batch_ids):
        raise ValueError(f"data holds batches {sorted(written - set(batch_ids))} not named for {table}")
    if written:
        # The writer option is ignored by insertInto; the session setting is honoured.
        with temporary_conf(spark, {"spark.sql.sources.partitionOverwriteMode": "dynamic"}):
            df.write.mode("overwrite").insertInto(table)
    drop_batches(spark, table, batch_col, [b for b in batch_ids if b not in written], fmt)


def drop_batches(spark, table: str, batch_col: str, batch_ids: Iterable[str], fmt: str) -> None:
    """Remove batches ``batch_ids`` of ``table`` (a write that had no rows for them)."""
    batch_ids = sorted(set(batch_ids))
    if fmt == "delta":
        if batch_ids:
            spark.sql(f"DELETE FROM {table} WHERE {replace_where(batch_col, batch_ids)}")
        return
    for b in batch_ids:
        spark.sql(f"ALTER TABLE {table} DROP IF EXISTS PARTITION (`{batch_col}` = {sql_literal(b)})")
    spark.catalog.refreshTable(table)


VIEW_QUERY = "sparkeras.query"     # a view's property: the digest of the query it was made of


def create_view(spark, view: str, select_sql: str) -> None:
    """``CREATE OR REPLACE VIEW view AS select_sql``, skipped when the view was made of this
    very query: a lookup of its properties instead of analysing and replacing the view (~1 s
    of every score command, measured)."""
    import hashlib
    digest = hashlib.sha1(select_sql.encode()).hexdigest()[:16]
    try:
        made_of = properties(spark, view).get(VIEW_QUERY)
    except Exception:  # noqa: BLE001 - no such view yet (or no properties here): create it
        made_of = None
    if made_of == digest:
        return
    spark.sql(f"CREATE OR REPLACE VIEW {view} "
              f"TBLPROPERTIES ({sql_literal(VIEW_QUERY)} = {sql_literal(digest)}) AS {select_sql}")


def set_properties(spark, table: str, properties: dict) -> None:
    """Set table properties (``TBLPROPERTIES``), e.g. the schema a table was ingested with."""
    pairs = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ({pairs})")


def properties(spark, table: str) -> dict:
    """The properties (``TBLPROPERTIES``) of a table or view, by key."""
    return {r[0]: r[1] for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
