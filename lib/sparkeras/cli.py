"""Command line: ``sparkeras [--conf FILE] [--set key=value ...] <command> ...``.

Progress and logs go to stderr; stdout carries the command's product and, last, one JSON
summary line, so ``sparkeras ... | tail -1`` is machine-readable.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Optional, Sequence

from .config import ConfigError, default_config_path, load_config


class _StrictParser(argparse.ArgumentParser):
    """Raises ArgumentError-like ValueErrors instead of printing usage and exiting."""

    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def build_parser(strict: bool = False) -> argparse.ArgumentParser:
    """The CLI's parser; ``strict`` parsers raise ValueError instead of exiting."""
    cls = _StrictParser if strict else argparse.ArgumentParser
    p = cls(prog="sparkeras", description=__doc__.splitlines()[0])
    p.add_argument("--conf", help="configuration YAML (default: $SPARKERAS_CONF, else "
                                  "conf/local.yml when present, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=3 (repeatable)")
    # --conf/--set are also accepted after the subcommand (jobs forward their arguments).
    common = cls(add_help=False)
    common.add_argument("--conf", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    def add_parser(subparsers, name, **kw):
        return subparsers.add_parser(name, parents=[common], **kw)

    gen = sub.add_parser("generate", help="write deterministic synthetic data")
    gen_sub = gen.add_subparsers(dest="workload", required=True)
    g = add_parser(gen_sub, "incidents", help="synthetic incidents (see docs/incidents.md)")
    g.add_argument("--rows", type=int, required=True)
    g.add_argument("--out", required=True, help="output folder (Spark writes part files)")
    g.add_argument("--format", choices=["csv", "parquet"], default="csv")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--unlabeled", action="store_true", help="omit ROOT_CAUSE")

    g = add_parser(gen_sub, "images", help="synthetic class-structured images (docs/images.md)")
    g.add_argument("--count", type=int, required=True)
    g.add_argument("--out", required=True, help="output folder (a path every worker can write)")
    g.add_argument("--format", choices=["idx", "cifar", "folder"], required=True)
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--seed", type=int, default=7)

    ing = sub.add_parser("ingest", help="validate raw files into a table + quarantine")
    ing_sub = ing.add_subparsers(dest="workload", required=True)
    i = add_parser(ing_sub, "incidents")
    i.add_argument("--source", required=True, help="file, folder or glob")
    i.add_argument("--table", required=True)
    i.add_argument("--format", choices=["csv", "parquet", "json"], default="csv")
    i.add_argument("--batch-id", help="default: derived from the source files")

    i = add_parser(ing_sub, "images")
    i.add_argument("--source", required=True, help="file, folder or glob")
    i.add_argument("--table", required=True)
    i.add_argument("--format", choices=["idx", "cifar", "folder"], required=True)
    i.add_argument("--batch-id", help="default: derived from the source files")
    i.add_argument("--unlabeled", action="store_true",
                   help="new images: ignore class folders and label files")

    tr = sub.add_parser("train", help="train, log to MLflow, register, gate the champion")
    tr_sub = tr.add_subparsers(dest="workload", required=True)
    for workload in ("incidents", "images"):
        t = add_parser(tr_sub, workload)
        t.add_argument("--table", required=True)
        t.add_argument("--epochs", type=int)
        t.add_argument("--batch-size", type=int)
        t.add_argument("--workers", type=int, help="0: the driver; N: N barrier tasks")

    sc = sub.add_parser("score", help="score a table with a registered model")
    sc_sub = sc.add_subparsers(dest="workload", required=True)
    for workload, model in (("incidents", "incident_model"), ("images", "image_model")):
        s = add_parser(sc_sub, workload)
        s.add_argument("--table", required=True)
        s.add_argument("--output", required=True)
        s.add_argument("--model", help=f"default: models:/<registry.{model}>@champion")
        s.add_argument("--batch-id", help="default: each row's ingest_batch_id")
        s.add_argument("--input-batch", action="append", metavar="INGEST_BATCH_ID",
                       help="score only rows of this ingest batch (repeatable; default: all rows)")

    q = add_parser(sub, "sql", help="run a SQL query on the warehouse")
    q.add_argument("query")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=int, default=1000)

    d = add_parser(sub, "demo", help="generate, ingest, train, score and query, end to end")
    d.add_argument("--rows", type=int, help="default: demo.rows from the configuration")
    return p


def check_arguments(argv: Sequence[str]):
    """Parse ``argv`` and load the configuration it names, as a run would, without running:
    (args, config). Raises ValueError (bad arguments) or ConfigError (bad configuration).
    Used to check the Databricks bundle's task parameters offline."""
    args = build_parser(strict=True).parse_args(list(argv))
    return args, load_config(args.conf if args.conf else default_config_path(), _overrides(args))


def _overrides(args) -> list[str]:
    extra = list(args.overrides)
    if getattr(args, "epochs", None) is not None:
        extra.append(f"train.epochs={args.epochs}")
    if getattr(args, "batch_size", None) is not None:
        extra.append(f"train.batch_size={args.batch_size}")
    if getattr(args, "workers", None) is not None:
        extra.append(f"train.workers={args.workers}")
    return extra


def run(args, out) -> Optional[dict]:
    """Execute parsed ``args``; return the JSON summary (None when the product is the output)."""
    cfg = load_config(args.conf if args.conf else default_config_path(), _overrides(args))
    from .session import get_spark
    spark = get_spark(cfg)
    cmd = args.command
    images = getattr(args, "workload", None) == "images"
    if cmd == "generate" and images:
        from .workloads import images as image_workload
        return image_workload.generate(spark, args.count, args.out, args.format, args.seed,
                                       args.classes)
    if cmd == "ingest" and images:
        from .ingest import ingest_images
        return ingest_images(spark, args.source, cfg.table_name(args.table), args.format,
                             getattr(cfg.images.size, args.format), cfg.tables.format,
                             args.batch_id, cfg.images.class_names, not args.unlabeled,
                             cfg.images.decode_batch_rows).summary()
    if cmd == "train" and images:
        from .train import train_images
        return train_images(spark, cfg, cfg.table_name(args.table))
    if cmd == "score" and images:
        from .scoring import score_images
        return score_images(spark, cfg, cfg.table_name(args.table), cfg.table_name(args.output),
                            args.model or cfg.score.model_uri, args.batch_id,
                            args.input_batch).summary()
    if cmd == "generate":
        from .workloads import incidents
        df = incidents.generate(spark, args.rows, args.seed, labeled=not args.unlabeled)
        writer = df.write.mode("overwrite")
        if args.format == "csv":
            writer.option("header", True).csv(args.out)
        else:
            writer.parquet(args.out)
        return {"rows": args.rows, "out": args.out, "format": args.format, "seed": args.seed,
                "labeled": not args.unlabeled}
    if cmd == "ingest":
        from .ingest import ingest_incidents
        return ingest_incidents(spark, args.source, cfg.table_name(args.table), args.format,
                                cfg.tables.format, args.batch_id).summary()
    if cmd == "train":
        from .train import train_incidents
        return train_incidents(spark, cfg, cfg.table_name(args.table))
    if cmd == "score":
        from .scoring import score_incidents
        return score_incidents(spark, cfg, cfg.table_name(args.table),
                               cfg.table_name(args.output), args.model or cfg.score.model_uri,
                               args.batch_id, args.input_batch).summary()
    if cmd == "sql":
        from .analyst import print_query
        print_query(spark, args.query, args.format, args.max_rows, out)
        return None
    if cmd == "demo":
        from .demo import run_demo
        return run_demo(spark, cfg, args.rows or cfg.demo.rows, out)
    raise AssertionError(cmd)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    try:
        # Libraries print progress bars and notices on stdout: keep stdout for our product.
        with contextlib.redirect_stdout(sys.stderr):
            summary = run(args, out)
    except ConfigError as exc:
        print(f"sparkeras: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"sparkeras: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # missing table, bad SQL, unknown model: user errors
        if type(exc).__name__ in {"AnalysisException", "ParseException", "MlflowException"}:
            print(f"sparkeras: error: {exc}", file=sys.stderr)
            return 1
        raise
    if summary is not None:
        print(json.dumps(summary, default=str), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
