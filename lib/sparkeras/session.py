"""The SparkSession and process environment, built from configuration.

On Databricks (or anywhere a session is already active) the active session is used as is:
cluster configuration belongs to the cluster. Otherwise a session is built from
``cfg.spark``: a persistent Hive metastore and warehouse under the state folder, quiet logs,
and Python workers that run this very interpreter.
"""
from __future__ import annotations

import contextlib
import os
import sys
from importlib import resources
from pathlib import Path

from . import interrupts, logs
from .config import Config


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
    conf = {
        "spark.sql.warehouse.dir": s.warehouse_dir,
        "spark.sql.catalogImplementation": s.catalog,
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={s.metastore_dir};create=true",
        "spark.driver.extraJavaOptions": java_opts,
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": "4g",
        # A barrier stage with more tasks than slots fails at once instead of waiting forever.
        "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "1",
        "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
    }
    conf.update(s.conf)
    return conf


def get_spark(cfg: Config):
    """Return the active SparkSession, or build one from ``cfg.spark``."""
    prepare_environment(cfg)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    if cfg.spark.catalog == "hive":
        builder = builder.enableHiveSupport()
    # The JVM (and the Python workers it starts) write their output to this command's log
    # file when there is one: Spark's start-up notices and log lines stay off the terminal.
    with logs.stderr_to(logs.run_log()):
        spark = builder.getOrCreate()
    interrupts.watch()              # PySpark installed its own SIGINT handler: chain in front
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


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
