"""From a Spark table to batched ``tf.data`` without collecting on the driver.

Spark assigns each row a split by hashing its ID (:func:`assign_split`) and writes a
Parquet cache of float32 features and an int label index, one folder per split
(:func:`write_cache`). TensorFlow then streams those files in batches with pyarrow
(:func:`make_dataset`), shuffling with a bounded buffer; memory stays bounded whatever the
table size. The cache folder must be on storage the training process can read (a local
disk here, a Volume or DBFS path on Databricks).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


def assign_split(df, id_col: str, train: float, validation: float, seed: int):
    """Add ``split`` in {train, validation, test}: a pure function of (ID, seed).

    The bucket is ``pmod(xxhash64(ID, seed), 10000)``, so a row keeps its split when the
    table grows, and the test split is the same for every model trained with this seed.
    """
    from pyspark.sql import functions as F
    bucket = F.pmod(F.xxhash64(F.col(id_col).cast("long"), F.lit(seed)), F.lit(10000))
    t1 = int(round(train * 10000))
    t2 = int(round((train + validation) * 10000))
    return df.withColumn("split", F.when(bucket < t1, "train")
                         .when(bucket < t2, "validation").otherwise("test"))


@dataclass
class Cache:
    """Paths and row counts of a written training cache."""
    root: str
    rows: dict[str, int]
    features: list[str]

    def files(self, split: str) -> list[str]:
        return sorted(glob.glob(os.path.join(self.root, f"split={split}", "*.parquet")))


def write_cache(df, root: str, features: Sequence[str], label_col: str, labels: Sequence[str],
                id_col: str, train: float, validation: float, seed: int) -> Cache:
    """Write labelled rows of ``df`` as ``root/split=<s>/*.parquet``: features + label index."""
    from pyspark.sql import functions as F
    label_index = (F.array_position(F.array(*[F.lit(x) for x in labels]), F.col(label_col)) - 1)
    data = (assign_split(df.where(F.col(label_col).isin(*labels)), id_col, train, validation, seed)
            .select(*[F.col(c).cast("float").alias(c) for c in features],
                    label_index.cast("int").alias("label"), "split"))
    data.write.mode("overwrite").partitionBy("split").parquet(root)
    counts = {r["split"]: r["count"] for r in
              data.sparkSession.read.parquet(root).groupBy("split").count().collect()}
    return Cache(root, {s: int(counts.get(s, 0)) for s in SPLITS}, list(features))


def iter_batches(files: Sequence[str], features: Sequence[str], batch_size: int,
                 shuffle_buffer: int = 0, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x float32[b, f], y int32[b]) batches from Parquet files, file by file.

    With ``shuffle_buffer`` > 0 the file order is permuted and rows are shuffled within a
    buffer of that many rows; with 0 the order is the files' (deterministic evaluation).
    """
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files)) if shuffle_buffer else np.arange(len(files))
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held = 0

    def drain(final: bool):
        nonlocal xs, ys, held
        x = np.concatenate(xs) if xs else np.empty((0, len(features)), np.float32)
        y = np.concatenate(ys) if ys else np.empty((0,), np.int32)
        if shuffle_buffer:
            p = rng.permutation(len(y))
            x, y = x[p], y[p]
        n_full = len(y) // batch_size * batch_size
        stop = len(y) if final else n_full
        for i in range(0, stop, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        xs, ys = ([x[n_full:]], [y[n_full:]]) if not final else ([], [])
        held = len(y) - n_full if not final else 0

    for i in order:
        pf = pq.ParquetFile(files[i])
        for rb in pf.iter_batches(batch_size=max(batch_size, 8192), columns=[*features, "label"]):
            x = np.stack([rb.column(c).to_numpy(zero_copy_only=False) for c in features],
                         axis=1).astype(np.float32, copy=False)
            xs.append(x)
            ys.append(rb.column("label").to_numpy(zero_copy_only=False).astype(np.int32))
            held += len(x)
            if held >= max(shuffle_buffer, batch_size):
                yield from drain(final=False)
    yield from drain(final=True)


def make_dataset(files: Sequence[str], features: Sequence[str], batch_size: int, rows: int,
                 shuffle_buffer: int = 0, seed: int = 0):
    """A ``tf.data.Dataset`` of (features, label) batches of ``rows`` rows in all; a new
    shuffle each epoch."""
    import tensorflow as tf
    epoch = {"n": 0}

    def gen():
        epoch["n"] += 1
        yield from iter_batches(files, features, batch_size, shuffle_buffer, seed + epoch["n"])

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, len(features)), tf.float32), tf.TensorSpec((None,), tf.int32)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    batches = -(-rows // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
