"""The SparkSession and process environment, built from configuration.

On Databricks (or anywhere a session is already active) the active session is used as is:
cluster configuration belongs to the cluster. Otherwise, in this order:

- ``spark.remote`` (or ``$SPARK_REMOTE``): a Spark Connect session to that server;
- a ``sparkeras server`` running for this state folder: a Spark Connect session to it, so
  commands, notebooks and analysts share its metastore at the same time;
- an embedded session in this process: a persistent Hive metastore and warehouse under the
  state folder, quiet logs, and Python workers that run this very interpreter.

Library code never needs to know which: :func:`is_connect` tells the few places that differ
(there is no ``sparkContext`` on Spark Connect).
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

from . import class_archive, interrupts, logs
from .config import Config
from .errors import JvmDidNotStart


def prepare_environment(cfg: Config) -> None:
    """Environment variables that must be set before Spark or TensorFlow start.

    Python workers inherit them, so executors use the same interpreter and stay quiet.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(cfg.tensorflow.cpp_min_log_level))
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # sparkeras threads settings reach Python workers through the environment.
    os.environ["SPARKERAS_TF_INTRA_OP_THREADS"] = str(cfg.tensorflow.intra_op_threads)
    os.environ["SPARKERAS_TF_INTER_OP_THREADS"] = str(cfg.tensorflow.inter_op_threads)


def session_conf(cfg: Config) -> dict[str, str]:
    """The Spark settings for a session built by sparkeras (user conf wins)."""
    s = cfg.spark
    state = Path(cfg.state_dir)
    log4j = resources.files("sparkeras").joinpath("resources/log4j2.properties")
    java_opts = (f"-Dlog4j2.configurationFile=file:{log4j} "
                 f"-Dderby.stream.error.file={state / 'derby.log'}")
    if cfg.log_dir:     # a JVM crash report goes beside the command logs, not into the cwd
        java_opts += f" -XX:ErrorFile={Path(cfg.log_dir) / 'hs_err_pid%p.log'}"
    conf = {
        "spark.sql.warehouse.dir": s.warehouse_dir,
        "spark.sql.catalogImplementation": s.catalog,
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={s.metastore_dir};create=true",
        # The Hive client makes a folder for downloaded resources at every start and never
        # removes it: one per command in /tmp by default (<uuid>_resources), one here instead.
        "spark.hadoop.hive.downloaded.resources.dir": str((state / "tmp" / "hive_resources").absolute()),
        "spark.driver.extraJavaOptions": java_opts,
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": "4g",
        # Whole-stage code generation gives up on a plan whose generated method is over 8,000
        # bytes of bytecode (HotSpot's JIT never compiles a bigger one: it would run
        # interpreted). Spark's docs recommend this value on HotSpot; measured here, the
        # ingest's validation of 1,000,000 records took 1.7 s with it and 3.7 s without.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        # A barrier stage with more tasks than slots fails at once instead of waiting forever.
        "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "1",
        "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
    }
    conf.update(s.conf)
    return conf


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def remote_url(cfg: Config) -> Optional[str]:
    """The Spark Connect server to use, if any: ``spark.remote``, else ``$SPARK_REMOTE``,
    else the ``sparkeras server`` of this state folder when it runs."""
    if cfg.spark.remote:
        return cfg.spark.remote
    if os.environ.get("SPARK_REMOTE"):
        return os.environ["SPARK_REMOTE"]
    from . import server
    running = server.running(cfg)
    return running["connect_url"] if running else None


# Settings a Connect client may set on its session; the rest (master, warehouse, metastore,
# JVM options, barrier checks) belong to the server that was started with them.
CONNECT_SESSION_CONF = ("spark.sql.session.timeZone", "spark.sql.codegen.hugeMethodLimit")


def get_spark(cfg: Config, keep_classes: bool = False, input_rows: Optional[int] = None):
    """Return the active SparkSession, or build one from ``cfg.spark`` (see the module doc).

    An embedded JVM starts from the class archive (:mod:`sparkeras.class_archive`) when there
    is one; ``keep_classes``: when there is none, this JVM writes it as it exits (for a
    caller that ends the JVM with :func:`end_embedded_jvm`, as commands do). ``input_rows``:
    how many rows the caller is about to read, when it knows (:mod:`sparkeras.input_size`),
    for ``spark.jit: auto`` (:func:`choose_jit`)."""
    prepare_environment(cfg)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    remote = remote_url(cfg)
    if remote:
        logging.getLogger("sparkeras").info(f"using the Spark Connect server at {remote}")
        return connect_session(cfg, remote)
    metastore_in_use(cfg)
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    conf = session_conf(cfg)
    archive = class_archive.plan(cfg.spark.class_archive, create=keep_classes,
                                 extra_class_path=conf.get("spark.driver.extraClassPath", ""))
    try:
        spark = _embedded(cfg, conf, archive, input_rows)
    except Exception:
        if archive is None or archive.dump_to is not None:
            raise
        # e.g. a damaged archive: start without it, and remove it only when that start works
        # (a start that fails either way says nothing about the archive)
        spark = _embedded(cfg, conf, None, input_rows)
        class_archive.discard(archive)
    interrupts.watch()              # PySpark installed its own SIGINT handler: chain in front
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


# The embedded JVM's compilers (``spark.jit``). A command's JVM lives for one command: C1
# alone ("quick") compiles sooner and leaves the cores to the work. Measured on 2 cores: a
# 13-row ingest 35-42 -> 29-30 s, the 1,000,000-row demo 143 -> 125 s. "late" keeps C2 for the
# code that stays hot (the scoring and CSV loops of a large job) and spares it the rest: C2 at
# 10x HotSpot's tier-4 thresholds (docs/performance.md, "The command's JVM"). "auto" (the
# default) chooses between the two from the size of the command's input (:func:`choose_jit`).
JIT_OPTIONS = {
    "quick": "-XX:TieredStopAtLevel=1",
    "late": "-XX:Tier4InvocationThreshold=50000 -XX:Tier4MinInvocationThreshold=6000 "
            "-XX:Tier4CompileThreshold=150000 -XX:Tier4BackEdgeThreshold=400000",
    "full": "",
}
#: ``spark.jit: auto``: one of :data:`JIT_OPTIONS`, chosen from the input's size.
AUTO = "auto"


def choose_jit(setting: str, input_rows: Optional[int], late_from_rows: int) -> str:
    """The compilers of a new JVM: ``setting`` itself, unless it is ``auto``: then ``late``
    for an input of at least ``late_from_rows`` rows, else ``quick`` (also when the size is
    unknown: a first try is a small file, where ``quick`` is the fastest; docs/performance.md,
    "``spark.jit: auto``")."""
    if setting != AUTO:
        return setting
    return "late" if input_rows is not None and input_rows >= late_from_rows else "quick"


def driver_java_options(jit: str, user: str, archive: str | None = None) -> str:
    """The embedded driver JVM's options: the ``spark.jit`` compilers first, so that the
    user's own options (``user``, later on the command line) win, then the class archive's."""
    return " ".join(part for part in (JIT_OPTIONS[jit], user, archive) if part)


def _embedded(cfg: Config, conf: dict[str, str], archive, input_rows: Optional[int] = None):
    """Launch the embedded JVM with ``conf``, the ``spark.jit`` compilers and the class
    archive's options."""
    from pyspark.sql import SparkSession
    jit = choose_jit(cfg.spark.jit, input_rows, cfg.spark.jit_late_from_rows)
    if cfg.spark.jit == AUTO:
        size = "unknown" if input_rows is None else f"~{input_rows:,} rows"
        logging.getLogger("sparkeras").debug(f"spark.jit auto: {jit} (input {size})")
    builder = SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
    for key, value in conf.items():
        if key == "spark.driver.extraJavaOptions":
            value = driver_java_options(jit, value,
                                        archive.java_options() if archive is not None else None)
        builder = builder.config(key, value)
    if cfg.spark.catalog == "hive":
        builder = builder.enableHiveSupport()
    if archive is not None and archive.dump_to is not None:
        logging.getLogger("sparkeras").info(
            "first start of this Spark installation: its JVM saves the classes it loads "
            f"({archive.path.parent}, ~150 MB, once), so later commands start faster")
    # The JVM (and the Python workers it starts) write their output to this command's log
    # file when there is one: Spark's start-up notices and log lines stay off the terminal.
    log_file = logs.run_log()
    since = _size(log_file)
    try:
        with logs.output_to(log_file):
            return builder.getOrCreate()
    except Exception as exc:
        if "JAVA_GATEWAY_EXITED" not in str(exc) and "gateway process exited" not in str(exc):
            raise
        said = jvm_error(_tail(log_file, since)) if log_file else ""
        raise JvmDidNotStart(
            "the Spark JVM did not start" + (f": {said}" if said else "")
            + " (check spark.driver.memory, spark.driver.extraJavaOptions in spark.conf, "
            "and the Java installation: JAVA_HOME, Java 17 or 21)") from exc


# What a JVM says on any failed start, after the reason it gave.
_JVM_BANNERS = ("Error: Could not create the Java Virtual Machine.",
                "Error: A fatal exception has occurred. Program will exit.")


def jvm_error(output: str) -> str:
    """The line that says why a JVM (or its launcher script) did not start, from what it
    wrote: its first line that is not one of sparkeras' own log lines, the JVM's generic
    banners or its notice of options from the environment ("Picked up JAVA_TOOL_OPTIONS:
    ..."); "" when there is none."""
    import re
    for line in output.splitlines():
        line = line.strip()
        if line and line not in _JVM_BANNERS and not re.match(
                r"\d{4}-\d\d-\d\d \d|(NOTE: )?Picked up \w+:", line):
            return line[:300]
    return ""


def _size(path: Optional[Path]) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _tail(path: Path, since: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            return fh.read(64_000).decode(errors="replace")
    except OSError:
        return ""


def connect_session(cfg: Config, url: str):
    """A Spark Connect session to ``url`` with this client's session settings applied: the
    SQL settings sparkeras relies on and ``spark.conf`` entries a session may change (static
    ones are the server's: skipped, and said in the log)."""
    from pyspark.sql import SparkSession
    try:
        spark = SparkSession.builder.remote(url).getOrCreate()
    except ImportError as exc:
        from .errors import SparkerasError
        raise SparkerasError(f"Spark Connect ({url}) needs the client libraries: pip install "
                             f"'pyspark[connect]' ({exc})") from exc
    _connect_sessions.append(spark)
    wanted = {k: v for k, v in session_conf(cfg).items() if k in CONNECT_SESSION_CONF}
    wanted.update(cfg.spark.conf)
    for key, value in wanted.items():
        try:
            spark.conf.set(key, str(value))
        except Exception as exc:  # a static setting: the server decides it
            logging.getLogger(__name__).debug(f"{key} left to the Connect server: {exc}")
    return spark


_connect_sessions: list = []


def interrupt_connect_work() -> None:
    """After Ctrl-C in a Spark Connect client: ask the server to stop what this process
    started (on a classic session PySpark's own SIGINT handler cancels the jobs)."""
    for spark in _connect_sessions:
        with contextlib.suppress(Exception):
            spark.interruptAll()


def spark_context_running() -> bool:
    """Whether this process already has a classic SparkContext (a notebook's, a test's, a
    Databricks driver's), without importing PySpark when nothing has."""
    if "pyspark" not in sys.modules:
        return False
    from pyspark import SparkContext
    return SparkContext._active_spark_context is not None


def end_embedded_jvm(timeout: float = 30.0) -> None:
    """Stop the Spark session this process started and wait until its JVM has exited.

    PySpark's JVM exits on its own only after the Python process is gone (it watches its
    stdin), and its shutdown takes a second or more: until then it holds the embedded Derby
    metastore, so a command started right after this one (``sparkeras ingest ... &&
    sparkeras train ...``) would find the metastore in use. So the session is stopped
    (which also ends the driver's accumulator server before the JVM goes, or it prints EOF
    traces), the JVM's stdin closed (its own signal to exit) and the JVM waited for: a
    finished command means a released metastore. Only for a JVM this process launched (not
    on Spark Connect, nor on a Databricks driver, where PySpark attaches to a running JVM);
    the caller decides whether the session is its to end (:func:`sparkeras.cli.main` ends
    only one it started)."""
    if "pyspark" not in sys.modules:       # this process never started Spark
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession
    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(Exception):
        session = SparkSession.getActiveSession()
        if session is not None:
            session.stop()
        elif SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    if class_archive.dumping():            # it writes its class archive as it exits
        timeout = max(timeout, 180.0)
    exited = False
    try:
        proc.wait(timeout)
        exited = True
    except subprocess.TimeoutExpired:      # never wait on a JVM forever
        logging.getLogger(__name__).warning(
            f"the Spark JVM (pid {proc.pid}) did not exit within {timeout:.0f} s: killing it")
        with contextlib.suppress(OSError):
            proc.kill()
    except KeyboardInterrupt:              # Ctrl-C again while waiting: do not wait
        with contextlib.suppress(OSError):
            proc.kill()
    class_archive.publish(exited and proc.returncode == 0)
    # a later session in this process launches a new JVM instead of using the ended one
    SparkContext._gateway = None
    SparkContext._jvm = None


def metastore_in_use(cfg: Config) -> None:
    """Fail in one line, before a JVM starts, when another process holds the embedded
    (Derby) metastore: Derby admits one process, and the alternative is pages of
    ``XSDB6`` traces. Derby holds a lock on ``dbex.lck`` while the database is booted."""
    if cfg.spark.catalog != "hive":
        return
    lock = Path(cfg.spark.metastore_dir) / "dbex.lck"
    if not lock.exists():
        return
    import fcntl
    try:
        with open(lock, "rb+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                from .errors import MetastoreBusy
                raise MetastoreBusy(
                    f"the metastore of {cfg.state_dir} is in use by another process (an "
                    f"embedded metastore admits one at a time): wait for it to finish, or run "
                    f"`sparkeras server start` so that commands and analysts share one "
                    f"server") from None
            fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError:
        return     # cannot tell (permissions): let Spark try


@contextlib.contextmanager
def temporary_conf(spark, settings: dict[str, str]):
    """Set Spark SQL settings for the duration of a block, then restore the previous values
    (unset ones are unset again). Actions must run inside the block: settings are read when
    a query executes, not when a DataFrame is defined."""
    previous = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, str(v))
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)
