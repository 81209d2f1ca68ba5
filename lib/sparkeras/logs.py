"""Logging: one ``sparkeras`` logger on stderr, a log file per command, quiet neighbours.

Library modules log to ``logging.getLogger(__name__)`` (children of ``sparkeras``); they do
not configure logging. The command line (and the notebook helper) call :func:`setup`:

- progress lines on stderr as ``[sparkeras] ...`` (stdout stays for the command's product
  and its one JSON line);
- third-party loggers (py4j, MLflow, TensorFlow, absl, urllib3, ...) at warnings only;
- with a log folder, a file per command run (``sparkeras-<command>-<time>-<pid>.log``) that
  gets every record at DEBUG, the full trace of a failure, Python warnings, TensorFlow's
  start-up lines and the stderr of the Spark driver JVM that sparkeras starts (Spark's own
  log lines and its Python workers' output), which used to fill the terminal. The newest
  :data:`KEEP_FILES` files of each command are kept.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

LOGGER = "sparkeras"
KEEP_FILES = 20
QUIET = ("py4j", "mlflow", "tensorflow", "absl", "urllib3", "alembic", "matplotlib", "h5py",
         "PIL", "git", "databricks", "filelock", "fsspec", "numba", "pyspark")

PYSPARK_JSON_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")

_run_log: Optional[Path] = None


class _Format(logging.Formatter):
    """Progress as ``[sparkeras] message``; problems as ``sparkeras: error: message``, as
    command-line tools say them (the kind may be given: ``extra={"kind": ...}``)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.WARNING:
            text = "[sparkeras] " + record.getMessage()
        else:
            kind = getattr(record, "kind", None) or record.levelname.lower()
            text = f"sparkeras: {kind}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(level: int = logging.INFO, log_dir: Optional[str] = None,
          name: str = "sparkeras", own_root: bool = False) -> Optional[Path]:
    """Configure the ``sparkeras`` logger for a process; return the run's log file (None
    without ``log_dir``). Safe to call again: handlers are replaced, not added.

    ``own_root`` (the command line, which owns its process): records of other libraries
    that log through the root logger (py4j's "Exception while sending command" traces when
    Ctrl-C interrupts a call into the JVM) go to the log file, not the terminal."""
    global _run_log
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(level)
    terminal.setFormatter(_Format())
    logger.addHandler(terminal)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow configures its own handler when imported, at this level.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    to_file: Optional[logging.Handler] = None
    _run_log = None
    logging.captureWarnings(False)
    _only_to(logging.getLogger("py.warnings"), None)
    if log_dir:
        folder = Path(log_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            to_file = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            logger.warning(f"no log file in {folder}: {exc}")
        else:
            to_file.setLevel(logging.DEBUG)
            to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s"))
            logger.addHandler(to_file)
            _run_log = path
            _prune(folder, name)
            # Python warnings from libraries (deprecations...) go to the file, not the terminal.
            logging.captureWarnings(True)
            _only_to(logging.getLogger("py.warnings"), to_file)
    # PySpark (4+) logs every failed query as JSON on stderr, before the exception says the
    # same. Its loggers must stay PySparkLoggers (PySpark passes them extra arguments).
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:
        PySparkLogger = None
    if PySparkLogger is not None:
        for name in PYSPARK_JSON_LOGGERS:
            _only_to(PySparkLogger.getLogger(name), to_file or logging.NullHandler())
    if own_root:
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        # (a root without handlers would make logging.exception() add one on stderr)
        root.addHandler(to_file or logging.NullHandler())
    return _run_log


def _only_to(logger: logging.Logger, handler: Optional[logging.Handler]) -> None:
    """Give ``logger`` exactly ``handler`` (None: its default, propagating to the root)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
    if handler is None:
        logger.propagate = True
        return
    # (the base class's method: PySparkLogger.addHandler would re-format the handler as JSON)
    logging.Logger.addHandler(logger, handler)
    logger.propagate = False


def run_log() -> Optional[Path]:
    """This process's log file (None when logging was not set up with a folder)."""
    return _run_log


def _prune(folder: Path, name: str) -> None:
    files = sorted(folder.glob(f"{name}-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        with contextlib.suppress(OSError):
            old.unlink()


@contextlib.contextmanager
def output_to(path: Optional[Path]) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` (appending) for the block: child processes
    started inside it (the Spark driver JVM) keep writing there, so stdout stays for the
    command's product (the JVM writes some reports, such as a crash banner, on its stdout);
    this process gets both back afterwards. Without a path, nothing changes."""
    if path is None:
        yield
        return
    try:
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        logging.getLogger(LOGGER).warning(f"Spark's output stays on the terminal: {exc}")
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        for fd in saved:
            os.dup2(target, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hold what native code writes to stderr during the block (TensorFlow's start-up lines
    are written by C++ before its log settings apply); replay it if the block fails, and
    keep it in the run's log file otherwise."""
    sys.stderr.flush()
    try:
        held = tempfile.TemporaryFile(mode="w+b")
    except OSError:          # nowhere to hold it: let it through
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:          # no usable descriptor 2 (some notebook kernels): nothing to hide
        held.close()
        yield
        return
    with held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            if failed and text:
                sys.stderr.write(text)
            elif text:
                logging.getLogger(LOGGER).debug("native start-up output:\n" + text.rstrip())


@contextlib.contextmanager
def python_stderr_to_log() -> Iterator[None]:
    """Send what Python code prints to ``sys.stderr`` during the block (libraries'
    notices) to the run's log file at DEBUG instead of the terminal."""
    import io
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        if held.getvalue().strip():
            logging.getLogger(LOGGER).debug(held.getvalue().rstrip())
