"""Whether a process still runs: for locks and temporary files named after their owner."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (a zombie is gone for our purpose:
    it has exited and waits only for its parent to read its status)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
