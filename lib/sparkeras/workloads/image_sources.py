"""Image datasets on disk -> records: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary batches,
and folders of encoded images with one sub-folder per class (cats-vs-dogs).

Reading yields one *record* per image (or per unreadable file) with a stable ``image_id``,
the label and split the source declares, the source path, and the payload: raw HWC bytes
(IDX, CIFAR) or the encoded file (folders); see :data:`RECORD_SCHEMA`. Decoding and resizing
come later (``images.to_tensors``). A record that cannot become an image carries a
``reason``; nothing is dropped.
"""
from __future__ import annotations

import re
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputNotFound, UsageError
from ..sources import SourceFiles, relative_path
from . import image_formats as fmt_

FORMATS = ("idx", "cifar", "folder")
SPLIT_FOLDERS = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}
RECORD_SCHEMA = ("image_id string, label string, label_index int, split string, source string, "
                 "payload binary, src_height int, src_width int, src_channels int, reason string")
RECORD_COLUMNS = [c.split()[0] for c in RECORD_SCHEMA.split(", ")]
IDX_NAME = re.compile(r"^(?P<prefix>.+?)[-.](?P<kind>images|labels)[-.]idx(?P<dims>[13])-ubyte"
                      r"(?:\.gz)?$", re.IGNORECASE)
CIFAR_META = "batches.meta.txt"
RECORDS_PER_CHUNK = 4096


def _records(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def empty_file_problems(files: SourceFiles) -> list[dict]:
    """A record for every empty file (Spark's scans skip them): never lost silently."""
    return [_file_problem(relative_path(p, files.root), p, "empty file") for p in files.empty]


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


def read_idx(spark, files: SourceFiles, class_names: Sequence[str] = ()):
    """IDX image/label file pairs (``<prefix>-images-idx3-ubyte[.gz]`` with
    ``<prefix>-labels-idx1-ubyte[.gz]`` in the same folder) -> records.

    Labels files are small (one byte per image) and are read on the driver; each images
    file is parsed by one Spark task. An images file without a labels file gives
    unlabelled records. Files that are not an IDX pair member are quarantined.
    """
    rel = files.rel
    listing = sorted(files.df.select("path", rel.alias("rel")).collect(), key=lambda r: r.path)
    by_key: dict[tuple[str, str, str], str] = {}
    problems = empty_file_problems(files)
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


def read_cifar(spark, files: SourceFiles, class_names: Sequence[str] = ()):
    """CIFAR-10 binary batches (``*.bin``) -> records; class names from
    ``batches.meta.txt`` when present, else ``class_names``, else "0".."9"."""
    rel = files.rel
    listing = files.df.select("path", rel.alias("rel")).collect()
    metas = [r for r in listing if r.rel.rsplit("/", 1)[-1].lower() == CIFAR_META]
    names = list(class_names) or [str(i) for i in range(10)]
    if metas:
        text = spark.read.format("binaryFile").load(metas[0].path).select("content").first()[0]
        names = fmt_.parse_cifar_meta(bytes(text).decode("utf-8", errors="replace"))
    problems = empty_file_problems(files) + [
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
        raise InputNotFound(f"no CIFAR-10 batch files (*.bin) in {files.source}")
    return _union(parts)


# ------------------------------------------------------------------------------- folder
def read_folder(spark, files: SourceFiles, labeled: bool = True):
    """A tree of encoded images: ``[train|test|validation/]<class>/<file>`` -> records.

    Read with Spark's ``binaryFile`` source (files are never listed in a Python loop).
    A file directly under the root (or a split folder) has no label, as does every file
    when ``labeled`` is false. Every file becomes a record; decoding comes later.
    """
    from pyspark.sql import functions as F
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
        records = records.unionByName(spark.createDataFrame(_records(empty_file_problems(files)),
                                                            RECORD_SCHEMA))
    return records


def read_raw(spark, files: SourceFiles, fmt: str, class_names: Sequence[str] = (),
             labeled: bool = True):
    """Records of the source behind ``files`` in format ``fmt``: see :data:`RECORD_SCHEMA`."""
    if fmt == "idx":
        df = read_idx(spark, files, class_names)
    elif fmt == "cifar":
        df = read_cifar(spark, files, class_names)
    elif fmt == "folder":
        df = read_folder(spark, files, labeled)
    else:
        raise UsageError(f"unknown image format {fmt!r}; expected one of {list(FORMATS)}")
    if not labeled:
        from pyspark.sql import functions as F
        df = df.withColumn("label", F.lit(None).cast("string")) \
               .withColumn("label_index", F.lit(None).cast("int"))
    return df
