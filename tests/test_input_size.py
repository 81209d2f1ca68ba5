"""The input's size, estimated before the JVM starts (``spark.jit: auto``): from real CSV,
JSON-lines and parquet files, laid out as Spark writes them, without Spark."""
import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkeras import input_size
from sparkeras.cli import build_parser, config_from_args, input_rows
from sparkeras.session import choose_jit

LINE = "{i},1,0,1,0,0,1,0,MEMORY_LEAK\n"
HEADER = "ID,CPU_LOAD,MEMORY_LEAK_LOAD,DELAY,ERROR_1000,ERROR_1001,ERROR_1002,ERROR_1003," \
         "ROOT_CAUSE\n"


def _csv(path, first, n):
    path.write_text(HEADER + "".join(LINE.format(i=i) for i in range(first, first + n)))


def _spark_folder(folder):
    """The files Spark leaves beside its part files: skipped (counted, this checksum file of
    100,000 newlines would be the largest file and the estimate far off)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000.crc").write_bytes(b"\n" * 100_000)


def test_csv_rows_are_bytes_over_the_mean_line_less_one_header_per_file(tmp_path):
    export = tmp_path / "export"
    _spark_folder(export)
    _csv(export / "part-00000.csv", 1, 10_000)          # ids of 1, 4 and 5 digits
    _csv(export / "part-00001.csv", 10_001, 10_000)
    (export / "part-00002.csv").write_text("")            # empty: no header either
    estimate = input_size.source_rows(str(export), "csv")
    # the largest file's lines (5-digit ids) stand for all: within 2%
    assert abs(estimate - 20_000) <= 400
    # a small file is read whole: exact
    _csv(tmp_path / "small.csv", 1, 1000)
    assert input_size.source_rows(str(tmp_path / "small.csv"), "csv") == 1000
    assert input_size.source_rows(f"file://{tmp_path}/small.csv", "csv") == 1000
    assert input_size.source_rows(str(tmp_path / "sm*.csv"), "csv") == 1000
    assert input_size.source_rows(str(tmp_path / "small.csv"), "json") == 1001   # no header
    # compressed text (Spark reads it by its suffix): its bytes say nothing of its lines
    (tmp_path / "small.csv.gz").write_bytes(gzip.compress((tmp_path / "small.csv").read_bytes()))
    assert input_size.source_rows(str(tmp_path / "small.csv.gz"), "csv") is None


def test_parquet_rows_come_from_the_footers_of_a_partitioned_table(tmp_path, monkeypatch):
    table = tmp_path / "warehouse" / "scored"
    _spark_folder(table)
    for batch, rows in (("b1", 300), ("b2", 300), ("b3", 300)):
        part = table / f"ingest_batch_id={batch}"
        part.mkdir()
        pq.write_table(pa.table({"ID": list(range(rows))}), part / "part-00000.snappy.parquet")
    wh = str(tmp_path / "warehouse")
    assert input_size.table_rows(wh, "default.scored") == 900
    assert input_size.table_rows(wh, "scored") == 900
    assert input_size.table_rows(wh, "default.SCORED") == 900   # the metastore's lower case
    # footers of a sample, the rest in proportion to the bytes (same-sized files: exact)
    monkeypatch.setattr(input_size, "MAX_FOOTERS", 1)
    assert input_size.table_rows(wh, "default.scored") == 900
    # another database's folder
    other = tmp_path / "warehouse" / "ops.db" / "t"
    other.mkdir(parents=True)
    pq.write_table(pa.table({"ID": [1, 2]}), other / "part-0.parquet")
    assert input_size.table_rows(wh, "ops.t") == 2
    assert input_size.table_rows(wh, "default.t") is None
    # only the batches a command scores (--input-batch)
    assert input_size.table_rows(wh, "scored", ["b2"]) == 300
    assert input_size.table_rows(wh, "scored", ["b1", "b3", "b9"]) == 600
    assert input_size.table_rows(wh, "scored", ["b9"]) is None
    assert input_size.table_rows(wh, "ops.t", ["b1"]) is None       # not partitioned by it
    # a Delta table keeps replaced files until vacuumed: its files do not count its rows
    (other / "_delta_log").mkdir()
    assert input_size.table_rows(wh, "ops.t") is None


def test_what_cannot_be_seen_is_unknown_never_an_error(tmp_path):
    assert input_size.table_rows(str(tmp_path), "default.nothing") is None
    assert input_size.table_rows("s3://bucket/warehouse", "default.t") is None
    assert input_size.source_rows("dbfs:/Volumes/main/raw/export", "csv") is None
    assert input_size.source_rows(str(tmp_path / "missing"), "csv") is None
    assert input_size.source_rows(str(tmp_path), "csv") is None        # an empty folder
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert input_size.source_rows(str(tmp_path / "bad.parquet"), "parquet") is None
    assert input_size.source_rows(str(tmp_path / "bad.parquet"), "idx") is None


def test_auto_is_late_from_the_threshold_and_quick_below_or_when_unknown():
    assert choose_jit("auto", None, 2_000_000) == "quick"
    assert choose_jit("auto", 1_999_999, 2_000_000) == "quick"
    assert choose_jit("auto", 2_000_000, 2_000_000) == "late"
    for setting in ("quick", "late", "full"):                  # the user's choice stands
        assert choose_jit(setting, 10**9, 2_000_000) == setting
        assert choose_jit(setting, None, 2_000_000) == setting


@pytest.mark.parametrize("words, expected", [
    (["ingest", "incidents", "--source", "{tmp}/small.csv", "--table", "t"], 1000),
    (["ingest", "tabular", "--schema", "s.yml", "--source", "{tmp}/small.csv"], 1000),
    (["score", "incidents", "--table", "scored", "--output", "o"], 900),
    (["score", "incidents", "--table", "scored", "--output", "o", "--input-batch", "b2"], 400),
    (["ingest", "images", "--source", "{tmp}/small.csv", "--table", "t", "--format", "idx"],
     None),                                                   # images: not estimated
    (["sql", "SELECT 1"], None),
    (["--set", "spark.jit=quick", "score", "incidents", "--table", "scored", "--output", "o"],
     None),                                                   # not asked
])
def test_which_commands_estimate_their_input(tmp_path, words, expected):
    _csv(tmp_path / "small.csv", 1, 1000)
    table = tmp_path / "state" / "warehouse" / "scored"
    for batch, rows in (("b1", 500), ("b2", 400)):
        (table / f"ingest_batch_id={batch}").mkdir(parents=True)
        pq.write_table(pa.table({"ID": list(range(rows))}),
                       table / f"ingest_batch_id={batch}" / "part-0.parquet")
    args = build_parser().parse_args(["--set", f"state_dir={tmp_path / 'state'}", "--set",
                                      "spark.jit=auto"]
                                     + [w.replace("{tmp}", str(tmp_path)) for w in words])
    assert input_rows(args, config_from_args(args)) == expected
