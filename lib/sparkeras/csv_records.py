"""CSV files as RFC 4180 defines them, with the leniency real exports need.

No Spark: Spark calls :func:`parse_file` once per file inside a task, and this module is
tested alone. Two ways of reading, one result: a plain text (ASCII, no quote character, see
:func:`is_plain`; most exports) is read a column at a time with pyarrow, about ten times
faster; any other text record by record with the standard ``csv`` module. Tests hold the
two to the same records, values and reasons on plain texts.

What a record is:

- Records are separated by line breaks (LF or CRLF) outside quotes. A field may be quoted
  with ``"``; inside quotes a comma, a line break or a doubled quote ``""`` (one ``"``) is
  data, so one record may span several lines. Spaces around a field are removed.
- The file's first non-blank record is its header. Columns are matched by name (case and
  surrounding spaces ignored), in any order; columns nobody asked for are ignored. A later
  record that is a header again (files concatenated with ``cat``) applies to the records
  after it. Blank lines are not records.
- UTF-8, with or without a byte-order mark; gzip and bzip2 files are decompressed.
- A quote that opens and never closes would make the rest of the file one field. Instead,
  a record that spans lines (or ends the file) and leaves a quoted field open, or closes a
  quote before text other than a comma (two broken records read as one), is taken as a
  broken quote: its first line becomes one record with the reason ``unterminated quote ...``
  and parsing resumes on the next line. A record whose quotes are well formed is one record,
  whatever its number of fields (``short row`` / ``long row`` then, with all its lines).
- Line ends: LF, CRLF, or CR alone (files with no LF).

Every record comes out as a row: its raw text (line breaks inside quotes kept), its first
line number, the requested columns as stripped strings (None when the header lacks them)
and a parse error (None when the record could be split into the header's fields).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import zlib
from collections import deque
from typing import Iterator, Optional, Sequence

FIELD_LIMIT = csv.field_size_limit()          # 131,072 characters
CHUNK_ROWS = 65536


def decompress(data: bytes) -> bytes:
    """gzip or bzip2 data (recognised by magic bytes) decompressed; anything else as is."""
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:3] == b"BZh":
            return bz2.decompress(data)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ValueError(f"corrupt compressed file: {exc}") from None
    return data


class _Lines:
    """The physical lines of a text, one at a time, remembering those taken for the
    current record and accepting lines pushed back (to parse them again)."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.lineno = 0
        self.taken: list[tuple[int, str]] = []
        self.pending: deque[tuple[int, str]] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            if self.pos >= len(self.text):
                raise StopIteration
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end + 1
            self.lineno += 1
            item = (self.lineno, self.text[self.pos:end])
            self.pos = end
        self.taken.append(item)
        return item[1]

    def push_back(self, items: Sequence[tuple[int, str]]) -> None:
        self.pending.extendleft(reversed(items))


def quote_problem(text: str) -> Optional[str]:
    """Read one record's text as the parser does and say what is wrong with its quotes:
    ``"open"`` when a quoted field never closes, ``"stray"`` when a closing quote is followed
    by text other than spaces before the next comma (two broken records read as one), None
    when the quotes are well formed. Quotes inside an unquoted field (``24" monitor``) are
    data, as the parser reads them."""
    i, n = 0, len(text)
    at_start = True
    while i < n:
        if at_start:
            if text[i] == " ":
                i += 1
                continue
            if text[i] == '"':
                i += 1
                while True:                       # to the closing quote; "" is a quote
                    j = text.find('"', i)
                    if j < 0:
                        return "open"
                    if j + 1 < n and text[j + 1] == '"':
                        i = j + 2
                        continue
                    i = j + 1
                    break
                while i < n and text[i] in " \t":
                    i += 1
                if i < n and text[i] != ",":
                    return "stray"
                i += 1
                continue
            at_start = False
        j = text.find(",", i)
        if j < 0:
            return None
        i, at_start = j + 1, True
    return None


def _raw(lines: Sequence[tuple[int, str]]) -> str:
    text = "".join(line for _, line in lines)
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text.lstrip("\ufeff")


class Header:
    """Where each requested column sits in a header record, and what is wrong with it."""

    def __init__(self, fields: Sequence[str], columns: Sequence[str], required: Sequence[str]):
        names = [f.strip().lstrip("\ufeff").strip().upper() for f in fields]
        self.n_fields = len(names)
        self.positions: dict[str, int] = {}
        twice = []
        for c in columns:
            hits = [i for i, n in enumerate(names) if n == c.upper()]
            if len(hits) > 1:
                twice.append(c)
            if hits:
                self.positions[c] = hits[0]
        missing = [c for c in required if c not in self.positions]
        self.error: Optional[str] = None
        if twice:
            self.error = "column " + ", ".join(twice) + " appears twice in the file's header"
        elif missing:
            self.error = "missing column " + ", ".join(missing) + " in the file's header"


def is_header(fields: Sequence[str], key: str, columns: Sequence[str]) -> bool:
    """A header names the ``key`` column and at least one other requested column (a data
    row cannot: its key is a value, e.g. a number)."""
    names = {f.strip().lstrip("\ufeff").strip().upper() for f in fields}
    return key.upper() in names and any(c.upper() in names for c in columns if c != key)


def parse_text(text: str, columns: Sequence[str], required: Sequence[str], key: str,
               chunk_rows: int = CHUNK_ROWS) -> Iterator[dict]:
    """Records of one file's text, in chunks: dicts of equal-length columns (lists, or
    pyarrow arrays when the text is plain, see :func:`is_plain`) with the keys ``raw``,
    ``line``, ``error`` and every name in ``columns``."""
    if "\r" in text and "\n" not in text:       # old Mac line ends (CR only)
        text = text.replace("\r", "\n")
    chunks = plain_records(text, columns, required, key, chunk_rows) if is_plain(text) else None
    if chunks is not None:
        yield from chunks
    else:
        yield from record_by_record(text, columns, required, key, chunk_rows)


def record_by_record(text: str, columns: Sequence[str], required: Sequence[str], key: str,
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[dict[str, list]]:
    """:func:`parse_text` for any text, one record at a time (the standard ``csv`` module):
    quotes, records spanning lines, broken quotes. Line ends are LF or CRLF."""
    lines = _Lines(text)
    header: Optional[Header] = None
    key_upper = key.upper()

    def new_chunk() -> dict[str, list]:
        return {"raw": [], "line": [], "error": [], **{c: [] for c in columns}}
    chunk = new_chunk()

    def emit(taken, fields: Optional[list[str]], error: Optional[str]) -> None:
        chunk["raw"].append(_raw(taken))
        chunk["line"].append(taken[0][0])
        positions = header.positions if header is not None else {}
        for c in columns:
            p = positions.get(c)
            chunk[c].append(fields[p].strip() if fields is not None and p is not None
                            and p < len(fields) else None)
        chunk["error"].append(error)

    reader = csv.reader(lines, skipinitialspace=True)
    while True:
        lines.taken = []
        try:
            fields = next(reader)
            problem = None
        except StopIteration:
            break
        except csv.Error as exc:
            fields, problem = None, str(exc)
        taken = lines.taken
        if not taken:
            break
        raw = _raw(taken)
        if fields is not None and not raw.strip():
            continue                                     # blank line: not a record
        # A record that spans lines, or ends the file, may be a quote that never closed
        # swallowing the lines after it (or two broken records read as one).
        spans = len(taken) > 1
        last = lines.pos >= len(lines.text) and not lines.pending
        quotes = quote_problem(raw) if (spans or last) and '"' in raw else None
        broken = (spans and (problem is not None or quotes is not None)) or quotes == "open"
        if broken or (problem is not None and "field limit" in problem):
            # A quote that never closes: report its first line, parse again from the next.
            first = taken[0]
            lines.push_back(taken[1:])
            what = (f"runs past {FIELD_LIMIT:,} characters" if problem and
                    "field limit" in problem else "opens and never closes")
            emit([first], None, f"unterminated quote on line {first[0]}: a quoted field {what}")
            reader = csv.reader(lines, skipinitialspace=True)
        elif problem is not None:
            emit(taken, None, f"unreadable CSV record: {problem}")
            reader = csv.reader(lines, skipinitialspace=True)
        elif key_upper in raw.upper() and is_header(fields, key, columns):
            header = Header(fields, columns, required)
            continue
        elif header is None:
            emit(taken, fields, "file has no header row")
        elif header.error is not None:
            emit(taken, fields, header.error)
        elif len(fields) < header.n_fields:
            emit(taken, fields, f"short row: {len(fields)} fields, the header has "
                                f"{header.n_fields}")
        elif len(fields) > header.n_fields:
            emit(taken, fields, f"long row: {len(fields)} fields, the header has "
                                f"{header.n_fields}")
        else:
            emit(taken, fields, None)
        if len(chunk["raw"]) >= chunk_rows:
            yield chunk
            chunk = new_chunk()
    if chunk["raw"]:
        yield chunk


# What str.strip() removes from ASCII text (the record-by-record parser strips with it).
ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def is_plain(text: str) -> bool:
    """Whether ``text`` can be read a column at a time (:func:`plain_records`) with exactly
    the records and reasons of :func:`record_by_record`: ASCII, no quote character at all
    (so every line is one record and every comma a separator), no NUL, and a CR only
    before LF. Exports of numbers and codes usually are."""
    return (text.isascii() and '"' not in text and "\x00" not in text
            and text.count("\r") == text.count("\r\n"))


def plain_records(text: str, columns: Sequence[str], required: Sequence[str], key: str,
                  chunk_rows: int = CHUNK_ROWS) -> Optional[list[dict]]:
    """:func:`parse_text` of a text for which :func:`is_plain` holds, a column at a time in
    pyarrow (no Python object per record): the same records, values and reasons as
    :func:`record_by_record`, as chunks of pyarrow arrays. None when a line is longer than
    the ``csv`` module's field limit (:func:`record_by_record` then reports it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    if text.endswith("\n"):
        lines = lines.slice(0, len(lines) - 1)          # the text after the last LF is no line
    if "\r" in text:
        lines = pc.replace_substring(lines, "\r", "")   # every CR is a CRLF's
    n = len(lines)
    if n == 0:
        return []
    if pc.max(pc.binary_length(lines)).as_py() > FIELD_LIMIT:
        return None
    blank = pc.equal(pc.binary_length(pc.ascii_trim(lines, characters=ASCII_SPACE)), 0)
    blank = blank.to_numpy(zero_copy_only=False)
    # Headers: lines naming the key (a cheap scan), then checked as the record parser does.
    named = np.flatnonzero(pc.match_substring(lines, key, ignore_case=True)
                           .to_numpy(zero_copy_only=False) & ~blank)
    headers = [(int(i), Header(fields, columns, required)) for i in named
               for fields in [lines[int(i)].as_py().split(",")] if is_header(fields, key, columns)]
    starts = [(0, None)] + [(i + 1, h) for i, h in headers]
    ends = [i for i, _ in headers] + [n]

    out: list[pa.Table] = []
    for (start, header), end in zip(starts, ends):
        rows = np.flatnonzero(~blank[start:end]) + start
        if len(rows) == 0:
            continue
        raw = lines.take(pa.array(rows))
        parts = pc.split_pattern(raw, ",")
        counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
        if header is None:
            error = pa.array(["file has no header row"] * len(rows), pa.large_string())
        elif header.error is not None:
            error = pa.array([header.error] * len(rows), pa.large_string())
        else:
            count = pc.cast(pa.array(counts), pa.large_string())
            size = f" fields, the header has {header.n_fields}"
            text_of = lambda v: pa.scalar(v, pa.large_string())    # noqa: E731
            short = pc.binary_join_element_wise(text_of("short row: "), count, text_of(size),
                                                text_of(""))
            long = pc.binary_join_element_wise(text_of("long row: "), count, text_of(size),
                                               text_of(""))
            error = pc.if_else(pa.array(counts < header.n_fields), short, pc.if_else(
                pa.array(counts > header.n_fields), long, pa.scalar(None, pa.large_string())))
        values = parts.values
        starts_at = parts.offsets.to_numpy()[:-1]
        chunk = {"raw": raw, "line": pa.array(rows + 1, pa.int64()), "error": error}
        positions = header.positions if header is not None else {}
        for c in columns:
            p = positions.get(c)
            if p is None:
                chunk[c] = pa.nulls(len(rows), pa.large_string())
                continue
            has = counts > p
            field = values.take(pa.array(np.where(has, starts_at + p, 0)))
            field = pc.if_else(pa.array(has), pc.ascii_trim(field, characters=ASCII_SPACE),
                               pa.scalar(None, pa.large_string()))
            chunk[c] = field
        out.append(pa.table(chunk))
    if not out:
        return []
    table = pa.concat_tables(out)
    table = table.cast(pa.schema([(f.name, pa.string() if f.type == pa.large_string() else f.type)
                                  for f in table.schema]))
    return [{name: batch.column(name) for name in batch.schema.names}
            for batch in table.to_batches(max_chunksize=chunk_rows)]


def parse_file(data: bytes, columns: Sequence[str], required: Sequence[str], key: str,
               chunk_rows: int = CHUNK_ROWS) -> Iterator[dict[str, list]]:
    """:func:`parse_text` of a file's bytes (decompressed, UTF-8 decoded; undecodable bytes
    become U+FFFD and then fail validation in the fields that hold them). A file that cannot
    be decompressed is one record (empty raw text, line 0) with the reason."""
    try:
        data = decompress(bytes(data))
    except ValueError as exc:
        yield {"raw": [""], "line": [0], "error": [str(exc)], **{c: [None] for c in columns}}
        return
    text = data.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    yield from parse_text(text, columns, required, key, chunk_rows)
