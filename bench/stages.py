"""Benchmark: the stages as users run them, each a whole command in a new process, beside
its floor job (``bench/floors.py``), on the embedded defaults.

Run by hand (``make bench-stages`` or ``python bench/stages.py``). One state folder is
prepared through the CLI (a trained incident model, an ``--score-rows`` table to score and
an ``--ingest-rows`` CSV export to ingest), then, alternating sparkeras and floor, each
command runs ``--repeats`` times (median reported):

- ``sparkeras score incidents`` on the table  vs  read, pass-through pandas UDF, saveAsTable;
- ``sparkeras ingest incidents`` of the CSV   vs  Spark's CSV reader (fixed schema) to a table;
- ``sparkeras score images`` on an ``--images`` table of generated 28x28 IDX images (the
  classic CNN)  vs  read, pass-through pandas UDF on the image bytes, saveAsTable;
- ``sparkeras ingest images`` of those IDX files  vs  ``binaryFile``, gunzip and cut into one
  row per image with numpy, saveAsTable (Spark has no IDX reader; no labels, no checks).

For each run: wall seconds of the whole process and the peak resident memory of its process
group (the CLI, its JVM and Python workers, sampled every 0.2 s). One extra run of each
sparkeras command writes Spark's event log; the results hold its breakdown: seconds from
process start to the first job, each job's span, and what follows the last job; for
scoring, each task's seconds from its first input batch to its first prediction (model
start included: ``$SPARKERAS_WORKER_TIMINGS``, see ``scoring.FirstPrediction``).

``--baseline REV`` also runs each sparkeras command as it was at git revision ``REV`` (a
worktree of this repository put first on ``PYTHONPATH``), alternating with the current code
and the floor, and traces it too: a change measured before and after in one sitting.
``--variant 'NAME=ARGS'`` (repeatable) also runs each sparkeras command with ``ARGS`` (shell
words: ``KEY=VALUE`` words in capitals set the environment, the rest go before the
subcommand, e.g. ``--set spark.jit=full``), alternating too: settings compared side by side.
Results:
``bench/results/stages-<UTC time>.json``, summarised in docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, log, write_results

PY = sys.executable


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every live process of group ``pgid``, in MiB (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def run(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group; wall seconds, CPU seconds (user + system of the
    processes it waited for: the CLI, its JVM, Python workers), peak group RSS, last stdout
    line."""
    import resource
    peak = [0.0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            cwd=tempfile.gettempdir())
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], group_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    return {"seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak[0]),
            "summary": json.loads(last)}


def baseline_worktree(rev: str) -> tuple[Path, str]:
    """A git worktree of this repository at ``rev`` (removed by :func:`drop_worktree`) and
    the commit it resolved to."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                            capture_output=True, text=True).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix="sparkeras-baseline-")) / commit
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), commit],
                   check=True)
    return path, commit


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                   check=False)
    shutil.rmtree(path.parent, ignore_errors=True)


def sparkeras(state: str, *args: str, conf: str = "") -> list[str]:
    sets = ["--set", f"state_dir={state}"]
    if conf:
        sets += ["--set", f"spark.conf={conf}"]
    return [PY, "-m", "sparkeras.cli", *sets, *args]


def floor(state: str, *args: str) -> list[str]:
    return [PY, str(ROOT / "bench" / "floors.py"), "--state", state, *args]


def breakdown(event_dir: Path, started_at: float) -> dict:
    """From one run's Spark event log: seconds from the process start to the application
    start and to the first job, each job's span, the time after the last job."""
    (path,) = [p for p in event_dir.iterdir() if p.is_file()]
    app_start = app_end = None
    jobs: dict = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind = event.get("Event")
        if kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            app_end = event["Timestamp"] / 1000
        elif kind == "SparkListenerJobStart":
            props = event.get("Properties") or {}
            desc = props.get("spark.job.description") or props.get("callSite.short") or ""
            jobs[event["Job ID"]] = {"start": event["Submission Time"] / 1000,
                                     "what": desc[:80]}
        elif kind == "SparkListenerJobEnd":
            jobs[event["Job ID"]]["end"] = event["Completion Time"] / 1000
    spans = sorted(jobs.values(), key=lambda j: j["start"])
    first = spans[0]["start"] if spans else None
    last = max((j.get("end", j["start"]) for j in spans), default=None)
    return {"to_session_start_s": round(app_start - started_at, 2) if app_start else None,
            "session_to_first_job_s": round(first - app_start, 2) if first and app_start else None,
            "jobs": [{"what": j["what"], "at_s": round(j["start"] - started_at, 2),
                      "seconds": round(j.get("end", j["start"]) - j["start"], 2)} for j in spans],
            "jobs_total_s": round(sum(j.get("end", j["start"]) - j["start"] for j in spans), 2),
            "after_last_job_s": round(app_end - last, 2) if app_end and last else None}


def traced(cmd_args: list[str], state: str, env: dict | None = None) -> dict:
    """One more run of a sparkeras command with Spark's event log on: its breakdown."""
    events = Path(tempfile.mkdtemp(prefix="sparkeras-events-"))
    # one plain file (Spark 4 rolls and compresses event logs by default)
    conf = (f"{{spark.eventLog.enabled: 'true', spark.eventLog.dir: 'file://{events}', "
            f"spark.eventLog.rolling.enabled: 'false', spark.eventLog.compress: 'false'}}")
    timings = events.with_suffix(".timings")
    started = time.time()
    result = run(sparkeras(state, *cmd_args, conf=conf),
                 env={**(env or {}), "SPARKERAS_WORKER_TIMINGS": str(timings)})
    out = {"seconds": result["seconds"], **breakdown(events, started)}
    if timings.exists():      # scoring: each task's first batch to its first prediction
        out["first_prediction_s"] = [json.loads(line)["first_prediction_s"]
                                     for line in timings.read_text().splitlines()]
        timings.unlink()
    shutil.rmtree(events, ignore_errors=True)
    return out


def prepare(state: str, args) -> None:
    """A trained incident model, the table to score and the CSV export to ingest."""
    Path(state).mkdir(parents=True, exist_ok=True)
    if Path(state, "export").exists():
        log(f"reusing the prepared incidents of {state}")
        return
    log(f"preparing {state}: a model, a {args.score_rows:,}-row table, a "
        f"{args.ingest_rows:,}-row CSV export")
    run(sparkeras(state, "generate", "incidents", "--rows", "50000", "--out", f"{state}/small"))
    run(sparkeras(state, "ingest", "incidents", "--source", f"{state}/small", "--table", "small"))
    run(sparkeras(state, "train", "incidents", "--table", "small", "--epochs", "2"))
    run(sparkeras(state, "generate", "incidents", "--rows", str(args.score_rows), "--out",
                  f"{state}/big", "--format", "parquet", "--unlabeled"))
    run(sparkeras(state, "ingest", "incidents", "--source", f"{state}/big", "--table", "big",
                  "--format", "parquet"))
    run(sparkeras(state, "generate", "incidents", "--rows", str(args.ingest_rows), "--out",
                  f"{state}/export"))


def prepare_images(state: str, args) -> None:
    """A classic CNN trained on 6,000 generated 28x28 images, and ``--images`` more of them
    as IDX files and as a table to score."""
    if Path(state, "images").exists():
        log(f"reusing the prepared images of {state}")
        return
    log(f"preparing {state}: an image model, {args.images:,} IDX images and their table")
    run(sparkeras(state, "generate", "images", "--count", "6000", "--out",
                  f"{state}/images_small", "--format", "idx", "--seed", "3"))
    run(sparkeras(state, "ingest", "images", "--source", f"{state}/images_small", "--table",
                  "images_small", "--format", "idx"))
    run(sparkeras(state, "train", "images", "--table", "images_small", "--epochs", "1"))
    run(sparkeras(state, "generate", "images", "--count", str(args.images), "--out",
                  f"{state}/images", "--format", "idx"))
    run(sparkeras(state, "ingest", "images", "--source", f"{state}/images", "--table",
                  "images_big", "--format", "idx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score-rows", type=int, default=4_000_000)
    ap.add_argument("--ingest-rows", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages",
                    default="score_incidents,ingest_incidents,score_images,ingest_images")
    ap.add_argument("--no-trace", action="store_true",
                    help="skip the extra run with Spark's event log (its breakdown)")
    ap.add_argument("--state", help="a state folder prepared by an earlier run (kept); "
                    "by default a new one, removed at the end")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run each sparkeras command as of git revision REV, alternating")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="also run each sparkeras command with these CLI options / "
                         "ENV=VALUE words, alternating (repeatable)")
    args = ap.parse_args()
    args.variants = variants(args.variant)      # a bad --variant stops before any preparation
    baseline = baseline_worktree(args.baseline) if args.baseline else None
    try:
        measure(args, baseline)
    finally:
        if baseline:
            drop_worktree(baseline[0])


def variants(specs: list[str]) -> list[tuple[str, list[str], dict]]:
    """``NAME=ARGS`` -> (name, CLI words, environment): words like ``JAVA_TOOL_OPTIONS=...``
    (a capitalised name, then ``=``) go to the environment, the others to the command line."""
    import re
    import shlex
    out = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not name or not rest or name in ("sparkeras", "baseline", "floor"):
            raise SystemExit(f"--variant {spec!r}: expected NAME=ARGS with a new NAME")
        words, env = [], {}
        for word in shlex.split(rest):
            if re.match(r"^[A-Z_][A-Z0-9_]*=", word):
                key, _, value = word.partition("=")
                env[key] = value
            else:
                words.append(word)
        out.append((name, words, env))
    return out


def measure(args, baseline) -> None:
    state = args.state or tempfile.mkdtemp(prefix="sparkeras-stages-")
    names = args.stages.split(",")
    if any(n.endswith("_incidents") for n in names):
        prepare(state, args)
    if any(n.endswith("_images") for n in names):
        prepare_images(state, args)
    stages = {
        "score_incidents": (["score", "incidents", "--table", "big", "--output", "scores"],
                            ["score-incidents", "--table", "big", "--output", "floor_scores"]),
        "ingest_incidents": (["ingest", "incidents", "--source", f"{state}/export", "--table",
                              "ingested"],
                             ["ingest-incidents", "--source", f"{state}/export", "--table",
                              "floor_ingested"]),
        "score_images": (["score", "images", "--table", "images_big", "--output",
                          "image_scores"],
                         ["score-images", "--table", "images_big", "--output",
                          "floor_image_scores"]),
        "ingest_images": (["ingest", "images", "--source", f"{state}/images", "--table",
                           "images_ingested", "--format", "idx"],
                          ["ingest-images", "--source", f"{state}/images", "--table",
                           "floor_images_ingested"]),
    }
    # the baseline's library first on the path of its commands (and their Python workers)
    baseline_env = {"PYTHONPATH": str(baseline[0] / "lib")} if baseline else None
    results: dict = {}
    for name in names:
        ours, theirs = stages[name]
        methods = [("sparkeras", sparkeras(state, *ours), None)]
        if baseline:
            methods.insert(0, ("baseline", sparkeras(state, *ours), baseline_env))
        for vname, words, env in args.variants:
            methods.append((vname, sparkeras(state, *words, *ours), env or None))
        methods.append(("floor", floor(state, *theirs), None))
        runs: dict = {m: [] for m, _, _ in methods}
        for i in range(args.repeats):
            for method, cmd, env in methods:
                r = run(cmd, env)
                runs[method].append(r)
                log(f"{name} {method} run {i + 1}: {r['seconds']:.1f} s, CPU {r['cpu_s']} s, "
                    f"peak {r['peak_rss_mb']} MiB")
        median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
        ratios = {m: round(median["floor"] / median[m], 3) for m in median if m != "floor"}
        results[name] = {
            "median_seconds": median,
            "ratio_floor_over": ratios,
            "ratio_floor_over_sparkeras": ratios["sparkeras"],   # the key of earlier results
            "peak_rss_mb": {m: max(r["peak_rss_mb"] for r in rs) for m, rs in runs.items()},
            "runs": runs,
            "breakdown": None if args.no_trace else traced(ours, state),
        }
        if baseline:
            results[name]["ratio_floor_over_baseline"] = round(
                median["floor"] / median["baseline"], 3)
            results[name]["baseline_breakdown"] = None if args.no_trace else traced(
                ours, state, baseline_env)
        log(f"{name}: sparkeras {median['sparkeras']:.1f} s, floor {median['floor']:.1f} s, "
            f"ratio {results[name]['ratio_floor_over_sparkeras']:.2f}x"
            + (f" (baseline {median['baseline']:.1f} s, "
               f"{results[name]['ratio_floor_over_baseline']:.2f}x)" if baseline else ""))
    write_results("stages", {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                             "score_rows": args.score_rows, "ingest_rows": args.ingest_rows,
                             "images": args.images,
                             "baseline": baseline[1] if baseline else None,
                             "variants": args.variant,
                             "repeats": args.repeats, "stages": results})
    if not args.state:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
