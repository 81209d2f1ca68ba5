"""A real multi-process cluster: Spark's standalone master and two workers from the pyspark
wheel (1 core each, each with a GPU discovery script reporting its own fake address), then
ingest -> train --workers 2 (one GPU per task) -> score through the command line against
``spark://127.0.0.1:PORT``. The two training workers must see different GPUs."""
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sparkeras.mlflow_servers import group_members, stop_process_group

from clirun import sparkeras, summary

pytestmark = pytest.mark.slow   # three JVMs, training, barrier stages

ROWS = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``spark://127.0.0.1:PORT`` of a master with two 1-core workers (GPU "0" and GPU "1");
    every process is stopped by its own process group at the end."""
    import pyspark
    root = tmp_path_factory.mktemp("standalone")
    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOG_DIR": str(root), "SPARK_NO_DAEMONIZE": "1"}
    port, ui = free_port(), free_port()
    groups = []

    def start(args, name, extra_env=None):
        with open(root / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([spark_class, *args], stdout=log, stderr=subprocess.STDOUT,
                                    env={**env, **(extra_env or {})}, start_new_session=True)
        groups.append(proc.pid)

    try:
        start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
               str(port), "--webui-port", str(ui)], "master")
        for i in range(2):
            script = root / f"gpu{i}.sh"
            script.write_text(f"#!/bin/sh\necho '{{\"name\":\"gpu\",\"addresses\":[\"{i}\"]}}'\n")
            script.chmod(script.stat().st_mode | stat.S_IEXEC)
            opts = (f"-Dspark.worker.resource.gpu.amount=1 "
                    f"-Dspark.worker.resource.gpu.discoveryScript={script}")
            start(["org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                   "--host", "127.0.0.1", "--cores", "1", "--memory", "3g", "--work-dir",
                   str(root / f"work{i}"), "--webui-port", str(free_port())], f"worker{i}",
                  {"SPARK_WORKER_OPTS": opts})
        deadline = time.monotonic() + 120
        while alive_workers(ui) < 2:
            assert time.monotonic() < deadline, (root / "master.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for pgid in groups:
            stop_process_group(pgid, 20)
        assert not [p for g in groups for p in group_members(g)]


def test_ingest_train_on_two_gpu_workers_and_score_on_a_standalone_cluster(cluster, spark, tmp_path):
    from sparkeras.workloads import incidents
    state, src = tmp_path / "state", tmp_path / "export"
    # the export the user brings (the test's own session writes it in ~1 s; `generate` on the
    # cluster took 18 s and is covered by the other command-line tests)
    incidents.write_generated(spark, ROWS, str(src))
    on_cluster = ["--set", f"spark.master={cluster}", "--set",
                  "spark.conf={spark.sql.shuffle.partitions: 2, spark.executor.cores: 1, "
                  "spark.executor.memory: 1g, spark.executor.resource.gpu.amount: 1, "
                  "spark.task.resource.gpu.amount: 1}"]

    def run(*args):
        return summary(sparkeras(state, *on_cluster, *args))

    ingested = run("ingest", "incidents", "--source", str(src), "--table", "incidents")
    assert (ingested["valid_rows"], ingested["quarantined_rows"]) == (ROWS, 0)
    trained = run("train", "incidents", "--table", "incidents", "--workers", "2",
                  "--epochs", "2", "--batch-size", "256")
    assert trained["workers"] == 2 and trained["attempts"] == 1
    assert sorted(trained["worker_gpus"]) == ["0", "1"]       # one GPU each, not the same
    assert len(set(trained["weights_digests"])) == 1
    scored = run("score", "incidents", "--table", "incidents", "--output", "scores")
    assert (scored["input_rows"], scored["scored_rows"], scored["quarantined_rows"]) == \
        (ROWS, ROWS, 0)
