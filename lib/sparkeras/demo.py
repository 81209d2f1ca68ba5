"""The end-to-end demo behind ``make run``: generate, ingest, train, score, query."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TextIO

from . import analyst
from .config import Config

# A late export as real systems write them: byte-order mark, CRLF, spaces, and a few
# records that must be quarantined (empty field, flag 2, text flag, unknown cause, short row).
LATE_EXPORT = (
    "\ufeffID, CPU_LOAD, MEMORY_LEAK_LOAD, DELAY, ERROR_1000, ERROR_1001, ERROR_1002, "
    "ERROR_1003, ROOT_CAUSE\r\n"
    "{a}, 1, 1, 0, 1, 0, 0, 0, MEMORY_LEAK\r\n"
    "{b}, 0, 0, 1, 0, 1, 1, 0, \r\n"
    "{c}, 1, , 0, 0, 0, 1, 1, DATABASE_ISSUE\r\n"
    "{d}, 2, 0, 1, 0, 1, 0, 0, NETWORK_DELAY\r\n"
    "{e}, 1, 0, high, 0, 1, 0, 0, NETWORK_DELAY\r\n"
    "{f}, 0, 1, 0, 1, 0, 0, 0, DISK_FULL\r\n"
    "{g}, 0, 1, 0\r\n"
)


log = logging.getLogger(__name__)


def _step(n: int, total: int, text: str) -> float:
    log.info(f"step {n}/{total}: {text}")
    return time.time()


def run_demo(spark, cfg: Config, rows: int, out: TextIO) -> dict:
    from .ingest import ingest_incidents
    from .scoring import score_incidents
    from .train import train_incidents
    from .workloads import incidents

    source = Path(cfg.state_dir) / "demo" / "incidents_csv"
    table = cfg.table_name(cfg.demo.table)
    scored = cfg.table_name(cfg.demo.scored_table)
    started = time.time()
    timings = {}

    t = _step(1, 5, f"generating {rows:,} incidents into {source}")
    incidents.write_generated(spark, rows, str(source))
    ids = {k: rows + i + 1 for i, k in enumerate("abcdefg")}
    (source / "late_export.csv").write_bytes(LATE_EXPORT.format(**ids).encode("utf-8"))
    timings["generate_s"] = round(time.time() - t, 1)

    t = _step(2, 5, f"ingesting into {table}")
    ingested = ingest_incidents(spark, cfg, str(source), table, "csv",
                                batch_id="demo").summary()  # a re-run replaces the demo batch
    log.info(f"  {ingested['valid_rows']:,} valid, {ingested['quarantined_rows']:,} "
             f"quarantined in {ingested['quarantine_table']}")
    timings["ingest_s"] = round(time.time() - t, 1)

    t = _step(3, 5, f"training for up to {cfg.demo.epochs} epoch"
                    f"{'' if cfg.demo.epochs == 1 else 's'}")
    cfg.train.epochs = cfg.demo.epochs
    trained = train_incidents(spark, cfg, table)
    timings["train_s"] = round(time.time() - t, 1)

    t = _step(4, 5, f"scoring {table} into {scored}")
    result = score_incidents(spark, cfg, table, scored, cfg.score.model_uri).summary()
    timings["score_s"] = round(time.time() - t, 1)

    _step(5, 5, "the analyst's questions")
    out.write("\nRoot causes per day:\n")
    analyst.print_query(spark, analyst.root_causes_per_day(scored), "table", 100, out)
    out.write("\nThe least confident incidents:\n")
    analyst.print_query(spark, analyst.least_confident(scored, 5), "table", 5, out)
    out.write("\n")
    per_day = [r.asDict() for r in spark.sql(analyst.root_causes_per_day(scored)).collect()]
    return {"ingest": ingested,
            "train": {k: trained[k] for k in ("run_id", "model_version", "became_champion",
                                              "champion_reason", "test_metrics")},
            "best_achievable_accuracy": round(incidents.bayes_accuracy(), 4),
            "score": result, "root_causes_per_day": per_day, "timings": timings,
            "total_s": round(time.time() - started, 1)}
