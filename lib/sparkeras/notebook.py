"""Helpers for the Databricks notebooks in ``notebooks/`` (which hold no logic themselves)."""
from __future__ import annotations

from typing import Any, Optional


def widget(name: str, default: str, dbutils: Optional[Any] = None) -> str:
    """The value of the text widget ``name`` (created with ``default``), or ``default`` where
    there is no ``dbutils`` (a local run). Notebooks pass ``globals().get("dbutils")``."""
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default)
    return dbutils.widgets.get(name)


def start(dbutils: Optional[Any] = None):
    """(config, SparkSession, widget getter) for a notebook: the config file comes from the
    ``conf`` widget (default ``conf/local.yml``)."""
    from .config import load_config
    from .session import get_spark

    def get(name: str, default: str) -> str:
        return widget(name, default, dbutils)
    cfg = load_config(get("conf", "conf/local.yml"))
    return cfg, get_spark(cfg), get
