"""Pure pieces of training: metrics from a confusion matrix, the hash split, the feed."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkeras.training import evaluate as ev
from sparkeras.training import feed


def test_confusion_and_metrics_exact():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    cm = ev.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    m = ev.metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision_a"] == pytest.approx(2 / 3) and m["recall_a"] == pytest.approx(2 / 3)
    assert m["precision_b"] == pytest.approx(1 / 2) and m["recall_b"] == pytest.approx(1 / 2)
    assert m["precision_c"] == pytest.approx(2 / 3) and m["recall_c"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_class_never_predicted_scores_zero_not_nan():
    m = ev.metrics_from_confusion(np.array([[3, 0], [2, 0]]), ["x", "y"])
    assert m["precision_y"] == 0.0 and m["f1_y"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 * 0.6 * 1 / 1.6) / 2)


def test_split_is_deterministic_and_proportional(spark):
    df = spark.range(20000).withColumnRenamed("id", "ID")
    a = feed.assign_split(df, "ID", 0.8, 0.1, seed=42)
    b = feed.assign_split(df.repartition(5), "ID", 0.8, 0.1, seed=42)
    assert a.exceptAll(b).count() == 0
    counts = {r["split"]: r["count"] for r in a.groupBy("split").count().collect()}
    assert 15600 < counts["train"] < 16400
    assert 1800 < counts["validation"] < 2200 and 1800 < counts["test"] < 2200
    other = feed.assign_split(df, "ID", 0.8, 0.1, seed=7)
    assert a.exceptAll(other).count() > 0


def test_iter_batches_streams_every_row_once(tmp_path):
    for i in range(3):
        n = 1000 + i * 500
        pq.write_table(pa.table({"f1": np.arange(n, dtype=np.float32) + i * 10000,
                                 "f2": np.zeros(n, np.float32), "label": np.full(n, i, np.int32)}),
                       tmp_path / f"p{i}.parquet")
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    for shuffle in (0, 700):
        batches = list(feed.iter_batches(files, feed.TabularDecoder(["f1", "f2"]), 256, shuffle,
                                         seed=1))
        assert all(len(y) == 256 for _, y in batches[:-1])
        x = np.concatenate([b[0]["features"] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        assert len(x) == 4500 and x.dtype == np.float32 and y.dtype == np.int32
        assert sorted(x[:, 0].tolist()) == sorted(
            [float(v + i * 10000) for i in range(3) for v in range(1000 + i * 500)])
        if shuffle:
            assert not np.array_equal(x[:, 0], np.sort(x[:, 0]))


def test_cache_files_are_not_ordered_by_features_or_label(spark, tmp_path):
    """Regression: a round-robin repartition sorts rows by their hash first, which left
    every cache file in blocks of identical rows (99.5% of neighbours equal here), so
    training saw batches of a few patterns and generalised 3 points worse."""
    from pyspark.sql import functions as F
    df = spark.range(30000).select(F.col("id").alias("ID"),
                                   (F.col("id") * 7919 % 5).cast("float").alias("f1"),
                                   (F.col("id") * 104729 % 3).cast("int").alias("label"))
    data = feed.assign_split(df, "ID", 0.8, 0.1, seed=42).select("f1", "label", "split",
                                                                 feed.BUCKET)
    cache = feed.write_cache(data, str(tmp_path / "cache"), files=4)
    files = cache.files("train")
    assert len(files) == 4 and cache.rows["train"] == sum(feed.parquet_rows(files))
    sizes = feed.parquet_rows(files)
    assert max(sizes) - min(sizes) < 0.1 * max(sizes)            # near-equal shards
    for f in files:
        t = pq.read_table(f)
        f1, labels = t.column("f1").to_numpy(), t.column("label").to_numpy()
        same_as_previous = (f1[1:] == f1[:-1]) & (labels[1:] == labels[:-1])
        assert same_as_previous.mean() < 0.2          # 15 distinct rows, well mixed: ~0.01
        assert "_bucket" not in t.column_names
