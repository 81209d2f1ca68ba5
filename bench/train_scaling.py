"""Benchmark: training throughput on the driver and on 1 or 2 barrier workers, and the
Spark-fed input pipeline against an in-memory numpy feed of the same data.

Run by hand (``make bench-train`` or ``python bench/train_scaling.py``), in local[2].

Part 1, training samples/s (the ``train_samples_per_second`` the run logs to MLflow: steps x
global batch x epochs / loop seconds, validation included) for ``train.workers`` 0 (the
driver, MirroredStrategy on the CPU), 1 and 2 (Spark barrier tasks, MultiWorkerMirrored),
for the incident MLP and the classic CNN on 28x28 images.

Part 2, input pipeline samples/s, no model: the training feed (Parquet cache written by
Spark -> pyarrow -> shuffle buffer -> ``tf.data``) against ``tf.data`` over the same rows
held in numpy arrays (``from_tensor_slices``, shuffle, batch), both iterated to the end.

Results in ``bench/results/train_scaling-<UTC time>.json``; summary in docs/performance.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
from _common import bench_session, log, write_results


def train_throughput(spark, cfg, table: str, train_fn, workers_list, epochs: int,
                     feed_name: str = "arrow") -> dict:
    import mlflow
    out = {}
    for workers in workers_list:
        c = copy.deepcopy(cfg)
        c.train.feed = feed_name
        c.train.workers = workers
        c.train.epochs = epochs
        c.train.patience = epochs
        # one TF thread per barrier worker (two workers share the 2 cores); the driver gets both
        threads = 1 if workers >= 2 else 2
        c.tensorflow.intra_op_threads = threads
        log(f"{table}: training with train.workers={workers}, train.feed={feed_name} "
            f"({threads} TF threads each)")
        t = time.perf_counter()
        result = train_fn(spark, c, table)
        wall = time.perf_counter() - t
        metrics = mlflow.get_run(result["run_id"]).data.metrics
        out[str(workers)] = {"samples_per_s": metrics["train_samples_per_second"],
                             "loop_seconds": metrics["train_seconds"], "stage_seconds": wall,
                             "test_accuracy": result["test_metrics"]["accuracy"]}
        log(f"  {metrics['train_samples_per_second']:,.0f} samples/s in the loop, "
            f"{wall:.1f}s for the whole train stage")
    return out


def feed_throughput(data, decoder, batch: int, shuffle: int, root: str, repeats: int) -> dict:
    """The training feed against an in-memory numpy feed of the same rows."""
    import tensorflow as tf

    from sparkeras.training import feed
    cache = feed.write_cache(data, root)
    files = cache.files("train")
    rows = cache.rows["train"]
    steps = rows // batch

    def spark_fed():
        ds = tf.data.Dataset.from_generator(
            lambda: feed.fixed_steps(files, decoder, batch, steps, shuffle, 1),
            output_signature=({name: tf.TensorSpec((batch, *shape), dtype)
                               for name, (shape, dtype) in decoder.inputs.items()},
                              tf.TensorSpec((batch,), tf.int32))).prefetch(2)
        return ds

    xs, ys = zip(*feed.iter_batches(files, decoder, 8192))
    x, y = feed.concat(xs), np.concatenate(ys)

    def in_memory():
        return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(shuffle, seed=1)
                .batch(batch, drop_remainder=True).prefetch(2))

    out = {"rows": rows, "batch": batch, "shuffle_buffer": shuffle}
    for name, make in (("spark_fed", spark_fed), ("in_memory_numpy", in_memory)):
        runs = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            n = sum(int(b[1].shape[0]) for b in make())
            runs.append(n / (time.perf_counter() - t))
        out[name] = {"samples_per_s": float(np.median(runs[1:])), "runs": runs[1:]}
        log(f"  feed {name}: {out[name]['samples_per_s']:,.0f} samples/s")
    out["ratio"] = out["spark_fed"]["samples_per_s"] / out["in_memory_numpy"]["samples_per_s"]
    return out


def stack_versions() -> dict:
    import pyarrow
    import pyspark
    import tensorflow
    return {"pyspark": pyspark.__version__, "pyarrow": pyarrow.__version__,
            "numpy": np.__version__, "tensorflow": tensorflow.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incidents", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=21_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--feeds", default="arrow",
                    help="training feeds to compare, e.g. arrow,petastorm (Spark 3.5 stack)")
    args = ap.parse_args()

    from pyspark.sql import functions as F

    from sparkeras.ingest import ingest_images, ingest_incidents
    from sparkeras.train import train_images, train_incidents
    from sparkeras.training import feed
    from sparkeras.workloads import image_synth, incidents

    cfg, spark = bench_session("train.batch_size=512", "train.hidden_units=[64, 64]",
                               "tensorflow.inter_op_threads=1")
    state = cfg.state_dir
    workers_list = [int(w) for w in args.workers.split(",")]
    log(f"preparing {args.incidents:,} incidents and {args.images:,} images")
    incidents.generate(spark, args.incidents, seed=3).write.option("header", True) \
        .csv(f"{state}/inc")
    ingest_incidents(spark, cfg, f"{state}/inc", "bench_incidents", "csv")
    image_synth.generate(spark, args.images, f"{state}/idx", "idx", seed=3)
    ingest_images(spark, cfg, f"{state}/idx", "bench_images", "idx", size=(28, 28, 1))

    results = {}
    feeds = args.feeds.split(",")
    for name in feeds:
        suffix = "" if feeds == ["arrow"] else f"_{name}"
        results["incident_mlp" + suffix] = train_throughput(
            spark, cfg, "default.bench_incidents", train_incidents, workers_list, args.epochs, name)
        results["image_cnn_28x28" + suffix] = train_throughput(
            spark, cfg, "default.bench_images", train_images, workers_list, args.epochs, name)
    log("input pipelines")
    inc = spark.table("bench_incidents").select(
        *[F.col(c).cast("float").alias(c) for c in incidents.FEATURES],
        F.lit(0).alias("label"), F.lit("train").alias("split"))
    img = spark.table("bench_images").select("image", F.col("label_index").alias("label"),
                                             F.lit("train").alias("split"))
    results["feed_incidents"] = feed_throughput(inc, feed.TabularDecoder(incidents.FEATURES), 512,
                                                65536, f"{state}/feed_inc", args.repeats)
    results["feed_images"] = feed_throughput(img, feed.ImageDecoder((28, 28, 1)), 512, 20000,
                                             f"{state}/feed_img", args.repeats)
    out = {"benchmark": "train_scaling", "master": "local[2]", "cpus": os.cpu_count(),
           "epochs": args.epochs, "batch_size": 512,
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "stack": stack_versions(), "results": results}
    write_results("train_scaling", out)
    print(json.dumps({k: ({w: round(r["samples_per_s"]) for w, r in v.items()}
                          if not k.startswith("feed") else round(v["ratio"], 2))
                      for k, v in results.items()}))


if __name__ == "__main__":
    main()
