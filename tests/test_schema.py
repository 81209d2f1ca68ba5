"""Declared table schemas alone (no Spark): the file format, its errors, and the incident
preset that conf/schemas/incidents.yml declares."""
import re
from pathlib import Path

import pytest
import yaml

from sparkeras.schema import SchemaError, load_schema, schema_from_dict
from sparkeras.workloads import incidents

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = """\
name: diabetes              # default registered model name, experiment name, table prefix
id: ID                      # unique integer id column
features:                   # model inputs, in this order
  AGE: number               # number | binary (0/1) | category (strings or integers)
  SEX: category
  BMI: number
target:
  column: PROGRESSION
  kind: regression          # classification | regression
"""


def test_the_issue_example_loads(tmp_path):
    path = tmp_path / "diabetes.yml"
    path.write_text(EXAMPLE)
    s = load_schema(str(path))
    assert (s.name, s.id, s.id_type, s.registered_model) == ("diabetes", "ID", "bigint", "diabetes")
    assert [(f.name, f.kind) for f in s.features] == [("AGE", "number"), ("SEX", "category"),
                                                      ("BMI", "number")]
    assert [f.name for f in s.numeric] == ["AGE", "BMI"] and [f.name for f in s.categorical] == ["SEX"]
    assert (s.target.column, s.target.kind, s.target.classes) == ("PROGRESSION", "regression", ())
    assert s.columns == ["ID", "AGE", "SEX", "BMI", "PROGRESSION"]
    assert s.required == ["ID", "AGE", "SEX", "BMI"]
    assert s.prediction_column == "predicted_progression" and not s.is_classification
    assert schema_from_dict(s.to_dict()) == s


def test_more_keys_declared_values_and_a_linear_model():
    s = schema_from_dict({
        "name": "tickets", "id": {"column": "TICKET", "type": "int"},
        "features": {"CPU_PCT": "number", "SERVICE": {"type": "category",
                                                     "values": ["api", "db", 3]}},
        "target": {"column": "CAUSE", "kind": "classification", "classes": ["a", "b"],
                   "label": "cause"},
        "model": "ticket_cause", "hidden_units": [], "max_categories": 20,
        "count_column": "tickets"})
    assert s.features[1].values == ("api", "db", "3")          # compared as text
    assert (s.hidden_units, s.max_categories, s.count_column) == ((), 20, "tickets")
    assert (s.registered_model, s.id_type, s.target.label) == ("ticket_cause", "int", "cause")
    assert schema_from_dict(s.to_dict()) == s


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(featurs={}), "unknown key 'featurs' (did you mean 'features'?)"),
    (lambda d: d["features"].update(AGE="integer"),
     "'features.AGE' must be one of ['number', 'binary', 'category'], got 'integer'"),
    (lambda d: d["target"].update(kind="ranking"), "'target.kind' must be one of"),
    (lambda d: d["target"].update(classes=["a", "b"]),
     "'target.classes' is for classification only"),
    (lambda d: d["features"].update(bmi="number"), "column BMI appears twice"),
    (lambda d: d["features"].update(PROGRESSION="number"), "column PROGRESSION appears twice"),
    (lambda d: d.pop("target"), "missing 'target'"),
    (lambda d: d["features"].update({"BAD NAME": "number"}), "must be a column name"),
    (lambda d: d.update(hidden_units=[0]), "'hidden_units' must be a list of positive integers"),
    (lambda d: d.update(id={"column": "ID", "type": "uuid"}), "'id.type' must be one of"),
    (lambda d: d["features"].update(SEX={"type": "number", "values": [1]}),
     "'features.SEX.values' is for category features only"),
])
def test_schema_errors_name_the_file_and_the_key(change, message):
    data = yaml.safe_load(EXAMPLE)
    change(data)
    with pytest.raises(SchemaError, match=re.escape(message)):
        schema_from_dict(data, "my.yml")


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(SchemaError, match="schema file not found: nope.yml"):
        load_schema("nope.yml")
    (tmp_path / "bad.yml").write_text("name: [unclosed\n")
    with pytest.raises(SchemaError, match="bad.yml: not valid YAML"):
        load_schema(str(tmp_path / "bad.yml"))


def test_the_incident_preset_file_is_the_incident_workload():
    assert load_schema(str(ROOT / "conf" / "schemas" / "incidents.yml")) == incidents.SCHEMA
    assert incidents.SCHEMA.prediction_column == "predicted_root_cause"
