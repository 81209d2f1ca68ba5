"""``train.feed: petastorm``: feed training through Petastorm's Spark dataset converter.

This is the feed Databricks documents for its Spark 3.5 LTS ML runtimes. The train split is
materialised by ``petastorm.spark.make_spark_converter`` and every worker reads its shard
with ``make_tf_dataset`` (``cur_shard``/``shard_count``), endlessly, taking exactly
``steps_per_epoch`` batches per epoch, so every worker runs the same steps.

Petastorm 0.13.1 imports only with pyarrow <= 14 and numpy < 2 (the Spark 3.5 stack,
``make test-compat``); on the primary stack choosing this feed is a clear error.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from ..errors import UsageError

REQUIREMENT = ("train.feed: petastorm needs petastorm 0.13.1, which imports only with "
               "pyarrow <= 14 and numpy < 2 (the Spark 3.5 stack of `make test-compat` and "
               "Databricks 15.4/16.4 LTS ML); use train.feed: arrow on this stack")


def import_petastorm():
    """The ``petastorm.spark`` module, or a ValueError that says which stack it needs."""
    try:
        with warnings.catch_warnings():     # petastorm warns about pyarrow's legacy APIs
            warnings.simplefilter("ignore")
            from petastorm import spark as petastorm_spark
    except ImportError as exc:
        raise UsageError(f"{REQUIREMENT} (importing it here fails: {exc})") from None
    return petastorm_spark


def require(spark):
    """The ``petastorm.spark`` module, or a clear error when this feed cannot run with
    ``spark``: a Spark Connect session (no SparkContext), or a stack petastorm cannot import."""
    from ..session import is_connect
    if is_connect(spark):
        raise UsageError("train.feed: petastorm needs a classic Spark session (its converter "
                         "works through the SparkContext, which Spark Connect does not "
                         "have): use train.feed: arrow on Spark Connect and serverless")
    return import_petastorm()


def materialize(spark, cache_root: str, rows: int, decoder, pipelines: int) -> dict:
    """Convert the cache's train split (``rows`` rows) with ``make_spark_converter``; return
    what workers need to reopen the converter (JSON): its folder, files and row count."""
    from ..session import temporary_conf
    ps = require(spark)
    df = spark.read.parquet(os.path.join(cache_root, "split=train")).select(*decoder.columns, "label")
    # At least a few row groups per worker: petastorm shards by row group.
    group_bytes = max(16 << 10, min(32 << 20, rows * decoder.row_bytes // (4 * pipelines)))
    url = Path(cache_root, "_petastorm").resolve().as_uri()
    with temporary_conf(spark, {ps.SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF: url}), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converter = ps.make_spark_converter(df, parquet_row_group_size_bytes=group_bytes)
    return {"cache_dir_url": converter.cache_dir_url, "file_urls": list(converter.file_urls),
            "dataset_size": len(converter), "row_group_bytes": group_bytes}


def open_dataset(spec: dict, decoder, batch_size: int, shard: int, shards: int, seed: int,
                 shuffle_rows: int, stack: contextlib.ExitStack):
    """An endless ``tf.data`` of (x, y) batches of this shard; the reader stays open until
    ``stack`` closes."""
    import tensorflow as tf
    ps = import_petastorm()
    converter = ps.SparkDatasetConverter(spec["cache_dir_url"], spec["file_urls"],
                                         spec["dataset_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stack.enter_context(converter.make_tf_dataset(
            batch_size=batch_size, num_epochs=None, workers_count=2, cur_shard=shard,
            shard_count=shards, shuffling_queue_capacity=shuffle_rows, seed=seed))
    label_dtype = tf.as_dtype(decoder.label_dtype)
    return ds.map(lambda b: (decoder.tf_batch(b), tf.cast(b.label, label_dtype)),
                  num_parallel_calls=tf.data.AUTOTUNE)
