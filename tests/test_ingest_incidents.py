"""Ingest: real files in real shapes; every bad-input class lands in quarantine with its
reason, counts reconcile, and re-ingesting a source does not duplicate rows."""
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from sparkeras.ingest import ingest_incidents
from sparkeras.workloads.incidents import FEATURES

HEADER = "ID, CPU_LOAD, MEMORY_LEAK_LOAD, DELAY, ERROR_1000, ERROR_1001, ERROR_1002, ERROR_1003, ROOT_CAUSE"
# (raw line, reason or None for valid)
EXPORT = [
    ("1, 1, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", None),
    ("2, 0, 0, 1, 0, 1, 1, 0, ", None),                       # not diagnosed yet
    ('"10", "1", "0", "0", "0", "0", "0", "1", "DATABASE_ISSUE"', None),
    ("3, 1, , 0, 0, 0, 1, 1, DATABASE_ISSUE", "empty field MEMORY_LEAK_LOAD"),
    ("4, 2, 0, 1, 0, 1, 0, 0, NETWORK_DELAY", "CPU_LOAD must be 0 or 1, got '2'"),
    ("5, 1, 0, high, 0, 1, 0, 0, NETWORK_DELAY", "DELAY must be 0 or 1, got 'high'"),
    ("6, 0, 1, 0, 1, 0, 0, 0, DISK_FULL", "unknown root cause 'DISK_FULL'"),
    ("7, 0, 1, 0", "short row: 4 fields, the header has 9"),
    ("7, 0, 1, 0, 1, 0, 0, 0, MEMORY_LEAK, extra", "long row: 10 fields, the header has 9"),
    ("x8, 0, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", "ID is not an integer: 'x8'"),
    ("4.5, 0, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", "ID is not an integer: '4.5'"),
    ("99999999999, 0, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", "ID is not an integer: '99999999999'"),
    ("9, 0, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", "duplicate ID 9: 2 rows with this ID in the input"),
    ("9, 1, 1, 0, 1, 0, 0, 0, MEMORY_LEAK", "duplicate ID 9: 2 rows with this ID in the input"),
    ("12, 3, 0, 0, 1, 0, 0, 0, NETWORK_DELAY2", "CPU_LOAD must be 0 or 1, got '3'; "
                                                "unknown root cause 'NETWORK_DELAY2'"),
]


def write_export(folder):
    """A real-world CSV export (BOM, CRLF, spaces, quotes) plus two more files: one with
    another column order and LF endings, one whose header lacks DELAY."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "\r\n".join([HEADER] + [line for line, _ in EXPORT]) + "\r\n"
    (folder / "a.csv").write_bytes(("\ufeff" + body).encode("utf-8"))
    (folder / "b.csv").write_text(
        "ROOT_CAUSE,ERROR_1003,ERROR_1002,ERROR_1001,ERROR_1000,DELAY,MEMORY_LEAK_LOAD,CPU_LOAD,ID\n"
        "NETWORK_DELAY,0,0,1,0,1,0,0,11\n\n")
    (folder / "c.csv").write_text(
        "ID,CPU_LOAD,MEMORY_LEAK_LOAD,ERROR_1000,ERROR_1001,ERROR_1002,ERROR_1003,ROOT_CAUSE\n"
        "13,1,0,0,0,0,0,MEMORY_LEAK\n14,1,0,0,0,0,0,MEMORY_LEAK\n")
    return folder


def test_csv_export_every_bad_class_quarantined_with_reason(spark, cfg, tmp_path):
    src = write_export(tmp_path / "export")
    result = ingest_incidents(spark, cfg, str(src), "ing_csv", "csv")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (18, 4, 14)
    assert result.input_rows == result.valid_rows + result.quarantined_rows

    valid = spark.table("ing_csv").select("ID", *FEATURES, "ROOT_CAUSE")
    expected = spark.createDataFrame(
        [(1, 1, 1, 0, 1, 0, 0, 0, "MEMORY_LEAK"), (2, 0, 0, 1, 0, 1, 1, 0, None),
         (10, 1, 0, 0, 0, 0, 0, 1, "DATABASE_ISSUE"), (11, 0, 0, 1, 0, 1, 0, 0, "NETWORK_DELAY")],
        valid.schema)
    assertDataFrameEqual(valid, expected)

    q = {(r.raw_record, r.reason, r.source_file.rsplit("/", 1)[-1])
         for r in spark.table("ing_csv_quarantine").collect()}
    want = {(line, reason, "a.csv") for line, reason in EXPORT if reason}
    missing_delay = "missing column DELAY in the file's header"
    want |= {("13,1,0,0,0,0,0,MEMORY_LEAK", missing_delay, "c.csv"),
             ("14,1,0,0,0,0,0,MEMORY_LEAK", missing_delay, "c.csv")}
    assert q == want
    batches = {r[0] for r in spark.sql("select distinct ingest_batch_id from ing_csv_quarantine").collect()}
    assert batches == {result.batch_id}


def test_reingesting_the_same_source_does_not_duplicate(spark, cfg, tmp_path):
    src = write_export(tmp_path / "export")
    first = ingest_incidents(spark, cfg, str(src), "ing_twice", "csv")
    second = ingest_incidents(spark, cfg, str(src), "ing_twice", "csv")
    assert first.summary() == second.summary()
    assert spark.table("ing_twice").count() == 4
    assert spark.table("ing_twice_quarantine").count() == 14


def test_ids_already_in_the_table_are_quarantined(spark, cfg, tmp_path):
    ingest_incidents(spark, cfg, str(write_export(tmp_path / "first")), "ing_seen", "csv")
    later = tmp_path / "later"
    later.mkdir()
    (later / "d.csv").write_text(
        "ID,CPU_LOAD,MEMORY_LEAK_LOAD,DELAY,ERROR_1000,ERROR_1001,ERROR_1002,ERROR_1003,ROOT_CAUSE\n"
        "1,0,0,0,0,0,0,0,MEMORY_LEAK\n100,0,0,0,0,0,0,0,MEMORY_LEAK\n")
    result = ingest_incidents(spark, cfg, str(later), "ing_seen", "csv")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (2, 1, 1)
    reason = spark.table("ing_seen_quarantine").where(f"ingest_batch_id = '{result.batch_id}'").first().reason
    assert reason.startswith("ID already ingested in batch b")
    assert spark.table("ing_seen").count() == 5


@pytest.mark.parametrize("broadcast_max", [None, 0])
def test_repeated_and_already_ingested_ids_by_either_join(spark, cfg, tmp_path, monkeypatch,
                                                          broadcast_max):
    """Keys with a problem reach the records by broadcast, or (past BROADCAST_MAX_KEYS) by a
    shuffle join: the same reasons either way. A key the input holds twice is refused as such,
    also when it was ingested before and when the other record holding it is invalid."""
    from sparkeras import ingest as ingest_stage
    if broadcast_max is not None:
        monkeypatch.setattr(ingest_stage, "BROADCAST_MAX_KEYS", broadcast_max)
    table = f"ing_keys_{broadcast_max}"
    head = "ID,CPU_LOAD,MEMORY_LEAK_LOAD,DELAY,ERROR_1000,ERROR_1001,ERROR_1002,ERROR_1003,ROOT_CAUSE\n"
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    (first / "a.csv").write_text(head + "1,0,0,0,0,0,0,0,MEMORY_LEAK\n2,0,0,0,0,0,0,0,MEMORY_LEAK\n")
    before = ingest_incidents(spark, cfg, str(first), table, "csv")
    rows = ["1,1,0,0,0,0,0,0,MEMORY_LEAK",                                  # ingested before
            "2,1,0,0,0,0,0,0,MEMORY_LEAK", "2,0,1,0,0,0,0,0,MEMORY_LEAK",   # before, and twice
            "3,0,0,0,0,0,0,0,MEMORY_LEAK", "3,5,0,0,0,0,0,0,MEMORY_LEAK",   # twice, once invalid
            "4,0,0,0,0,0,0,0,MEMORY_LEAK"]
    (later / "b.csv").write_text(head + "\n".join(rows) + "\n")
    result = ingest_incidents(spark, cfg, str(later), table, "csv")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (6, 1, 5)
    quarantined = spark.table(f"{table}_quarantine").where(f"ingest_batch_id = '{result.batch_id}'")
    twice = "duplicate ID {}: 2 rows with this ID in the input"
    assert sorted((r.raw_record, r.reason) for r in quarantined.collect()) == [
        (rows[0], f"ID already ingested in batch {before.batch_id}"),
        (rows[2], twice.format(2)), (rows[1], twice.format(2)),
        (rows[3], twice.format(3)), (rows[4], "CPU_LOAD must be 0 or 1, got '5'")]
    valid = spark.table(table).where(f"ingest_batch_id = '{result.batch_id}'")
    assert [r.ID for r in valid.collect()] == [4]


def test_parquet_with_typed_columns_and_nulls(spark, cfg, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    good = pd.DataFrame({"ID": [1, 2, 3], **{c: [0, 1, 1] for c in FEATURES},
                         "ROOT_CAUSE": ["MEMORY_LEAK", None, "NETWORK_DELAY"]})
    good.loc[2, "DELAY"] = 2
    table = pa.Table.from_pandas(good, preserve_index=False)
    table = table.set_column(table.schema.get_field_index("CPU_LOAD"), "CPU_LOAD",
                             pa.array([0, None, 1], pa.int32()))
    pq.write_table(table, folder / "part-0.parquet")
    result = ingest_incidents(spark, cfg, str(folder), "ing_parquet", "parquet")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (3, 1, 2)
    reasons = {json.loads(r.raw_record)["ID"]: r.reason
               for r in spark.table("ing_parquet_quarantine").collect()}
    assert reasons == {2: "missing field CPU_LOAD", 3: "DELAY must be 0 or 1, got '2'"}


def test_parquet_missing_a_column_quarantines_every_row(spark, cfg, tmp_path):
    folder = tmp_path / "pq_missing"
    folder.mkdir()
    df = pd.DataFrame({"ID": [1, 2], **{c: [0, 1] for c in FEATURES if c != "ERROR_1002"}})
    df.to_parquet(folder / "part-0.parquet", index=False)
    result = ingest_incidents(spark, cfg, str(folder), "ing_pq_missing", "parquet")
    assert (result.valid_rows, result.quarantined_rows) == (0, 2)
    assert {r.reason for r in spark.table("ing_pq_missing_quarantine").collect()} == {
        "missing column ERROR_1002"}


def test_json_lines(spark, cfg, tmp_path):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    flags = {c: 0 for c in FEATURES}
    lines = [json.dumps({"ID": 1, **flags, "ROOT_CAUSE": "MEMORY_LEAK"}),
             json.dumps({"ID": 2, **flags}),                                   # unlabeled
             json.dumps({"ID": 3, **{**flags, "ERROR_1001": 2}, "ROOT_CAUSE": "MEMORY_LEAK"}),
             json.dumps({"ID": 4, **{k: v for k, v in flags.items() if k != "DELAY"}}),
             '{"ID": 5, "CPU_LOAD": ',
             json.dumps({"ID": "five", **flags})]
    (folder / "x.json").write_text("\n".join(lines) + "\n")
    result = ingest_incidents(spark, cfg, str(folder), "ing_json", "json")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (6, 2, 4)
    reasons = sorted(r.reason for r in spark.table("ing_json_quarantine").collect())
    assert reasons == ["ERROR_1001 must be 0 or 1, got '2'", "ID is not an integer: 'five'",
                       "malformed JSON line", "missing field DELAY"]


def test_no_matching_files_is_a_clear_error(spark, cfg, tmp_path):
    with pytest.raises(Exception, match="(?i)path does not exist|no input files"):
        ingest_incidents(spark, cfg, str(tmp_path / "nothing*.csv"), "ing_none", "csv")


def test_file_without_header_is_quarantined(spark, cfg, tmp_path):
    folder = tmp_path / "noheader"
    folder.mkdir()
    (folder / "n.csv").write_text("1,0,0,0,0,0,0,0,MEMORY_LEAK\n")
    result = ingest_incidents(spark, cfg, str(folder), "ing_noheader", "csv")
    assert (result.valid_rows, result.quarantined_rows) == (0, 1)
    assert spark.table("ing_noheader_quarantine").first().reason == "file has no header row"


def test_ticketing_export_with_quoted_free_text(spark, cfg, tmp_path):
    """Every field quoted (as a ticketing system exports), an extra DESCRIPTION column with
    commas, doubled quotes and line breaks: valid rows land in the table whatever their
    description holds; quarantined rows keep the record exactly as the file has it."""
    import csv
    import io
    header = ["ID", *FEATURES, "ROOT_CAUSE", "DESCRIPTION"]
    rows = [
        (101, [1, 1, 0, 1, 0, 0, 0], "MEMORY_LEAK", "disk slow, then OOM, then restart"),
        (102, [0, 0, 1, 0, 1, 1, 0], "NETWORK_DELAY", 'user said "it hangs", twice'),
        (103, [1, 0, 0, 0, 0, 1, 1], "DATABASE_ISSUE", "line one\r\nline two, with a comma"),
        (104, [2, 0, 0, 0, 0, 1, 1], "DATABASE_ISSUE", 'bad flag, "quoted"\nand a second line'),
        (107, [0, 1, 0, 1, 0, 0, 0], "DISK_FULL", "full, again"),
    ]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(header)
    raw = {}
    for rid, flags, cause, text in rows:
        line = io.StringIO()
        csv.writer(line, quoting=csv.QUOTE_ALL, lineterminator="").writerow(
            [rid, *flags, cause, text])
        raw[rid] = line.getvalue()
        out.write(raw[rid] + "\r\n")
    broken = '"105","1","1","0","1","0","0","0","MEMORY_LEAK","starts, and never ends'
    out.write(broken + "\r\n")
    out.write('"106","0","0","1","0","1","0","0","NETWORK_DELAY","after the broken one"\r\n')
    folder = tmp_path / "tickets"
    folder.mkdir()
    (folder / "tickets.csv").write_bytes(("\ufeff" + out.getvalue()).encode("utf-8"))

    result = ingest_incidents(spark, cfg, str(folder), "ing_tickets", "csv")
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (7, 4, 3)
    valid = spark.table("ing_tickets").select("ID", *FEATURES, "ROOT_CAUSE")
    expected = spark.createDataFrame(
        [(101, 1, 1, 0, 1, 0, 0, 0, "MEMORY_LEAK"), (102, 0, 0, 1, 0, 1, 1, 0, "NETWORK_DELAY"),
         (103, 1, 0, 0, 0, 0, 1, 1, "DATABASE_ISSUE"), (106, 0, 0, 1, 0, 1, 0, 0, "NETWORK_DELAY")],
        valid.schema)
    assertDataFrameEqual(valid, expected)
    q = {r.reason: r.raw_record for r in spark.table("ing_tickets_quarantine").collect()}
    assert q == {
        "CPU_LOAD must be 0 or 1, got '2'": raw[104],
        "unknown root cause 'DISK_FULL'": raw[107],
        "unterminated quote on line 9: a quoted field opens and never closes": broken}
    assert '"bad flag, ""quoted""\nand a second line"' in raw[104]   # kept as written


def test_a_csv_file_too_large_to_read_whole_is_a_clear_error(spark, cfg, tmp_path, monkeypatch):
    from sparkeras import readers
    from sparkeras.errors import UsageError
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "export.csv").write_text(HEADER + "\n1, 1, 1, 0, 1, 0, 0, 0, MEMORY_LEAK\n")
    monkeypatch.setattr(readers, "MAX_CSV_BYTES", 64)      # the real limit is 2 GiB
    with pytest.raises(UsageError, match=r"export.csv has 0.0 GiB: a CSV file is parsed whole"):
        ingest_incidents(spark, cfg, str(folder), "ing_big", "csv")
