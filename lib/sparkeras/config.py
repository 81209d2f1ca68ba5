"""Typed, validated configuration.

Configuration comes from one YAML file (``conf/<env>.yml``) plus ``--set key=value``
overrides. Every section is a dataclass; loading checks every key and type and raises one
:class:`ConfigError` that names the key and where it came from (file or ``--set``).
Environment differences (local vs Databricks) live in these files, never in library code.

The string ``{state_dir}`` inside any string value is replaced by the absolute state folder,
so one setting moves the warehouse, metastore, MLflow store and caches together. Likewise
``{catalog}`` and ``{schema}`` are replaced by the top-level ``catalog``/``schema`` settings, so
a Databricks bundle passes its Unity Catalog names once (``--set catalog=...``) and every
table, model name and Volume path follows.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key and its source in the message."""


AUTO = "auto"
#: A setting that is a value or ``auto`` (chosen from the data at run time).
AutoInt = Union[int, Literal["auto"]]
AutoFloat = Union[float, Literal["auto"]]


@dataclass
class SparkConf:
    """How to obtain the SparkSession when none is active (local runs)."""
    # local[*, 4]: a task that fails (a crashed Python worker, an OOM-killed TensorFlow) is
    # retried up to 4 times, as on a cluster, instead of failing the job.
    master: str = "local[*, 4]"
    app_name: str = "sparkeras"
    # "hive" keeps tables in a persistent metastore; "in-memory" forgets them at exit.
    catalog: str = "hive"
    warehouse_dir: str = "{state_dir}/warehouse"
    metastore_dir: str = "{state_dir}/metastore_db"
    log_level: str = "ERROR"
    conf: dict[str, str] = field(default_factory=dict)
    # Spark Connect: "sc://host:port" of a running server (then master, catalog, warehouse
    # and the JVM settings are the server's). Unset: $SPARK_REMOTE, else the state folder's
    # `sparkeras server` when one runs, else an embedded session in this process.
    remote: Optional[str] = None
    # The embedded JVM's class-data-sharing archive (starts ~4 s faster): "auto" (the user's
    # cache folder, shared by every state folder), off (YAML's false), or a folder.
    class_archive: Union[str, Literal[False]] = "auto"
    # The embedded JVM's just-in-time compilers: "quick" (C1 alone, -XX:TieredStopAtLevel=1),
    # "late" (C1, then C2 only for code that stays hot: 10x HotSpot's tier-4 thresholds),
    # "full" (C1, then C2 for hot code), or "auto": late when the command's input holds at
    # least jit_late_from_rows rows (estimated before the JVM starts: sparkeras.input_size),
    # else quick. A command's JVM lives for one command, and C2's compiler threads take CPU
    # the work needs (docs/performance.md, "The command's JVM").
    # `sparkeras server` and clusters' executors keep the full JIT.
    jit: str = "auto"
    jit_late_from_rows: int = 2_000_000


@dataclass
class ServerConf:
    """``sparkeras server``: one local Spark JVM serving Spark Connect and JDBC (Thrift)
    over the state folder's warehouse and metastore, so jobs and analysts work at once."""
    host: str = "127.0.0.1"            # the address both services bind to
    connect_port: int = 15002          # Spark Connect (sc://host:port)
    jdbc_port: int = 10000             # HiveServer2 (jdbc:hive2://host:port)
    start_timeout: int = 180           # seconds for both services to accept connections


@dataclass
class TablesConf:
    format: str = "parquet"          # parquet locally, delta on Databricks
    database: str = "default"
    # one command at a time writes a table (a lock file under state_dir/locks); Delta
    # refuses conflicting writes itself, so the Databricks targets turn this off
    write_locks: bool = True


@dataclass
class MlflowConf:
    tracking_uri: str = "sqlite:///{state_dir}/mlflow.db"
    registry_uri: Optional[str] = None   # None: same as tracking_uri
    artifact_location: Optional[str] = "{state_dir}/mlartifacts"
    experiment: str = "sparkeras-{workload}"

    def registry(self) -> str:
        """The model registry's URI: ``registry_uri``, or the tracking store's when unset."""
        return self.registry_uri or self.tracking_uri


@dataclass
class RegistryConf:
    incident_model: str = "incident_root_cause"
    image_model: str = "image_classifier"
    champion_alias: str = "champion"
    tabular_prefix: str = ""           # before a schema's model name ("{catalog}.{schema}." in UC)


@dataclass
class TensorflowConf:
    intra_op_threads: int = 0          # 0: TensorFlow's default
    inter_op_threads: int = 0
    cpp_min_log_level: int = 2


@dataclass
class SplitConf:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    seed: int = 42


@dataclass
class TrainConf:
    # auto: chosen from the training rows per worker (see training/settings.py)
    epochs: AutoInt = AUTO
    batch_size: AutoInt = AUTO         # the global batch, split between the workers
    hidden_units: list[int] = field(default_factory=lambda: [128, 128])
    learning_rate: AutoFloat = AUTO
    patience: AutoInt = AUTO           # early stopping on validation loss
    strategy: str = "mirrored"         # workers 0: mirrored (local GPUs or CPU) | default
    workers: int = 0                   # 0: train on the driver; N: N Spark barrier tasks
    max_attempts: int = 3              # barrier stage attempts; each resumes from checkpoint
    # Spark Connect cannot say how many tasks the cluster runs at once: a probe barrier stage
    # waits this long for every worker's slot before failing with the same clear error
    slot_wait_seconds: int = 120
    checkpoint_dir: str = "{state_dir}/checkpoints"   # a Volume on Databricks
    precision: str = "float32"         # float32 | mixed_float16 | mixed_bfloat16
    feed: str = "arrow"                # arrow (pyarrow reads the cache) | petastorm (Spark 3.5)
    seed: int = 42
    shuffle_buffer: int = 65536
    cache_dir: str = "{state_dir}/cache"
    split: SplitConf = field(default_factory=SplitConf)


@dataclass
class ScoreConf:
    model_uri: Optional[str] = None    # None: models:/<model>@<champion_alias>
    arrow_batch_rows: int = 50000
    worker_threads: int = 1            # TensorFlow threads in each Python worker
    predict_chunk_rows: int = 128      # images per forward pass (capped at ~16 MiB of pixels)
    # image CNNs: seconds a Python worker scores with the numpy pass before it imports
    # TensorFlow (scoring.WarmStart: the rent-or-buy point); 0: TensorFlow from the start
    numpy_start_seconds: float = 24.0


@dataclass
class ImageSizes:
    """The stored (and model input) size per source format: [height, width, channels]."""
    idx: list[int] = field(default_factory=lambda: [28, 28, 1])
    cifar: list[int] = field(default_factory=lambda: [32, 32, 3])
    folder: list[int] = field(default_factory=lambda: [150, 150, 3])


@dataclass
class ImagesConf:
    size: ImageSizes = field(default_factory=ImageSizes)
    class_names: list[str] = field(default_factory=list)   # IDX labels; CIFAR without meta
    decode_batch_rows: int = 256      # Arrow rows per decode/score batch (capped at ~64 MiB)
    # auto: classic_cnn up to 32x32, folder_cnn above | classic_cnn | folder_cnn | transfer
    architecture: str = "auto"
    augment: bool = True              # flip/zoom/perspective layers: folder_cnn, transfer
    # transfer backbone: mobilenet_v2 | resnet50_v2 | efficientnet_b0 | vgg16 | resnet50
    backbone: str = "mobilenet_v2"
    backbone_weights: Optional[str] = None   # a local weights file; None: random init
    freeze_backbone: bool = True
    shuffle_memory_mb: int = 512      # caps train.shuffle_buffer for large images
    misclassified_grid: int = 25      # misclassified test images drawn into the run


@dataclass
class DemoConf:
    rows: int = 1_000_000
    epochs: int = 3
    table: str = "incidents"
    scored_table: str = "incident_scores"


@dataclass
class Config:
    state_dir: str = ".sparkeras"
    log_dir: Optional[str] = "{state_dir}/logs"   # a log file per command; null: none
    catalog: Optional[str] = None    # Unity Catalog names for {catalog}/{schema} placeholders
    schema: Optional[str] = None
    spark: SparkConf = field(default_factory=SparkConf)
    server: ServerConf = field(default_factory=ServerConf)
    tables: TablesConf = field(default_factory=TablesConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    registry: RegistryConf = field(default_factory=RegistryConf)
    tensorflow: TensorflowConf = field(default_factory=TensorflowConf)
    train: TrainConf = field(default_factory=TrainConf)
    score: ScoreConf = field(default_factory=ScoreConf)
    images: ImagesConf = field(default_factory=ImagesConf)
    demo: DemoConf = field(default_factory=DemoConf)

    def experiment_name(self, workload: str) -> str:
        return self.mlflow.experiment.replace("{workload}", workload)

    def table_name(self, name: str) -> str:
        """Qualify a bare table name with the configured database/schema."""
        return name if "." in name else f"{self.tables.database}.{name}"


# --------------------------------------------------------------------------- validation

_CHOICES = {
    "spark.catalog": {"hive", "in-memory"},
    "spark.jit": {"auto", "quick", "late", "full"},
    "tables.format": {"parquet", "delta"},
    "train.strategy": {"mirrored", "default"},
    "train.precision": {"float32", "mixed_float16", "mixed_bfloat16"},
    "train.feed": {"arrow", "petastorm"},
    "images.architecture": {"auto", "classic_cnn", "folder_cnn", "transfer"},
    "images.backbone": {"mobilenet_v2", "resnet50_v2", "efficientnet_b0", "vgg16", "resnet50"},
}
_POSITIVE = {"spark.jit_late_from_rows",
             "train.epochs", "train.batch_size", "train.patience", "train.shuffle_buffer",
             "train.max_attempts", "train.slot_wait_seconds",
             "server.connect_port", "server.jdbc_port", "server.start_timeout",
             "score.arrow_batch_rows", "score.worker_threads", "score.predict_chunk_rows",
             "demo.rows",
             "images.decode_batch_rows", "images.shuffle_memory_mb"}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:                      # Optional[X], X or a literal
        if value is None and type(None) in args:
            return None
        literals = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        # a string literal ("auto"), or a bool literal given as such (YAML's off/false)
        if any(value is v or (isinstance(value, str) and value == v) for v in literals):
            return value
        (inner,) = [a for a in args if a is not type(None) and typing.get_origin(a) is not Literal]
        try:
            return _coerce(value, inner, key, source)
        except ConfigError:
            if not literals:
                raise
            choices = " or ".join("off" if v is False else repr(v) for v in literals)
            raise ConfigError(f"{source}: '{key}' must be {_type_name(inner)} or {choices}, "
                              f"got {value!r}") from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping of settings, got {value!r}")
        return _build(tp, value, key + ".", source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        out = {}
        for k, v in value.items():
            if isinstance(v, (dict, list)) or v is None:
                raise ConfigError(f"{source}: '{key}.{k}' must be a single value, got {v!r}")
            out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str, source: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{k}'{hint}")
    obj = base if base is not None else cls()
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(tp) and isinstance(data[name], dict):
            setattr(obj, name, _build(tp, data[name], f"{prefix}{name}.", source, current))
        else:
            setattr(obj, name, _coerce(data[name], tp, prefix + name, source))
    return obj


def _check(cfg: Config, source: str) -> None:
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{source}: '{key}' must be one of {sorted(allowed)}, got {value!r}")
    for key in _POSITIVE:
        value = _get(cfg, key)
        if value != AUTO and value < 1:
            raise ConfigError(f"{source}: '{key}' must be at least 1, got {value!r}")
    if not cfg.score.numpy_start_seconds >= 0:
        raise ConfigError(f"{source}: 'score.numpy_start_seconds' must be 0 or more, got "
                          f"{cfg.score.numpy_start_seconds!r}")
    if cfg.train.learning_rate != AUTO and not cfg.train.learning_rate > 0:
        raise ConfigError(f"{source}: 'train.learning_rate' must be positive, got "
                          f"{cfg.train.learning_rate!r}")
    s = cfg.train.split
    fractions = (s.train, s.validation, s.test)
    if min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"{source}: 'train.split' fractions must be positive and sum to 1, "
                          f"got train={s.train}, validation={s.validation}, test={s.test}")
    for fmt in ("idx", "cifar", "folder"):
        size = getattr(cfg.images.size, fmt)
        if len(size) != 3 or min(size[:2]) < 1 or size[2] not in (1, 3):
            raise ConfigError(f"{source}: 'images.size.{fmt}' must be [height, width, channels] "
                              f"with positive sides and 1 or 3 channels, got {size!r}")
    if cfg.train.workers < 0:
        raise ConfigError(f"{source}: 'train.workers' must be 0 (the driver) or more, "
                          f"got {cfg.train.workers}")
    if cfg.images.misclassified_grid < 0:
        raise ConfigError(f"{source}: 'images.misclassified_grid' must be 0 or more")
    if any(u < 1 for u in cfg.train.hidden_units) or not cfg.train.hidden_units:
        raise ConfigError(f"{source}: 'train.hidden_units' must be a non-empty list of "
                          f"positive integers, got {cfg.train.hidden_units!r}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


_NAME_PLACEHOLDERS = ("catalog", "schema")


def _resolve_paths(cfg: Config, source: str) -> None:
    """Replace ``{catalog}``/``{schema}`` and then ``{state_dir}`` in every string value."""
    names = {f"{{{n}}}": getattr(cfg, n) for n in _NAME_PLACEHOLDERS}

    def fill(text: str, key: str) -> str:
        for placeholder, value in names.items():
            if placeholder in text:
                if not value:
                    raise ConfigError(f"{source}: '{key}' uses {placeholder} but "
                                      f"'{placeholder[1:-1]}' is not set")
                text = text.replace(placeholder, value)
        return text

    state = str(Path(fill(cfg.state_dir, "state_dir")).expanduser().resolve())

    def resolved(text: str, key: str) -> str:
        return fill(text, key).replace("{state_dir}", state)

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v, key = getattr(obj, f.name), prefix + f.name
            if isinstance(v, str):
                setattr(obj, f.name, resolved(v, key))
            elif isinstance(v, dict):
                setattr(obj, f.name, {k: resolved(s, f"{key}.{k}") for k, s in v.items()})
            elif dataclasses.is_dataclass(v):
                walk(v, key + ".")

    walk(cfg, "")
    cfg.state_dir = state


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load, override, validate and resolve a configuration.

    ``path`` None means the built-in defaults, which equal ``conf/local.yml``.
    """
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        cfg = _build(Config, data, "", str(path), cfg)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        cfg = _build(Config, nested, "", f"--set {text}", cfg)
    _check(cfg, str(path) if path else "defaults")
    _resolve_paths(cfg, str(path) if path else "defaults")
    return cfg


def default_config_path() -> Optional[str]:
    """``$SPARKERAS_CONF``, else ``conf/local.yml`` when run from a checkout, else None."""
    env = os.environ.get("SPARKERAS_CONF")
    if env:
        return env
    return "conf/local.yml" if Path("conf/local.yml").is_file() else None
