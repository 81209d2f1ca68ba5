"""Which session a command gets (embedded, Spark Connect, a running `sparkeras server`) and
the one-line error when another process holds the embedded metastore."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparkeras.config import ConfigError, load_config
from sparkeras.session import (
    driver_java_options,
    is_connect,
    jvm_error,
    remote_url,
    session_conf,
)


def test_remote_comes_from_the_setting_then_the_environment_then_a_running_server(
        tmp_path, monkeypatch):
    cfg = load_config(None, [f"state_dir={tmp_path}"])
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert remote_url(cfg) is None                       # nothing: the embedded session
    (tmp_path / "server.json").write_text(json.dumps(
        {"pid": 2 ** 22 + 1, "connect_url": "sc://127.0.0.1:1"}))
    assert remote_url(cfg) is None                       # a server that no longer runs
    monkeypatch.setenv("SPARK_REMOTE", "sc://env:15002")
    assert remote_url(cfg) == "sc://env:15002"
    cfg = load_config(None, [f"state_dir={tmp_path}", "spark.remote=sc://conf:15002"])
    assert remote_url(cfg) == "sc://conf:15002"


def test_the_embedded_session_is_not_connect(spark):
    assert not is_connect(spark)


def test_no_generated_method_is_too_big_for_the_jit_unless_the_user_says_so(spark, tmp_path):
    # Whole-stage code over HotSpot's 8,000-byte limit runs interpreted: 2x slower ingest.
    assert spark.conf.get("spark.sql.codegen.hugeMethodLimit") == "8000"
    mine = load_config(None, [f"state_dir={tmp_path}",
                              "spark.conf={spark.sql.codegen.hugeMethodLimit: 65535}"])
    assert session_conf(mine)["spark.sql.codegen.hugeMethodLimit"] == "65535"


def test_the_hive_client_keeps_its_resources_folder_in_the_state_folder(spark, cfg):
    # By default it makes /tmp/<uuid>_resources at every start and never removes it.
    spark.sql("SHOW TABLES").collect()
    assert (Path(cfg.state_dir) / "tmp" / "hive_resources").is_dir()


def test_a_held_metastore_is_one_line_naming_the_server(spark, cfg):
    spark.sql("SHOW TABLES").collect()          # this test run's JVM has booted the metastore
    proc = subprocess.run([sys.executable, "-m", "sparkeras.cli", "--set",
                           f"state_dir={cfg.state_dir}", "sql", "SELECT 1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"sparkeras: error: the metastore of {cfg.state_dir} is in use by another process "
        f"(an embedded metastore admits one at a time): wait for it to finish, or run "
        f"`sparkeras server start` so that commands and analysts share one server"]
    assert "XSDB6" not in proc.stderr and proc.stdout == ""


def test_the_embedded_jvm_runs_the_quick_jit_unless_the_user_says_so(spark, tmp_path):
    # A command's JVM lives for one command: C1 alone (docs/performance.md); `auto`, the
    # default, chooses it when the input's size is not known (as here: no command).
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    args = list(runtime.getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in args, args
    assert load_config(None, [f"state_dir={tmp_path}"]).spark.jit == "auto"
    assert load_config(None, [f"state_dir={tmp_path}", "spark.jit=full"]).spark.jit == "full"
    with pytest.raises(ConfigError, match="spark.jit_late_from_rows"):
        load_config(None, [f"state_dir={tmp_path}", "spark.jit_late_from_rows=0"])
    with pytest.raises(ConfigError,
                       match="'spark.jit' must be one of \\['auto', 'full', 'late', 'quick'\\]"):
        load_config(None, [f"state_dir={tmp_path}", "spark.jit=fast"])


def test_a_jvm_that_did_not_start_is_told_by_its_own_reason():
    banners = ("Error: Could not create the Java Virtual Machine.\n"
               "Error: A fatal exception has occurred. Program will exit.\n")
    assert jvm_error("2026-12-03 07:28:33,657 DEBUG sparkeras: spark.jit auto: quick\n\n"
                     "The Java thread stack size specified is too small. Specify at least "
                     "136k\n" + banners) == \
        "The Java thread stack size specified is too small. Specify at least 136k"
    assert jvm_error("Error: LinkageError occurred while loading main class "
                     "org.apache.spark.launcher.Main\n\tjava.lang.UnsupportedClassVersionError: "
                     "...\n") == ("Error: LinkageError occurred while loading main class "
                                  "org.apache.spark.launcher.Main")      # a Java 8
    assert jvm_error("JAVA_HOME is not set\n") == "JAVA_HOME is not set"
    assert jvm_error("Picked up JAVA_TOOL_OPTIONS: -XX:+UseParallelGC\nNOTE: Picked up "
                     "JDK_JAVA_OPTIONS: -Dx=1\nInvalid maximum heap size: -Xmx4q\n"
                     + banners) == "Invalid maximum heap size: -Xmx4q"   # not the notices
    assert jvm_error(banners) == "" and jvm_error("") == ""


def test_the_jit_options_come_first_so_that_the_users_own_win():
    user, archive = "-Dx=1 -XX:TieredStopAtLevel=4", "-XX:SharedArchiveFile=/a/b.jsa"
    assert driver_java_options("quick", user, archive) == \
        "-XX:TieredStopAtLevel=1 -Dx=1 -XX:TieredStopAtLevel=4 -XX:SharedArchiveFile=/a/b.jsa"
    assert driver_java_options("full", user) == user        # HotSpot's own compilers
    late = driver_java_options("late", "-XX:Tier4InvocationThreshold=7").split()
    assert "-XX:TieredStopAtLevel=1" not in late
    assert late.index("-XX:Tier4InvocationThreshold=50000") < \
        late.index("-XX:Tier4InvocationThreshold=7")        # a later option wins in HotSpot
    assert {"-XX:Tier4MinInvocationThreshold=6000", "-XX:Tier4CompileThreshold=150000",
            "-XX:Tier4BackEdgeThreshold=400000"} <= set(late)
    assert driver_java_options("full", "") == ""
