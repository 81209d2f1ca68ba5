"""One writer per table: a command that writes a table holds ``<state_dir>/locks/<table>.lock``
while it runs, so a second command writing the same table at the same time is refused at
once, with a message naming the first, instead of the two interleaving their batches.

The lock file holds the owner (pid, host, command, start time). A lock whose owner is gone
(a process on this host that no longer runs: a command killed with SIGKILL) is taken over
with a warning. Locks are a local safeguard (``tables.write_locks``); on Databricks, Delta's
optimistic concurrency refuses conflicting writes itself and the targets turn locks off.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from .errors import SparkerasError
from .processes import alive

log = logging.getLogger(__name__)


class TableBusy(SparkerasError):
    """Another command is writing the table (exit code 1)."""


def _path(state_dir: str, table: str) -> Path:
    return Path(state_dir) / "locks" / (re.sub(r"[^A-Za-z0-9_.-]", "_", table.lower()) + ".lock")


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(["sparkeras", *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _acquire(path: Path, owner: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == owner["host"] and isinstance(holder.get("pid"), int) \
                    and not alive(holder["pid"]):
                log.warning(f"taking over the lock of {holder.get('command', '?')!r} (pid "
                            f"{holder['pid']}, started {holder.get('started', '?')}): that "
                            f"process is gone; the batches it was writing are rewritten now")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if not holder:                 # being written this instant: look again
                time.sleep(0.2)
                continue
            raise TableBusy(
                f"{path.stem} is being written by `{holder.get('command', '?')}` (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}): wait for it to finish, then run this command "
                f"again (if that process is gone for good, delete {path})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return
    raise TableBusy(f"cannot take the write lock {path}")


@contextlib.contextmanager
def holding(state_dir: str, tables: Sequence[str], enabled: bool = True) -> Iterator[None]:
    """Hold the write locks of ``tables`` for the block (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    owner = _owner()
    taken = []
    try:
        for table in sorted(set(tables)):
            path = _path(state_dir, table)
            _acquire(path, owner)
            taken.append(path)
        yield
    finally:
        for path in taken:
            with contextlib.suppress(FileNotFoundError, ValueError, OSError):
                if json.loads(path.read_text()).get("pid") == owner["pid"]:
                    path.unlink()
