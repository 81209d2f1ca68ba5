"""Helpers for the Databricks notebooks in ``notebooks/`` (which hold no logic themselves).

A notebook starts with ``nb = start(globals())``: on Databricks that finds ``dbutils`` (for
widgets) and ``display``; anywhere else widgets take their defaults and ``display`` prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


def widget(name: str, default: str, dbutils: Optional[Any] = None) -> str:
    """The value of the text widget ``name`` (created with ``default``), or ``default`` where
    there is no ``dbutils`` (a local run)."""
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default)
    return dbutils.widgets.get(name)


def show(obj: Any, rows: int = 20) -> None:
    """Print a Spark or pandas DataFrame (or anything else): ``display`` outside Databricks."""
    if hasattr(obj, "toPandas") and hasattr(obj, "limit"):
        obj = obj.limit(rows).toPandas()
    if hasattr(obj, "to_string"):
        print(obj.head(rows).to_string())
    else:
        print(obj)


def find_config(path: str, start: Optional[Path] = None) -> str:
    """``path`` as given when it exists; a relative path is also looked for in the parent
    folders (a notebook on Databricks runs in ``notebooks/``, the configs are in ``conf/``)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return path
    here = (start or Path.cwd()).resolve()
    for folder in here.parents:
        if (folder / p).is_file():
            return str(folder / p)
    return path        # load_config names the missing file


@dataclass
class Notebook:
    cfg: Any
    spark: Any
    widget: Callable[[str, str], str]
    display: Callable[[Any], None]


def start(namespace: dict) -> Notebook:
    """The config (from the ``conf`` widget, default ``conf/local.yml``), the SparkSession,
    a widget getter and ``display`` for the notebook whose ``globals()`` is ``namespace``."""
    from . import logs
    from .config import load_config
    from .session import get_spark

    logs.setup()              # progress lines in the cell's output
    dbutils = namespace.get("dbutils")

    def get(name: str, default: str) -> str:
        return widget(name, default, dbutils)
    cfg = load_config(find_config(get("conf", "conf/local.yml")))
    shown = namespace.get("display")
    return Notebook(cfg, get_spark(cfg), get, shown if callable(shown) else show)

