"""Image datasets: read IDX, CIFAR-10 and class folders into records; convert to tensors.

Reading yields one *record* per image (or per unreadable file) with a stable ``image_id``,
the label and split the source declares, the source path, and the payload: raw HWC bytes
(IDX, CIFAR) or the encoded file (folders). :func:`to_tensors` then decodes, converts and
resizes every payload to the configured size in a pandas UDF. Records that cannot become
an image carry a ``reason`` and end in the quarantine table; nothing is dropped.

Stored image representation (see docs/images.md): raw ``uint8`` HWC bytes at the model's
input size, with ``height``, ``width`` and ``channels`` columns. Decoding happens once,
at ingest, not in every training epoch and every scoring run.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import unquote

import numpy as np
import pandas as pd

from . import image_formats as fmt_
from . import image_synth

NAME = "images"
ID = "image_id"
LABEL = "label"
FORMATS = ("idx", "cifar", "folder")
SPLIT_FOLDERS = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}

RECORD_SCHEMA = ("image_id string, label string, label_index int, split string, source string, "
                 "payload binary, src_height int, src_width int, src_channels int, reason string")
RECORD_COLUMNS = [c.split()[0] for c in RECORD_SCHEMA.split(", ")]
TENSOR_SCHEMA = ("image binary, height int, width int, channels int, original_height int, "
                 "original_width int, reason string")
IDX_NAME = re.compile(r"^(?P<prefix>.+?)[-.](?P<kind>images|labels)[-.]idx(?P<dims>[13])-ubyte"
                      r"(?:\.gz)?$", re.IGNORECASE)
CIFAR_META = "batches.meta.txt"
RECORDS_PER_CHUNK = 4096


def _records(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def _source_root(source: str) -> str:
    """The folder that record ids are relative to: the source folder, a file's folder, or
    the part of a glob before its first wildcard."""
    plain = re.split(r"[*?\[{]", source, maxsplit=1)[0]
    if plain != source:
        plain = plain.rsplit("/", 1)[0] if "/" in plain else ""
    plain = plain.rstrip("/")
    local = Path(plain) if plain and "://" not in plain and not plain.startswith("dbfs:") else None
    if local is not None and local.exists():
        local = local.absolute()
        return str(local if local.is_dir() else local.parent)
    return plain


def _relative_path(root: str):
    """A Spark column: ``path`` relative to ``root`` (the file name when root is not in it)."""
    from pyspark.sql import functions as F
    marker = (root.rstrip("/") + "/") if root else "/"
    pos = F.locate(marker, F.col("path"))
    return F.when((pos > 0) & F.lit(bool(root)), F.expr(f"substring(path, {len(marker)} + "
                                                         f"locate({_lit(marker)}, path))")) \
            .otherwise(F.regexp_extract(F.col("path"), r"([^/]*)$", 1))


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _normalize(uri: str) -> str:
    """A file index URI (``file:///a%20b``) in the form of binaryFile's ``path`` column
    (``file:/a b``): one slash after the scheme, percent-escapes decoded."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*):/+", r"\1:/", unquote(uri))


def _relative_path_py(path: str, root: str) -> str:
    marker = (root.rstrip("/") + "/") if root else None
    pos = path.find(marker) if marker else -1
    return path[pos + len(marker):] if pos >= 0 else path.rsplit("/", 1)[-1]


class SourceFiles:
    """The files behind a source: ``df`` (Spark's ``binaryFile`` rows), ``rel`` (a column:
    the path relative to the source root), every path and the empty files.

    Spark's file scans skip zero-length files, so they are found from the file index
    (``inputFiles``) and reported separately: an empty file is never lost silently.
    """

    def __init__(self, spark, source: str):
        reader = spark.read.format("binaryFile")
        if not re.search(r"[*?\[{]", source):
            reader = reader.option("recursiveFileLookup", "true")
        self.df = reader.load(source)
        self.root = _source_root(source)
        self.rel = _relative_path(self.root)
        self.paths = sorted(_normalize(p) for p in self.df.inputFiles())
        if not self.paths:
            raise FileNotFoundError(f"no input files match {source}")
        self.empty: list[str] = []
        if self.df.count() != len(self.paths):
            seen = {r.path for r in self.df.select("path").collect()}
            self.empty = [p for p in self.paths if p not in seen]

    def empty_problems(self) -> list[dict]:
        return [_file_problem(_relative_path_py(p, self.root), p, "empty file") for p in self.empty]


def list_files(spark, source: str) -> SourceFiles:
    return SourceFiles(spark, source)


# ---------------------------------------------------------------------------------- IDX
def _idx_key(name: str) -> Optional[tuple[str, str]]:
    m = IDX_NAME.match(name)
    return (m.group("prefix"), m.group("kind").lower()) if m else None


def _split_from_name(name: str) -> Optional[str]:
    low = name.lower()
    if "t10k" in low or "test" in low:
        return "test"
    if "train" in low:
        return "train"
    return None


def _parse_idx_files(labels_by_images: dict, class_names: Sequence[str]):
    """mapInPandas function: images files (path, rel, content) -> records."""
    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            for path, rel, content in zip(pdf["path"], pdf["rel"], pdf["content"]):
                yield from _idx_records(path, rel, content, labels_by_images.get(path), class_names)
    return parse


def _idx_records(path, rel, content, labels_entry, class_names):
    split = _split_from_name(rel.rsplit("/", 1)[-1])
    try:
        images = fmt_.parse_idx(content, fmt_.IDX_IMAGES_DIMS)
    except fmt_.FormatError as exc:
        yield _records([_file_problem(rel, path, f"IDX images file: {exc}")])
        return
    labels = None
    if labels_entry is not None:
        labels_path, labels_or_error = labels_entry
        if isinstance(labels_or_error, str):
            yield _records([_file_problem(rel, path, f"its labels file {labels_path}: "
                                                     f"{labels_or_error}")])
            return
        labels = labels_or_error
        if len(labels) != len(images):
            yield _records([_file_problem(
                rel, path, f"{len(images)} images but {len(labels)} labels in {labels_path}")])
            return
    if len(images) == 0:
        yield _records([_file_problem(rel, path, "IDX images file holds no images")])
        return
    n = len(images)
    for start in range(0, n, RECORDS_PER_CHUNK):
        stop = min(n, start + RECORDS_PER_CHUNK)
        idx = np.arange(start, stop)
        lab = labels[start:stop].astype(np.int32) if labels is not None else None
        yield _chunk_records(rel, path, split, idx, images, lab, class_names)


def _chunk_records(rel, path, split, idx, images, labels, class_names) -> pd.DataFrame:
    """Records for images ``idx`` of one IDX/CIFAR file (images: uint8[n, h, w(, c)])."""
    h, w = images.shape[1], images.shape[2]
    c = images.shape[3] if images.ndim == 4 else 1
    cols = {"image_id": [f"{rel}#{i}" for i in idx],
            **_label_columns(labels, class_names, len(idx)),
            "split": split, "source": path,
            "payload": [images[i].tobytes() for i in idx],
            "src_height": h, "src_width": w, "src_channels": c}
    cols["reason"] = cols.pop("_reason")
    return pd.DataFrame(cols)[RECORD_COLUMNS]


def _label_columns(indices: Optional[np.ndarray], class_names: Sequence[str], n: int) -> dict:
    """label, label_index and a ``_reason`` column for class numbers from a binary format."""
    if indices is None:
        return {"label": [None] * n, "label_index": pd.array([None] * n, dtype="Int32"),
                "_reason": [None] * n}
    names = list(class_names)
    labels, reasons = [], []
    for k in indices.tolist():
        if k < len(names):
            labels.append(names[k])
            reasons.append(None)
        else:
            labels.append(None)
            reasons.append(f"label {k} outside the {len(names)} class names (images.class_names)")
    return {"label": labels, "label_index": pd.array(indices, dtype="Int32"), "_reason": reasons}


def _file_problem(rel: str, path: str, reason: str) -> dict:
    return {"image_id": rel, "label": None, "label_index": None, "split": None, "source": path,
            "payload": None, "src_height": None, "src_width": None, "src_channels": None,
            "reason": reason}


def read_idx(spark, source: str, class_names: Sequence[str] = (),
             files: Optional[SourceFiles] = None):
    """IDX image/label file pairs (``<prefix>-images-idx3-ubyte[.gz]`` with
    ``<prefix>-labels-idx1-ubyte[.gz]`` in the same folder) -> records.

    Labels files are small (one byte per image) and are read on the driver; each images
    file is parsed by one Spark task. An images file without a labels file gives
    unlabelled records. Files that are not an IDX pair member are quarantined.
    """
    files = files or list_files(spark, source)
    rel = files.rel
    listing = sorted(files.df.select("path", rel.alias("rel")).collect(), key=lambda r: r.path)
    by_key: dict[tuple[str, str, str], str] = {}
    problems = files.empty_problems()
    for r in listing:
        key = _idx_key(r.rel.rsplit("/", 1)[-1])
        if key is None:
            problems.append(_file_problem(r.rel, r.path, "not an IDX file name (expected "
                                          "<name>-images-idx3-ubyte[.gz] or "
                                          "<name>-labels-idx1-ubyte[.gz])"))
            continue
        folder = r.path.rsplit("/", 1)[0]
        k = (folder, key[0].lower(), key[1])
        if k in by_key:   # e.g. train-images-idx3-ubyte next to train-images-idx3-ubyte.gz
            problems.append(_file_problem(r.rel, r.path, f"another {key[1]} file with the same "
                                          f"name in this folder is used: {by_key[k].rel}"))
            continue
        by_key[k] = r
    labels_by_images: dict[str, tuple[str, object]] = {}
    label_rows = {k: v for k, v in by_key.items() if k[2] == "labels"}
    contents = {}
    if label_rows:
        for row in spark.read.format("binaryFile").load([r.path for r in label_rows.values()]) \
                .select("path", "content").collect():
            contents[row.path] = bytes(row.content)
    for (folder, prefix, kind), r in by_key.items():
        if kind != "labels":
            continue
        images = by_key.get((folder, prefix, "images"))
        if images is None:
            problems.append(_file_problem(r.rel, r.path, "labels file without its images file "
                                          f"{prefix}-images-idx3-ubyte[.gz]"))
            continue
        try:
            labels_by_images[images.path] = (r.path, fmt_.parse_idx(contents[r.path],
                                                                    fmt_.IDX_LABELS_DIMS))
        except fmt_.FormatError as exc:
            labels_by_images[images.path] = (r.path, str(exc))
            problems.append(_file_problem(r.rel, r.path, f"IDX labels file: {exc}"))
    image_paths = [r.path for k, r in by_key.items() if k[2] == "images"]
    names = list(class_names) or [str(i) for i in range(10)]    # MNIST's ten digits
    parts = [spark.createDataFrame(_records(problems), RECORD_SCHEMA)] if problems else []
    if image_paths:
        images_df = (spark.read.format("binaryFile").load(image_paths)
                     .select("path", rel.alias("rel"), "content"))
        parts.append(images_df.mapInPandas(_parse_idx_files(labels_by_images, names),
                                           RECORD_SCHEMA))
    return _union(parts)


def _union(parts):
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


# -------------------------------------------------------------------------------- CIFAR
def _cifar_records(path, rel, content, class_names):
    split = "test" if "test" in rel.rsplit("/", 1)[-1].lower() else "train"
    if not content:
        yield _records([_file_problem(rel, path, "empty file")])
        return
    labels, images, rest = fmt_.parse_cifar(content)
    n = len(labels)
    for start in range(0, n, RECORDS_PER_CHUNK):
        stop = min(n, start + RECORDS_PER_CHUNK)
        idx = np.arange(start, stop)
        yield _chunk_records(rel, path, split, idx, images,
                             labels[start:stop].astype(np.int32), class_names)
    if rest:
        row = _file_problem(f"{rel}#{n}", path, f"truncated record: {rest} of "
                                                f"{fmt_.CIFAR_RECORD} bytes at offset "
                                                f"{n * fmt_.CIFAR_RECORD}")
        yield _records([row])


def read_cifar(spark, source: str, class_names: Sequence[str] = (),
             files: Optional[SourceFiles] = None):
    """CIFAR-10 binary batches (``*.bin``) -> records; class names from
    ``batches.meta.txt`` when present, else ``class_names``, else "0".."9"."""
    files = files or list_files(spark, source)
    rel = files.rel
    listing = files.df.select("path", rel.alias("rel")).collect()
    metas = [r for r in listing if r.rel.rsplit("/", 1)[-1].lower() == CIFAR_META]
    names = list(class_names) or [str(i) for i in range(10)]
    if metas:
        text = spark.read.format("binaryFile").load(metas[0].path).select("content").first()[0]
        names = fmt_.parse_cifar_meta(bytes(text).decode("utf-8", errors="replace"))
    problems = files.empty_problems() + [
        _file_problem(r.rel, r.path, f"not a CIFAR-10 batch (expected *.bin or {CIFAR_META})")
        for r in listing if r not in metas and not r.rel.lower().endswith(".bin")]
    bins = [r.path for r in listing if r.rel.lower().endswith(".bin")]
    parts = [spark.createDataFrame(_records(problems), RECORD_SCHEMA)] if problems else []
    if bins:
        def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for pdf in batches:
                for path, r, content in zip(pdf["path"], pdf["rel"], pdf["content"]):
                    yield from _cifar_records(path, r, content, names)
        parts.append(spark.read.format("binaryFile").load(bins)
                     .select("path", rel.alias("rel"), "content")
                     .mapInPandas(parse, RECORD_SCHEMA))
    if not parts:
        raise FileNotFoundError(f"no CIFAR-10 batch files (*.bin) in {source}")
    return _union(parts)


# ------------------------------------------------------------------------------- folder
def read_folder(spark, source: str, labeled: bool = True, files: Optional[SourceFiles] = None):
    """A tree of encoded images: ``[train|test|validation/]<class>/<file>`` -> records.

    Read with Spark's ``binaryFile`` source (files are never listed in a Python loop).
    A file directly under the root (or a split folder) has no label, as does every file
    when ``labeled`` is false. Every file becomes a record; decoding comes later.
    """
    from pyspark.sql import functions as F
    files = files or list_files(spark, source)
    rel = files.rel
    parts = F.split(rel, "/")
    first = F.lower(F.element_at(parts, 1))
    split_case = F.lit(None).cast("string")
    for folder, split in SPLIT_FOLDERS.items():
        split_case = F.when(first == folder, F.lit(split)).otherwise(split_case)
    has_split = (F.size(parts) >= 2) & split_case.isNotNull()
    rest = F.when(has_split, F.slice(parts, 2, 1 << 20)).otherwise(parts)
    label = F.when(F.size(rest) >= 2, F.element_at(rest, 1)) if labeled else F.lit(None)
    records = files.df.select(
        rel.alias("image_id"), label.cast("string").alias("label"),
        F.lit(None).cast("int").alias("label_index"),
        F.when(has_split, split_case).alias("split"), F.col("path").alias("source"),
        F.col("content").alias("payload"), F.lit(None).cast("int").alias("src_height"),
        F.lit(None).cast("int").alias("src_width"), F.lit(None).cast("int").alias("src_channels"),
        F.lit(None).cast("string").alias("reason"))
    if files.empty:
        records = records.unionByName(spark.createDataFrame(_records(files.empty_problems()),
                                                            RECORD_SCHEMA))
    return records


def read_raw(spark, source: str, fmt: str, class_names: Sequence[str] = (), labeled: bool = True,
             files: Optional[SourceFiles] = None):
    """Records of ``source`` in format ``fmt``: see :data:`RECORD_SCHEMA`. ``files`` is its
    listing when the caller has made it already."""
    if fmt == "idx":
        df = read_idx(spark, source, class_names, files)
    elif fmt == "cifar":
        df = read_cifar(spark, source, class_names, files)
    elif fmt == "folder":
        df = read_folder(spark, source, labeled, files)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {list(FORMATS)}")
    if not labeled:
        from pyspark.sql import functions as F
        df = df.withColumn("label", F.lit(None).cast("string")) \
               .withColumn("label_index", F.lit(None).cast("int"))
    return df


# ------------------------------------------------------------------------------ tensors
def tensor_udf(height: int, width: int, channels: int):
    """A pandas UDF: (payload, src_height, src_width, src_channels) -> struct of
    :data:`TENSOR_SCHEMA`; a payload that cannot become an image gets a ``reason``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(TENSOR_SCHEMA)
    def convert(payload: pd.Series, h: pd.Series, w: pd.Series, c: pd.Series) -> pd.DataFrame:
        out = {k: [] for k in ("image", "height", "width", "channels", "original_height",
                               "original_width", "reason")}
        for data, sh, sw, sc in zip(payload, h, w, c):
            src = None if pd.isna(sh) else (int(sh), int(sw), int(sc))
            try:
                tensor, oh, ow = fmt_.to_tensor(data, src, height, width, channels)
                values = (tensor.tobytes(), height, width, channels, oh, ow, None)
            except fmt_.ImageError as exc:
                values = (None, None, None, None, None, None, str(exc))
            for k, v in zip(out, values):
                out[k].append(v)
        return pd.DataFrame({
            "image": out["image"], "reason": out["reason"],
            **{k: pd.array(out[k], dtype="Int32") for k in
               ("height", "width", "channels", "original_height", "original_width")},
        })[[c.split()[0] for c in TENSOR_SCHEMA.split(", ")]]
    return convert


def to_tensors(records, height: int, width: int, channels: int):
    """Records -> tensors at ``height x width x channels``; ``reason`` keeps the first
    problem (from reading, else from decoding)."""
    from pyspark.sql import functions as F
    udf = tensor_udf(height, width, channels)
    readable = F.col("reason").isNull()
    t = udf(F.when(readable, F.col("payload")), "src_height", "src_width", "src_channels")
    df = records.withColumn("_t", t)
    return df.select(
        *[c for c in records.columns if c not in ("payload", "src_height", "src_width",
                                                   "src_channels", "reason")],
        F.col("_t.image").alias("image"), F.col("_t.height").alias("height"),
        F.col("_t.width").alias("width"), F.col("_t.channels").alias("channels"),
        F.col("_t.original_height").alias("original_height"),
        F.col("_t.original_width").alias("original_width"),
        F.coalesce(F.col("reason"), F.col("_t.reason")).alias("reason"))


def decode_batch_rows(height: int, width: int, channels: int, configured: int) -> int:
    """Arrow batch rows for image UDFs: the configured count, capped at ~64 MiB of tensors."""
    return max(16, min(configured, (64 << 20) // (height * width * channels)))


# ---------------------------------------------------------------------------- generator
def _write_folder_chunk(out: str, start: int, count: int, test_every: int, seed: int,
                        names: list[str]) -> int:
    from PIL import Image
    base, labels = image_synth.synthetic_images(start, count, len(names), 96, 96, 3, seed)
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
                                   image_synth.class_names(n_classes))
    if fmt == "idx":
        images, labels = image_synth.synthetic_images(start, count, n_classes, 28, 28, 1, seed)
        Path(out, f"{name}-images-idx3-ubyte.gz").write_bytes(fmt_.encode_idx(images[..., 0]))
        Path(out, f"{name}-labels-idx1-ubyte.gz").write_bytes(fmt_.encode_idx(labels))
        return count
    images, labels = image_synth.synthetic_images(start, count, n_classes, 32, 32, 3, seed)
    Path(out, name).write_bytes(fmt_.encode_cifar(labels, images))
    return count


def generation_plan(count: int, fmt: str) -> list[dict]:
    """Shards of the synthetic dataset. IDX: a ``t10k`` pair holding 1/7 of the images,
    then ``train`` pairs of up to 60,000; CIFAR: ``test_batch.bin`` (1/6) and
    ``data_batch_<n>.bin`` of up to 10,000; folders: ``train/`` and ``test/`` (every 7th
    image), written in chunks of 1,000."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    shards = []
    if fmt == "folder":
        for start in range(0, count, image_synth.CHUNK):
            shards.append({"start": start, "count": min(image_synth.CHUNK, count - start),
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
        raise ValueError(f"unknown image format {fmt!r}; expected one of {list(FORMATS)}")
    out = str(Path(out).absolute())
    os.makedirs(out, exist_ok=True)
    if fmt == "cifar":
        Path(out, CIFAR_META).write_text("\n".join(image_synth.class_names(n_classes)) + "\n")
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
            "classes": image_synth.class_names(n_classes), "shards": len(plan)}
