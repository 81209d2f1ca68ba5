"""Where an ingest source's files are, and their paths as Spark's binaryFile source names them
(no JVM: the path forms of Hadoop's ``Path.toString()``)."""
from sparkeras.sources import _normalize, local_path, relative_path, source_root


def test_file_index_uris_take_the_form_of_the_path_column():
    # local files: one slash after the scheme, escapes decoded
    assert _normalize("file:///data/my%20photos/cat.jpg") == "file:/data/my photos/cat.jpg"
    assert _normalize("file:/data/cat.jpg") == "file:/data/cat.jpg"
    # a bucket or storage account is the URI's authority: kept (before, s3a://b/x became
    # s3a:/b/x, which no listed path matched: every file was taken for an empty one)
    assert _normalize("s3a://bucket/img/a%20b.jpg") == "s3a://bucket/img/a b.jpg"
    assert _normalize("abfss://c@acct.dfs.core.windows.net/img/x.png") == \
        "abfss://c@acct.dfs.core.windows.net/img/x.png"
    assert _normalize("dbfs:/Volumes/main/raw/x.png") == "dbfs:/Volumes/main/raw/x.png"


def test_local_paths_include_file_uris(tmp_path):
    assert local_path(f"file://{tmp_path}") == str(tmp_path)
    assert local_path(f"file:{tmp_path}") == str(tmp_path)
    assert local_path(str(tmp_path)) == str(tmp_path)
    assert local_path("data/export.csv") == "data/export.csv"
    assert local_path("file:data/export.csv") == "data/export.csv"     # relative, as Hadoop's
    for remote in ("dbfs:/Volumes/x", "s3://bucket/x", "file://otherhost/x"):
        assert local_path(remote) is None, remote


def test_a_file_uri_source_is_rooted_where_its_path_is(tmp_path):
    """``--source file:///photos`` names the same folder as ``/photos``: relative paths (and
    the class folders in them) start there."""
    (tmp_path / "train" / "cats").mkdir(parents=True)
    for source in (f"file://{tmp_path}", f"file:{tmp_path}", str(tmp_path),
                   f"{tmp_path}/train/../", f"file://{tmp_path}/train/*/*.jpg"):
        root = source_root(source)
        assert relative_path(f"file:{tmp_path}/train/cats/1.jpg", root) == (
            "cats/1.jpg" if "*" in source else "train/cats/1.jpg"), source
    assert source_root("s3a://bucket/photos/*.jpg") == "s3a://bucket/photos"


def test_parquet_footers_are_checked_where_this_machine_sees_the_file(tmp_path):
    """An ingest checks each Parquet file's footer before Spark reads it; a ``dbfs:`` path is
    looked for at Databricks' local mounts, and one this machine cannot see is left to Spark's
    reader (before: ``dbfs:/mnt/a.parquet`` was opened as ``/mnt/a.parquet``, not found, and
    every such file was quarantined as unreadable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparkeras.readers import _footer_error, local_copy
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(pa.table({"ID": [1, 2]}), good)
    bad.write_bytes(b"PAR1 not a footer")
    assert _footer_error(f"file:{good}") is None
    assert "magic bytes" in _footer_error(f"file://{bad}")
    assert local_copy(f"file://{bad}") == str(bad)
    assert local_copy("dbfs:/mnt/sparkeras-test/a.parquet") is None     # no /dbfs mount here
    assert _footer_error("dbfs:/mnt/sparkeras-test/a.parquet") is None
    assert _footer_error("dbfs:/Volumes/main/raw/x/a.parquet") is None
