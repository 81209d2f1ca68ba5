"""Run N training workers as one Spark barrier stage, and retry it from the checkpoint.

The stage is ``spark.range(N)`` split into N partitions, mapped with
``mapInPandas(..., barrier=True)`` (Spark >= 3.5): the same code on a classic session and on
Spark Connect, which has no SparkContext. Each barrier task finds a free port on its host,
exchanges ``host:port`` with the other tasks (``BarrierTaskContext.allGather``), builds
``TF_CONFIG`` from the gathered list, pins ``CUDA_VISIBLE_DEVICES`` to the GPUs Spark
assigned it, and starts a fresh Python process running :mod:`sparkeras.training.worker`.
The workers' spec travels inside the task and their results come back as the stage's rows;
only the training data, checkpoints and final weights go through storage every node
shares (``train.cache_dir``, ``train.checkpoint_dir``). A worker that dies fails the
stage; the driver starts a new attempt (up to ``train.max_attempts``), which resumes from
the last completed epoch's checkpoint.

Barrier stages wait forever for slots they cannot get, so the slots are checked first and a
stage that cannot start fails at once with a clear error: a classic session asks the
scheduler; on Spark Connect, which cannot be asked, a probe barrier stage of N tasks gets
``train.slot_wait_seconds`` to start them all.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Optional

from .. import interrupts
from ..errors import NotEnoughSlots, TrainingFailed
from .loop import epoch_line, read_state

log = logging.getLogger(__name__)
__all__ = ["NotEnoughSlots", "TrainingFailed", "run_workers", "check_slots"]


def free_port(host: str = "") -> int:
    """A TCP port that is free on this host now (the OS picks it: no two tasks collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return s.getsockname()[1]


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def gpu_environment(resources: dict) -> dict[str, str]:
    """Environment for a task from its Spark resources (``TaskContext.resources()``):
    ``CUDA_VISIBLE_DEVICES`` lists the GPU addresses Spark assigned, and nothing else is
    visible; a task without GPUs sees none (``-1``) rather than every GPU of the host."""
    gpu = resources.get("gpu")
    addresses = list(getattr(gpu, "addresses", gpu or []))
    return {"CUDA_VISIBLE_DEVICES": ",".join(addresses) if addresses else "-1"}


def available_slots(spark) -> int:
    """Tasks the cluster can run at once for the default resource profile (classic
    sessions: the scheduler is asked through the SparkContext)."""
    sc = spark.sparkContext
    try:
        jsc = sc._jsc.sc()
        profile = jsc.resourceProfileManager().defaultResourceProfile()
        return int(jsc.maxNumConcurrentTasks(profile))
    except Exception:  # not every deployment exposes it: fall back to the cores
        cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        return sc.defaultParallelism // max(cpus, 1)


def not_enough_slots(n_workers: int, found: str) -> NotEnoughSlots:
    return NotEnoughSlots(
        f"train.workers={n_workers} needs {n_workers} task slots at once (one barrier "
        f"task per worker), but {found}: lower train.workers, or add "
        f"executors/cores (spark.task.cpus and spark.task.resource.gpu.amount count too)")


def check_slots(spark, n_workers: int, wait_seconds: float = 120.0) -> None:
    """Fail at once when the cluster cannot run ``n_workers`` barrier tasks together."""
    from ..session import is_connect
    if is_connect(spark):
        probe_slots(spark, n_workers, wait_seconds)
        return
    slots = available_slots(spark)
    if slots < n_workers:
        raise not_enough_slots(n_workers, f"this cluster has {slots}")


RESULT_SCHEMA = "rank int, result string"


def barrier_stage(spark, n_tasks: int, task) -> list[tuple[int, str]]:
    """Run ``task(rank) -> str`` as one barrier stage of ``n_tasks`` tasks; return
    ``(rank, result)`` by rank. ``task`` runs inside ``BarrierTaskContext``."""
    def run(batches):
        import pandas as pd
        from pyspark import BarrierTaskContext
        for _ in batches:                    # one row per partition: consume it
            pass
        rank = BarrierTaskContext.get().partitionId()
        yield pd.DataFrame({"rank": [rank], "result": [task(rank)]})

    rows = (spark.range(0, n_tasks, 1, numPartitions=n_tasks)
            .mapInPandas(run, RESULT_SCHEMA, barrier=True).collect())
    return sorted((int(r["rank"]), r["result"]) for r in rows)


def _probe(rank: int) -> str:
    from pyspark import BarrierTaskContext
    BarrierTaskContext.get().barrier()       # returns once every task of the stage runs
    return "ok"


def probe_slots(spark, n_workers: int, wait_seconds: float) -> None:
    """Spark Connect: start ``n_workers`` barrier tasks that only meet at a barrier; if they
    are not all running within ``wait_seconds``, cancel the probe and fail clearly."""
    tag = f"sparkeras-slots-{uuid.uuid4().hex[:8]}"
    outcome: dict = {}

    def probe():
        spark.addTag(tag)                    # tags belong to the thread that adds them
        try:
            outcome["rows"] = barrier_stage(spark, n_workers, _probe)
        except Exception as exc:             # noqa: BLE001 - reported below
            outcome["error"] = exc
        finally:
            spark.removeTag(tag)

    thread = threading.Thread(target=probe, name="sparkeras-slot-probe", daemon=True)
    thread.start()
    thread.join(wait_seconds)
    if thread.is_alive():
        spark.interruptTag(tag)
        thread.join(30)
        raise not_enough_slots(n_workers, f"the cluster did not start {n_workers} tasks "
                                          f"together within {wait_seconds:.0f} s")
    if "error" in outcome:
        # Spark's check (spark.scheduler.barrier.maxConcurrentTasksCheck.*) refused the stage:
        # "...a barrier stage that requires more slots than the total number of slots..."
        if "more slots than" in str(outcome["error"]):
            raise not_enough_slots(n_workers, "the cluster refused the barrier stage (more "
                                   "tasks than slots)") from outcome["error"]
        raise outcome["error"]


def _die_with_parent() -> None:
    """In the worker process: be killed when the Spark Python worker that started it dies
    (Spark kills the tasks of a failed barrier stage; no orphan may keep training)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the stage's failure still surfaces, the orphan times out


def _barrier_task(spec_json: str, python: Optional[str], env_extra: dict):
    """The function each barrier task runs (shipped to executors by cloudpickle, with the
    spec): it starts the training worker process (with the executor's own interpreter
    unless ``python`` names one) and returns its result as JSON."""
    def task(rank: int) -> str:
        import tempfile

        from pyspark import BarrierTaskContext
        ctx = BarrierTaskContext.get()
        host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
        port = free_port()
        addresses = ctx.allGather(f"{host}:{port}")
        env = {**os.environ, **env_extra, **gpu_environment(ctx.resources()),
               "TF_CONFIG": tf_config(addresses, rank)}
        with tempfile.TemporaryDirectory(prefix="sparkeras-worker-") as tmp:
            spec_path, result_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
            with open(spec_path, "w") as f:
                f.write(spec_json)
            proc = subprocess.run([python or sys.executable, "-m", "sparkeras.training.worker", spec_path,
                                   result_path], env=env, preexec_fn=_die_with_parent)
            if proc.returncode != 0:
                raise RuntimeError(f"training worker {rank} exited with code {proc.returncode}")
            with open(result_path) as f:
                result = f.read()
        ctx.barrier()
        return result
    return task


class EpochRelay:
    """Log each epoch the chief completes, read from its checkpoint state: the checkpoint
    folder is storage every node shares, so progress reaches the driver's log whatever
    happens to the executors' output."""

    def __init__(self, checkpoint_dir: Optional[str], epochs: int, interval: float = 1.0):
        self.checkpoint_dir, self.epochs, self.interval = checkpoint_dir, epochs, interval
        state = read_state(checkpoint_dir)
        self.shown = state["epochs_done"] if state else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkeras-epochs", daemon=True)

    def poll(self) -> None:
        try:
            state = read_state(self.checkpoint_dir)
        except (OSError, ValueError):       # being replaced right now: next time
            return
        if not state:
            return
        history = state["history"]
        for epoch in range(self.shown, min(state["epochs_done"], len(history["loss"]))):
            log.info(epoch_line(epoch, self.epochs, {k: v[epoch] for k, v in history.items()}))
            self.shown = epoch + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        if self.checkpoint_dir:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.checkpoint_dir:
            self._stop.set()
            self._thread.join()
            self.poll()


def run_workers(spark, spec: dict, n_workers: int, max_attempts: int,
                slot_wait_seconds: float = 120.0, python: Optional[str] = None) -> list[dict]:
    """Run the barrier stage until it succeeds (at most ``max_attempts`` times); return the
    workers' results, each with ``attempts``. ``python``: the interpreter for the worker
    processes (default: the one running the executor's Python tasks)."""
    check_slots(spark, n_workers, slot_wait_seconds)
    env_extra = {"PYTHONUNBUFFERED": "1",
                 "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    task = _barrier_task(json.dumps(spec), python, env_extra)
    last_error: Optional[BaseException] = None
    for attempt in range(1, max_attempts + 1):
        state = read_state(spec.get("checkpoint_dir"))
        done = state["epochs_done"] if state else 0
        log.info(f"training attempt {attempt}/{max_attempts} on {n_workers} barrier worker(s)"
                 + (f", resuming after epoch {done}" if done else ""))
        started = time.time()
        try:
            with EpochRelay(spec.get("checkpoint_dir"), spec["epochs"]):
                rows = barrier_stage(spark, n_workers, task)
        except Exception as exc:  # a worker died: Spark failed the whole barrier stage
            if interrupts.received():         # Ctrl-C, surfacing as a Py4J error (Spark 3.5)
                raise KeyboardInterrupt from exc
            last_error = exc
            log.warning(f"attempt {attempt} failed after {time.time() - started:.1f}s: "
                        f"{_first_line(exc)}")
            log.debug("the attempt's error", exc_info=exc)
            continue
        return [{**json.loads(result), "attempts": attempt} for _, result in rows]
    raise TrainingFailed(f"training failed in all {max_attempts} attempts; last error: "
                         f"{_first_line(last_error)}")


def _first_line(exc: Optional[BaseException]) -> str:
    text = str(exc) if exc is not None else ""
    for line in text.splitlines():
        if line.startswith(("RuntimeError:", "NotEnoughSlots", "org.apache.spark.scheduler.")):
            return line.strip()[:300]
    for line in text.splitlines():
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else type(exc).__name__
