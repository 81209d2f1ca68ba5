"""Column expressions that mean the same on Spark 3.5 (Databricks LTS runtimes) and Spark 4.

Spark 4 widened a few functions (e.g. ``array_position`` takes a column as the value);
these helpers use only what both versions accept.
"""
from __future__ import annotations

from typing import Sequence


def index_of(values: Sequence[str], col):
    """The 0-based position of ``col``'s value in ``values`` (null when absent)."""
    from pyspark.sql import functions as F
    pairs = [x for i, v in enumerate(values) for x in (F.lit(v), F.lit(i))]
    return F.create_map(*pairs)[col].cast("int") if pairs else F.lit(None).cast("int")
