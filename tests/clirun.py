"""Run the sparkeras command line as a user does: a new process, a private state folder."""
import json
import subprocess
import sys


def sparkeras(state, *args, check=True, timeout=600):
    """``sparkeras --set state_dir=<state> ... <args>`` in a new process (local[2]); raises
    with the end of stderr when it fails and ``check`` is set."""
    cmd = [sys.executable, "-m", "sparkeras.cli", "--set", f"state_dir={state}",
           "--set", "spark.master=local[2]", "--set",
           "spark.conf={spark.sql.shuffle.partitions: 2}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def summary(proc) -> dict:
    """The JSON summary: the last line of stdout."""
    return json.loads(proc.stdout.strip().splitlines()[-1])
