"""The ``sparkeras`` command line (also ``python -m sparkeras``).

Progress goes to stderr as ``[sparkeras] ...`` lines; stdout carries the command's product
and, last, one JSON summary line, so ``sparkeras ... | tail -1`` is machine-readable. Each
run also writes a log file under ``<state_dir>/logs`` with everything, including Spark's own
output and the full trace of a failure. Exit codes: :mod:`sparkeras.errors`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from typing import Optional, Sequence

from . import __version__, interrupts
from .config import ConfigError, default_config_path, load_config
from .errors import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    SparkerasError,
)

log = logging.getLogger("sparkeras.cli")

DESCRIPTION = """\
Train Keras models with tf.distribute on Spark, track and register them in MLflow, and
score tables with pandas UDFs: locally in Spark local mode, or unchanged on a cluster."""
EPILOG = """\
Progress goes to stderr; stdout carries the command's product and, last, one JSON line.
Settings come from --conf FILE (default: $SPARKERAS_CONF, else conf/local.yml when present,
else the built-in defaults) and --set KEY=VALUE; both are also accepted after the
subcommand. Exit codes: 0 success, 1 the command failed (missing table or model, bad data,
too few task slots, training failed), 2 usage or configuration error, 3 rows lost or
doubled (a bug), 4 internal error, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="sparkeras", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"sparkeras {__version__}")
    p.add_argument("--conf", metavar="FILE", help="configuration YAML (default: "
                   "$SPARKERAS_CONF, else conf/local.yml when present, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=3 (repeatable)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also show debug lines on stderr")
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="show only warnings and errors on stderr")
    # --conf/--set are also accepted after the subcommand (jobs forward their arguments);
    # their own destinations, so that they add to those given before it, not replace them
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", dest="command_conf", metavar="FILE",
                        default=argparse.SUPPRESS, help="configuration YAML (as before the "
                        "command; this one wins)")
    common.add_argument("--set", dest="command_overrides", action="append", metavar="KEY=VALUE",
                        default=argparse.SUPPRESS, help="override one setting (repeatable; "
                        "applied after those before the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(subparsers, name, help, **kw):
        return subparsers.add_parser(name, parents=[common], help=help, description=help, **kw)

    def workloads(parser):
        return parser.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")

    gen = workloads(sub.add_parser("generate", help="write deterministic synthetic data",
                                   description="Write deterministic synthetic data."))
    g = command(gen, "incidents", "synthetic incidents from a known rule (docs/incidents.md)")
    g.add_argument("--rows", type=int, required=True, help="number of incidents (IDs 1..N)")
    g.add_argument("--out", required=True, help="output folder (Spark writes part files)")
    g.add_argument("--format", choices=["csv", "parquet"], default="csv",
                   help="file format (default: csv with a header)")
    g.add_argument("--seed", type=int, default=7, help="same seed, same rows (default: 7)")
    g.add_argument("--unlabeled", action="store_true", help="omit ROOT_CAUSE")
    g = command(gen, "images", "synthetic class-structured images in a real format "
                               "(docs/images.md)")
    g.add_argument("--count", type=int, required=True, help="number of images")
    g.add_argument("--out", required=True, help="output folder (a path every worker can write)")
    g.add_argument("--format", choices=["idx", "cifar", "folder"], required=True,
                   help="IDX (MNIST), CIFAR-10 binary batches, or class folders of JPEG/PNG")
    g.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    g.add_argument("--seed", type=int, default=7, help="same seed, same images (default: 7)")

    ing = workloads(sub.add_parser("ingest", help="validate raw files into a table and its "
                                   "quarantine", description="Validate raw files into a table; "
                                   "every refused record goes to <table>_quarantine with its "
                                   "reason."))
    batch_help = ("the batch these rows form (default: derived from the source files, so "
                  "ingesting the same files again replaces their batch)")
    i = command(ing, "incidents", "incident exports: CSV (RFC 4180), Parquet or JSON lines")
    i.add_argument("--source", required=True, help="a file, folder or glob")
    i.add_argument("--table", required=True, help="the table to write")
    i.add_argument("--format", choices=["csv", "parquet", "json"], default="csv",
                   help="file format (default: csv)")
    i.add_argument("--batch-id", help=batch_help)
    i = command(ing, "images", "IDX files, CIFAR-10 batches or class folders of photos")
    i.add_argument("--source", required=True, help="a file, folder or glob")
    i.add_argument("--table", required=True, help="the table to write")
    i.add_argument("--format", choices=["idx", "cifar", "folder"], required=True,
                   help="idx (MNIST-style pairs), cifar (binary batches), folder (one "
                        "sub-folder per class)")
    i.add_argument("--batch-id", help=batch_help)
    i.add_argument("--unlabeled", action="store_true",
                   help="new images: ignore class folders and label files")
    i = command(ing, "tabular", "files of a table declared by a schema file (docs/tabular.md)")
    i.add_argument("--schema", required=True, metavar="FILE",
                   help="the schema YAML: id, features with their kinds, target")
    i.add_argument("--source", required=True, help="a file, folder or glob")
    i.add_argument("--table", help="the table to write (default: the schema's name)")
    i.add_argument("--format", choices=["csv", "parquet", "json"], default="csv",
                   help="file format (default: csv)")
    i.add_argument("--batch-id", help=batch_help)

    tr = workloads(sub.add_parser("train", help="train, log to MLflow, register, gate the "
                                  "champion", description="Train a model on a table, log the "
                                  "run to MLflow, register it and move the champion alias if "
                                  "it is at least as good."))
    for workload, what in (("incidents", "the root-cause MLP"),
                           ("images", "an image classifier"),
                           ("tabular", "a classifier or regressor for a declared schema")):
        t = command(tr, workload, f"train {what}")
        if workload == "tabular":
            t.add_argument("--schema", required=True, metavar="FILE", help="the schema YAML")
        t.add_argument("--table", required=workload != "tabular",
                       help="the ingested table to train on"
                            + (" (default: the schema's name)" if workload == "tabular" else ""))
        t.add_argument("--epochs", type=int, help="at most this many epochs (default: auto; "
                       "early stopping decides)")
        t.add_argument("--batch-size", type=int, help="global batch size (default: auto, "
                       "from the training rows)")
        t.add_argument("--workers", type=int, help="0: train on the driver (default); N: on "
                       "N Spark barrier tasks")

    sc = workloads(sub.add_parser("score", help="score a table with a registered model",
                                  description="Score a table with a registered model into an "
                                  "output table, its quarantine and a daily view."))
    for workload, model in (("incidents", "registry.incident_model"),
                            ("images", "registry.image_model"),
                            ("tabular", "the model of the table's schema")):
        s = command(sc, workload, f"score {workload}")
        s.add_argument("--table", required=True, help="the table to score")
        s.add_argument("--output", required=True, help="the scored table to write")
        s.add_argument("--model", help=f"a models:/ URI (default: {model}, @champion)")
        if workload == "tabular":
            s.add_argument("--schema", metavar="FILE", help="the schema whose champion scores "
                           "(default: the one the table was ingested with)")
        s.add_argument("--batch-id", help="the output batch (default: each row's "
                                          "ingest_batch_id)")
        s.add_argument("--input-batch", action="append", metavar="INGEST_BATCH_ID",
                       help="score only rows of this ingest batch (repeatable; default: all)")

    q = command(sub, "sql", "run a SQL query on the warehouse and print the rows")
    q.add_argument("query", help="the SQL text")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="how to print the rows (default: table)")
    q.add_argument("--max-rows", type=int, default=1000, help="print at most this many rows")

    v = command(sub, "serve", "serve a registered model over REST (MLflow's scoring server)",
                epilog="Requests: POST /invocations with JSON rows of named columns, e.g. "
                       "{\"dataframe_records\": [{\"CPU_LOAD\": 1, ...}]}; GET /ping. "
                       "Ctrl-C stops the server.")
    v.add_argument("--model", required=True,
                   help="a models:/ URI, e.g. models:/incident_root_cause@champion (an alias "
                        "is pinned to its version when the server starts)")
    v.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    v.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: 127.0.0.1, this machine only)")
    v.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own copy of the model (default: 1)")
    u = command(sub, "ui", "MLflow's UI on the tracking store the jobs write (runs, metrics, "
                           "plots, registered models)", epilog="Ctrl-C stops the server.")
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: 127.0.0.1, this machine only)")

    sv = sub.add_parser("server", help="one local Spark server (Spark Connect and JDBC) for "
                        "jobs and analysts at once", description="One detached Spark JVM over "
                        "the state folder's warehouse and metastore, serving Spark Connect "
                        "(every sparkeras command of this state folder goes through it while "
                        "it runs) and JDBC/ODBC (beeline, BI tools). Ports: server.* settings.")
    actions = sv.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(actions, "start", "start it (unless it runs); print connect_url, jdbc_url, pid")
    command(actions, "status", "say whether it runs, and where")
    command(actions, "stop", "stop it and wait until none of its processes runs")

    d = command(sub, "demo", "generate, ingest, train, score and query, end to end")
    d.add_argument("--rows", type=int, help="incidents to generate (default: demo.rows)")
    return p


def _overrides(args) -> list[str]:
    extra = list(args.overrides) + list(getattr(args, "command_overrides", []))
    for option, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                        ("workers", "train.workers")):
        if getattr(args, option, None) is not None:
            extra.append(f"{key}={getattr(args, option)}")
    return extra


def config_from_args(args):
    """The configuration parsed ``args`` name (file, --set and command options)."""
    path = getattr(args, "command_conf", None) or args.conf
    return load_config(path if path else default_config_path(), _overrides(args))


def written_tables(args, cfg) -> list[str]:
    """The tables a command writes batches into (each with its quarantine): one writer at a
    time (:mod:`sparkeras.write_lock`)."""
    if args.command == "ingest":
        name = args.table
        if name is None and getattr(args, "schema", None):
            from .schema import load_schema
            name = load_schema(args.schema).name
        return [cfg.table_name(name)] if name else []
    if args.command == "score":
        return [cfg.table_name(args.output)]
    return []


def input_rows(args, cfg) -> Optional[int]:
    """How many rows an ingest or a score of tables will read, estimated from local files
    before the JVM starts (for ``spark.jit: auto``); None when not asked or unknown. Never
    fails the command: the estimate only chooses the JVM's compilers."""
    workload = getattr(args, "workload", None)
    if cfg.spark.jit != "auto" or workload not in ("incidents", "tabular"):
        return None
    from . import input_size
    try:
        if args.command == "ingest":
            return input_size.source_rows(args.source, args.format)
        if args.command == "score":
            return input_size.table_rows(cfg.spark.warehouse_dir, cfg.table_name(args.table),
                                         args.input_batch)
    except Exception as exc:      # noqa: BLE001 (see the docstring)
        log.debug(f"input size unknown: {exc!r}")
    return None


def run(args, cfg, out) -> Optional[dict]:
    """Execute parsed ``args``; return the JSON summary (None when the product is the output)."""
    from .write_lock import holding
    with holding(cfg.state_dir, written_tables(args, cfg), cfg.tables.write_locks):
        return _run(args, cfg, out)


def _run(args, cfg, out) -> Optional[dict]:
    if args.command in ("serve", "ui"):         # MLflow's servers: no Spark session
        from . import mlflow_servers
        if args.command == "serve":
            mlflow_servers.serve_model(cfg, args.model, args.host, args.port, out, args.workers)
        else:
            mlflow_servers.ui(cfg, args.host, args.port, out)
        return None                             # the JSON line was printed when ready
    if args.command == "server":                # manages the JVM; uses no session itself
        return _server(args.action, cfg)
    from .session import get_spark
    # main() ends the JVM and waits for it
    spark = get_spark(cfg, keep_classes=True, input_rows=input_rows(args, cfg))
    cmd, workload = args.command, getattr(args, "workload", None)
    if cmd == "generate" and workload == "images":
        from .workloads import image_synth
        return image_synth.generate(spark, args.count, args.out, args.format, args.seed,
                                    args.classes)
    if cmd == "generate":
        from .workloads import incidents
        return incidents.write_generated(spark, args.rows, args.out, args.format, args.seed,
                                         labeled=not args.unlabeled)
    schema = None
    if getattr(args, "schema", None):
        from .schema import load_schema
        schema = load_schema(args.schema)
    if cmd == "ingest":
        from . import ingest
        table = cfg.table_name(args.table or schema.name)
        if workload == "tabular":
            return ingest.ingest_tabular(spark, cfg, schema, args.source, table, args.format,
                                         args.batch_id).summary()
        if workload == "images":
            return ingest.ingest_images(spark, cfg, args.source, table, args.format,
                                        not args.unlabeled, args.batch_id).summary()
        return ingest.ingest_incidents(spark, cfg, args.source, table, args.format,
                                       args.batch_id).summary()
    if cmd == "train":
        from . import train
        if workload == "tabular":
            return train.train_tabular(spark, cfg, schema, cfg.table_name(args.table or schema.name))
        fit = train.train_images if workload == "images" else train.train_incidents
        return fit(spark, cfg, cfg.table_name(args.table))
    if cmd == "score":
        from . import scoring
        if workload == "tabular":
            return scoring.score_tabular(spark, cfg, cfg.table_name(args.table),
                                         cfg.table_name(args.output),
                                         args.model or cfg.score.model_uri, args.batch_id,
                                         args.input_batch, schema).summary()
        apply = scoring.score_images if workload == "images" else scoring.score_incidents
        return apply(spark, cfg, cfg.table_name(args.table), cfg.table_name(args.output),
                     args.model or cfg.score.model_uri, args.batch_id,
                     args.input_batch).summary()
    if cmd == "sql":
        from .analyst import print_query
        print_query(spark, args.query, args.format, args.max_rows, out)
        return None
    if cmd == "demo":
        from .demo import run_demo
        return run_demo(spark, cfg, args.rows or cfg.demo.rows, out)
    raise AssertionError(cmd)


def _server(action: str, cfg) -> dict:
    from . import server
    if action == "start":
        info = server.start(cfg)
        log.info(("started" if info["started"] else "already running") +
                 f": Spark Connect {info['connect_url']}, JDBC {info['jdbc_url']} (pid "
                 f"{info['pid']}); sparkeras commands of this state folder now use it; "
                 f"analysts: beeline -u {info['jdbc_url']}")
        return info
    if action == "status":
        info = server.status(cfg)
        log.info(f"running: Spark Connect {info['connect_url']}, JDBC {info['jdbc_url']} "
                 f"(pid {info['pid']})" if info["running"] else "not running")
        return info
    info = server.stop(cfg)
    log.info(f"stopped (pid {info['pid']})" if info["stopped"] else "was not running")
    return info


AFTER_INTERRUPT = {
    # what an interrupted command leaves behind, and what to do (docs/operations.md)
    "ingest": ": each batch of the table and its quarantine holds its earlier rows, the new "
              "ones or none, never a part; run the same command again to finish",
    "score": ": each batch of the scored table and its quarantine holds its earlier rows, the "
             "new ones or none, never a part; run the same command again to finish",
    "train": ": no model version was registered; its checkpoints are kept, so the same "
             "command resumes after the last completed epoch",
}


def _user_error_types() -> tuple:
    """Exceptions whose message is meant for the user besides sparkeras' own
    (:class:`~sparkeras.errors.SparkerasError`): missing tables, paths and bad SQL from Spark,
    unknown models from MLflow. Anything else is a bug: an internal error."""
    types: list = []
    with contextlib.suppress(ImportError):
        from pyspark.errors import AnalysisException
        types.append(AnalysisException)
    with contextlib.suppress(ImportError):
        from mlflow.exceptions import MlflowException
        types.append(MlflowException)
    return tuple(types)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _telling_line(exc: BaseException) -> str:
    """The line of an unexpected error that says most: for a failure inside a Spark task
    (a Python worker's traceback, a JVM stack), its last ``...Error: ...`` line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.endswith(("Error", "Exception")) and " " not in head:
            return line[:300]
    return f"{type(exc).__name__}: {_first_line(exc)}"


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, kind, one-line message) for an exception that ended a command, by type:
    configuration errors, sparkeras' own user-facing errors, user errors from Spark, MLflow
    and the standard library, interruption, and anything else (a bug)."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, "configuration error", str(exc)
    if isinstance(exc, KeyboardInterrupt) or interrupts.received():
        return EXIT_INTERRUPTED, "interrupted", "stopped before it finished"
    if isinstance(exc, SparkerasError):
        return exc.exit_code, "error", _first_line(exc)
    if _user_error_types() and isinstance(exc, _user_error_types()):
        return EXIT_FAILED, "error", _first_line(exc)
    return EXIT_INTERNAL, "internal error", _telling_line(exc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return its exit code (see :mod:`sparkeras.errors`)."""
    from . import logs
    args = build_parser().parse_args(argv)
    interrupts.watch()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logs.setup(level, own_root=True)
    from .session import end_embedded_jvm, spark_context_running
    caller_has_spark = spark_context_running()    # a notebook or test calling main()
    try:
        return _main(args, level)
    finally:
        if not caller_has_spark:    # a finished command has released the embedded metastore
            end_embedded_jvm()


def _main(args, level) -> int:
    from . import logs
    out = sys.stdout
    log_file = None
    try:
        cfg = config_from_args(args)
        log_file = logs.setup(level, cfg.log_dir, f"sparkeras-{args.command}", own_root=True)
        log.debug(f"sparkeras {__version__}: {' '.join(sys.argv)}")
        # Libraries print progress and notices on stdout: keep stdout for our product.
        with contextlib.redirect_stdout(sys.stderr):
            summary = run(args, cfg, out)
    except (Exception, KeyboardInterrupt) as exc:
        code, kind, message = classify(exc)
        log.debug(f"{args.command} failed", exc_info=exc)     # the full trace: the log file
        if code == EXIT_INTERNAL and log_file is None:
            logging.getLogger("sparkeras").error("the full trace", exc_info=exc)
        if log_file is not None and (code == EXIT_INTERNAL or len(str(exc).splitlines()) > 1):
            message += f" (details: {log_file})"
        if code == EXIT_INTERRUPTED:
            from .session import interrupt_connect_work
            interrupt_connect_work()
            message = f"{args.command} {message}{AFTER_INTERRUPT.get(args.command, '')}"
        log.error(message, extra={"kind": kind})
        return code
    if summary is not None:
        print(json.dumps(summary, default=str), file=out, flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
