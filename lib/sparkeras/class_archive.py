"""A class-data-sharing archive for the embedded Spark JVM: every command starts faster.

An embedded Spark JVM loads and verifies some 10,000 classes (Spark, Scala, Hive, Derby)
before it runs anything: about half of a small command's time (``sparkeras sql "SELECT
1"``: 9-10 s, of which ~4 s go away with the archive, measured in ``docs/performance.md``).
The JVM can save the classes it loaded, parsed and verified, at exit
(``-XX:ArchiveClassesAtExit``, Java 13+) and map them at the next start
(``-XX:SharedArchiveFile``). The archive is a cache: the JVM checks it against its own
version and class path and ignores one that does not match.

- Only commands create one (:func:`sparkeras.cli.main` ends the JVM it started and can wait
  for the dump); notebooks and tests only use an existing one.
- It is written to a temporary name and published by rename only after the JVM exited on
  its own: a JVM killed while dumping leaves no half-written archive (a truncated archive
  crashes the JVM at start, so one that does is removed and the start repeated without).
- One per Java installation and PySpark installation, in the user's cache folder
  (``spark.class_archive``: ``auto``, ``off`` or a folder), shared by every state folder:
  ~150 MB once, not per project. Each start marks its archive used; when a new one is made,
  only the :data:`KEEP` most recently used others stay (a venv made again and again, or
  one removed, leaves no trail of archives).
- Java archives classes only from jar files: a non-empty folder on the class path before
  the jars (``SPARK_CONF_DIR`` or ``$SPARK_HOME/conf``, a ``spark.driver.extraClassPath``
  folder; :func:`class_path_folders`) makes the JVM fail its dump as it exits ("Cannot have
  non-empty directory in paths"). Such a start goes without an archive instead of trying to
  write one at every command (measured with ``SPARK_CONF_DIR`` set: ``sql "SELECT 1"`` 18-20
  s before, 10-12 s after).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .processes import alive

log = logging.getLogger(__name__)

#: JVM logging of the archive (a warning per skipped class while dumping) stays off stdout,
#: which carries the command's product.
QUIET = "-Xlog:cds*=off"


@dataclass
class Plan:
    """What this JVM does with the archive: use ``path``, or dump to ``dump_to`` and publish
    it as ``path`` after a clean exit."""
    path: Path
    dump_to: Optional[Path] = None

    def java_options(self) -> str:
        if self.dump_to is not None:
            return f"-XX:ArchiveClassesAtExit={self.dump_to} {QUIET}"
        return f"-XX:SharedArchiveFile={self.path} {QUIET}"


_pending: Optional[Plan] = None     # a dump this process asked for, published at JVM exit

#: Archives kept besides a new one (the most recently used): other venvs and Spark versions.
KEEP = 3


def folder(setting) -> Optional[Path]:
    """The archive folder for ``spark.class_archive``: None when off (``false``, ``"off"``)."""
    if setting is False or setting == "off":
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sparkeras" / "jvm"


def java_home() -> Optional[Path]:
    """The Java installation PySpark will start (``$JAVA_HOME``, else ``java`` on PATH)."""
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"]).resolve()
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def java_version(home: Path) -> Optional[str]:
    """``JAVA_VERSION`` from the installation's ``release`` file (None if unknown)."""
    with contextlib.suppress(OSError):
        found = re.search(r'^JAVA_VERSION="([^"]+)"', (home / "release").read_text(), re.M)
        if found:
            return found.group(1)
    return None


def major(version: str) -> int:
    """17 for "17.0.15", 8 for "1.8.0_392"."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] or [0]
    return parts[1] if parts[0] == 1 and len(parts) > 1 else parts[0]


def archive_path(where: Path, home: Path, version: str) -> Path:
    """One archive per Java installation and PySpark installation (a new venv, another
    PySpark or another JDK gets its own; the JVM still checks its class path itself)."""
    import pyspark
    key = "\n".join([str(home), version, pyspark.__version__,
                     str(Path(pyspark.__file__).resolve().parent)])
    return where / f"spark-{pyspark.__version__}-java{major(version)}-" \
                   f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsa"


def class_path_folders(extra_class_path: str = "") -> list[Path]:
    """The non-empty folders on the driver JVM's class path that keep Java from archiving
    classes: those before the class path's last jar. Spark's launcher
    (``AbstractCommandBuilder.buildClassPath``) puts ``spark.driver.extraClassPath``
    (``extra_class_path``) first, then ``SPARK_CONF_DIR`` (else ``$SPARK_HOME/conf``),
    ``$SPARK_HOME/jars/*``, ``HADOOP_CONF_DIR``, ``YARN_CONF_DIR`` and the entries of
    ``SPARK_DIST_CLASSPATH``; HotSpot refuses a non-empty folder only where it comes before
    an entry it archived classes from (a folder after the last jar is no obstacle)."""
    home = os.environ.get("SPARK_HOME")
    if not home:
        from pyspark.find_spark_home import _find_spark_home
        home = _find_spark_home()
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(home, "conf")
    groups = [extra_class_path, conf_dir, os.path.join(home, "jars", "*"),
              os.environ.get("HADOOP_CONF_DIR", ""), os.environ.get("YARN_CONF_DIR", ""),
              os.environ.get("SPARK_DIST_CLASSPATH", "")]
    entries = [e for value in groups for e in value.split(os.pathsep) if e]
    jars = [i for i, e in enumerate(entries) if e.endswith(("*", ".jar"))]
    found = []
    for entry in entries[:jars[-1] if jars else 0]:
        if entry.endswith("*"):
            continue
        with contextlib.suppress(OSError):   # unreadable: Java skips it too
            if os.path.isdir(entry) and any(os.scandir(entry)):
                found.append(Path(entry))
    return found


def plan(setting, create: bool, extra_class_path: str = "") -> Optional[Plan]:
    """The archive options for a JVM about to start; None when there is nothing to use or
    to make (``off``, Java before 13, an unknown Java, a folder that cannot be written, a
    class path that holds a non-empty folder: :func:`class_path_folders`)."""
    global _pending
    where = folder(setting)
    home = java_home()
    version = java_version(home) if home else None
    if where is None or version is None or major(version) < 13:
        return None
    folders = class_path_folders(extra_class_path)
    if folders:
        log.debug(f"no class archive: the JVM's class path holds the folder {folders[0]} "
                  f"(Java archives classes only from jar files)")
        return None
    path = archive_path(where, home, version)
    if path.is_file():
        with contextlib.suppress(OSError):
            os.utime(path)                # used now: the last to be pruned
        return Plan(path)
    if not create:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(where)
        _prune(where)
    except OSError as exc:
        log.debug(f"no class archive: {where}: {exc}")
        return None
    _pending = Plan(path, where / f"{path.name}.{os.getpid()}.tmp")
    return _pending


def _remove_abandoned(where: Path) -> None:
    """Temporary archives of processes that are gone (killed while their JVM dumped)."""
    for tmp in where.glob("*.jsa.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not (pid.isdigit() and alive(int(pid))):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _prune(where: Path) -> None:
    """Before a new archive is made: keep the :data:`KEEP` most recently used ones. Removing
    one that a running JVM has mapped is safe (the file lives on until it is unmapped)."""
    archives = sorted(where.glob("*.jsa"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()
            log.debug(f"class archive removed (least recently used): {old}")


def dumping() -> bool:
    """Whether the JVM of this process will write an archive as it exits."""
    return _pending is not None


def publish(jvm_exited_cleanly: bool) -> None:
    """After the JVM exited: make its archive the one later starts use (atomically), or
    discard it when the JVM did not exit on its own (it may be incomplete)."""
    global _pending
    pending, _pending = _pending, None
    if pending is None or pending.dump_to is None:
        return
    tmp = pending.dump_to
    with contextlib.suppress(OSError):
        if jvm_exited_cleanly and tmp.is_file() and tmp.stat().st_size > 0 \
                and not pending.path.exists():
            os.replace(tmp, pending.path)
            log.debug(f"class archive saved: {pending.path}")
            return
        tmp.unlink()


def discard(used: Plan) -> None:
    """An archive the JVM could not start with (and could without): removed, so later
    starts do without it until a command writes a new one."""
    global _pending
    _pending = None
    log.warning(f"the JVM did not start with its class archive {used.path}: removed it, "
                f"started without")
    with contextlib.suppress(OSError):
        used.path.unlink()
