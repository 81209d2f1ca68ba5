"""Images end to end: generated IDX -> table -> CNN in MLflow -> scored tables."""
import copy
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from plans import python_passes
from pyspark.sql import functions as F

from sparkeras.ingest import ingest_images
from sparkeras.scoring import score_images
from sparkeras.serving import load_keras
from sparkeras.train import train_images
from sparkeras.workloads import image_synth

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages


@pytest.fixture(scope="module")
def image_cfg(cfg):
    c = copy.deepcopy(cfg)
    c.registry.image_model = "test_image_classifier"
    c.train.epochs = 3
    c.train.batch_size = 64
    c.images.misclassified_grid = 9
    c.images.class_names = ["zero", "forty-five", "ninety", "one-thirty-five"]
    return c


@pytest.fixture(scope="module")
def trained(spark, image_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_idx")
    image_synth.generate(spark, 1400, str(out), "idx", seed=11, n_classes=4)
    ingest_images(spark, image_cfg, str(out), "digits", "idx", size=(28, 28, 1))
    return train_images(spark, image_cfg, "digits")


def test_cnn_learns_generated_images(trained, image_cfg):
    import mlflow
    assert trained["labels"] == ["zero", "forty-five", "ninety", "one-thirty-five"]
    assert trained["rows"]["test"] == 200                   # the t10k file is the test split
    assert trained["rows"]["train"] + trained["rows"]["validation"] == 1200
    assert trained["test_metrics"]["accuracy"] > 0.6        # chance is 0.25
    assert trained["became_champion"] and trained["model_version"] == "1"
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/misclassified.png",
            "evaluation/training_curves.png"} <= artifacts
    run = client.get_run(trained["run_id"])
    assert run.data.params["architecture"] == "classic_cnn"
    assert run.data.params["image_shape"] == "[28, 28, 1]"
    info = mlflow.models.get_model_info("models:/test_image_classifier/1")
    assert info.metadata["input_shape"] == [28, 28, 1] and info.metadata["workload"] == "images"


def _check_scores(out, labels):
    bad = out.where("NOT (top_1_probability >= top_2_probability AND "
                    "top_2_probability >= top_3_probability) OR predicted_label != top_1_label "
                    "OR confidence != top_1_probability OR top_1_label = top_2_label")
    assert bad.count() == 0
    assert {r[0] for r in out.select("predicted_label").distinct().collect()} <= set(labels)


def test_score_new_unlabeled_images_of_another_size(spark, image_cfg, trained, tmp_path):
    folder = tmp_path / "new"
    image_synth.generate(spark, 30, str(folder), "folder", seed=99, n_classes=4)
    new = ingest_images(spark, image_cfg, str(folder), "new_images", "folder", labeled=False,
                        size=(40, 40, 3))
    assert new.valid_rows == 30
    result = score_images(spark, image_cfg, "new_images", "new_image_scores")
    assert (result.input_rows, result.scored_rows, result.quarantined_rows) == (30, 30, 0)
    out = spark.table("new_image_scores")
    assert out.columns == ["image_id", "predicted_label", "confidence", "top_1_label",
                           "top_1_probability", "top_2_label", "top_2_probability",
                           "top_3_label", "top_3_probability", "model_name", "model_version",
                           "scored_at", "batch_id"]
    _check_scores(out, trained["labels"])
    assert out.where(F.col("model_version") != "1").count() == 0
    again = score_images(spark, image_cfg, "new_images", "new_image_scores")
    assert again.batch_ids == result.batch_ids and spark.table("new_image_scores").count() == 30
    daily = spark.sql("SELECT SUM(images) FROM new_image_scores_daily").first()[0]
    assert daily == 30


def test_score_encoded_images_quarantines_undecodable(spark, image_cfg, trained, tmp_path):
    """A table of encoded files (as Spark's binaryFile reads them) scores directly."""
    def jpeg(value):
        buf = io.BytesIO()
        Image.new("RGB", (60, 45), (value, value, value)).save(buf, "JPEG")
        return buf.getvalue()
    rows = [("a.jpg", jpeg(10)), ("b.jpg", jpeg(200)), ("c.jpg", jpeg(90)[:100]),
            ("d.txt", b"not an image"), ("e.jpg", None), (None, jpeg(50))]
    spark.createDataFrame(rows, "image_id string, image binary").write.mode("overwrite") \
        .saveAsTable("encoded_images")
    result = score_images(spark, image_cfg, "encoded_images", "encoded_scores")
    assert (result.input_rows, result.scored_rows, result.quarantined_rows) == (6, 2, 4)
    assert sorted(r[0] for r in spark.table("encoded_scores").select("image_id").collect()) == [
        "a.jpg", "b.jpg"]
    _check_scores(spark.table("encoded_scores"), trained["labels"])
    reasons = {r.image_id: r.reason for r in spark.table("encoded_scores_quarantine").collect()}
    assert reasons["c.jpg"].startswith("corrupt image")
    assert reasons["d.txt"].startswith("not an image")
    assert reasons["e.jpg"] == "missing image" and reasons[None] == "missing image_id"


def test_the_model_and_the_decoder_run_once_per_row(spark, image_cfg, trained):
    """Filters on a UDF's outputs never make Spark copy the UDF (see the incident test)."""
    from sparkeras.scoring import resolve_model
    from sparkeras.workloads import images
    model = resolve_model(image_cfg, None, image_cfg.registry.image_model)
    scored = images.predict_image_columns(spark.table("digits"), model)
    assert python_passes(scored.where(F.col("_reason").isNull()).select("image_id")) == 1
    records = spark.createDataFrame([("a", b"not an image", None, None, None, None)],
                                    "image_id string, payload binary, src_height int, "
                                    "src_width int, src_channels int, reason string")
    tensors = images.to_tensors(records, 28, 28, 1)
    kept = tensors.where(F.col("reason").isNull()).select("image_id", "image")
    assert python_passes(kept) == 1 and kept.count() == 0


def test_workers_start_with_numpy_and_go_on_with_tensorflow(spark, image_cfg, trained):
    """A worker scores its first images with the registered numpy plan, in slices yielded
    at once, until it has spent ``score.numpy_start_seconds`` in it; then TensorFlow, the
    rest of a batch in one piece. Both give the Keras model's probabilities. (The UDF's
    function runs here, in the test process, with a budget that one slice exhausts.)"""
    import dataclasses

    from sparkeras.scoring import ModelCache, WarmStart, resolve_model
    from sparkeras.workloads import images
    model = resolve_model(image_cfg, None, image_cfg.registry.image_model)
    assert model.numpy_start and model.keras_file and model.numpy_seconds == 24.0
    assert model.metadata["numpy_start"]["max_abs_difference"] <= 1e-5
    pdf = spark.table("digits").select("image", "height", "width", "channels").toPandas()
    assert len(pdf) == 1400
    x = np.stack([np.frombuffer(b, np.uint8).reshape(28, 28, 1) for b in pdf["image"]])
    expected = np.asarray(load_keras(model.uri).predict_on_batch(x))
    top = np.sort(expected, axis=1)[:, ::-1]
    unambiguous = top[:, 0] - top[:, 1] > 1e-4
    assert unambiguous.mean() > 0.99

    def run(numpy_seconds):
        ModelCache._models.clear()                   # as in a new Python worker
        WarmStart._spent.clear()
        udf = images.image_predict_udf(dataclasses.replace(model, numpy_seconds=numpy_seconds),
                                       chunk_rows=128)
        frames = list(udf.func(iter([pdf])))
        out = pd.concat(frames, ignore_index=True)
        assert out["reason"].isna().all()
        np.testing.assert_allclose(out["top_1_probability"], expected.max(axis=1), atol=1e-5)
        assert (out["top_1_index"].to_numpy()[unambiguous]
                == expected.argmax(axis=1)[unambiguous]).all()
        return [len(f) for f in frames]
    # numpy: the first slice (one chunk) spends the budget; the next slice is numpy's size
    # but TensorFlow's pass; the rest in one piece
    assert run(1e-9) == [128, 256, 1400 - 384]
    assert run(0) == [1400]                           # TensorFlow from the first batch
    assert run(1000) == [128, 256, 512, 504]          # numpy only: slices grow to 8 chunks


def test_incident_model_cannot_score_images(spark, image_cfg, trained):
    with pytest.raises(ValueError, match="lacks the columns"):
        score_images(spark, image_cfg, "digits_quarantine", "x")


def test_transfer_learning_loads_local_backbone_weights(spark, cfg, tmp_path):
    import keras
    import mlflow
    c = copy.deepcopy(cfg)
    c.registry.image_model = "test_transfer"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.images.architecture = "transfer"
    c.images.backbone = "mobilenet_v2"
    c.images.augment = True
    c.images.misclassified_grid = 0
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                              weights=None, pooling="avg")
    weights = tmp_path / "mobilenet_v2_notop.weights.h5"
    backbone.save_weights(str(weights))
    c.images.backbone_weights = str(weights)
    image_synth.generate(spark, 240, str(tmp_path / "cifar"), "cifar", seed=3, n_classes=3)
    ingest_images(spark, cfg, str(tmp_path / "cifar"), "tiny_cifar", "cifar", size=(32, 32, 3))
    result = train_images(spark, c, "tiny_cifar")
    assert result["labels"] == ["angle_000", "angle_060", "angle_120"]
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.data.params["backbone_weights"] == str(weights)
    assert run.data.params["freeze_backbone"] == "True"
    model = load_keras(f"models:/test_transfer/{result['model_version']}")
    base = next(layer for layer in model.layers if layer.name.startswith("mobilenetv2"))
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), backbone.get_weights()))
    assert {"flip", "zoom", "perspective"} <= {layer.name for layer in model.layers}
