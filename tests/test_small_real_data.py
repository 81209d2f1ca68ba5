"""What a new user tries first: a small real export and a small real image set, trained with
the default settings (nothing tuned). The defaults must reach what hand tuning reaches."""
import copy

import numpy as np
import pytest

from sparkeras.config import Config
from sparkeras.training import feed
from sparkeras.workloads import incidents

from clirun import sparkeras, summary


def write_incident_export(spark, path, rows, seed):
    """``rows`` incidents from the project's own rule, exported as real systems write them:
    UTF-8 byte-order mark, CRLF line ends. Returns them as pandas."""
    pdf = incidents.generate(spark, rows, seed=seed).toPandas()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" + pdf.to_csv(index=False, lineterminator="\r\n")).encode("utf-8"))
    return pdf


def bayes_accuracy_on_test_split(spark, pdf, seed=42):
    """The accuracy of the best possible classifier (it knows the generating rule) on the
    rows that training holds out as its test split: the optimum for this very sample."""
    patterns, like = incidents.pattern_likelihoods()
    best = {tuple(int(v) for v in p): incidents.LABELS[int(np.argmax(row))]
            for p, row in zip(patterns, like)}
    test = (feed.assign_split(spark.createDataFrame(pdf), incidents.ID, 0.8, 0.1, seed)
            .where("split = 'test'").toPandas())
    hits = [best[tuple(int(v) for v in r)] == cause
            for r, cause in zip(test[incidents.FEATURES].to_numpy(), test[incidents.LABEL])]
    return float(np.mean(hits)), len(hits)


@pytest.mark.slow
def test_a_1000_row_export_trains_with_the_default_command(spark, tmp_path):
    """The course's file size: 800 training rows. The default command must not stop at
    'fewer than one batch', and must land within a few points of the optimum."""
    pdf = write_incident_export(spark, tmp_path / "export" / "incidents.csv", 1000, seed=5)
    state = tmp_path / "state"
    ingested = summary(sparkeras(state, "ingest", "incidents", "--source",
                                 str(tmp_path / "export"), "--table", "incidents"))
    assert (ingested["input_rows"], ingested["valid_rows"]) == (1000, 1000)
    proc = sparkeras(state, "train", "incidents", "--table", "incidents")
    trained = summary(proc)
    settings = trained["settings"]
    train_rows = trained["rows"]["train"]
    assert (settings["batch_size"], settings["steps_per_epoch"]) == (32, train_rows // 32)
    assert settings["why"]["batch_size"] == (f"auto: {train_rows} training rows, "
                                             f"{train_rows // 32} steps per pass")
    assert f"batch_size 32 (auto: {train_rows} training rows" in proc.stderr
    optimum, test_rows = bayes_accuracy_on_test_split(spark, pdf)
    assert trained["test_metrics"]["rows"] == test_rows
    assert trained["test_metrics"]["accuracy"] >= optimum - 0.03, (trained, optimum)


def write_digits_idx(folder):
    """scikit-learn's 1,797 real handwritten digits (8x8, 16 grey levels), scaled to 20x20
    and centred in 28x28 as MNIST is, written as gzipped IDX files."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from sparkeras.workloads.image_formats import encode_idx
    digits = load_digits()
    images = np.zeros((len(digits.images), 28, 28), np.uint8)
    for i, im in enumerate(digits.images):
        small = Image.fromarray((im * (255 / 16)).round().astype(np.uint8))
        images[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    folder.mkdir(parents=True)
    (folder / "digits-images-idx3-ubyte.gz").write_bytes(encode_idx(images))
    (folder / "digits-labels-idx1-ubyte.gz").write_bytes(encode_idx(digits.target.astype(np.uint8)))
    return len(images)


@pytest.mark.slow
def test_real_handwritten_digits_converge_with_the_default_settings(spark, cfg, tmp_path):
    """1,797 real digits (1,454 for training): with a batch of 1024 an epoch would be one
    step (0.54 test accuracy after ten); the defaults must learn them."""
    from mlflow import MlflowClient

    from sparkeras.ingest import ingest_images
    from sparkeras.train import train_images
    assert write_digits_idx(tmp_path / "digits") == 1797
    ingest_images(spark, cfg, str(tmp_path / "digits"), "real_digits", "idx", size=[28, 28, 1])
    c = copy.deepcopy(cfg)
    c.train = copy.deepcopy(Config().train)        # every training setting at its default
    c.train.checkpoint_dir, c.train.cache_dir = cfg.train.checkpoint_dir, cfg.train.cache_dir
    c.registry.image_model = "real_digits"
    result = train_images(spark, c, "default.real_digits")
    assert result["settings"]["batch_size"] == 32
    assert result["labels"] == [str(d) for d in range(10)]
    loss = [m.value for m in MlflowClient().get_metric_history(result["run_id"], "loss")]
    assert min(loss) <= loss[0] / 2, loss
    assert result["test_metrics"]["accuracy"] >= 0.93, result["test_metrics"]
