"""`sparkeras server` and every stage on Spark Connect, through the command line: one server
JVM (Spark Connect + JDBC) over a state folder; ingest, training on the driver and on two
barrier workers, scoring and SQL routed through it; an analyst's beeline query while a
scoring job runs; stop leaves no process."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkeras.mlflow_servers import group_members, stop_process_group
from sparkeras.server import _connect_jar

from clirun import sparkeras, summary

pytestmark = [
    pytest.mark.slow,   # a server JVM, training, barrier stages
    pytest.mark.skipif(_connect_jar() is None, reason="this pyspark has no Spark Connect "
                       "server (pyspark 3.5 wheels): the primary stack runs these"),
]

ROWS = 3000
VIA = "using the Spark Connect server at sc://127.0.0.1:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A started server over a fresh state folder; stopped (and checked gone) at the end."""
    state = tmp_path_factory.mktemp("served")
    ports = ["--set", f"server.connect_port={free_port()}",
             "--set", f"server.jdbc_port={free_port()}"]
    started = summary(sparkeras(state, *ports, "server", "start", timeout=300))
    try:
        yield state, started
    finally:
        stopped = summary(sparkeras(state, "server", "stop", check=False))
        left = group_members(started["pid"])
        stop_process_group(started["pid"], 5)             # whatever happened above
        assert stopped == {"running": False, "stopped": True, "pid": started["pid"],
                           "forced": False}
        assert left == []


def test_start_prints_where_it_listens_and_status_says_it_runs(server):
    state, started = server
    assert started["running"] and started["started"]
    assert started["connect_url"].startswith("sc://127.0.0.1:")
    assert started["jdbc_url"].startswith("jdbc:hive2://127.0.0.1:")
    assert group_members(started["pid"])
    status = summary(sparkeras(state, "server", "status"))
    assert status["running"] and status["pid"] == started["pid"]
    assert status["accepting"] == {"connect": True, "jdbc": True}
    again = summary(sparkeras(state, "server", "start"))     # already running: the same one
    assert (again["started"], again["pid"]) == (False, started["pid"])


def test_the_pipeline_runs_through_the_server(server, tmp_path):
    state, _ = server
    src = tmp_path / "export"

    def run(*args, **kw):
        proc = sparkeras(state, *args, **kw)
        assert VIA in proc.stderr, proc.stderr[-2000:]
        return summary(proc) if proc.stdout.strip() else None

    run("generate", "incidents", "--rows", str(ROWS), "--out", str(src))
    ingested = run("ingest", "incidents", "--source", str(src), "--table", "incidents")
    assert (ingested["input_rows"], ingested["valid_rows"], ingested["quarantined_rows"]) == \
        (ROWS, ROWS, 0)
    on_driver = run("train", "incidents", "--table", "incidents", "--workers", "0",
                    "--epochs", "2")
    assert on_driver["workers"] == 0 and int(on_driver["model_version"]) == 1
    two = run("train", "incidents", "--table", "incidents", "--workers", "2", "--epochs", "2",
              "--batch-size", "256")
    assert two["workers"] == 2 and int(two["model_version"]) == 2
    assert len(set(two["weights_digests"])) == 1              # both workers: the same model
    assert two["test_metrics"]["accuracy"] > 0.7
    scored = run("score", "incidents", "--table", "incidents", "--output", "scores")
    assert (scored["input_rows"], scored["scored_rows"], scored["quarantined_rows"]) == \
        (ROWS, ROWS, 0)
    proc = sparkeras(state, "sql", "SELECT COUNT(*) AS n, COUNT(DISTINCT ID) AS ids "
                     "FROM scores", "--format", "json")
    assert VIA in proc.stderr
    assert json.loads(proc.stdout) == {"n": ROWS, "ids": ROWS}


def beeline(url: str, query: str) -> list[str]:
    """The CSV rows beeline prints for ``query`` (no header, no prompt lines)."""
    home = Path(sys.executable).parent
    proc = subprocess.run([str(home / "beeline"), "-u", url, "--silent=true",
                           "--showHeader=false", "--outputformat=csv2", "-e", query],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PATH": f"{home}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # beeline writes its prompt ("0: jdbc:hive2://...> ") in front of the first row
    rows = [re.sub(r"^\d+: jdbc:\S+>", "", line).strip() for line in proc.stdout.splitlines()]
    return [row for row in rows if row]


def test_an_analyst_queries_over_jdbc_while_a_job_scores(server):
    state, started = server
    cmd = [sys.executable, "-m", "sparkeras.cli", "--set", f"state_dir={state}",
           "score", "incidents", "--table", "incidents", "--output", "rescored"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in job.stderr:                  # the job is scoring: the metastore is in use
            if line.startswith("[sparkeras] scoring "):
                break
            assert time.monotonic() < deadline
        out = beeline(started["jdbc_url"], "SELECT COUNT(*) AS n FROM incidents")
        assert out == [str(ROWS)]
        assert job.poll() is None, "the job ended before the query: not at the same time"
        rest, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-2000:]
    assert json.loads(rest.strip().splitlines()[-1])["scored_rows"] == ROWS
    assert beeline(started["jdbc_url"], "SELECT COUNT(DISTINCT ID) AS ids FROM rescored"
                   ) == [str(ROWS)]


def test_petastorm_is_refused_on_connect(server):
    state, _ = server
    proc = sparkeras(state, "train", "incidents", "--table", "incidents", "--set",
                     "train.feed=petastorm", "--epochs", "1", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "sparkeras: error: train.feed: petastorm needs a classic Spark session")
