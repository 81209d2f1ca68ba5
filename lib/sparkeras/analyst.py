"""What analysts ask of the scored tables, and printing query results."""
from __future__ import annotations

import logging
from typing import TextIO

log = logging.getLogger(__name__)


def root_causes_per_day(scored: str) -> str:
    return (f"SELECT day, predicted_root_cause, incidents, ROUND(avg_confidence, 3) AS avg_confidence "
            f"FROM {scored}_daily ORDER BY day, incidents DESC")


def least_confident(scored: str, n: int = 10) -> str:
    return (f"SELECT ID, predicted_root_cause, ROUND(confidence, 3) AS confidence, model_version "
            f"FROM {scored} ORDER BY confidence ASC, ID LIMIT {n}")


def least_confident_images(scored: str, n: int = 10) -> str:
    return (f"SELECT image_id, predicted_label, ROUND(confidence, 3) AS confidence, top_2_label, "
            f"ROUND(top_2_probability, 3) AS top_2_probability, model_version "
            f"FROM {scored} ORDER BY confidence ASC, image_id LIMIT {n}")


def print_query(spark, query: str, fmt: str, max_rows: int, out: TextIO) -> int:
    """Run ``query`` and print at most ``max_rows`` rows as a table, CSV or JSON lines."""
    pdf = spark.sql(query).limit(max_rows + 1).toPandas()
    truncated = len(pdf) > max_rows
    pdf = pdf.head(max_rows)
    if fmt == "csv":
        out.write(pdf.to_csv(index=False))
    elif fmt == "json":
        text = pdf.to_json(orient="records", lines=True, date_format="iso")
        out.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        out.write((pdf.to_string(index=False) if len(pdf) else "(no rows)") + "\n")
    out.flush()
    if truncated:
        log.info(f"showing the first {max_rows} rows (--max-rows)")
    return len(pdf)
