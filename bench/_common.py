"""Shared pieces of the benchmarks: a private local[2] session, timing, the results file."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(df) -> float:
    """Seconds to run ``df`` into Spark's ``noop`` sink (every row computed, none kept)."""
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def bench_session(*overrides: str):
    """(config, SparkSession) on a fresh state folder: local[2], 2 shuffle partitions.

    The JVM compiles with both compilers (``spark.jit: full``): these benchmarks measure the
    steady state of a long session, warmed up, as a cluster's JVM runs it. The command's
    default (``auto``) has no input size here and would choose C1 alone (``quick``), which
    measured 0.43-0.51x the throughput (docs/performance.md, stop 32)."""
    from sparkeras.config import load_config
    from sparkeras.session import get_spark
    state = tempfile.mkdtemp(prefix="sparkeras-bench-")
    cfg = load_config(None, [f"state_dir={state}", "spark.master=local[2]", "spark.jit=full",
                             "spark.conf={spark.sql.shuffle.partitions: 2}", *overrides])
    return cfg, get_spark(cfg)


def write_results(name: str, out: dict) -> Path:
    """``bench/results/<name>-<UTC time>.json``; returns the path."""
    path = ROOT / "bench" / "results" / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {path.relative_to(ROOT)}")
    return path
