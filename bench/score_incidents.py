"""Benchmark: incident scoring throughput, side by side in one Spark session.

Run by hand (``make bench`` or ``python bench/score_incidents.py``). Methods, each writing
to Spark's ``noop`` sink from the same cached input of N rows in local[2]:

- sparkeras:          ``incidents.predict_columns`` (the score stage's transform)
- spark_udf:          ``mlflow.pyfunc.spark_udf`` of the registered pyfunc (the 7 named columns)
- predict_batch_udf:  ``pyspark.ml.functions.predict_batch_udf``, batch 8192
- floor:              a pass-through pandas UDF returning one int column

A warm-up run per method, then the median of ``--repeats`` runs. Results are written to
``bench/results/score_incidents-<UTC time>.json`` and summarised in docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd
from _common import bench_session, log, timed, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="sparkeras,floor,predict_batch_udf,spark_udf")
    args = ap.parse_args()

    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    from sparkeras.ingest import ingest_incidents
    from sparkeras.scoring import resolve_model
    from sparkeras.train import train_incidents
    from sparkeras.workloads import incidents

    cfg, spark = bench_session("train.hidden_units=[64, 64]", "train.epochs=2")
    state = cfg.state_dir

    log("training the benchmark model (MLP 64-64-3)")
    src = f"{state}/train_csv"
    incidents.write_generated(spark, 50_000, src, seed=1)
    ingest_incidents(spark, cfg, src, "bench_train", "csv")
    trained = train_incidents(spark, cfg, "default.bench_train")
    model = resolve_model(cfg, f"models:/{cfg.registry.incident_model}/{trained['model_version']}",
                          cfg.registry.incident_model)
    tracking = cfg.mlflow.tracking_uri

    log(f"caching {args.rows:,} input rows")
    data = f"{state}/input_parquet"
    incidents.generate(spark, args.rows, seed=2, labeled=False).write.parquet(data)
    df = spark.read.parquet(data).repartition(2).cache()
    df.count()
    feats = incidents.FEATURES
    default_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")

    def sparkeras_method():
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.score.arrow_batch_rows))
        return incidents.predict_columns(df, model).select(
            "ID", "predicted_label", "confidence", "probability_MEMORY_LEAK",
            "probability_NETWORK_DELAY", "probability_DATABASE_ISSUE")

    def spark_udf_method():
        import mlflow.pyfunc
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_batch)
        # the registered pyfunc: named columns in, the scored table's columns out
        result = ", ".join(["predicted_root_cause string", "confidence double"] +
                           [f"probability_{c} double" for c in incidents.LABELS])
        udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=result, env_manager="local")
        return df.select("ID", udf(F.struct(*[F.col(c).cast("double").alias(c) for c in feats])).alias("p"))

    def predict_batch_method():
        from pyspark.ml.functions import predict_batch_udf
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_batch)
        uri = model.uri

        def make_predict_fn():
            import mlflow
            mlflow.set_tracking_uri(tracking)
            from sparkeras.serving import load_keras
            keras_model = load_keras(uri)
            return lambda x: keras_model.predict_on_batch(x)
        udf = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                                batch_size=8192, input_tensor_shapes=[[len(feats)]])
        return df.select("ID", udf(F.array(*[F.col(c).cast("float") for c in feats])).alias("p"))

    def floor_method(batch_rows):
        def build():
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))

            @pandas_udf("int")
            def passthrough(it: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
                for pdf in it:
                    yield pd.Series(np.zeros(len(pdf), dtype=np.int32))
            return df.select("ID", passthrough(F.struct(*feats)).alias("x"))
        return build

    methods = {"sparkeras": sparkeras_method, "floor": floor_method(default_batch),
               "floor_same_batch": floor_method(cfg.score.arrow_batch_rows),
               "predict_batch_udf": predict_batch_method, "spark_udf": spark_udf_method}
    wanted = args.methods.split(",")
    if "floor" in wanted:
        wanted.insert(wanted.index("floor") + 1, "floor_same_batch")
    results = {}
    for name in wanted:
        query = methods[name]()
        log(f"{name}: warm-up")
        timed(query)
        runs = []
        for i in range(args.repeats):
            runs.append(timed(query))
            log(f"{name}: run {i + 1}: {args.rows / runs[-1]:,.0f} rows/s")
        med = statistics.median(runs)
        results[name] = {"seconds": runs, "median_s": med, "rows_per_s": args.rows / med}
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_batch)

    ref = results.get("sparkeras", {}).get("rows_per_s")
    print(f"\n{'method':<20}{'rows/s':>14}{'sparkeras / method':>22}")
    for name, r in results.items():
        ratio = f"{ref / r['rows_per_s']:.2f}x" if ref else "-"
        print(f"{name:<20}{r['rows_per_s']:>14,.0f}{ratio:>22}")
    out = {"benchmark": "score_incidents", "rows": args.rows, "repeats": args.repeats,
           "master": "local[2]", "arrow_batch_rows_sparkeras": cfg.score.arrow_batch_rows,
           "arrow_batch_rows_default": int(default_batch), "model": "MLP 64-64-3",
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "results": results}
    if ref:
        out["ratios"] = {f"sparkeras_over_{k}": ref / v["rows_per_s"] for k, v in results.items()
                         if k != "sparkeras"}
    write_results("score_incidents", out)
    print(json.dumps({"rows": args.rows, **{k: round(v["rows_per_s"]) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
