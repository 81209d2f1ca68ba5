"""Ingest of image datasets from real files in the real formats, with exact counts."""
import copy
import gzip
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from sparkeras.ingest import ingest_images
from sparkeras.workloads import image_formats, image_synth


def _photo(mode, size, fmt, value):
    color = {"L": value, "RGB": (value, 255 - value, 40), "RGBA": (value, 10, 10, 255),
             "P": value, "LA": (value, 255)}[mode]
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """cats-vs-dogs style: train/ and test/ with a folder per class; JPEG and PNG of mixed
    sizes, modes and extension case; plus a truncated JPEG, an empty file and a text file."""
    root = tmp_path_factory.mktemp("photos")
    files = {
        "train/cats/cat.1.jpg": _photo("RGB", (320, 240), "JPEG", 10),
        "train/cats/cat.2.JPG": _photo("RGB", (64, 96), "JPEG", 20),
        "train/cats/cat.3.png": _photo("RGBA", (50, 50), "PNG", 30),
        "train/dogs/dog.1.jpeg": _photo("L", (200, 100), "JPEG", 40),
        "train/dogs/dog.2.PNG": _photo("P", (33, 77), "PNG", 50),
        "train/golden retriever/gr.1.Jpeg": _photo("RGB", (150, 150), "JPEG", 60),
        "test/cats/cat.9.jpg": _photo("RGB", (120, 80), "JPEG", 70),
        "test/dogs/dog.9.png": _photo("LA", (40, 60), "PNG", 80),
    }
    good = _photo("RGB", (256, 256), "JPEG", 90)
    files["train/dogs/truncated.jpg"] = good[: len(good) // 3]
    files["train/cats/empty.jpg"] = b""
    files["train/cats/notes.txt"] = b"these are my cats\n"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _rows(spark, table, batch_id):
    return {r.image_id: r for r in spark.table(table).where(F.col("ingest_batch_id") == batch_id).collect()}


def test_photo_folder_exact_counts_and_quarantine(spark, cfg, photo_folder):
    result = ingest_images(spark, cfg, str(photo_folder), "photos", "folder", size=(24, 32, 3))
    assert result.summary()["input_files"] == 11
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (11, 8, 3)
    assert result.labels == {"cats": 4, "dogs": 3, "golden retriever": 1}
    rows = _rows(spark, "photos", result.batch_id)
    assert sorted(rows) == sorted([
        "train/cats/cat.1.jpg", "train/cats/cat.2.JPG", "train/cats/cat.3.png",
        "train/dogs/dog.1.jpeg", "train/dogs/dog.2.PNG", "train/golden retriever/gr.1.Jpeg",
        "test/cats/cat.9.jpg", "test/dogs/dog.9.png"])
    cat = rows["train/cats/cat.1.jpg"]
    assert (cat.label, cat.label_index, cat.split) == ("cats", 0, "train")
    assert (cat.height, cat.width, cat.channels) == (24, 32, 3)
    assert (cat.original_height, cat.original_width) == (240, 320)
    assert len(cat.image) == 24 * 32 * 3
    pixel = np.frombuffer(cat.image, np.uint8).reshape(24, 32, 3)[12, 16]
    assert np.abs(pixel.astype(int) - [10, 245, 40]).max() < 10
    assert rows["test/dogs/dog.9.png"].split == "test"
    assert rows["train/golden retriever/gr.1.Jpeg"].label_index == 2
    reasons = {r.image_id: r.reason for r in spark.table("photos_quarantine").collect()}
    assert reasons["train/cats/empty.jpg"] == "empty file"
    assert reasons["train/dogs/truncated.jpg"].startswith("corrupt image")
    assert reasons["train/cats/notes.txt"].startswith("not an image")
    assert all(r.source.endswith(r.image_id) for r in spark.table("photos_quarantine").collect())


def test_a_photo_folder_named_by_a_file_uri_keeps_its_class_folders(spark, cfg, photo_folder):
    """``file:///...`` names the same folder as its path (before: its files lost their class
    folders, and so their labels, and were told apart by file name only)."""
    result = ingest_images(spark, cfg, f"file://{photo_folder}/train", "photos_uri", "folder",
                           size=(8, 8, 1))
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (9, 6, 3)
    assert result.labels == {"cats": 3, "dogs": 2, "golden retriever": 1}
    assert sorted(_rows(spark, "photos_uri", result.batch_id)) == [
        "cats/cat.1.jpg", "cats/cat.2.JPG", "cats/cat.3.png", "dogs/dog.1.jpeg",
        "dogs/dog.2.PNG", "golden retriever/gr.1.Jpeg"]


def test_reingest_replaces_the_batch_and_unlabeled_images(spark, cfg, photo_folder):
    first = ingest_images(spark, cfg, str(photo_folder), "photos2", "folder", size=(16, 16, 1))
    again = ingest_images(spark, cfg, str(photo_folder), "photos2", "folder", size=(16, 16, 1))
    assert first.batch_id == again.batch_id
    assert spark.table("photos2").count() == 8
    assert spark.table("photos2_quarantine").count() == 3
    new = ingest_images(spark, cfg, str(photo_folder / "test"), "new_photos", "folder",
                        labeled=False, size=(16, 16, 1))
    assert (new.valid_rows, new.quarantined_rows) == (2, 0)
    assert spark.table("new_photos").where("label is null and split is null").count() == 2
    assert sorted(r.image_id for r in spark.table("new_photos").collect()) == [
        "cats/cat.9.jpg", "dogs/dog.9.png"]


def _idx_pair(folder, prefix, images, labels, gz=True):
    n, h, w = images.shape
    img = b"\x00\x00\x08\x03" + struct.pack(">III", n, h, w) + images.tobytes()
    lab = b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + bytes(labels)
    ext = ".gz" if gz else ""
    (folder / f"{prefix}-images-idx3-ubyte{ext}").write_bytes(gzip.compress(img) if gz else img)
    (folder / f"{prefix}-labels-idx1-ubyte{ext}").write_bytes(gzip.compress(lab) if gz else lab)


def test_idx_pairs_gzipped_and_raw(spark, cfg, tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    _idx_pair(tmp_path, "train", train, [i % 10 for i in range(30)], gz=True)
    _idx_pair(tmp_path, "t10k", test, [9 - i % 10 for i in range(12)], gz=False)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    named = copy.deepcopy(cfg)
    named.images.class_names = names
    result = ingest_images(spark, named, str(tmp_path), "fashion", "idx", size=(28, 28, 1))
    assert (result.input_files, result.input_rows, result.valid_rows,
            result.quarantined_rows) == (4, 42, 42, 0)
    rows = _rows(spark, "fashion", result.batch_id)
    r = rows["train-images-idx3-ubyte.gz#3"]
    assert (r.label, r.label_index, r.split) == ("Dress", 3, "train")
    assert np.array_equal(np.frombuffer(r.image, np.uint8).reshape(28, 28), train[3])
    t = rows["t10k-images-idx3-ubyte#0"]
    assert (t.label, t.split) == ("Ankle boot", "test")
    assert np.array_equal(np.frombuffer(t.image, np.uint8).reshape(28, 28), test[0])


def test_idx_problems_are_quarantined_per_file(spark, cfg, tmp_path):
    good = np.zeros((5, 28, 28), np.uint8)
    _idx_pair(tmp_path, "train", good, [1, 2, 3, 4, 12])          # 12: no such class
    _idx_pair(tmp_path, "t10k", good, [1, 2, 3, 4])               # counts disagree
    (tmp_path / "extra-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    (tmp_path / "README.md").write_text("MNIST\n")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(
        (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()))      # unpacked copy
    result = ingest_images(spark, cfg, str(tmp_path), "digits_bad", "idx", size=(28, 28, 1))
    # train: 4 images + 1 bad label; t10k: one row for the pair; extra: bad magic; README;
    # the unpacked copy of the train labels
    assert (result.input_files, result.input_rows, result.valid_rows,
            result.quarantined_rows) == (7, 9, 4, 5)
    reasons = {r.image_id: r.reason for r in spark.table("digits_bad_quarantine").collect()}
    assert reasons["train-images-idx3-ubyte.gz#4"] == \
        "label 12 outside the 10 class names (images.class_names)"
    assert reasons["t10k-images-idx3-ubyte.gz"] == (
        "5 images but 4 labels in " + [r.source for r in spark.table("digits_bad_quarantine")
                                       .where("image_id like 't10k%'").collect()][0]
        .replace("images-idx3", "labels-idx1"))
    assert "has 1 dimensions" in reasons["extra-images-idx3-ubyte"]
    assert reasons["README.md"].startswith("not an IDX file name")
    assert reasons["train-labels-idx1-ubyte.gz"] == (        # the first in path order wins
        "another labels file with the same name in this folder is used: "
        "train-labels-idx1-ubyte")


def test_cifar_batches_with_meta_and_a_truncated_record(spark, cfg, tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "data_batch_1.bin").write_bytes(
        image_formats.encode_cifar(np.array([0, 1, 2, 3, 4]), imgs[:5]) + b"\x07" * 1000)
    (tmp_path / "test_batch.bin").write_bytes(
        image_formats.encode_cifar(np.array([9, 11]), imgs[5:]))        # 11: out of range
    (tmp_path / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    (tmp_path / "data_batch_2.bin").write_bytes(b"")
    result = ingest_images(spark, cfg, str(tmp_path), "cifar", "cifar", size=(32, 32, 3))
    assert (result.input_files, result.input_rows, result.valid_rows,
            result.quarantined_rows) == (4, 9, 6, 3)
    rows = _rows(spark, "cifar", result.batch_id)
    r = rows["data_batch_1.bin#2"]
    assert (r.label, r.label_index, r.split) == ("bird", 2, "train")
    assert np.array_equal(np.frombuffer(r.image, np.uint8).reshape(32, 32, 3), imgs[2])
    assert rows["test_batch.bin#0"].label == "truck" and rows["test_batch.bin#0"].split == "test"
    reasons = {r.image_id: r.reason for r in spark.table("cifar_quarantine").collect()}
    assert reasons == {
        "data_batch_1.bin#5": "truncated record: 1000 of 3073 bytes at offset 15365",
        "test_batch.bin#1": "label 11 outside the 10 class names (images.class_names)",
        "data_batch_2.bin": "empty file",
    }


def test_generated_files_ingest_with_exact_counts(spark, cfg, tmp_path):
    for fmt, size in (("idx", (28, 28, 1)), ("cifar", (32, 32, 3)), ("folder", (20, 20, 3))):
        out = tmp_path / fmt
        summary = image_synth.generate(spark, 70, str(out), fmt, seed=5, n_classes=4)
        assert summary["images"] == 70
        result = ingest_images(spark, cfg, str(out), f"gen_{fmt}", fmt, size=size)
        assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (70, 70, 0)
        splits = {r[0]: r[1] for r in spark.table(f"gen_{fmt}").groupBy("split").count().collect()}
        assert splits == {"test": 10, "train": 60} if fmt != "cifar" else {"test": 11, "train": 59}
    idx_header = gzip.decompress((tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").read_bytes())[:16]
    assert idx_header == b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28)
    assert (tmp_path / "cifar" / "batches.meta.txt").read_text().split() == [
        "angle_000", "angle_045", "angle_090", "angle_135"]
    assert json.loads(json.dumps(result.summary()))["labels"].keys() <= {
        "angle_000", "angle_045", "angle_090", "angle_135"}
