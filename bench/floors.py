"""The floor jobs of ``bench/stages.py``: what Spark itself needs for a stage's I/O, run as a
whole command in a new process with the same session code as sparkeras (the same JIT:
``spark.jit: auto`` chooses from the input's size for both; and its JVM stopped and waited
for at the end, as a command's is).

    python bench/floors.py --state DIR score-incidents --table T --output O
    python bench/floors.py --state DIR ingest-incidents --source SRC --table T
    python bench/floors.py --state DIR score-images --table T --output O
    python bench/floors.py --state DIR ingest-images --source SRC --table T

- score-incidents: read the table, a pass-through pandas UDF on the 7 signals (one int
  out), ``saveAsTable`` parquet;
- ingest-incidents: Spark's CSV reader with a fixed schema (PERMISSIVE) into a parquet
  table;
- score-images: read the image table, a pass-through pandas UDF on the image bytes (one
  int out), ``saveAsTable`` parquet;
- ingest-images: Spark has no IDX reader, so the least a reader does: ``binaryFile`` of the
  ``*-images-idx3-ubyte.gz`` files, one task per file that gunzips it and cuts it into one
  row per image (``image_id``, raw bytes) with numpy, ``saveAsTable`` parquet. No labels,
  no checks, no quarantine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd  # module level: the UDF's type hints name it


def idx_rows(batches):
    """mapInPandas: IDX images files (path, gzipped content) -> one row per image."""
    import gzip

    import numpy as np
    for pdf in batches:
        for path, content in zip(pdf["path"], pdf["content"]):
            data = gzip.decompress(content)
            n, h, w = (int(x) for x in np.frombuffer(data, ">u4", 3, 4))
            images = np.frombuffer(data, np.uint8, n * h * w, 16).reshape(n, h * w)
            for start in range(0, n, 10_000):
                chunk = images[start:start + 10_000]
                yield pd.DataFrame({"image_id": [f"{path}#{i}" for i in
                                                 range(start, start + len(chunk))],
                                    "image": [row.tobytes() for row in chunk]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True)
    sub = ap.add_subparsers(dest="job", required=True)
    for job, options in (("score-incidents", ("--table", "--output")),
                         ("ingest-incidents", ("--source", "--table")),
                         ("score-images", ("--table", "--output")),
                         ("ingest-images", ("--source", "--table"))):
        job_parser = sub.add_parser(job)
        for option in options:
            job_parser.add_argument(option, required=True)
    args = ap.parse_args()
    started = time.perf_counter()

    from sparkeras.config import load_config
    from sparkeras.session import get_spark
    from sparkeras.workloads.incidents import FEATURES
    cfg = load_config(None, [f"state_dir={args.state}"])
    # the JVM's compilers chosen as a sparkeras command's are (spark.jit: auto, by the size
    # of the input), so that both sides of a comparison run the same JIT
    from sparkeras import input_size
    rows = (input_size.table_rows(cfg.spark.warehouse_dir, cfg.table_name(args.table))
            if args.job == "score-incidents" else
            input_size.source_rows(args.source, "csv") if args.job == "ingest-incidents"
            else None)
    spark = get_spark(cfg, input_rows=rows)
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
    elif args.job == "score-images":
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("int")
        def passthrough_bytes(image: pd.Series) -> pd.Series:
            return image.str.len().astype("int32")

        out = spark.table(args.table).select("image_id",
                                             passthrough_bytes("image").alias("prediction"))
        out.write.mode("overwrite").format("parquet").saveAsTable(args.output)
    elif args.job == "ingest-images":
        files = (spark.read.format("binaryFile").option("recursiveFileLookup", True)
                 .option("pathGlobFilter", "*-images-idx3-ubyte.gz").load(args.source)
                 .select("path", "content"))
        out = files.mapInPandas(idx_rows, "image_id string, image binary")
        out.write.mode("overwrite").format("parquet").saveAsTable(args.table)
    else:
        schema = "ID BIGINT, " + ", ".join(f"{c} TINYINT" for c in FEATURES) + ", ROOT_CAUSE STRING"
        df = (spark.read.schema(schema).option("header", True).option("mode", "PERMISSIVE")
              .csv(args.source))
        df.write.mode("overwrite").format("parquet").saveAsTable(args.table)
    # ended as a sparkeras command ends its JVM: stopped and waited for (its shutdown is part
    # of a whole command; the metastore is free for the next one; its CPU is counted)
    from sparkeras.session import end_embedded_jvm
    end_embedded_jvm()
    print(json.dumps({"job": args.job,
                      "seconds_in_process": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
