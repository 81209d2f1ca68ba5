"""Deterministic synthetic images with learnable class structure (pure numpy).

The rule: image ``i`` of class ``k`` (of ``K``) is a sinusoidal grating at angle
``180° * k / K`` with a random phase, spatial frequency, contrast and brightness, plus
Gaussian pixel noise; colour images get a random tint that carries no class information.
Orientation is the only class signal, so a small CNN learns it in an epoch or two, while
noise and low-contrast images keep it from being trivial.

Images are produced in aligned chunks of :data:`CHUNK` indices, each from its own seeded
generator, so image ``i`` is identical whichever range, partition or process asks for it.
:func:`generate` writes them as files in a real format (IDX, CIFAR-10 binary batches, or
class folders of JPEG/PNG of various sizes and modes), one Spark task per shard.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import UsageError
from . import image_formats as fmt_

FORMATS = ("idx", "cifar", "folder")
CIFAR_META = "batches.meta.txt"

CHUNK = 1000


def class_names(n_classes: int) -> list[str]:
    """Self-describing names: the grating angle in degrees (``angle_000``, ``angle_018``...)."""
    return [f"angle_{round(180 * k / n_classes):03d}" for k in range(n_classes)]


def _chunk(seed: int, chunk_no: int, n_classes: int, height: int, width: int, channels: int):
    rng = np.random.default_rng([seed, chunk_no, height, width, channels, n_classes])
    n = CHUNK
    labels = rng.integers(0, n_classes, n)
    angle = np.pi * labels / n_classes + rng.normal(0, 0.04, n)
    cycles = rng.uniform(2.5, 4.5, n)                      # periods across the image
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.15, 0.5, n)
    brightness = rng.uniform(0.3, 0.7, n)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, height), np.linspace(-0.5, 0.5, width),
                         indexing="ij")
    proj = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
    wave = np.sin(2 * np.pi * cycles[:, None, None] * proj + phase[:, None, None])
    base = brightness[:, None, None] + contrast[:, None, None] * wave        # n, h, w
    if channels == 3:
        tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3))
        img = base[..., None] * tint
    else:
        img = base[..., None]
    img = img + rng.normal(0, 0.12, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.uint8)


def synthetic_images(start: int, count: int, n_classes: int, height: int, width: int,
                     channels: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+count-1``: (uint8[count, h, w, c], labels uint8[count])."""
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    if not 2 <= n_classes <= 256:
        raise UsageError(f"n_classes must be between 2 and 256, got {n_classes}")
    images, labels = [], []
    first, last = start // CHUNK, (start + count - 1) // CHUNK if count else start // CHUNK - 1
    for c in range(first, last + 1):
        imgs, labs = _chunk(seed, c, n_classes, height, width, channels)
        lo = max(start - c * CHUNK, 0)
        hi = min(start + count - c * CHUNK, CHUNK)
        images.append(imgs[lo:hi])
        labels.append(labs[lo:hi])
    if not images:
        return np.empty((0, height, width, channels), np.uint8), np.empty((0,), np.uint8)
    return np.concatenate(images), np.concatenate(labels)


# ------------------------------------------------------------------------------ files
def _write_folder_chunk(out: str, start: int, count: int, test_every: int, seed: int,
                        names: list[str]) -> int:
    from PIL import Image
    base, labels = synthetic_images(start, count, len(names), 96, 96, 3, seed)
    rng = np.random.default_rng([seed, start, 99])
    sizes = rng.integers(64, 161, (count, 2))
    kinds = rng.random(count)
    for j in range(count):
        i = start + j
        split = "test" if i % test_every == test_every - 1 else "train"
        img = Image.fromarray(base[j]).resize((int(sizes[j, 1]), int(sizes[j, 0])),
                                              Image.Resampling.BILINEAR)
        name = names[labels[j]]
        folder = os.path.join(out, split, name)
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"{name}.{i}")
        if kinds[j] < 0.05:        # grayscale JPEG
            img.convert("L").save(stem + ".jpeg", "JPEG", quality=90)
        elif kinds[j] < 0.10:      # PNG with alpha
            rgba = img.convert("RGBA")
            rgba.putalpha(255)
            rgba.save(stem + ".png", "PNG")
        elif kinds[j] < 0.15:      # PNG, upper-case extension
            img.save(stem + ".PNG", "PNG")
        elif kinds[j] < 0.20:
            img.save(stem + ".JPG", "JPEG", quality=90)
        else:
            img.save(stem + ".jpg", "JPEG", quality=90)
    return count


def _write_shard(out: str, fmt: str, shard: dict, seed: int, n_classes: int) -> int:
    start, count, name = shard["start"], shard["count"], shard["name"]
    if fmt == "folder":
        return _write_folder_chunk(out, start, count, shard["test_every"], seed,
                                   class_names(n_classes))
    if fmt == "idx":
        images, labels = synthetic_images(start, count, n_classes, 28, 28, 1, seed)
        Path(out, f"{name}-images-idx3-ubyte.gz").write_bytes(fmt_.encode_idx(images[..., 0]))
        Path(out, f"{name}-labels-idx1-ubyte.gz").write_bytes(fmt_.encode_idx(labels))
        return count
    images, labels = synthetic_images(start, count, n_classes, 32, 32, 3, seed)
    Path(out, name).write_bytes(fmt_.encode_cifar(labels, images))
    return count


def generation_plan(count: int, fmt: str) -> list[dict]:
    """Shards of the synthetic dataset. IDX: a ``t10k`` pair holding 1/7 of the images,
    then ``train`` pairs of up to 60,000; CIFAR: ``test_batch.bin`` (1/6) and
    ``data_batch_<n>.bin`` of up to 10,000; folders: ``train/`` and ``test/`` (every 7th
    image), written in chunks of 1,000."""
    if count < 1:
        raise UsageError(f"count must be at least 1, got {count}")
    shards = []
    if fmt == "folder":
        for start in range(0, count, CHUNK):
            shards.append({"start": start, "count": min(CHUNK, count - start),
                           "name": "", "test_every": 7})
        return shards
    test_n = count // (7 if fmt == "idx" else 6)
    per_shard = 60000 if fmt == "idx" else 10000
    if test_n:
        shards.append({"start": 0, "count": test_n,
                       "name": "t10k" if fmt == "idx" else "test_batch.bin"})
    train_n = count - test_n
    n_shards = -(-train_n // per_shard)
    for k in range(n_shards):
        start = test_n + k * per_shard
        n = min(per_shard, count - start)
        if fmt == "idx":
            name = "train" if n_shards == 1 else f"train-{k:05d}"
        else:
            name = f"data_batch_{k + 1}.bin"
        shards.append({"start": start, "count": n, "name": name})
    return shards


def generate(spark, count: int, out: str, fmt: str, seed: int = 7, n_classes: int = 10) -> dict:
    """Write ``count`` synthetic images to the folder ``out`` in format ``fmt``, one Spark
    task per shard (``out`` must be a path every worker can write: local or a Volume)."""
    from pyspark.sql import functions as F
    if fmt not in FORMATS:
        raise UsageError(f"unknown image format {fmt!r}; expected one of {list(FORMATS)}")
    out = str(Path(out).absolute())
    os.makedirs(out, exist_ok=True)
    if fmt == "cifar":
        Path(out, CIFAR_META).write_text("\n".join(class_names(n_classes)) + "\n")
    plan = generation_plan(count, fmt)
    plan_df = spark.createDataFrame(
        [(k, s["start"], s["count"], s["name"], s.get("test_every", 0)) for k, s in enumerate(plan)],
        "shard int, start long, count long, name string, test_every int").repartition(
        len(plan), "shard")

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            done = [_write_shard(out, fmt, row, seed, n_classes)
                    for row in pdf.to_dict("records")]
            yield pd.DataFrame({"written": pd.Series(done, dtype="int64")})
    written = plan_df.mapInPandas(write, "written long").agg(F.sum("written")).first()[0]
    return {"images": int(written or 0), "out": out, "format": fmt, "seed": seed,
            "classes": class_names(n_classes), "shards": len(plan)}
