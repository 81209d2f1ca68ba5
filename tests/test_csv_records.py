"""The RFC 4180 record parser alone (no Spark): quoting, multi-line records, headers per
file, and broken quotes that must not swallow the rest of a file."""
import bz2
import gzip

import pytest

from sparkeras.csv_records import (
    FIELD_LIMIT,
    is_plain,
    parse_file,
    parse_text,
    plain_records,
    record_by_record,
)

COLUMNS = ["ID", "A", "B", "NOTE"]


def records(text, columns=COLUMNS, required=("ID", "A", "B")):
    out = []
    for chunk in parse_text(text, columns, list(required), "ID", chunk_rows=2):
        chunk = {k: v.to_pylist() if hasattr(v, "to_pylist") else v for k, v in chunk.items()}
        out += [{k: v[i] for k, v in chunk.items()} for i in range(len(chunk["raw"]))]
    return out


def test_quoted_commas_doubled_quotes_and_line_breaks():
    text = ('"ID","A","B","NOTE"\r\n'
            '"1","0","1","plain"\r\n'
            '"2","1","0","commas, and ""quotes"""\r\n'
            '"3","1","1","two\r\nlines, one record"\r\n'
            '4, 0 , 1,  "spaced"  \r\n')
    got = records(text)
    assert [(r["ID"], r["A"], r["B"], r["NOTE"], r["error"], r["line"]) for r in got] == [
        ("1", "0", "1", "plain", None, 2),
        ("2", "1", "0", 'commas, and "quotes"', None, 3),
        ("3", "1", "1", "two\r\nlines, one record", None, 4),
        ("4", "0", "1", "spaced", None, 6)]
    # the raw record is the file's text: quotes and the line break inside them kept
    assert got[1]["raw"] == '"2","1","0","commas, and ""quotes"""'
    assert got[2]["raw"] == '"3","1","1","two\r\nlines, one record"'


def test_any_column_order_extra_columns_and_missing_optional_ones():
    got = records("note,EXTRA,b, id ,a\nx,ignored,1,7,0\n")
    assert [(r["ID"], r["A"], r["B"], r["NOTE"], r["error"]) for r in got] == [
        ("7", "0", "1", "x", None)]
    got = records("ID,A,B\n8,1,1\n")                      # NOTE absent: None, not an error
    assert (got[0]["NOTE"], got[0]["error"]) == (None, None)


def test_unterminated_quote_mid_file_is_one_bad_record_and_reading_resumes():
    text = ('ID,A,B,NOTE\n'
            '1,0,1,"opens here\n'
            '2,1,1,fine\n'
            '3,0,0,"a, quoted"\n'
            '4,1,0,last\n')
    got = records(text)
    assert [(r["ID"], r["error"], r["line"]) for r in got] == [
        (None, "unterminated quote on line 2: a quoted field opens and never closes", 2),
        ("2", None, 3), ("3", None, 4), ("4", None, 5)]
    assert got[0]["raw"] == '1,0,1,"opens here'


def test_unterminated_quote_at_the_end_of_the_file():
    got = records('ID,A,B,NOTE\n1,0,1,ok\n2,0,1,"never\n3,1,1,closes\n')
    assert [(r["ID"], r["error"]) for r in got] == [
        ("1", None),
        (None, "unterminated quote on line 3: a quoted field opens and never closes"),
        ("3", None)]


def test_a_runaway_quote_past_the_field_limit():
    text = 'ID,A,B,NOTE\n1,0,1,"' + "x" * (FIELD_LIMIT + 10) + "\n2,1,1,after\n"
    got = records(text)
    assert got[0]["error"] == (f"unterminated quote on line 2: a quoted field runs past "
                               f"{FIELD_LIMIT:,} characters")
    assert [(r["ID"], r["error"]) for r in got[1:]] == [("2", None)]


def test_short_long_and_headerless_records():
    got = records("ID,A,B,NOTE\n1,0\n2,0,1,x,extra\n\n   \n")
    assert [r["error"] for r in got] == ["short row: 2 fields, the header has 4",
                                         "long row: 5 fields, the header has 4"]
    got = records("1,0,1,x\n2,0,1,y\n")
    assert [r["error"] for r in got] == ["file has no header row"] * 2


def test_header_problems_apply_to_every_record_under_that_header():
    got = records("ID,A,NOTE\n1,0,x\n")
    assert got[0]["error"] == "missing column B in the file's header"
    got = records("ID,A,B,A\n1,0,1,1\n")
    assert got[0]["error"] == "column A appears twice in the file's header"


def test_concatenated_files_each_header_applies_below_it():
    text = "ID,A,B\n1,0,1\nB,A,ID\n1,0,2\n"
    assert [(r["ID"], r["A"], r["B"]) for r in records(text)] == [("1", "0", "1"),
                                                                   ("2", "0", "1")]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lambda b: b])
def test_bom_crlf_and_compressed_files(compress):
    data = compress("\ufeffID,A,B\r\n1,0,1\r\n".encode("utf-8"))
    (record,) = flat(parse_file(data, COLUMNS, ["ID", "A", "B"], "ID"))
    assert (record["raw"], record["ID"], record["error"], record["line"]) == ("1,0,1", "1", None, 2)


def test_a_corrupt_compressed_file_is_one_record_with_the_reason():
    (chunk,) = parse_file(gzip.compress(b"ID,A\n1,0\n")[:20], COLUMNS, ["ID"], "ID")
    assert chunk["raw"] == [""] and chunk["ID"] == [None]
    assert chunk["error"][0].startswith("corrupt compressed file: ")


def test_two_broken_quotes_in_a_row_are_two_bad_records_not_one_good_one():
    got = records('ID,A,B,NOTE\n1,0,1,"opens here\n2,1,1,"also opens\n3,0,0,fine\n')
    assert [(r["ID"], r["error"], r["line"]) for r in got] == [
        (None, "unterminated quote on line 2: a quoted field opens and never closes", 2),
        (None, "unterminated quote on line 3: a quoted field opens and never closes", 3),
        ("3", None, 4)]


def test_an_unterminated_quote_on_the_last_line_is_refused():
    got = records('ID,A,B,NOTE\n1,0,1,ok\n3,0,1,"never closes')
    assert [(r["ID"], r["error"]) for r in got] == [
        ("1", None),
        (None, "unterminated quote on line 3: a quoted field opens and never closes")]


def test_quotes_inside_an_unquoted_field_are_data_and_a_well_quoted_record_stays_whole():
    got = records('ID,A,B,NOTE\n5,0,1,"24"" monitor, line1\nline2"\n6,1,0,24" monitor\n'
                  '7,1,1,"three\nlines",extra\n')
    assert [(r["ID"], r["NOTE"], r["error"]) for r in got] == [
        ("5", '24" monitor, line1\nline2', None),
        ("6", '24" monitor', None),
        ("7", "three\nlines", "long row: 5 fields, the header has 4")]
    assert got[2]["raw"] == '7,1,1,"three\nlines",extra'       # one record, both lines


def test_old_mac_line_ends():
    got = records("ID,A,B\r1,0,1\r2,1,0\r")
    assert [(r["ID"], r["error"]) for r in got] == [("1", None), ("2", None)]


# ------------------------------------------- plain text: a column at a time, same records
def flat(chunks):
    """Chunks (lists or pyarrow arrays) as one list of records."""
    out = []
    for chunk in chunks:
        cols = {k: v.to_pylist() if hasattr(v, "to_pylist") else list(v) for k, v in chunk.items()}
        out += [{k: v[i] for k, v in cols.items()} for i in range(len(cols["raw"]))]
    return out


def both_ways(text, columns=COLUMNS, required=("ID", "A", "B"), chunk_rows=3):
    """The column-wise and the record-by-record records of a plain text."""
    assert is_plain(text), repr(text)
    fast = plain_records(text, columns, list(required), "ID", chunk_rows)
    assert fast is not None
    slow = list(record_by_record(text, columns, list(required), "ID", chunk_rows))
    assert all(len(c["raw"]) <= chunk_rows for c in fast)
    return flat(fast), flat(slow)


def test_plain_text_is_read_a_column_at_a_time_with_the_same_records_and_reasons():
    text = (" id , B,a,note,extra\r\n"              # any order, case and spaces, CRLF
            "1,0,1,x,y\r\n"
            "2, 1 ,\t0 , spaced \x0c,z\r\n"          # spaces, tab, form feed stripped
            "\r\n   \n\t\n"                          # blank lines: not records
            "3,1\n"                                  # short
            "4,0,1,x,y,z\n"                          # long
            "5,,,,\n"                                # empty fields are fields
            "ID,A,B\n"                               # a second header (files concatenated)
            "6,1,0\n"
            "7,1,0,extra\n"
            "ID,A,NOTE\n"                            # a header missing a required column
            "8,1,x\n"
            "ID,A,A,B\n"                             # a column twice
            "9,1,0,1\n"
            "10,0,1")                                # still under it; no final line break
    fast, slow = both_ways(text)
    assert fast == slow
    assert [(r["ID"], r["A"], r["B"], r["NOTE"], r["error"], r["line"]) for r in fast] == [
        ("1", "1", "0", "x", None, 2),
        ("2", "0", "1", "spaced", None, 3),
        ("3", None, "1", None, "short row: 2 fields, the header has 5", 7),
        ("4", "1", "0", "x", "long row: 6 fields, the header has 5", 8),
        ("5", "", "", "", None, 9),
        ("6", "1", "0", None, None, 11),
        ("7", "1", "0", None, "long row: 4 fields, the header has 3", 12),
        ("8", "1", None, "x", "missing column B in the file's header", 14),
        ("9", "1", "1", None, "column A appears twice in the file's header", 16),
        ("10", "0", None, None, "column A appears twice in the file's header", 17)]
    assert fast[1]["raw"] == "2, 1 ,\t0 , spaced \x0c,z"          # CR gone, the rest kept


def test_plain_text_without_a_header_and_texts_with_nothing_in_them():
    fast, slow = both_ways("1,0,1\n\n2,1,1\nID,A,B\n3,0,0\n")
    assert fast == slow
    assert [(r["ID"], r["error"]) for r in fast] == [
        (None, "file has no header row"), (None, "file has no header row"), ("3", None)]
    for text in ("", "\n", "\r\n \n", "ID,A,B\n", "ID,A,B"):
        assert both_ways(text) == ([], [])


def test_random_plain_texts_read_the_same_both_ways():
    import random
    rng = random.Random(13)
    pieces = ["0", "1", "12", "", " ", "  7 ", "\t", "x", "ID", "id", "a", "B", "note", "\x0c",
              "-3.5", "NOTE", "idx", "\x1f"]
    headers = ["ID,A,B,NOTE", "id, a ,b", "NOTE,B,A,ID,EXTRA", "ID,A", "A,B", "ID,A,B,B",
               "x,ID,y", "ID,NOTE"]
    for _ in range(300):
        lines = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.15:
                lines.append(rng.choice(headers))
            elif rng.random() < 0.1:
                lines.append(rng.choice(["", " ", "\t "]))
            else:
                lines.append(",".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
        end = rng.choice(["\n", "\r\n"])
        text = end.join(lines) + rng.choice(["", end])
        fast, slow = both_ways(text, chunk_rows=rng.randint(1, 5))
        assert fast == slow, repr(text)


def test_what_is_not_plain_goes_record_by_record():
    for text in ('ID,A,B\n1,0,"1"\n', "ID,A,B\n1,0,caf\u00e9\n", "ID,A,B\n1,0\r,1\n",
                 "ID,A,B\n1,\x00,1\n", "\ufeffID,A,B\n1,0,1\n"):
        assert not is_plain(text)
    assert is_plain("ID,A,B\r\n1,0,1\r\n")
    # a line past the csv module's field limit: the record parser reports it
    long_line = "ID,A,B\n1,0," + "x" * (FIELD_LIMIT + 1) + "\n"
    assert plain_records(long_line, COLUMNS, ["ID"], "ID") is None
    got = records(long_line)
    assert got[0]["error"].startswith("unterminated quote on line 2: a quoted field runs past")
