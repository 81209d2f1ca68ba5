"""The embedded JVM's class archive: made once by a command, used by the next ones, never
published half-written, and a damaged one costs a warning, not the command."""
import os
import subprocess
import sys

import pytest

from sparkeras import class_archive

CLASS_PATH_VARIABLES = ("SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR",
                        "SPARK_DIST_CLASSPATH")


@pytest.fixture(autouse=True)
def _no_class_path_folders(monkeypatch):
    """A developer's own Spark or Hadoop configuration folders would rule the archive out."""
    for name in CLASS_PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_archive_folder_follows_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert class_archive.folder("auto") == tmp_path / "cache" / "sparkeras" / "jvm"
    assert class_archive.folder("off") is None
    assert class_archive.folder(str(tmp_path / "mine")) == tmp_path / "mine"
    assert class_archive.plan("off", create=True) is None
    from sparkeras.config import ConfigError, load_config
    # YAML reads a bare off (or false) as a bool: both mean off, as the README writes it
    for text in ("off", "false", "'off'"):
        setting = load_config(None, [f"spark.class_archive={text}"]).spark.class_archive
        assert class_archive.folder(setting) is None, text
    with pytest.raises(ConfigError, match="'spark.class_archive' must be a string or off, "
                                          "got True"):
        load_config(None, ["spark.class_archive=true"])


@pytest.mark.parametrize("version, major", [("17.0.15", 17), ("21", 21), ("11.0.2", 11),
                                            ("1.8.0_392", 8)])
def test_java_major_versions(version, major):
    assert class_archive.major(version) == major


def test_a_dump_is_published_only_after_a_clean_exit(tmp_path):
    where = tmp_path / "jvm"
    first = class_archive.plan(str(where), create=True)
    assert first is not None and first.dump_to.parent == where
    assert first.dump_to.name == f"{first.path.name}.{os.getpid()}.tmp"
    assert f"-XX:ArchiveClassesAtExit={first.dump_to}" in first.java_options()
    first.dump_to.write_bytes(b"classes")
    class_archive.publish(jvm_exited_cleanly=False)     # killed: may be incomplete
    assert list(where.iterdir()) == []
    class_archive.plan(str(where), create=True).dump_to.write_bytes(b"classes")
    class_archive.publish(jvm_exited_cleanly=True)
    assert [p.name for p in where.iterdir()] == [first.path.name]
    used = class_archive.plan(str(where), create=True)   # the next start uses it
    assert used.dump_to is None and used.java_options().startswith(
        f"-XX:SharedArchiveFile={first.path} ")
    assert not class_archive.dumping()


def test_temporary_archives_of_dead_processes_are_removed(tmp_path):
    where = tmp_path / "jvm"
    where.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (where / f"spark-x.jsa.{dead}.tmp").write_bytes(b"half")
    (where / f"spark-x.jsa.{os.getpid()}.tmp").write_bytes(b"in progress")
    assert class_archive.plan(str(where), create=False) is None    # only commands create
    assert class_archive.plan(str(where), create=True) is not None
    left = sorted(p.name for p in where.iterdir())
    assert left == [f"spark-x.jsa.{os.getpid()}.tmp"]
    class_archive.publish(jvm_exited_cleanly=False)


def test_only_the_most_recently_used_archives_stay(tmp_path):
    where = tmp_path / "jvm"
    where.mkdir()
    others = [where / f"spark-old{i}.jsa" for i in range(5)]
    for age, path in enumerate(others):                  # old0 used last, old4 first
        path.write_bytes(b"classes")
        os.utime(path, (1_000_000 - age * 1000, 1_000_000 - age * 1000))
    made = class_archive.plan(str(where), create=True)   # none for this installation yet
    assert made.dump_to is not None
    kept = sorted(p.name for p in where.glob("*.jsa"))
    assert kept == [f"spark-old{i}.jsa" for i in range(class_archive.KEEP)]
    made.dump_to.write_bytes(b"classes")
    class_archive.publish(jvm_exited_cleanly=True)
    os.utime(made.path, (1, 1))                          # long unused...
    assert class_archive.plan(str(where), create=False).path == made.path
    assert made.path.stat().st_mtime > 1_000_000         # ...and used again: marked


def _command(tmp_path, archive, *args):
    state = tmp_path / "state"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        code = subprocess.call(
            [sys.executable, "-m", "sparkeras.cli", "--set", f"state_dir={state}", "--set",
             "spark.master=local[2]", "--set", f"spark.class_archive={archive}", *args],
            stdout=out, stderr=err, timeout=600)
    return code, (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


@pytest.mark.slow   # four commands
def test_a_command_makes_the_archive_the_next_uses_it_and_a_damaged_one_is_replaced(
        tmp_path):
    archive = tmp_path / "jvm"
    query = "SELECT 1 AS x"
    code, out, err = _command(tmp_path, archive, "sql", query)
    assert code == 0 and out.split() == ["x", "1"], err[-3000:]
    assert "its JVM saves the classes it loads" in err
    (made,) = archive.iterdir()
    assert made.suffix == ".jsa" and made.stat().st_size > 10_000_000
    # the next command's JVM was started with it
    code, out, err = _command(tmp_path, archive, "sql", "SET spark.driver.extraJavaOptions")
    assert code == 0 and f"-XX:SharedArchiveFile={made}" in out, err[-3000:]
    assert "saves the classes" not in err
    # a JVM that cannot start for another reason (the user's own bad option: too small a
    # thread stack; Spark adds -XX:+IgnoreUnrecognizedVMOptions, so not an unknown one)
    # fails the command, and the archive, which was not the cause, stays
    code, out, err = _command(tmp_path, archive, "--set",
                              "spark.conf={spark.driver.extraJavaOptions: -Xss1k}",
                              "sql", query)
    assert code == 1 and "removed it" not in err, err[-3000:]
    assert ("error: the Spark JVM did not start: The Java thread stack size specified is too "
            "small. Specify at least") in err, err[-3000:]      # its own reason, not py4j's
    assert list(archive.iterdir()) == [made]
    # damaged (a truncated archive crashes a JVM at start): the command still answers,
    # stdout holds only its product, and the archive is removed
    made.chmod(0o644)
    made.write_bytes(made.read_bytes()[:2_000_000])
    code, out, err = _command(tmp_path, archive, "sql", query)
    assert code == 0 and out.split() == ["x", "1"], err[-3000:]
    assert f"the JVM did not start with its class archive {made}: removed it" in err
    assert list(archive.iterdir()) == []


def test_a_folder_of_files_before_the_jars_rules_the_archive_out(tmp_path, monkeypatch):
    """Spark's launcher puts SPARK_CONF_DIR (or $SPARK_HOME/conf) and extraClassPath before
    its jars, HADOOP_CONF_DIR and YARN_CONF_DIR after them; Java cannot archive classes with
    a non-empty folder before a jar it loads classes from."""
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "spark"))     # no conf/ folder there
    where = tmp_path / "jvm"
    assert class_archive.class_path_folders() == []
    conf_dir, empty, extra = tmp_path / "conf", tmp_path / "empty", tmp_path / "classes"
    for folder in (conf_dir, empty, extra):
        folder.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.ui.enabled false\n")
    (extra / "A.class").write_bytes(b"")
    monkeypatch.setenv("SPARK_CONF_DIR", str(empty))         # an empty folder is no obstacle
    assert class_archive.class_path_folders() == []
    assert class_archive.plan(str(where), create=True) is not None
    class_archive.publish(False)                               # forget the pending dump
    assert class_archive.class_path_folders(f"{extra}{os.pathsep}{empty}") == [extra]
    assert class_archive.plan(str(where), create=True, extra_class_path=str(extra)) is None
    # after the jars: no obstacle, unless SPARK_DIST_CLASSPATH adds jars behind it
    monkeypatch.setenv("HADOOP_CONF_DIR", str(conf_dir))
    assert class_archive.class_path_folders() == []
    monkeypatch.setenv("SPARK_DIST_CLASSPATH", f"{tmp_path}/hadoop/*")
    assert class_archive.class_path_folders() == [conf_dir]
    assert class_archive.plan(str(where), create=True) is None
    monkeypatch.delenv("SPARK_DIST_CLASSPATH")
    monkeypatch.delenv("HADOOP_CONF_DIR")
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf_dir))
    assert class_archive.class_path_folders() == [conf_dir]
    monkeypatch.delenv("SPARK_CONF_DIR")
    (tmp_path / "spark" / "conf").mkdir(parents=True)      # a Spark distribution's templates
    (tmp_path / "spark" / "conf" / "log4j2.properties.template").write_text("")
    assert class_archive.class_path_folders() == [tmp_path / "spark" / "conf"]
    assert list(where.iterdir()) == []


@pytest.mark.slow   # two commands, one writing an archive
def test_configuration_folders_and_the_archive_as_the_jvm_sees_them(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.sparkeras.probe from-conf-dir\n")
    archive = tmp_path / "jvm"
    # SPARK_CONF_DIR comes before the jars: the command reads it and tries no archive
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf_dir))
    code, out, err = _command(tmp_path, archive, "sql", "SET spark.sparkeras.probe")
    assert code == 0 and "from-conf-dir" in out, err[-3000:]
    # before: every such command said it was saving the classes, and its JVM failed to
    # ("Cannot have non-empty directory in paths") as it exited
    assert "saves the classes" not in err
    assert not archive.exists() or list(archive.iterdir()) == []
    # HADOOP_CONF_DIR comes after them: the JVM writes its archive all the same
    monkeypatch.delenv("SPARK_CONF_DIR")
    monkeypatch.setenv("HADOOP_CONF_DIR", str(conf_dir))
    code, out, err = _command(tmp_path, archive, "sql", "SELECT 1 AS x")
    assert code == 0 and "saves the classes" in err, err[-3000:]
    (made,) = archive.iterdir()
    assert made.suffix == ".jsa" and made.stat().st_size > 10_000_000
