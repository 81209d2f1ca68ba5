"""Batch writes replace exactly the named batches, also when a batch becomes empty."""
import pytest
from pyspark.testing import assertDataFrameEqual

from sparkeras.tables import write_batches


def rows(spark, data):
    return spark.createDataFrame(data, "v int, batch string")


def test_rewriting_a_batch_replaces_only_that_batch(spark):
    write_batches(spark, rows(spark, [(1, "a"), (2, "b")]), "tb_replace", "batch", ["a", "b"], "parquet")
    write_batches(spark, rows(spark, [(3, "a")]), "tb_replace", "batch", ["a"], "parquet")
    assertDataFrameEqual(spark.table("tb_replace"), rows(spark, [(3, "a"), (2, "b")]))
    write_batches(spark, rows(spark, [(4, "c")]), "tb_replace", "batch", ["c"], "parquet")
    assertDataFrameEqual(spark.table("tb_replace"), rows(spark, [(3, "a"), (2, "b"), (4, "c")]))


def test_a_batch_rewritten_with_no_rows_disappears(spark):
    write_batches(spark, rows(spark, [(1, "a"), (2, "b")]), "tb_empty", "batch", ["a", "b"], "parquet")
    write_batches(spark, rows(spark, []), "tb_empty", "batch", ["a"], "parquet")
    assertDataFrameEqual(spark.table("tb_empty"), rows(spark, [(2, "b")]))


def test_rows_outside_the_named_batches_are_refused(spark):
    write_batches(spark, rows(spark, [(1, "a")]), "tb_refuse", "batch", ["a"], "parquet")
    import pytest
    with pytest.raises(ValueError, match="not named"):
        write_batches(spark, rows(spark, [(1, "z")]), "tb_refuse", "batch", ["a"], "parquet")


def test_delta_replace_where_selects_exactly_the_named_batches(spark):
    from sparkeras.tables import replace_where
    cond = replace_where("batch_id", ["2026-11-21", "o'hara\\x", "2026-11-21"])
    assert cond == "`batch_id` IN ('2026-11-21', 'o\\'hara\\\\x')"
    # The predicate means the same to Spark's SQL parser: it keeps exactly those batches.
    rows = [("2026-11-21",), ("o'hara\\x",), ("2026-11-20",), ("o'hara",)]
    kept = spark.createDataFrame(rows, "batch_id string").where(cond)
    assert sorted(r[0] for r in kept.collect()) == ["2026-11-21", "o'hara\\x"]
    with pytest.raises(ValueError, match="at least one batch id"):
        replace_where("batch_id", [])


def test_a_view_is_replaced_only_when_its_query_changes(spark):
    """Every score re-states its daily view: the same query leaves the view as it is (a
    property marks it; replacing would drop the marker set here), another query replaces it,
    and so does a view made before the property existed."""
    from sparkeras.tables import create_view

    def marked():
        props = {r[0]: r[1] for r in spark.sql("SHOW TBLPROPERTIES tb_view").collect()}
        return props.get("marker") == "kept"

    write_batches(spark, rows(spark, [(1, "a"), (2, "b")]), "tb_viewed", "batch", ["a", "b"],
                  "parquet")
    spark.sql("CREATE OR REPLACE VIEW tb_view AS SELECT COUNT(*) AS n FROM tb_viewed")
    create_view(spark, "tb_view", "SELECT COUNT(*) AS n FROM tb_viewed")    # made before: replaced
    spark.sql("ALTER VIEW tb_view SET TBLPROPERTIES ('marker' = 'kept')")
    create_view(spark, "tb_view", "SELECT COUNT(*) AS n FROM tb_viewed")
    assert marked() and spark.table("tb_view").first().n == 2
    create_view(spark, "tb_view", "SELECT SUM(v) AS n FROM tb_viewed")
    assert not marked() and spark.table("tb_view").first().n == 3


def test_an_early_lookup_keeps_its_error_for_the_commands_own_lookup(spark, caplog):
    """``look_up_soon`` starts the metastore while a command reads its input; a name the
    catalog refuses must not escape its thread (no traceback on stderr): the command's own
    lookup raises it, as before."""
    import logging
    import threading

    from sparkeras.tables import look_up_soon, table_exists

    escaped = []
    hook, threading.excepthook = threading.excepthook, escaped.append
    # the handler on the module's logger itself: a command run in-process before this test
    # (logs.setup) stops sparkeras' records from reaching the root logger, caplog's place
    logger = logging.getLogger("sparkeras.tables")
    logger.addHandler(caplog.handler)
    propagate, logger.propagate = logger.propagate, False      # each record once
    try:
        with caplog.at_level(logging.DEBUG, logger="sparkeras.tables"):
            look_up_soon(spark, "no such!table")
            for thread in threading.enumerate():
                if thread.name == "sparkeras-metastore":
                    thread.join(60)
    finally:
        threading.excepthook = hook
        logger.removeHandler(caplog.handler)
        logger.propagate = propagate
    assert escaped == []
    assert [r.getMessage().split(":")[0] for r in caplog.records
            if r.name == "sparkeras.tables"] == ["early lookup of no such!table"]
    with pytest.raises(Exception, match="no such!table|PARSE_SYNTAX_ERROR|Syntax error"):
        table_exists(spark, "no such!table")
