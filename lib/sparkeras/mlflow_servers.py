"""MLflow's own HTTP servers, started from the project's environment for one command:
``sparkeras serve`` (the scoring server, ``/ping`` and ``/invocations``, for one pinned
model version) and ``sparkeras ui`` (the tracking UI on the store the jobs write).

Each runs as a child process in its own process group: the command prints one JSON line
once the server answers, then waits; Ctrl-C (or SIGTERM) stops the whole group and waits
for it, so nothing is left behind. The server's own output goes to the command's log file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from .config import Config
from .errors import DataError, UsageError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before starting anything."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): another "
                             f"process holds it; choose another with --port") from None


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _environment() -> dict:
    """The child's environment: this interpreter's bin first on PATH (``mlflow models
    serve`` runs ``uvicorn`` by name), quiet TensorFlow."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after ``timeout``; wait."""
    stop_process_group(proc.pid, timeout, reap=proc.poll)
    proc.wait()


def stop_process_group(pgid: int, timeout: float = 30.0,
                       reap: Callable[[], object] = lambda: None) -> bool:
    """SIGTERM process group ``pgid``, SIGKILL what is left after ``timeout``; wait until
    none of it runs. True if SIGTERM was enough."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()                            # a child of ours: reap the leader
            if not group_members(pgid):
                return sig == signal.SIGTERM
            time.sleep(0.2)
    return False


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    return [pid for pid, _, group in live_processes() if group == pgid]


def live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (not zombie) process (Linux)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            out.append((int(entry), int(fields[1]), int(fields[2])))
    return out


def run_server(argv: list[str], ready_url: str, what: str, summary: dict, out,
               log_path: Optional[str], on_ready: Optional[Callable[[], None]] = None,
               ready_timeout: float = READY_TIMEOUT_S) -> dict:
    """Start ``argv`` in its own process group, wait until ``ready_url`` answers 200, print
    ``summary`` as one JSON line, then wait for the server. Ctrl-C (SIGINT) or SIGTERM
    after that stops it normally; before it answers, Ctrl-C is an interruption (exit 130)."""
    # SIGTERM (a scheduler, `kill`) stops the server like Ctrl-C, so it is never orphaned.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(argv, ready_url, what, summary, out, log_path, on_ready, ready_timeout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(argv, ready_url, what, summary, out, log_path, on_ready, ready_timeout) -> dict:
    sink = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, env=_environment(),
                                start_new_session=True)
    finally:
        if log_path:
            sink.close()
    try:
        deadline = time.monotonic() + ready_timeout
        while not _answers(ready_url):
            if proc.poll() is not None:
                raise DataError(f"{what} exited with code {proc.returncode} before answering"
                                + (f": its output is in {log_path}" if log_path else ""))
            if time.monotonic() > deadline:
                raise DataError(f"{what} did not answer {ready_url} within "
                                f"{ready_timeout:.0f} s" +
                                (f": its output is in {log_path}" if log_path else ""))
            time.sleep(0.5)
        summary = {**summary, "pid": proc.pid}
        print(json.dumps(summary), file=out, flush=True)
        if on_ready:
            on_ready()
        log.info(f"{what} listening on {summary['url']} (Ctrl-C stops it)")
        try:
            code = proc.wait()
        except KeyboardInterrupt:               # the way to stop a server: not a failure
            stop_group(proc)
            log.info(f"{what} stopped")
            return summary
        if code != 0:
            raise DataError(f"{what} stopped with exit code {code}" +
                            (f": its output is in {log_path}" if log_path else ""))
        return summary
    finally:
        stop_group(proc)


# ------------------------------------------------------------------------- the model
def server_log(cfg: Config, what: str) -> Optional[str]:
    """Where a server's own output goes: ``<log_dir>/mlflow-<what>-<time>-<pid>.log``
    (nowhere when ``log_dir`` is null)."""
    if not cfg.log_dir:
        return None
    os.makedirs(cfg.log_dir, exist_ok=True)
    return os.path.join(cfg.log_dir, f"mlflow-{what}-{time.strftime('%Y%m%dT%H%M%S')}-"
                                     f"{os.getpid()}.log")


def serve_model(cfg: Config, model_uri: str, host: str, port: int, out,
                workers: int = 1) -> dict:
    """``sparkeras serve``: MLflow's scoring server for ``model_uri`` (an alias is pinned
    to its version first, so the server's answers come from one version)."""
    from .scoring import resolve_model
    check_port_free(host, port)
    model = resolve_model(cfg, model_uri, "")
    local = _local_copy(cfg, model)
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", local,
            "--env-manager", "local", "-h", host, "-p", str(port), "-w", str(workers)]
    url = url_of(host, port)
    summary = {"url": url, "invocations": f"{url}/invocations", "model_uri": model.uri,
               "model_name": model.name, "model_version": model.version}
    log.info(f"starting MLflow's scoring server for {model.uri} ...")
    return run_server(argv, f"{url}/ping", "the model server", summary, out,
                      server_log(cfg, "serve"))


def _local_copy(cfg: Config, model) -> str:
    """The model's files under ``state_dir/serving``, downloaded once per version."""
    import shutil

    import mlflow
    from mlflow.models import get_model_info
    info = get_model_info(model.uri)
    if "tensorflow" in info.flavors:
        raise DataError(f"{model.uri} was registered before models took named columns (it "
                        f"answers bare tensors only): train again to get a servable version")
    target = os.path.join(cfg.state_dir, "serving", f"{model.name}-{model.version}")
    if not os.path.isfile(os.path.join(target, "MLmodel")):
        tmp = target + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        mlflow.artifacts.download_artifacts(artifact_uri=model.uri, dst_path=tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


# ------------------------------------------------------------------------- the UI
def ui(cfg: Config, host: str, port: int, out) -> dict:
    """``sparkeras ui``: MLflow's tracking UI on the configured (local) stores."""
    tracking = cfg.mlflow.tracking_uri
    if not tracking.startswith(("sqlite:", "file:", "/", "postgresql", "mysql")):
        raise UsageError(f"mlflow.tracking_uri is {tracking!r}: open that store's own UI "
                         f"(on Databricks: the workspace's Experiments page)")
    check_port_free(host, port)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking,
            "--registry-store-uri", cfg.mlflow.registry(), "-h", host, "-p", str(port),
            "-w", "1"]
    if cfg.mlflow.artifact_location:
        argv += ["--default-artifact-root", cfg.mlflow.artifact_location]
    url = url_of(host, port)
    summary = {"url": url, "tracking_uri": tracking, "experiments": _experiments(cfg, url)}
    log.info(f"starting MLflow's UI on {tracking} ...")
    return run_server(argv, f"{url}/health", "the MLflow UI", summary, out,
                      server_log(cfg, "ui"))


def _experiments(cfg: Config, url: str) -> dict:
    """name -> UI address of each experiment in the store."""
    from mlflow import MlflowClient

    from .tracking import setup_mlflow
    setup_mlflow(cfg)
    return {e.name: f"{url}/#/experiments/{e.experiment_id}"
            for e in MlflowClient().search_experiments()}


def run_page(url: str, experiment_id: str, run_id: str) -> str:
    """The UI address of one run."""
    return f"{url}/#/experiments/{experiment_id}/runs/{run_id}"


def where_to_look(cfg: Config, experiment_id: str, run_id: str) -> str:
    """How a user opens a run: through ``sparkeras ui`` on a local store, else the store's
    own UI."""
    if cfg.mlflow.tracking_uri.startswith(("sqlite:", "file:", "/")):
        return (f"plots and metrics: run `sparkeras ui`, then open "
                f"{run_page(url_of('127.0.0.1', 5000), experiment_id, run_id)}")
    return f"plots and metrics: run {run_id} of experiment {experiment_id} in the MLflow UI"
