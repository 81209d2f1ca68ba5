"""From a Spark table to batched ``tf.data`` without collecting on the driver.

Spark assigns each row a split by hashing its id (:func:`assign_split`) and writes a
Parquet cache of the model inputs and an int label index, one folder per split
(:func:`write_cache`). Each training worker then streams its share of those files in batches
with pyarrow (:func:`fixed_steps`, :func:`iter_batches`), shuffling with a bounded buffer;
memory stays bounded whatever the table size. A *decoder* turns an Arrow record batch into
the model's inputs, a dict named as the model's inputs (:class:`TabularDecoder` for number,
binary and category columns, :class:`ImageDecoder` for raw image bytes).
The cache folder must be on storage the training process can read (a local disk here, a
Volume on Databricks).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import DataError

SPLITS = ("train", "validation", "test")
BUCKET = "_bucket"     # the id's hash bucket (0..9999), added by assign_split


def assign_split(df, id_col: str, train: float, validation: float, seed: int,
                 source_split: Optional[str] = None):
    """Add ``split`` in {train, validation, test}: a pure function of (id, seed).

    The bucket is ``pmod(xxhash64(id, seed), 10000)``, so a row keeps its split when the
    table grows, and the test split is the same for every model trained with this seed.
    Integer ids are hashed as longs, other ids as they are. With ``source_split`` (a
    column the source filled, e.g. MNIST's t10k files) its test and validation rows stay
    there, and its train rows are divided between train and validation in proportion.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegralType
    col = F.col(id_col)
    if isinstance(df.schema[id_col].dataType, IntegralType):
        col = col.cast("long")
    bucket = F.pmod(F.xxhash64(col, F.lit(seed)), F.lit(10000))
    t1 = int(round(train * 10000))
    t2 = int(round((train + validation) * 10000))
    split = F.when(bucket < t1, "train").when(bucket < t2, "validation").otherwise("test")
    df = df.withColumn(BUCKET, bucket.cast("int"))
    if source_split is not None:
        t_train = int(round(train / (train + validation) * 10000))
        src = F.col(source_split)
        split = (F.when(src.isin("test", "validation"), src)
                 .when(src == "train", F.when(bucket < t_train, "train").otherwise("validation"))
                 .otherwise(split))
    return df.withColumn("split", split)


def split_by_rank(df, train: float, validation: float):
    """Re-split a table too small for the hash thresholds (a split came out empty) by the
    rank of each row's hash bucket: the highest buckets are test, the next validation, as
    the thresholds would have it, with at least one row in each. Deterministic: the same rows
    give the same split. ``df`` has :data:`BUCKET`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    n = df.count()
    n_test = max(1, round(n * (1 - train - validation)))
    n_val = max(1, round(n * validation))
    order = [F.col(BUCKET)] + [F.col(c).cast("string") for c in df.columns
                               if c not in (BUCKET, "split")]
    rank = F.row_number().over(Window.orderBy(*order)) - 1
    ranked = df.withColumn("_rank", rank)
    split = (F.when(F.col("_rank") >= n - n_test, "test")
             .when(F.col("_rank") >= n - n_test - n_val, "validation").otherwise("train"))
    return ranked.withColumn("split", split).drop("_rank")


@dataclass
class Cache:
    """Paths and row counts of a written training cache."""
    root: str
    rows: dict[str, int]

    def files(self, split: str) -> list[str]:
        return sorted(glob.glob(os.path.join(self.root, f"split={split}", "*.parquet")))


def write_cache(data, root: str, files: Optional[int] = None) -> Cache:
    """Write ``data`` (model input columns, ``label`` int, ``split``, optionally
    :data:`BUCKET`) as ``root/split=<s>/*.parquet`` and count the rows of each split.

    With ``files``, each split is written as that many files of near-equal rows (barrier
    workers read whole files), spread by the hash bucket. Never by round robin: Spark
    sorts rows before a round-robin repartition, which would leave every file ordered by
    feature values and label, and a shuffle buffer cannot undo that.
    """
    if files and BUCKET in data.columns:
        data = data.repartition(files, BUCKET)
    if BUCKET in data.columns:
        data = data.drop(BUCKET)
    data.write.mode("overwrite").partitionBy("split").parquet(root)
    counts = {r["split"]: r["count"] for r in
              data.sparkSession.read.parquet(root).groupBy("split").count().collect()}
    return Cache(root, {s: int(counts.get(s, 0)) for s in SPLITS})


FEATURES = "features"          # the model input of the number and binary columns


class TabularDecoder:
    """Number and binary columns -> ``float32[n, k]`` (the model input ``features``);
    category columns -> ``string[n, 1]`` each (a model input named after the column).
    Labels are ``label_dtype``: class indices (int32) or targets (float32)."""

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str] = (),
                 label_dtype: str = "int32"):
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.columns = [*self.numeric, *self.categorical]
        self.inputs: dict[str, tuple] = {}
        if self.numeric:
            self.inputs[FEATURES] = ((len(self.numeric),), "float32")
        for c in self.categorical:
            self.inputs[c] = ((1,), "string")
        self.label_dtype = label_dtype
        self.row_bytes = 4 * len(self.numeric) + 16 * len(self.categorical)
        self.spec = {"kind": "tabular", "numeric": self.numeric,
                     "categorical": self.categorical, "label_dtype": label_dtype}

    def __call__(self, rb) -> dict:
        x = {}
        if self.numeric:
            x[FEATURES] = np.stack([rb.column(c).to_numpy(zero_copy_only=False)
                                    for c in self.numeric], axis=1).astype(np.float32, copy=False)
        for c in self.categorical:
            x[c] = np.asarray(rb.column(c).to_pylist(), dtype=object).reshape(-1, 1)
        return x

    def tf_batch(self, batch) -> dict:
        """The same, in TensorFlow, from a batch with one tensor per column (petastorm)."""
        import tensorflow as tf
        x = {}
        if self.numeric:
            x[FEATURES] = tf.stack([tf.cast(getattr(batch, c), tf.float32)
                                    for c in self.numeric], axis=1)
        for c in self.categorical:
            x[c] = tf.reshape(tf.strings.as_string(getattr(batch, c))
                              if getattr(batch, c).dtype != tf.string else getattr(batch, c),
                              (-1, 1))
        return x


class ImageDecoder:
    """A binary column of raw HWC bytes -> ``uint8[n, h, w, c]`` (the model input ``image``;
    zero-copy when it can). Labels are class indices."""

    def __init__(self, shape: Sequence[int], column: str = "image"):
        self.columns = [column]
        self.shape = tuple(int(v) for v in shape)
        self.inputs = {"image": (self.shape, "uint8")}
        self.label_dtype = "int32"
        self.row_bytes = int(np.prod(self.shape))
        self.spec = {"kind": "image", "shape": list(self.shape), "column": column}

    def __call__(self, rb) -> dict:
        return {"image": binary_to_images(rb.column(self.columns[0]), self.shape)}

    def tf_batch(self, batch) -> dict:
        """The same, in TensorFlow, from a batch of byte strings (petastorm)."""
        import tensorflow as tf
        raw = tf.io.decode_raw(getattr(batch, self.columns[0]), tf.uint8)
        return {"image": tf.reshape(raw, (-1, *self.shape))}


def decoder_from_spec(spec: dict):
    if spec["kind"] == "tabular":
        return TabularDecoder(spec["numeric"], spec.get("categorical", ()),
                              spec.get("label_dtype", "int32"))
    return ImageDecoder(spec["shape"], spec.get("column", "image"))


def empty_inputs(decoder) -> dict:
    """A batch of no rows of ``decoder``'s inputs."""
    return {name: np.empty((0, *shape), object if dtype == "string" else dtype)
            for name, (shape, dtype) in decoder.inputs.items()}


def model_input(x: dict):
    """What a Keras model takes: the one array of a single-input model (Keras warns when
    such a model is given a dict), else the dict of named inputs."""
    return next(iter(x.values())) if len(x) == 1 else x


def concat(parts: Sequence[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def take(x: dict, index) -> dict:
    """Rows ``index`` (a slice, or positions) of every input of a batch."""
    return {k: v[index] for k, v in x.items()}


def parquet_rows(files: Sequence[str]) -> list[int]:
    """Row counts of Parquet files, from their footers."""
    import pyarrow.parquet as pq
    return [pq.ParquetFile(f).metadata.num_rows for f in files]


def shard(files: Sequence[str], index: int, count: int) -> list[str]:
    """The files input pipeline ``index`` of ``count`` reads (round robin)."""
    return list(files[index::count])


def fixed_steps(files: Sequence[str], decoder, batch_size: int, steps: int,
                shuffle_buffer: int, seed: int) -> Iterator[tuple[dict, np.ndarray]]:
    """Exactly ``steps`` full batches from ``files``, cycling through them (with a new
    shuffle each pass) if they hold fewer rows: every worker runs the same steps."""
    produced, cycle = 0, 0
    while produced < steps:
        before = produced
        for x, y in iter_batches(files, decoder, batch_size, shuffle_buffer, seed + 7919 * cycle):
            if len(y) < batch_size:
                continue
            yield x, y
            produced += 1
            if produced == steps:
                return
        if produced == before:
            raise DataError(f"{len(files)} training files hold less than one batch of "
                             f"{batch_size} rows")
        cycle += 1


def binary_to_images(arr, shape: Sequence[int]) -> np.ndarray:
    """An Arrow binary array of equal-length raw images -> ``uint8[n, *shape]``."""
    import pyarrow as pa
    n = len(arr)
    size = int(np.prod(shape))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError("null image in the training data")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + n + 1]
    if n and np.all(np.diff(offsets) == size):
        values = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        return values[offsets[0]:offsets[-1]].reshape(n, *shape)
    raise ValueError(f"images in the training data are not all {list(shape)}")


def iter_batches(files: Sequence[str], decoder, batch_size: int, shuffle_buffer: int = 0,
                 seed: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (inputs, labels) batches from Parquet files, file by file: inputs is a dict of
    arrays named as the model's inputs (see the decoders).

    With ``shuffle_buffer`` > 0 the file order is permuted and rows are shuffled within a
    buffer of that many rows; with 0 the order is the files' (deterministic evaluation).
    """
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files)) if shuffle_buffer else np.arange(len(files))
    xs: list[dict] = []
    ys: list[np.ndarray] = []
    held = 0
    label_dtype = np.dtype(decoder.label_dtype)

    def drain(final: bool):
        nonlocal xs, ys, held
        x = concat(xs) if xs else empty_inputs(decoder)
        y = np.concatenate(ys) if ys else np.empty((0,), label_dtype)
        if shuffle_buffer:
            p = rng.permutation(len(y))
            x, y = take(x, p), y[p]
        n_full = len(y) // batch_size * batch_size
        stop = len(y) if final else n_full
        for i in range(0, stop, batch_size):
            yield take(x, slice(i, i + batch_size)), y[i:i + batch_size]
        xs, ys = ([take(x, slice(n_full, None))], [y[n_full:]]) if not final else ([], [])
        held = len(y) - n_full if not final else 0

    read_rows = max(batch_size, min(8192, (64 << 20) // max(decoder.row_bytes, 1)))
    for i in order:
        pf = pq.ParquetFile(files[i])
        for rb in pf.iter_batches(batch_size=read_rows, columns=[*decoder.columns, "label"]):
            xs.append(decoder(rb))
            ys.append(rb.column("label").to_numpy(zero_copy_only=False).astype(label_dtype))
            held += rb.num_rows
            if held >= max(shuffle_buffer, batch_size):
                yield from drain(final=False)
    yield from drain(final=True)
