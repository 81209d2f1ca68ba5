"""Benchmark: image scoring throughput, side by side in one run.

Run by hand (``make bench-images`` or ``python bench/score_images.py``).

Part 1, 28x28x1 with the classic CNN (trained and registered by sparkeras), N images cached
in memory as an ingested table (raw bytes + height/width/channels), each Spark method
writing to the ``noop`` sink in local[2]:

- sparkeras:          ``images.predict_image_columns`` (the score stage's
                      transform: label, confidence, top 3 labels and probabilities), in
                      TensorFlow: the steady state a worker reaches once it has spent
                      ``score.numpy_start_seconds`` in numpy (measured with it at 0)
- sparkeras_numpy:    the same, every image through the numpy pass a worker starts with
                      (``cnn_forward``; the budget never runs out)
- spark_udf:          ``mlflow.pyfunc.spark_udf`` on a custom pyfunc that decodes the bytes
                      and calls the Keras model; returns the 10 probabilities
- predict_batch_udf:  ``pyspark.ml.functions.predict_batch_udf``, batch 1024, same output
- floor:              a pass-through pandas UDF returning one int column
- ceiling (no Spark): one Python process, the same images as bytes in memory, decode +
                      ``@tf.function`` forward + top 3, TF's default threads, in chunks of
                      128, 256 or 1024 images: the best of the three is the ceiling

Part 2, the folder path at 224x224x3 with MobileNetV2 (random weights: same compute),
from JPEG photos of 500x375 (cats-vs-dogs size): images/s of decode + resize alone
(the ingest UDF alone, and the whole ingest stage), of scoring the decoded table, and of
scoring the encoded JPEG bytes directly.

Two warm-ups per method, then the median of ``--repeats`` runs. Results are written to
``bench/results/score_images-<UTC time>.json`` and summarised in docs/performance.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from _common import bench_session, log, timed, write_results


def measure(name: str, run, n: int, repeats: int, warmups: int = 2) -> dict:
    # Two warm-ups: Spark keeps more idle Python workers than slots (from the ingest and
    # training jobs) and hands them out in turn, so one warm-up loads the model into only
    # half of them; every method gets the same two.
    for i in range(warmups):
        log(f"{name}: warm-up {i + 1}")
        run()
    runs = []
    for i in range(repeats):
        runs.append(run())
        log(f"{name}: run {i + 1}: {n / runs[-1]:,.0f} images/s")
    med = statistics.median(runs)
    return {"seconds": runs, "median_s": med, "images_per_s": n / med}




def log_pyfunc(model_uri: str, shape, tracking: str) -> str:
    """A custom pyfunc around the registered Keras model: bytes column -> probabilities."""
    import mlflow
    import mlflow.pyfunc

    class ImagePyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            import os

            import keras
            self.model = keras.saving.load_model(
                os.path.join(context.artifacts["keras"], "artifacts", "model.keras"))

        def predict(self, context, model_input, params=None):
            col = model_input.iloc[:, 0]
            x = np.frombuffer(b"".join(col.tolist()), np.uint8).reshape(-1, *shape)
            return np.asarray(self.model.predict_on_batch(x))   # 2-D: array<float> per row

    from mlflow.artifacts import download_artifacts
    local = download_artifacts(model_uri)
    with mlflow.start_run(run_name="bench-pyfunc"):
        info = mlflow.pyfunc.log_model(name="pyfunc", python_model=ImagePyfunc(),
                                       artifacts={"keras": local})
    return info.model_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folder-images", type=int, default=1000)
    ap.add_argument("--methods",
                    default="sparkeras,sparkeras_numpy,ceiling,floor,predict_batch_udf,spark_udf")
    ap.add_argument("--skip-folder", action="store_true")
    args = ap.parse_args()

    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    from sparkeras.ingest import ingest_images
    from sparkeras.scoring import resolve_model
    from sparkeras.session import temporary_conf
    from sparkeras.train import train_images
    from sparkeras.workloads import image_synth, images

    cfg, spark = bench_session("train.epochs=1", "train.batch_size=128")
    state = cfg.state_dir
    tracking = cfg.mlflow.tracking_uri
    shape = (28, 28, 1)

    log("training the benchmark model (classic CNN, 28x28x1)")
    image_synth.generate(spark, 7000, f"{state}/train_idx", "idx", seed=1)
    ingest_images(spark, cfg, f"{state}/train_idx", "bench_train", "idx", size=shape)
    trained = train_images(spark, cfg, "default.bench_train")
    model = resolve_model(cfg, f"models:/{cfg.registry.image_model}/{trained['model_version']}",
                          cfg.registry.image_model)

    log(f"generating and ingesting {args.images:,} images to score")
    image_synth.generate(spark, args.images, f"{state}/score_idx", "idx", seed=2)
    ingest_images(spark, cfg, f"{state}/score_idx", "bench_score", "idx", labeled=False, size=shape)
    df = spark.table("bench_score").select("image_id", "image", "height", "width", "channels") \
        .repartition(2).cache()
    n = df.count()
    score_rows = images.decode_batch_rows(*shape, cfg.score.arrow_batch_rows)
    default_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")

    def spark_method(build, batch_rows):
        def run():
            with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": batch_rows}):
                return timed(build())
        return run

    def sparkeras_query(numpy_seconds: float = 0.0):
        engine = dataclasses.replace(model, numpy_seconds=numpy_seconds)
        return images.predict_image_columns(df, engine, cfg.score.predict_chunk_rows).select(
            "image_id", "predicted_label", "confidence", "top_1_label", "top_1_probability",
            "top_2_label", "top_2_probability", "top_3_label", "top_3_probability")

    def spark_udf_query():
        import mlflow.pyfunc
        udf = mlflow.pyfunc.spark_udf(spark, pyfunc_uri, result_type=ArrayType(FloatType()),
                                      env_manager="local")
        return df.select("image_id", udf(F.struct("image")).alias("p"))

    def predict_batch_query():
        from pyspark.ml.functions import predict_batch_udf
        uri = model.uri

        def make_predict_fn():
            import mlflow
            mlflow.set_tracking_uri(tracking)
            from sparkeras.serving import load_keras
            keras_model = load_keras(uri)

            def predict(x):
                arr = np.frombuffer(b"".join(x.tolist()), np.uint8).reshape(-1, *shape)
                return keras_model.predict_on_batch(arr)
            return predict
        udf = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                                batch_size=1024)
        return df.select("image_id", udf("image").alias("p"))

    def floor_query():
        @pandas_udf("int")
        def passthrough(it: Iterator[pd.Series]) -> Iterator[pd.Series]:
            for s in it:
                yield pd.Series(np.zeros(len(s), dtype=np.int32))
        return df.select("image_id", passthrough("image").alias("x"))

    def ceiling_runner(chunk):
        """No Spark: the images as bytes in this process, decode + forward + top 3."""
        import tensorflow as tf
        pdf = df.select("image", "height", "width", "channels").toPandas()
        from sparkeras.serving import load_keras
        keras_model = load_keras(model.uri)

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.uint8)])
        def forward(x):
            return keras_model(x, training=False)

        def run():
            t = time.perf_counter()
            for i in range(0, len(pdf), chunk):
                part = pdf.iloc[i:i + chunk]
                x, _, _ = images.images_to_array(part["image"], part["height"], part["width"],
                                          part["channels"], shape)
                p = forward(x).numpy()
                np.argsort(-p, axis=1)[:, :3]
            return time.perf_counter() - t
        return run

    results = {}
    for name in args.methods.split(","):
        if name == "spark_udf":
            pyfunc_uri = log_pyfunc(model.uri, shape, tracking)
            run = spark_method(spark_udf_query, default_batch)
        elif name == "sparkeras":
            run = spark_method(sparkeras_query, score_rows)
        elif name == "sparkeras_numpy":
            run = spark_method(lambda: sparkeras_query(numpy_seconds=1e9), score_rows)
        elif name == "predict_batch_udf":
            run = spark_method(predict_batch_query, default_batch)
        elif name == "floor":
            run = spark_method(floor_query, score_rows)
        elif name == "ceiling":
            # The ceiling gets its best chunk size (TF's default threads prefer larger
            # chunks than one-thread workers do); all sizes tried are reported.
            tried = {c: measure(f"ceiling chunk {c}", ceiling_runner(c), n, args.repeats)
                     for c in (128, 256, 1024)}
            best = max(tried, key=lambda c: tried[c]["images_per_s"])
            results["ceiling"] = {**tried[best], "chunk": best,
                                  "by_chunk": {c: r["images_per_s"] for c, r in tried.items()}}
            continue
        else:
            raise SystemExit(f"unknown method {name}")
        results[name] = measure(name, run, n, args.repeats)

    folder = {} if args.skip_folder else folder_path(spark, cfg, state, args.folder_images,
                                                     max(1, args.repeats - 2))
    ref = results.get("sparkeras", {}).get("images_per_s")
    print(f"\n{'method (28x28x1, classic CNN)':<34}{'images/s':>12}{'sparkeras / method':>22}")
    for name, r in results.items():
        ratio = f"{ref / r['images_per_s']:.2f}x" if ref else "-"
        print(f"{name:<34}{r['images_per_s']:>12,.0f}{ratio:>22}")
    for name, r in folder.items():
        if isinstance(r, dict) and "images_per_s" in r:
            print(f"{'folder 224x224 ' + name:<34}{r['images_per_s']:>12,.1f}")
    out = {"benchmark": "score_images", "images": n, "repeats": args.repeats,
           "master": "local[2]", "model": "classic CNN 28x28x1 (32-64-64 conv, dense 64)",
           "arrow_batch_rows_sparkeras": score_rows, "arrow_batch_rows_default": int(default_batch),
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "cpus": os.cpu_count(), "results": results,
           "folder_224_mobilenet_v2": folder}
    if ref:
        out["ratios"] = {f"sparkeras_over_{k}": ref / v["images_per_s"]
                         for k, v in results.items() if k != "sparkeras"}
    write_results("score_images", out)
    print(json.dumps({"images": n, **{k: round(v["images_per_s"]) for k, v in results.items()},
                      **{f"folder_{k}": round(v["images_per_s"], 1) for k, v in folder.items()
                         if isinstance(v, dict) and "images_per_s" in v}}))


def folder_path(spark, cfg, state: str, count: int, repeats: int) -> dict:
    """224x224x3 MobileNetV2 from 500x375 JPEGs: decode+resize, score decoded, score encoded."""
    import copy

    from PIL import Image
    from pyspark.sql import functions as F

    from sparkeras.ingest import ingest_images
    from sparkeras.scoring import resolve_model
    from sparkeras.session import temporary_conf
    from sparkeras.train import train_images
    from sparkeras.workloads import image_synth, images

    size = (224, 224, 3)
    photos = Path(state, "photos")
    log(f"writing {count} JPEG photos of 500x375")
    names = image_synth.class_names(2)
    base, labels = image_synth.synthetic_images(0, count, 2, 96, 96, 3, seed=4)
    for i in range(count):
        split = "test" if i % 7 == 6 else "train"
        folder = photos / split / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base[i]).resize((500, 375), Image.Resampling.BICUBIC).save(
            folder / f"{i}.jpg", "JPEG", quality=90)

    log("decode + resize alone: the ingest UDF over the photos, to the noop sink")
    decode_rows = images.decode_batch_rows(*size, cfg.images.decode_batch_rows)

    from sparkeras.sources import SourceFiles
    from sparkeras.workloads import image_sources
    tensors = images.to_tensors(image_sources.read_folder(
        spark, SourceFiles(spark, str(photos), recursive=True)), *size) \
        .select("image_id", "image", "reason")      # listed once, outside the timing

    def decode_only():
        with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": decode_rows}):
            return timed(tensors)
    decode_udf = measure("decode + resize UDF", decode_only, count, repeats)

    c = copy.deepcopy(cfg)
    c.images.architecture = "transfer"
    c.images.backbone = "mobilenet_v2"
    c.images.misclassified_grid = 0
    c.registry.image_model = "bench_mobilenet_v2"
    c.train.batch_size = 32
    decode = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        ingest_images(spark, c, str(photos), "bench_photos", "folder", size=size)
        decode.append(time.perf_counter() - t)
        log(f"folder ingest (decode + resize to 224x224) run {i}: {count / decode[-1]:,.1f} images/s")
    decode = decode[1:]
    log("training MobileNetV2 for one epoch on the photos (random initial weights)")
    trained = train_images(spark, c, "default.bench_photos")
    model = resolve_model(c, f"models:/bench_mobilenet_v2/{trained['model_version']}",
                          "bench_mobilenet_v2")
    rows = images.decode_batch_rows(*size, c.score.arrow_batch_rows)
    decoded = spark.table("bench_photos").select("image_id", "image", "height", "width",
                                                 "channels").repartition(2).cache()
    decoded.count()
    encoded = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
               .load(str(photos)).select(F.col("path").alias("image_id"),
                                         F.col("content").alias("image"))
               .repartition(2).cache())
    encoded.count()

    def score(df):
        def run():
            with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": rows}):
                return timed(images.predict_image_columns(df, model, c.score.predict_chunk_rows)
                             .select("image_id", "predicted_label", "confidence"))
        return run
    return {
        "photos": count, "photo_size": [375, 500], "model_input": list(size),
        "decode_resize_udf": decode_udf,
        "decode_resize_ingest": {"seconds": decode, "median_s": statistics.median(decode),
                                 "images_per_s": count / statistics.median(decode)},
        "score_decoded_table": measure("score 224x224 tensors", score(decoded), count, repeats),
        "score_encoded_jpeg": measure("score JPEG bytes (decode in the UDF)", score(encoded),
                                      count, repeats),
    }


if __name__ == "__main__":
    main()
