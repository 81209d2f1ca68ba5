"""``sparkeras server start|status|stop``: one local Spark JVM for jobs and analysts at once.

The embedded Derby metastore admits one process, so while a command runs, nobody else (an
analyst's ``sparkeras sql``, a notebook, BI tools) can use the state folder's tables. The
server is one detached JVM over that warehouse and metastore serving both
Spark Connect (``sc://127.0.0.1:15002``: every sparkeras command of this state folder
connects to it while it runs, see :mod:`sparkeras.session`) and the Thrift JDBC/ODBC server
(``jdbc:hive2://127.0.0.1:10000``: ``beeline`` and BI tools). Its process group, ports and
URLs are kept in ``<state_dir>/server.json``; its output goes to ``<state_dir>/logs``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .config import Config
from .errors import ServerError
from .mlflow_servers import check_port_free, group_members, stop_process_group

log = logging.getLogger(__name__)

THRIFT_SERVER = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"


def state_file(cfg: Config) -> Path:
    return Path(cfg.state_dir) / "server.json"


def running(cfg: Config) -> Optional[dict]:
    """The server of this state folder, if its process group is alive (else None)."""
    path = state_file(cfg)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if group_members(int(info["pid"])) else None


def _spark_home() -> Path:
    import pyspark
    return Path(pyspark.__file__).parent


def _connect_jar() -> Optional[Path]:
    return next(iter(sorted((_spark_home() / "jars").glob("spark-connect_*.jar"))), None)


def command(cfg: Config) -> list[str]:
    """The ``spark-submit`` line: the Thrift server's main class with the Connect plugin,
    the same warehouse, metastore, master and settings the embedded sessions use."""
    from .session import session_conf
    s = cfg.server
    conf = session_conf(cfg)
    conf.update({"spark.app.name": "sparkeras-server",
                 "spark.sql.catalogImplementation": cfg.spark.catalog,
                 "spark.plugins": CONNECT_PLUGIN,
                 "spark.connect.grpc.binding.address": s.host,
                 "spark.connect.grpc.binding.port": str(s.connect_port)})
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", cfg.spark.master,
           "--class", THRIFT_SERVER]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + ["--hiveconf", f"hive.server2.thrift.port={s.jdbc_port}",
                  "--hiveconf", f"hive.server2.thrift.bind.host={s.host}", "spark-internal"]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def start(cfg: Config) -> dict:
    """Start the server detached (its own session and process group) unless it runs; return
    once both services accept connections."""
    current = running(cfg)
    if current:
        return {**current, "running": True, "started": False}
    if _connect_jar() is None:
        import pyspark
        raise ServerError(f"pyspark {pyspark.__version__} has no Spark Connect server (the "
                          f"spark-connect jar came with pyspark 4): the server needs the "
                          f"primary stack")
    from .session import metastore_in_use, prepare_environment
    s = cfg.server
    for port in (s.connect_port, s.jdbc_port):
        check_port_free(s.host, port)
    metastore_in_use(cfg)
    prepare_environment(cfg)          # the Python workers' interpreter and quiet TensorFlow
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    log_dir = Path(cfg.log_dir or Path(cfg.state_dir) / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "sparkeras-server.log"
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("SPARK_REMOTE", None)
    with open(log_path, "ab") as sink:
        proc = subprocess.Popen(command(cfg), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, env=env, cwd=cfg.state_dir,
                                start_new_session=True)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
    info = {"pid": proc.pid, "connect_url": f"sc://{host}:{s.connect_port}",
            "jdbc_url": f"jdbc:hive2://{host}:{s.jdbc_port}", "log": str(log_path),
            "state_dir": str(Path(cfg.state_dir).resolve())}
    deadline = time.monotonic() + s.start_timeout
    log.info(f"starting the Spark server (Connect on {s.connect_port}, JDBC on {s.jdbc_port})")
    while not (_listening(host, s.connect_port) and _listening(host, s.jdbc_port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (f"exited with code {proc.returncode}" if proc.returncode is not None
                      else f"did not accept connections within {s.start_timeout} s")
            stop_process_group(proc.pid, 10, reap=proc.poll)
            raise ServerError(f"the Spark server {reason}: its output is in {log_path}")
        time.sleep(0.5)
    state_file(cfg).write_text(json.dumps(info))
    return {**info, "running": True, "started": True}


def status(cfg: Config) -> dict:
    current = running(cfg)
    if not current:
        return {"running": False, "state_dir": str(Path(cfg.state_dir).resolve())}
    host = current["connect_url"].split("//", 1)[1].rsplit(":", 1)[0]
    ports = {"connect": int(current["connect_url"].rsplit(":", 1)[1]),
             "jdbc": int(current["jdbc_url"].rsplit(":", 1)[1])}
    return {**current, "running": True,
            "accepting": {name: _listening(host, port) for name, port in ports.items()}}


def stop(cfg: Config, timeout: float = 60.0) -> dict:
    """Stop the server's whole process group (spark-submit, its JVM, Python workers) and
    wait until none of it runs."""
    current = running(cfg)
    if not current:
        state_file(cfg).unlink(missing_ok=True)
        return {"running": False, "stopped": False}
    clean = stop_process_group(int(current["pid"]), timeout)
    state_file(cfg).unlink(missing_ok=True)
    return {"running": False, "stopped": True, "pid": current["pid"], "forced": not clean}
