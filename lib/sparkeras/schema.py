"""Declared table schemas: the tabular workload's data, read from a YAML file.

A schema names the id column, the feature columns with their kinds and the target::

    name: diabetes              # default registered model name, experiment name, table name
    id: ID                      # unique integer id column (or {column: ID, type: int})
    features:                   # model inputs, in this order
      AGE: number               # number | binary (0/1) | category (strings or integers)
      SEX: category             # or {type: category, values: [1, 2]} to validate values
      BMI: number
    target:
      column: PROGRESSION
      kind: regression          # classification | regression
      # classes: [a, b, c]      # classification only; when omitted, learned from training
      # label: root cause       # how reasons name a target value (default: class)

Optional keys: ``model`` (the registered model name, default ``name``), ``hidden_units``
(the network's hidden layers, default ``train.hidden_units``; ``[]`` is a linear model),
``max_categories`` (the most frequent values of a category kept in its vocabulary, default
100; others share the out-of-vocabulary bucket) and ``count_column`` (the daily view's count
column, default ``rows``).

Loading checks every key and value and raises one :class:`SchemaError` that names the file
and the key, as configuration errors do.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import ConfigError

FEATURE_KINDS = ("number", "binary", "category")
TASKS = ("classification", "regression")
ID_TYPES = ("int", "bigint")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchemaError(ConfigError):
    """A schema file problem, with the file and the key in the message."""


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str                       # number | binary | category
    values: tuple = ()              # category: the declared values (validated); () = any


@dataclass(frozen=True)
class Target:
    column: str
    kind: str                       # classification | regression
    classes: tuple = ()             # classification: declared classes, in output order
    label: str = "class"            # reasons say "unknown <label> 'X'"


@dataclass(frozen=True)
class TableSchema:
    name: str
    id: str
    features: tuple
    target: Target
    id_type: str = "bigint"
    model: str = ""
    hidden_units: Optional[tuple] = None
    max_categories: int = 100
    count_column: str = "rows"
    source: str = field(default="", compare=False)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[Feature]:
        """Number and binary features (one float input of the model), in schema order."""
        return [f for f in self.features if f.kind != "category"]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "category"]

    @property
    def columns(self) -> list[str]:
        """Every column a source file may hold, in table order."""
        return [self.id, *self.feature_names, self.target.column]

    @property
    def required(self) -> list[str]:
        """Columns a source file must hold (the target may be absent: not yet known)."""
        return [self.id, *self.feature_names]

    @property
    def prediction_column(self) -> str:
        return f"predicted_{self.target.column.lower()}"

    @property
    def is_classification(self) -> bool:
        return self.target.kind == "classification"

    @property
    def registered_model(self) -> str:
        return self.model or self.name

    def to_dict(self) -> dict:
        """The schema as the YAML file would declare it (saved with every model)."""
        features: dict[str, Any] = {}
        for f in self.features:
            features[f.name] = {"type": f.kind, "values": list(f.values)} if f.values else f.kind
        target: dict[str, Any] = {"column": self.target.column, "kind": self.target.kind}
        if self.target.classes:
            target["classes"] = list(self.target.classes)
        if self.target.label != "class":
            target["label"] = self.target.label
        out: dict[str, Any] = {"name": self.name,
                               "id": self.id if self.id_type == "bigint" else
                               {"column": self.id, "type": self.id_type},
                               "features": features, "target": target}
        if self.model:
            out["model"] = self.model
        if self.hidden_units is not None:
            out["hidden_units"] = list(self.hidden_units)
        if self.max_categories != 100:
            out["max_categories"] = self.max_categories
        if self.count_column != "rows":
            out["count_column"] = self.count_column
        return out


def _unknown(keys, allowed, where: str, source: str) -> None:
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SchemaError(f"{source}: unknown key '{where}{k}'{hint}")


def _column(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise SchemaError(f"{source}: '{key}' must be a column name (letters, digits, _), "
                          f"got {value!r}")
    return value


def _scalars(value: Any, key: str, source: str) -> tuple:
    if not isinstance(value, list) or not value or any(
            isinstance(v, (dict, list, bool)) or v is None for v in value):
        raise SchemaError(f"{source}: '{key}' must be a non-empty list of values, got {value!r}")
    values = tuple(str(v) for v in value)
    if len(set(values)) != len(values):
        raise SchemaError(f"{source}: '{key}' lists a value twice: {list(values)}")
    return values


def schema_from_dict(data: Any, source: str = "schema") -> TableSchema:
    """Build and check a :class:`TableSchema` from parsed YAML."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: the top level must be a mapping (name, id, features, "
                          f"target)")
    top = ["name", "id", "features", "target", "model", "hidden_units", "max_categories",
           "count_column"]
    _unknown(data, top, "", source)
    for key in ("name", "id", "features", "target"):
        if key not in data:
            raise SchemaError(f"{source}: missing '{key}'")
    name = _column(data["name"], "name", source)

    id_spec = data["id"]
    id_type = "bigint"
    if isinstance(id_spec, dict):
        _unknown(id_spec, ["column", "type"], "id.", source)
        id_type = id_spec.get("type", "bigint")
        if id_type not in ID_TYPES:
            raise SchemaError(f"{source}: 'id.type' must be one of {list(ID_TYPES)}, got "
                              f"{id_type!r}")
        id_spec = id_spec.get("column")
    id_col = _column(id_spec, "id", source)

    raw_features = data["features"]
    if not isinstance(raw_features, dict) or not raw_features:
        raise SchemaError(f"{source}: 'features' must map each feature column to its kind "
                          f"({' | '.join(FEATURE_KINDS)})")
    features = []
    for col, spec in raw_features.items():
        key = f"features.{col}"
        _column(col, key, source)
        values: tuple = ()
        if isinstance(spec, dict):
            _unknown(spec, ["type", "values"], f"{key}.", source)
            kind = spec.get("type")
            if "values" in spec:
                if kind != "category":
                    raise SchemaError(f"{source}: '{key}.values' is for category features only")
                values = _scalars(spec["values"], f"{key}.values", source)
        else:
            kind = spec
        if kind not in FEATURE_KINDS:
            raise SchemaError(f"{source}: '{key}' must be one of {list(FEATURE_KINDS)}, got "
                              f"{kind!r}")
        features.append(Feature(col, kind, values))

    raw_target = data["target"]
    if not isinstance(raw_target, dict):
        raise SchemaError(f"{source}: 'target' must be a mapping with 'column' and 'kind'")
    _unknown(raw_target, ["column", "kind", "classes", "label"], "target.", source)
    target_col = _column(raw_target.get("column"), "target.column", source)
    task = raw_target.get("kind")
    if task not in TASKS:
        raise SchemaError(f"{source}: 'target.kind' must be one of {list(TASKS)}, got {task!r}")
    classes: tuple = ()
    if "classes" in raw_target:
        if task != "classification":
            raise SchemaError(f"{source}: 'target.classes' is for classification only")
        classes = _scalars(raw_target["classes"], "target.classes", source)
        if len(classes) < 2:
            raise SchemaError(f"{source}: 'target.classes' needs at least 2 classes")
    label = raw_target.get("label", "class")
    if not isinstance(label, str) or not label.strip():
        raise SchemaError(f"{source}: 'target.label' must be a word or two, got {label!r}")

    names = [id_col, *[f.name for f in features], target_col]
    upper = [n.upper() for n in names]
    for n in names:
        if upper.count(n.upper()) > 1:
            raise SchemaError(f"{source}: column {n} appears twice (id, features and target "
                              f"must be different columns; names are matched without case)")

    hidden = data.get("hidden_units")
    if hidden is not None:
        if not isinstance(hidden, list) or any(
                not isinstance(u, int) or isinstance(u, bool) or u < 1 for u in hidden):
            raise SchemaError(f"{source}: 'hidden_units' must be a list of positive integers "
                              f"([] for a linear model), got {hidden!r}")
        hidden = tuple(hidden)
    max_categories = data.get("max_categories", 100)
    if not isinstance(max_categories, int) or isinstance(max_categories, bool) \
            or max_categories < 1:
        raise SchemaError(f"{source}: 'max_categories' must be a positive integer, got "
                          f"{max_categories!r}")
    model = data.get("model", "")
    if model and (not isinstance(model, str) or not re.match(r"^[A-Za-z0-9_.-]+$", model)):
        raise SchemaError(f"{source}: 'model' must be a registered model name, got {model!r}")
    count = _column(data.get("count_column", "rows"), "count_column", source)
    return TableSchema(name, id_col, tuple(features), Target(target_col, task, classes, label),
                       id_type, model, hidden, max_categories, count, source)


def load_schema(path: str) -> TableSchema:
    """Read and check the schema file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"schema file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path}: not valid YAML ({exc})") from None
    return schema_from_dict(data, str(path))
