"""Configuration: typed, validated, one clear error naming the key and its source."""
import dataclasses
from pathlib import Path

import pytest

from sparkeras.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_local_yml_equals_builtin_defaults():
    assert load_config(str(ROOT / "conf" / "local.yml")) == load_config(None)


def test_defaults_are_embedded_and_resolved(tmp_path):
    cfg = load_config(None, [f"state_dir={tmp_path}"])
    assert cfg.spark.master == "local[*, 4]"     # task retries, as on a cluster
    assert cfg.tables.format == "parquet"
    assert cfg.spark.warehouse_dir == f"{tmp_path}/warehouse"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.mlflow.tracking_uri.startswith("sqlite:////")  # absolute: four slashes


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["train.hidden_units=[16, 8]", "train.learning_rate=0.01",
                             "spark.conf={spark.sql.shuffle.partitions: 4}", "train.split.seed=3"])
    assert cfg.train.hidden_units == [16, 8]
    assert cfg.train.learning_rate == 0.01
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "4"}
    assert cfg.train.split.seed == 3 and cfg.train.split.train == 0.8


@pytest.mark.parametrize("text, message", [
    ("train: {epoch: 3}\n", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("trian: {}\n", "unknown key 'trian' (did you mean 'train'?)"),
    ("train: {epochs: ten}\n", "'train.epochs' must be an integer or 'auto', got 'ten'"),
    ("train: {hidden_units: 64}\n", "'train.hidden_units' must be a list, got 64"),
    ("tables: {format: orc}\n", "'tables.format' must be one of ['delta', 'parquet'], got 'orc'"),
    ("train: {epochs: 0}\n", "'train.epochs' must be at least 1, got 0"),
    ("train: {split: {train: 0.9, validation: 0.1, test: 0.1}}\n", "must be positive and sum to 1"),
    ("- a\n- b\n", "the top level must be a mapping"),
])
def test_file_errors_name_key_and_file(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yml"):
        load_config(str(tmp_path / "nope.yml"))


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError,
                       match=r"--set train.batch_size=big: 'train.batch_size' must be an integer"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="unknown key 'spark.mastr'"):
        load_config(None, ["spark.mastr=local[1]"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.epochs"])


def test_every_section_is_typed():
    for f in dataclasses.fields(Config):
        assert f.type is not None


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_databricks_target_configs_validate(env):
    cfg = load_config(str(ROOT / "conf" / f"{env}.yml"))
    assert cfg.tables.format == "delta"
    assert cfg.mlflow.registry_uri == "databricks-uc"
    assert cfg.registry.incident_model.count(".") == 2      # catalog.schema.model
    assert cfg.state_dir.startswith("/Volumes/")


def test_catalog_and_schema_fill_every_unity_catalog_name():
    cfg = load_config(str(ROOT / "conf" / "prod.yml"), ["catalog=analytics", "schema=ops"])
    assert cfg.tables.database == "analytics.ops"
    assert cfg.table_name("incidents") == "analytics.ops.incidents"
    assert cfg.registry.incident_model == "analytics.ops.incident_root_cause"
    assert cfg.registry.image_model == "analytics.ops.image_classifier"
    assert cfg.state_dir == "/Volumes/analytics/ops/state"
    assert cfg.train.checkpoint_dir == "/Volumes/analytics/ops/state/checkpoints"


def test_a_placeholder_without_its_value_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'tables.database' uses \{schema\} but 'schema' is not set"):
        load_config(None, ["catalog=main", "tables.database='{catalog}.{schema}'"])


def test_settings_after_the_command_add_to_those_before_it(tmp_path):
    from sparkeras.cli import build_parser, config_from_args
    args = build_parser().parse_args([
        "--set", f"state_dir={tmp_path}", "--set", "train.epochs=3", "train", "incidents",
        "--table", "t", "--set", "train.epochs=5", "--set", "train.patience=2"])
    cfg = config_from_args(args)
    assert cfg.state_dir == str(tmp_path.resolve())          # kept: not replaced
    assert (cfg.train.epochs, cfg.train.patience) == (5, 2)   # the later one wins
