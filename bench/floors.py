"""The floor jobs of ``bench/stages.py``: what Spark itself needs for a stage's I/O, run as a
whole command in a new process with the same session code as sparkeras.

    python bench/floors.py --state DIR score-incidents --table T --output O
    python bench/floors.py --state DIR ingest-incidents --source SRC --table T

- score-incidents: read the table, a pass-through pandas UDF on the 7 signals (one int
  out), ``saveAsTable`` parquet;
- ingest-incidents: Spark's CSV reader with a fixed schema (PERMISSIVE) into a parquet
  table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd  # module level: the UDF's type hints name it


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True)
    sub = ap.add_subparsers(dest="job", required=True)
    s = sub.add_parser("score-incidents")
    s.add_argument("--table", required=True)
    s.add_argument("--output", required=True)
    i = sub.add_parser("ingest-incidents")
    i.add_argument("--source", required=True)
    i.add_argument("--table", required=True)
    args = ap.parse_args()
    started = time.perf_counter()

    from sparkeras.config import load_config
    from sparkeras.session import get_spark
    from sparkeras.workloads.incidents import FEATURES
    cfg = load_config(None, [f"state_dir={args.state}"])
    spark = get_spark(cfg)
    if args.job == "score-incidents":
        from pyspark.sql import functions as F
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("int")
        def passthrough(a: pd.Series, b: pd.Series, c: pd.Series, d: pd.Series,
                        e: pd.Series, f: pd.Series, g: pd.Series) -> pd.Series:
            return a.astype("int32")

        out = (spark.table(args.table)
               .select("ID", passthrough(*[F.col(c) for c in FEATURES]).alias("prediction")))
        out.write.mode("overwrite").format("parquet").saveAsTable(args.output)
    else:
        schema = "ID BIGINT, " + ", ".join(f"{c} TINYINT" for c in FEATURES) + ", ROOT_CAUSE STRING"
        df = (spark.read.schema(schema).option("header", True).option("mode", "PERMISSIVE")
              .csv(args.source))
        df.write.mode("overwrite").format("parquet").saveAsTable(args.table)
    print(json.dumps({"job": args.job,
                      "seconds_in_process": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
