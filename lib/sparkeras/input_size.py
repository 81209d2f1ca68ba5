"""How many rows a command is about to read, estimated before its JVM starts.

``spark.jit: auto`` picks the embedded JVM's compilers from the size of the command's input
(:func:`sparkeras.session.choose_jit`), and the JVM's options are fixed when it starts: so
the size is estimated here in Python, from local files alone, cheaply (file sizes, parquet
footers, the first block of one text file), never by reading the data. An estimate only
chooses a compiler: anything this module cannot see (a path on another file system, a table
outside the local warehouse, an unreadable file) is ``None``, never an error.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional

from .sources import GLOB, local_path
from .tables import INGEST_BATCH

#: Text files: the first this many bytes of the largest file give the mean line length.
SAMPLE_BYTES = 1 << 20
#: Parquet: footers read from at most this many files; the rest in proportion to their bytes.
MAX_FOOTERS = 64
#: Compressed text (Spark reads it by its suffix): lines cannot be counted from its bytes.
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".snappy", ".deflate", ".zip")


def _hidden(name: str) -> bool:
    # Spark's file sources skip these too (_SUCCESS, .crc files, _delta_log...)
    return name.startswith(("_", "."))


def local_files(source: str, recursive: bool = False) -> list[Path]:
    """The data files of a local file, folder or glob (hidden files skipped), as Spark's
    file sources would read them; [] when there are none or ``source`` is not local."""
    local = local_path(source)
    if local is None:
        return []
    tops = [Path(p) for p in sorted(glob.glob(local))] if GLOB.search(local) else [Path(local)]
    out: list[Path] = []
    for top in tops:
        if top.is_file():
            out.append(top)
        elif top.is_dir():
            for folder, dirs, files in os.walk(top):
                # partition folders (key=value) are read by Spark's file sources too
                dirs[:] = sorted(d for d in dirs if not _hidden(d) and (recursive or "=" in d))
                out += [Path(folder, f) for f in sorted(files) if not _hidden(f)]
    return out


def _parquet_rows(files: list[Path]) -> Optional[int]:
    import pyarrow.parquet as pq
    sizes = {f: n for f in files if (n := f.stat().st_size) > 0}
    if not sizes:
        return 0
    sample = list(sizes)[:MAX_FOOTERS]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sample)
    sampled_bytes = sum(sizes[f] for f in sample)
    return round(rows * sum(sizes.values()) / sampled_bytes)


def _text_rows(files: list[Path], headers: bool) -> Optional[int]:
    if any(f.name.lower().endswith(COMPRESSED) for f in files):
        return None
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    if total == 0:
        return 0
    largest = files[sizes.index(max(sizes))]
    with open(largest, "rb") as fh:
        block = fh.read(SAMPLE_BYTES)
    lines = block.count(b"\n") or 1
    header_lines = sum(1 for n in sizes if n) if headers else 0
    return max(0, round(total * lines / len(block)) - header_lines)


def estimate_rows(files: Iterable[Path], fmt: str) -> Optional[int]:
    """Rows in ``files`` of format ``fmt`` (``parquet``: footers; ``csv`` with a header
    line per file, ``json`` lines: bytes over the mean line length of the largest file's
    first MiB), or None for other formats or when a file cannot be read."""
    files = list(files)
    try:
        if fmt == "parquet":
            return _parquet_rows(files)
        if fmt in ("csv", "json"):
            return _text_rows(files, headers=fmt == "csv")
    except (OSError, ValueError, ImportError):
        return None
    return None


def source_rows(source: str, fmt: str) -> Optional[int]:
    """Rows in an ingest source (a local file, folder or glob), or None when unknown."""
    files = local_files(source)
    return estimate_rows(files, fmt) if files else None


def table_rows(warehouse_dir: str, table: str, batches: Optional[Iterable[str]] = None,
               batch_column: str = INGEST_BATCH) -> Optional[int]:
    """Rows of a parquet table in the local warehouse, found where the metastore puts a
    managed table (``<warehouse>/<name>`` in ``default``, ``<warehouse>/<db>.db/<name>``
    elsewhere), or None when it is not there (an external table, a Delta table, no local
    warehouse). ``batches``: only the rows of these partitions of ``batch_column`` (a
    command scoring a day's batch of a large table)."""
    db, _, name = table.rpartition(".")
    root = local_path(warehouse_dir)
    if root is None or not name:
        return None
    folder = Path(root, name.lower()) if db in ("", "default") else \
        Path(root, f"{db.lower()}.db", name.lower())
    if not folder.is_dir() or (folder / "_delta_log").exists():
        return None            # Delta: replaced files stay until vacuumed, so not counted
    files = [f for f in local_files(str(folder)) if f.suffix == ".parquet"]
    if batches is not None:
        wanted = {f"{batch_column}={b}" for b in batches}
        files = [f for f in files if wanted & set(f.relative_to(folder).parts[:-1])]
    return estimate_rows(files, "parquet") if files else None
