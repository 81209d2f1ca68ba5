"""Fault drills with real processes and real signals: a Python worker killed with SIGKILL
(as the OOM killer does) during `score` and `ingest`, Ctrl-C during `score`, corrupt
input files. Each drill checks exact counts and that no id is written twice."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkeras.mlflow_servers import live_processes
from sparkeras.workloads import image_formats, incidents

from clirun import sparkeras, summary

pytestmark = pytest.mark.slow   # processes, training

ROWS = 60_000
# the embedded default's retries (local[*, 4]) on two cores; WARN keeps Spark's
# "Lost task" lines in the command's log file, the proof that a task failed and was retried
MASTER = ["--set", "spark.master=local[2, 4]", "--set", "spark.log_level=WARN"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...; utime
    and stime at 11 and 12), or [] once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2:].split()


def _children() -> dict:
    """ppid -> [pid] of every live process."""
    out: dict = {}
    for pid, parent, _ in live_processes():
        out.setdefault(parent, []).append(pid)
    return out


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def python_workers(pid: int) -> list[int]:
    """Spark's Python workers under ``pid``: processes forked by a ``pyspark.daemon``."""
    found = []
    for p in descendants(pid):
        if "pyspark.daemon" in _cmdline(p):
            fields = _stat(p)
            if fields and "pyspark.daemon" in _cmdline(int(fields[1])):
                found.append(p)
    return found


def start(state, *args, env=None):
    cmd = [sys.executable, "-m", "sparkeras.cli", "--set", f"state_dir={state}", *MASTER,
           "--set", "spark.conf={spark.sql.shuffle.partitions: 2}", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def wait_for_workers(proc, timeout: float = 240) -> list[int]:
    """The Python workers of ``proc`` once it has some (it is running Python tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the command ended first: {proc.stderr.read()[-2000:]}"
        workers = python_workers(proc.pid)
        if workers:
            return workers
        assert time.monotonic() < deadline, "no Python worker appeared"
        time.sleep(0.05)


def wait_until_gone(family: list[int], timeout: float) -> None:
    """Wait until none of the processes ``family`` runs any more."""
    deadline = time.monotonic() + timeout
    while [p for p in family if _cmdline(p)]:
        assert time.monotonic() < deadline, [(p, _cmdline(p)) for p in family if _cmdline(p)]
        time.sleep(0.2)


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` in clock ticks (0 once it is gone)."""
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def kill_a_worker_midway(proc, min_ticks: int = 5, timeout: float = 240) -> int:
    """SIGKILL a Python worker of ``proc`` while it is inside a task.

    A worker is inside a task when it keeps using CPU: an idle worker waits on its socket
    for the next task, and killing that one would cost Spark nothing (the task this drill
    needs lost would already be done). So the victim is the first worker seen with at least
    ``min_ticks`` of CPU time that grew since the previous look, ~10 ms earlier. Scoring a
    small table with the numpy forward pass takes well under a second per task, which is why
    a fixed wait before the kill is not enough."""
    deadline = time.monotonic() + timeout
    seen: dict[int, int] = {}
    while True:
        assert proc.poll() is None, (
            "the command ended before any of its Python workers was seen inside a task: "
            f"{proc.stderr.read()[-2000:]}")
        for worker in python_workers(proc.pid):
            ticks = cpu_ticks(worker)
            if ticks >= min_ticks and ticks > seen.get(worker, ticks):
                os.kill(worker, signal.SIGKILL)
                return worker
            seen[worker] = ticks
        assert time.monotonic() < deadline, f"no Python worker was inside a task within {timeout} s"
        time.sleep(0.01)


def sql(state, query):
    proc = sparkeras(state, "sql", query, "--format", "json")     # one JSON object per row
    return [json.loads(line) for line in proc.stdout.strip().splitlines()]


def lost_tasks(state, command: str) -> str:
    logs = sorted(Path(state, "logs").glob(f"sparkeras-{command}-*.log"))
    return logs[-1].read_text(errors="replace")


@pytest.fixture(scope="module")
def state(tmp_path_factory, spark):
    """A trained incident model and a 60,000-row export, through the command line (the export
    written by the test session: 1 s, where a `generate` command takes ~13 s)."""
    state = tmp_path_factory.mktemp("drills")
    src = state / "export"
    incidents.write_generated(spark, ROWS, str(src))
    sparkeras(state, "ingest", "incidents", "--source", str(src), "--table", "incidents")
    sparkeras(state, "train", "incidents", "--table", "incidents", "--epochs", "1")
    return state


def finished_exactly(state, proc, command: str, written: str, rows: int, table: str,
                     key: str) -> None:
    """``proc`` succeeded, its summary and ``table`` hold ``rows`` rows, each key once, and
    its log shows the task Spark lost and ran again."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["input_rows"], result[written], result["quarantined_rows"]) == (rows, rows, 0)
    (row,) = sql(state, f"SELECT COUNT(*) AS n, COUNT(DISTINCT {key}) AS ids FROM {table}")
    assert row == {"n": rows, "ids": rows}
    log = lost_tasks(state, command)
    # Spark 4 names the crash; Spark 3.5 reports the worker's closed socket
    crashed = ("Python worker exited unexpectedly", "java.net.SocketException: Connection reset")
    assert "Lost task" in log and any(reason in log for reason in crashed), log[-3000:]


@pytest.mark.compat   # Spark 3.5 reports these faults differently
def test_a_killed_python_worker_costs_one_task_not_the_score(state):
    proc = start(state, "score", "incidents", "--table", "incidents", "--output", "scores")
    kill_a_worker_midway(proc)
    finished_exactly(state, proc, "score", "scored_rows", ROWS, "scores", "ID")


def test_a_killed_python_worker_costs_one_task_not_the_image_score(photo_commands):
    state = photo_commands.state                          # 210 photos, a trained classic CNN
    proc = start(state, "score", "images", "--table", "shapes", "--output", "killed_scores")
    kill_a_worker_midway(proc)
    finished_exactly(state, proc, "score", "scored_rows", 210, "killed_scores", "image_id")


def test_a_killed_python_worker_during_ingest_loses_no_record(state, tmp_path):
    src = tmp_path / "late"
    sparkeras(state, "generate", "incidents", "--rows", "50000", "--out", str(src),
              "--seed", "9")
    proc = start(state, "ingest", "incidents", "--source", str(src), "--table", "late")
    kill_a_worker_midway(proc)
    finished_exactly(state, proc, "ingest", "valid_rows", 50_000, "late", "ID")


@pytest.mark.compat   # Spark 3.5 reports these faults differently
def test_ctrl_c_during_score_exits_130_and_leaves_no_process(state):
    # the table holds an earlier run's batch: the drill above made it, or (run alone) this one
    try:
        before = sql(state, "SELECT COUNT(*) AS n FROM scores")[0]["n"]
    except AssertionError as exc:
        assert "TABLE_OR_VIEW_NOT_FOUND" in str(exc)
        sparkeras(state, "score", "incidents", "--table", "incidents", "--output", "scores")
        before = ROWS
    proc = start(state, "score", "incidents", "--table", "incidents", "--output", "scores")
    wait_for_workers(proc)
    time.sleep(1.0)
    family = descendants(proc.pid)             # the JVM, the daemon, its workers
    assert any("java" in _cmdline(p) for p in family)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sparkeras: interrupted: score stopped before it finished: each "
                           "batch of the scored table"), last
    assert "run the same command again to finish" in last
    assert "Traceback" not in err and out == ""
    wait_until_gone(family, 30)
    # the earlier batch is intact, and the same command finishes the job
    assert sql(state, "SELECT COUNT(*) AS n FROM scores")[0]["n"] == before
    again = summary(sparkeras(state, "score", "incidents", "--table", "incidents",
                              "--output", "scores"))
    assert again["scored_rows"] == ROWS
    (row,) = sql(state, "SELECT COUNT(*) AS n, COUNT(DISTINCT ID) AS ids FROM scores")
    assert row == {"n": ROWS, "ids": ROWS}


@pytest.mark.compat   # Spark 3.5 reports these faults differently
def test_ctrl_c_during_distributed_training_leaves_nothing_running_and_the_rerun_resumes(
        state):
    args = ["train", "incidents", "--table", "incidents", "--workers", "2", "--epochs", "4",
            "--batch-size", "512"]
    proc = start(state, *args)
    seen, deadline = [], time.monotonic() + 300
    for line in proc.stderr:                              # progress lines, as a user sees them
        seen.append(line)
        if line.startswith("[sparkeras] epoch 1/4"):
            break
        assert time.monotonic() < deadline, "".join(seen)[-3000:]
    else:
        raise AssertionError("".join(seen)[-3000:])
    time.sleep(0.5)                                       # inside epoch 2
    family = descendants(proc.pid)
    workers = [p for p in family if "sparkeras.training.worker" in _cmdline(p)]
    assert len(workers) == 2 and any("java" in _cmdline(p) for p in family)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sparkeras: interrupted: train stopped before it finished: no model "
                           "version was registered; its checkpoints are kept"), last
    assert "Traceback" not in err and out == ""
    wait_until_gone(family, 30)
    resumed = sparkeras(state, *args)
    assert "an interrupted run of this training was found" in resumed.stderr
    result = summary(resumed)
    assert result["resumed_from_epoch"] >= 1 and result["workers"] == 2


def test_a_second_writer_of_the_same_output_is_refused_at_once(state):
    first = start(state, "score", "incidents", "--table", "incidents", "--output", "scores")
    wait_for_workers(first)                               # it holds the table
    started = time.monotonic()
    second = sparkeras(state, "score", "incidents", "--table", "late", "--output", "scores",
                       check=False)
    assert time.monotonic() - started < 30                # refused before any Spark work
    assert second.returncode == 1
    assert "scores is being written by `sparkeras" in second.stderr
    assert f"(pid {first.pid} on" in second.stderr and "wait for it to finish" in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    (row,) = sql(state, "SELECT COUNT(*) AS n, COUNT(DISTINCT ID) AS ids FROM scores")
    assert row == {"n": ROWS, "ids": ROWS}


def _batches(state, table, column):
    """``table``'s batches that hold each id once, with their row counts, and the table's row
    count: one query (each costs a JVM start)."""
    groups = sql(state, f"SELECT {column}, COUNT(*) AS n, COUNT(DISTINCT ID) AS ids FROM {table} "
                        f"GROUP BY {column}")
    return {r[column]: r["n"] for r in groups if r["n"] == r["ids"]}, sum(r["n"] for r in groups)


@pytest.mark.parametrize("command", ["score", "ingest"])
def test_sigkill_of_the_command_during_its_write_never_leaves_a_partial_batch(state, tmp_path,
                                                                              command):
    """The whole command killed (SIGKILL: no cleanup at all) while it writes into a table
    that holds other batches: each batch is afterwards its old rows, absent or its new rows;
    the other batches are untouched; the same command then finishes (taking over the dead
    command's lock)."""
    if command == "score":
        table, column, n = "scores", "batch_id", ROWS
        args = ["score", "incidents", "--table", "incidents", "--output", "scores"]
        late = ["score", "incidents", "--table", "late", "--output", "scores"]
        first = sparkeras(state, *late, check=False)
        if first.returncode:                              # run alone: no ingest drill's table
            assert "TABLE_OR_VIEW_NOT_FOUND" in first.stderr, first.stderr[-3000:]
            src = tmp_path / "late"
            sparkeras(state, "generate", "incidents", "--rows", "50000", "--out", str(src),
                      "--seed", "9")
            sparkeras(state, "ingest", "incidents", "--source", str(src), "--table", "late")
            sparkeras(state, *late)
        before, _ = _batches(state, table, column)
        if ROWS not in before.values():                   # run alone: no earlier drill's batch
            sparkeras(state, *args)
            before, _ = _batches(state, table, column)
    else:
        table, column, n = "twice", "ingest_batch_id", ROWS
        args = ["ingest", "incidents", "--source", str(state / "export"), "--table", table]
        first = summary(sparkeras(state, *args))
        other = tmp_path / "other.csv"                    # another batch, other ids
        lines = [",".join(["ID", *incidents.FEATURES, "ROOT_CAUSE"])]
        lines += [f"{10_000_000 + i},1,0,0,1,0,0,0,MEMORY_LEAK" for i in range(5000)]
        other.write_text("\n".join(lines) + "\n")
        second = summary(sparkeras(state, "ingest", "incidents", "--source", str(other),
                                   "--table", table))
        # what the two commands report (a query would cost a JVM start): the table is checked
        # against it after the kill and after the rerun
        before = {first["batch_id"]: first["valid_rows"], second["batch_id"]: second["valid_rows"]}
    assert len(before) == 2 and n in before.values()
    proc = start(state, *args)
    wait_for_workers(proc)
    time.sleep(2.0)                                       # rows are being written
    family = descendants(proc.pid)
    proc.kill()
    proc.wait()
    wait_until_gone(family, 60)                           # the JVM follows its driver
    after, total = _batches(state, table, column)
    assert total == sum(after.values())                   # no batch holds a duplicate id
    for batch, rows in before.items():
        assert after.get(batch, 0) in (0, rows), (batch, rows, after)
    again = sparkeras(state, *args)
    assert "taking over the lock" in again.stderr
    assert _batches(state, table, column) == (before, sum(before.values()))


def test_a_corrupt_parquet_file_is_quarantined_and_the_others_ingested(spark, cfg, tmp_path):
    from sparkeras.ingest import ingest_incidents
    src = tmp_path / "parquet"
    incidents.write_generated(spark, 3000, str(src), "parquet", seed=4)
    files = sorted(src.glob("*.parquet"))
    assert len(files) >= 2
    broken = files[0]
    rows_in_broken = spark.read.parquet(str(broken)).count()
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])           # truncated, as a failed copy leaves it
    (src / "notes.parquet").write_text("not parquet at all")
    result = ingest_incidents(spark, cfg, str(src), "from_parquet", "parquet")
    assert result.valid_rows == 3000 - rows_in_broken
    assert result.quarantined_rows == 2
    assert result.input_rows == result.valid_rows + result.quarantined_rows
    reasons = {Path(r.source_file).name: r.reason
               for r in spark.table("from_parquet_quarantine").collect()}
    assert set(reasons) == {broken.name, "notes.parquet"}
    assert all(r.startswith("unreadable Parquet file: ") for r in reasons.values()), reasons


def test_a_truncated_gzip_idx_file_is_quarantined_with_its_path(spark, cfg, tmp_path):
    import numpy as np

    from sparkeras.ingest import ingest_images
    src = tmp_path / "idx"
    src.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (src / f"{prefix}-images-idx3-ubyte.gz").write_bytes(image_formats.encode_idx(images))
        (src / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(image_formats.encode_idx(labels))
    whole = (src / "t10k-images-idx3-ubyte.gz").read_bytes()
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) - 700])
    assert gzip.decompress(whole)                         # it was valid before the cut
    result = ingest_images(spark, cfg, str(src), "idx_cut", "idx")
    assert result.valid_rows == 50
    quarantine = spark.table("idx_cut_quarantine").collect()
    assert len(quarantine) == result.quarantined_rows >= 1
    assert any(str(r.source).endswith("t10k-images-idx3-ubyte.gz") and
               "corrupt gzip data" in r.reason for r in quarantine), quarantine
