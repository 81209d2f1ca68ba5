"""The files behind an ingest source, listed once.

A source is a file, a folder or a glob, local or on any file system Spark reads (a Unity
Catalog Volume, cloud storage). :class:`SourceFiles` lists it once with Spark's
``binaryFile`` source (contents are read only by the readers that ask for them) and derives
what the ingest stage needs: the batch id (same files, same id: re-ingesting replaces a
batch), every path, the empty files (Spark's file scans skip them, so they are found from
the file index and reported instead of lost), and each path relative to the source root.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from .errors import InputNotFound
from .tables import sql_literal

GLOB = re.compile(r"[*?\[{]")


def _normalize(uri: str) -> str:
    """A file index URI (``file:///a%20b``, ``s3a://bucket/a%20b``) in the form of binaryFile's
    ``path`` column, Hadoop's ``Path.toString()``: percent-escapes decoded, ``scheme:/path``
    when there is no authority (local files), ``scheme://authority/path`` when there is one
    (a bucket, a storage account: kept, or no file would match its listing)."""
    found = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(//([^/]*))?(.*)$", uri)
    if not found:
        return unquote(uri)
    scheme, _, authority, path = found.groups()
    if authority:
        return f"{scheme}://{authority}{unquote(path)}"
    return f"{scheme}:/{unquote(path).lstrip('/')}"


def local_path(path: str) -> Optional[str]:
    """``path`` as a path of this machine's file system (``file:`` URIs included), or None
    when it names another file system (``dbfs:``, ``s3://``, ...)."""
    if path.startswith("file:"):
        rest = path[len("file:"):]
        if rest.startswith("//") and not rest.startswith("///"):
            return None                   # file://host/...: another machine's
        return "/" + rest.lstrip("/") if rest.startswith("/") else rest   # file:rel: relative
    if "://" in path or path.startswith("dbfs:"):
        return None
    return path


def source_root(source: str) -> str:
    """The folder that relative paths start from: the source folder, a file's folder, or
    the part of a glob before its first wildcard."""
    plain = GLOB.split(source, maxsplit=1)[0]
    if plain != source:
        plain = plain.rsplit("/", 1)[0] if "/" in plain else ""
    plain = plain.rstrip("/")
    local = local_path(plain) if plain else None
    if local is not None and Path(local).exists():
        folder = Path(os.path.abspath(local))        # ".." resolved, as Hadoop's paths are
        return str(folder if folder.is_dir() else folder.parent)
    return plain


def relative_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` (the file name when ``root`` is not in it)."""
    marker = (root.rstrip("/") + "/") if root else None
    pos = path.find(marker) if marker else -1
    return path[pos + len(marker):] if pos >= 0 else path.rsplit("/", 1)[-1]


class SourceFiles:
    """The files of ``source``: ``df`` (binaryFile rows: path, modificationTime, length,
    content), ``paths``, ``empty`` paths, ``batch_id()`` and the ``rel`` column.

    ``recursive`` reads sub-folders too (image class folders); otherwise a folder's files
    are read as Spark's other file sources read them.
    """

    def __init__(self, spark, source: str, recursive: bool = False):
        reader = spark.read.format("binaryFile")
        if recursive and not GLOB.search(source):
            reader = reader.option("recursiveFileLookup", "true")
        self.source = source
        self.df = reader.load(source)
        self.root = source_root(source)
        self.paths = sorted(_normalize(p) for p in self.df.inputFiles())
        if not self.paths:
            raise InputNotFound(f"no input files match {source}")
        # One small job: contents are not read (the column is not selected).
        self.listing = sorted((r.path, r.length, r.modificationTime) for r in
                              self.df.select("path", "length", "modificationTime").collect())
        seen = {path for path, _, _ in self.listing}
        self.empty = [p for p in self.paths if p not in seen]

    def batch_id(self) -> str:
        """A stable id for these files (paths, sizes, modification times): same files, same
        id, so ingesting them again replaces their batch."""
        h = hashlib.sha1()
        for path, length, mtime in self.listing:   # (empty files never counted: ids stay stable)
            h.update(f"{path}|{length}|{mtime}\n".encode())
        return "b" + h.hexdigest()[:15]

    @property
    def rel(self):
        """A Spark column: ``path`` relative to the source root (the file name when the
        root is not in it)."""
        from pyspark.sql import functions as F
        marker = (self.root.rstrip("/") + "/") if self.root else "/"
        pos = F.locate(marker, F.col("path"))
        return F.when((pos > 0) & F.lit(bool(self.root)), F.expr(
            f"substring(path, {len(marker)} + locate({sql_literal(marker)}, path))")) \
            .otherwise(F.regexp_extract(F.col("path"), r"([^/]*)$", 1))
