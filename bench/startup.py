"""Benchmark: a user's first try, a small real file, as whole commands, in two JVM set-ups
side by side: with the JVM's class archive (``spark.class_archive``) and without it
(``--compare archive``, the default), or with the full JIT (C1 + C2) and C1 alone
(``--compare jit``: ``spark.jit`` full, quick and late, all with the archive).

Run by hand (``make bench-startup`` or ``python bench/startup.py``). A 1,000-row CSV export
(``--rows``), then, alternating the two set-ups (the archive folder is made once beforehand,
its one-time cost measured too), each of these commands ``--repeats`` times in a new process:

- ``sparkeras sql "SELECT 1"``: the fixed cost of any command;
- ``sparkeras ingest incidents`` of the export (a new table each run);
- ``sparkeras train incidents`` on it (defaults);
- ``sparkeras score incidents`` of it (a new output table each run).

Wall seconds of the whole process (median), peak process-group RSS. Results:
``bench/results/startup-<UTC time>.json``, summarised in docs/performance.md.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import log, write_results
from stages import run, sparkeras


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", choices=["archive", "jit"], default="archive",
                    help="archive: without and with the class archive; jit: spark.jit full, "
                         "quick and late, all with the archive")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sparkeras-startup-"))
    state, archive = str(work / "state"), work / "jvm"
    with_archive = ["--set", f"spark.class_archive={archive}"]
    modes = {"off": ["--set", "spark.class_archive=off"], "archive": with_archive} \
        if args.compare == "archive" else \
        {jit: [*with_archive, "--set", f"spark.jit={jit}"] for jit in ("full", "quick", "late")}
    base = next(iter(modes))        # the others are compared with the first

    def cmd(mode, *a):
        return sparkeras(state, *modes[mode], *a)

    run(cmd(base, "generate", "incidents", "--rows", str(args.rows), "--out",
            f"{state}/export"))
    made = run(sparkeras(state, *with_archive, "sql", "SELECT 1 AS x"))   # writes the archive
    size = sum(p.stat().st_size for p in archive.glob("*.jsa"))
    log(f"the archive: {size / 2**20:.0f} MiB, its first command {made['seconds']} s")
    run(cmd(base, "ingest", "incidents", "--source", f"{state}/export", "--table", "base"))
    commands = {
        "sql": lambda mode, i: ("sql", "SELECT 1 AS x"),
        "ingest": lambda mode, i: ("ingest", "incidents", "--source", f"{state}/export",
                                   "--table", f"t_{mode}_{i}"),
        "train": lambda mode, i: ("train", "incidents", "--table", "base"),
        "score": lambda mode, i: ("score", "incidents", "--table", "base", "--output",
                                  f"s_{mode}_{i}"),
    }
    runs: dict = {name: {m: [] for m in modes} for name in commands}
    for name, args_of in commands.items():
        for i in range(args.repeats):
            for mode in modes:
                r = run(cmd(mode, *args_of(mode, i)))
                runs[name][mode].append(r)
                log(f"{name} [{mode}] {r['seconds']} s, CPU {r['cpu_s']} s, "
                    f"{r['peak_rss_mb']} MiB")
    table = {}
    for name, by_mode in runs.items():
        med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in by_mode.items()}
        cpu = {m: statistics.median(r["cpu_s"] for r in rs) for m, rs in by_mode.items()}
        table[name] = {**{f"{m}_s": med[m] for m in modes},
                       **{f"{m}_cpu_s": cpu[m] for m in modes},
                       f"ratio_to_{base}": {m: round(med[m] / med[base], 2)
                                            for m in modes if m != base},
                       "peak_rss_mb": {m: max(r["peak_rss_mb"] for r in rs)
                                       for m, rs in by_mode.items()}}
        print(f"{name:7s} " + "  ".join(
            f"{m} {med[m]:6.2f} s" + ("" if m == base else f" ({med[m] / med[base]:.2f}x)")
            for m in modes))
    write_results("startup", {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "compare": args.compare, "rows": args.rows, "repeats": args.repeats,
        "archive": {"mib": round(size / 2**20), "first_command_s": made["seconds"]},
        "medians": table, "runs": runs})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
