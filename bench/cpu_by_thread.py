"""Where a whole command's CPU goes: per process kind and per JVM thread kind.

Run by hand, beside ``bench/stages.py`` (whose state folder it reuses):

    python bench/cpu_by_thread.py --state DIR

Runs the 4,000,000-row score and the 1,000,000-row ingest of a prepared ``bench/stages.py``
state, each beside its floor job, one after the other, and samples ``/proc`` every 0.1 s:
the CPU (user + system) of every process of the command's tree, and of every thread of its
JVM (by thread name: Spark's task threads, the JIT's compiler threads, GC, ...). A process's
or thread's last sample is taken for its total, so up to 0.1 s of a process that ends is
missed. Linux only. Results: ``bench/results/cpu-by-thread-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import write_results

HZ = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def _stat(path: str) -> tuple[str, list[str]]:
    text = open(path).read()
    return text[text.find("(") + 1:text.rfind(")")], text[text.rfind(")") + 2:].split()


def _kind(cmdline: str) -> str:
    if "java" in cmdline.split(" ")[0] or " org.apache.spark" in cmdline:
        return "jvm"
    if "pyspark.daemon" in cmdline or "pyspark/daemon" in cmdline:
        return "python workers"
    if "python" in cmdline:
        return "driver python"
    return "other"


def _thread_kind(name: str) -> str:
    if name.startswith("Executor task"):
        return "task threads"
    if name.startswith(("C1 Compiler", "C2 Compiler", "C1 CompilerThre", "C2 CompilerThre")):
        return "JIT compilers"
    if name.startswith(("GC Thread", "G1 ")):
        return "GC"
    return re.sub(r"[-#]?\d+$", "", name) or "?"


def sample(argv: list[str]) -> dict:
    """Run ``argv``; its wall seconds and CPU seconds per process kind and JVM thread kind."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu: dict[int, tuple[float, str]] = {}            # pid -> (cpu, latest non-empty cmdline)
    threads: dict[tuple[int, int], tuple[float, str]] = {}  # (pid, tid) -> (cpu, latest name)
    while proc.poll() is None:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parents[int(entry)] = int(_stat(f"/proc/{entry}/stat")[1][1])
                except (OSError, ValueError, IndexError):
                    pass
        tree, grew = {proc.pid}, True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree:
            try:
                _, fields = _stat(f"/proc/{pid}/stat")
                cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
            except OSError:
                continue
            cmd = cmd or cpu.get(pid, (0, ""))[1]
            cpu[pid] = ((int(fields[11]) + int(fields[12])) / HZ, cmd)
            if _kind(cmd) == "jvm":
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    try:
                        name, tf = _stat(f"/proc/{pid}/task/{tid}/stat")
                    except OSError:
                        continue
                    threads[(pid, int(tid))] = ((int(tf[11]) + int(tf[12])) / HZ, name)
        time.sleep(0.1)
    by_kind: dict[str, float] = collections.defaultdict(float)
    for seconds, cmd in cpu.values():
        by_kind[_kind(cmd)] += seconds
    by_thread: dict[str, float] = collections.defaultdict(float)
    for seconds, name in threads.values():
        by_thread[_thread_kind(name)] += seconds
    return {"wall_s": round(time.perf_counter() - started, 2), "rc": proc.returncode,
            "cpu_s": {k: round(v, 1) for k, v in sorted(by_kind.items())},
            "jvm_threads_cpu_s": {k: round(v, 1) for k, v in
                                  sorted(by_thread.items(), key=lambda kv: -kv[1]) if v >= 0.2}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True, help="a state folder prepared by bench/stages.py")
    args = ap.parse_args()
    py, state = sys.executable, args.state
    cli = [py, "-m", "sparkeras.cli", "--set", f"state_dir={state}"]
    floor = [py, str(ROOT / "bench" / "floors.py"), "--state", state]
    runs = {
        "score_incidents": (cli + ["score", "incidents", "--table", "big", "--output", "scores"],
                            floor + ["score-incidents", "--table", "big", "--output",
                                     "floor_scores"]),
        "ingest_incidents": (cli + ["ingest", "incidents", "--source", f"{state}/export",
                                    "--table", "ingested"],
                             floor + ["ingest-incidents", "--source", f"{state}/export",
                                      "--table", "floor_ingested"]),
    }
    out: dict = {"sample_every_s": 0.1, "cpus": os.cpu_count()}
    for stage, (ours, theirs) in runs.items():
        out[stage] = {"sparkeras": sample(ours), "floor": sample(theirs)}
        for side in ("sparkeras", "floor"):
            r = out[stage][side]
            print(f"[cpu] {stage} {side}: {r['wall_s']} s, rc {r['rc']}, {r['cpu_s']}, "
                  f"JVM threads {r['jvm_threads_cpu_s']}", flush=True)
    write_results("cpu-by-thread", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
