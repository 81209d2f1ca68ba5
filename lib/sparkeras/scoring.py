"""Score stage: apply a registered model to a table through an iterator pandas UDF.

One implementation for every workload (:func:`score`); a workload contributes a
:class:`ScoringJob` (built once by ``<workload>.scoring_job(cfg, model)``): why a row cannot
be scored, the prediction columns its UDF adds, and the columns of the scored table. The
stage itself does batch ids, quarantine, idempotent writes, the daily view and the
reconciliation ``input = scored + quarantined``.

Performance rules, measured in ``bench/score_incidents.py`` and ``bench/score_images.py``:
- the model is loaded once per Python worker (:class:`ModelCache`), never per batch;
- UDFs return scalar columns, not arrays (arrays cost ~4x);
- label names, confidence and lineage columns are computed by Spark, outside the UDF;
- Arrow batches are large (``score.arrow_batch_rows``, capped by bytes for images) so the
  per-batch overhead stays small, and the forward pass runs in bounded chunks.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from . import tables
from .config import Config
from .errors import DataError, ReconciliationError
from .tables import INGEST_BATCH, SCORE_BATCH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A registered model pinned to one version, with what scoring needs to know of it and
    the MLflow stores to load it from (so executors need nothing else)."""
    uri: str                        # a pinned URI: the same version on every worker
    name: str
    version: str
    workload: str
    labels: tuple
    tracking_uri: str
    registry_uri: str
    features: tuple = ()            # incidents: the input columns, in order
    input_shape: tuple = ()         # images: (height, width, channels)
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    threads: int = 1                # TensorFlow threads of each Python worker that runs it
    # tabular models: the numpy forward pass (mlp_forward), shipped with the task so that
    # workers import neither TensorFlow nor MLflow
    forward_plan: bytes = field(default=b"", compare=False, hash=False, repr=False)
    # other models: the saved Keras model (``model.keras``) when it is small enough to
    # travel with the task (:data:`SHIP_MAX_BYTES`); empty: workers load it from the registry
    keras_file: bytes = field(default=b"", compare=False, hash=False, repr=False)
    # image CNNs: a numpy forward pass (cnn_forward) for a worker's first images, before
    # it imports TensorFlow and loads ``keras_file`` (:class:`WarmStart`)
    numpy_start: bytes = field(default=b"", compare=False, hash=False, repr=False)
    numpy_seconds: float = 0.0      # how long a worker scores with ``numpy_start`` at most


# Larger models are loaded by each worker from the registry (storage every node shares)
# instead of travelling inside the task: Spark Connect caps a plan at 128 MiB.
SHIP_MAX_BYTES = 64 * 1024 * 1024


def resolve_model(cfg: Config, model_uri: Optional[str], default_name: str) -> ResolvedModel:
    """Pin ``models:/name@alias`` to its version on the driver, and read the model's
    workload, labels and input contract from its MLflow metadata."""
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    from .tracking import setup_mlflow
    setup_mlflow(cfg)
    uri = model_uri or f"models:/{default_name}@{cfg.registry.champion_alias}"
    name, version = uri, ""
    m = re.fullmatch(r"models:/([^/@]+)@(.+)", uri)
    if m:
        name = m.group(1)
        version = str(MlflowClient().get_model_version_by_alias(name, m.group(2)).version)
        uri = f"models:/{name}/{version}"
    else:
        m = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
        if m:
            name, version = m.group(1), m.group(2)
    info = get_model_info(uri)
    meta = info.metadata or {}
    if "labels" not in meta:
        raise DataError(f"model {uri} has no sparkeras metadata (labels): it was not "
                         f"trained by sparkeras")
    # What the workers need of the model travels with the task, downloaded once here.
    from .serving import KERAS_FILE, download
    plan = keras_file = start = b""
    if isinstance(meta.get("numpy_forward"), dict):
        plan = download(uri, meta["numpy_forward"]["file"])
    elif "tensorflow" not in info.flavors:
        keras_file = download(uri, f"artifacts/{KERAS_FILE}")
        if len(keras_file) > SHIP_MAX_BYTES:
            keras_file = b""
        if isinstance(meta.get("numpy_start"), dict):
            start = download(uri, meta["numpy_start"]["file"])
            if len(start) > SHIP_MAX_BYTES:
                start = b""
    return ResolvedModel(uri, name, version, meta.get("workload", ""), tuple(meta["labels"]),
                         cfg.mlflow.tracking_uri, cfg.mlflow.registry(),
                         tuple(meta.get("features", [])), tuple(meta.get("input_shape", [])),
                         dict(meta), cfg.score.worker_threads, plan, keras_file, start,
                         float(cfg.score.numpy_start_seconds))


def check_workload(model: ResolvedModel, workload: str) -> None:
    if model.workload and model.workload != workload:
        raise DataError(f"model {model.uri} was trained on {model.workload}, not {workload}")


class ModelCache:
    """Loaded models per Python worker process: the :attr:`SIZE` most recently used.

    Spark reuses Python workers between tasks (``spark.python.worker.reuse``), so the load
    cost (TensorFlow import, artifact download) is paid once per worker and model; a
    notebook that scores successive versions keeps at most ``SIZE`` of them in every worker
    (pyspark's own cache in ``ml/functions.py`` keeps 3)."""
    SIZE = 3
    _models: "OrderedDict[Any, Any]" = OrderedDict()
    _lock = threading.Lock()

    @classmethod
    def get(cls, key, load: Callable[[], Any]):
        """The value cached under ``key``, loaded with ``load()`` the first time."""
        with cls._lock:
            if key in cls._models:
                cls._models.move_to_end(key)
                return cls._models[key]
            value = load()
            cls._models[key] = value
            while len(cls._models) > cls.SIZE:
                cls._models.popitem(last=False)
            return value


def keras_forward(model: ResolvedModel, inputs: dict):
    """A cached forward pass of ``model`` in this process: a dict of numpy arrays named as
    the model's ``inputs`` (``{name: (shape, dtype)}``) -> a numpy array. With one input,
    a bare array may be passed."""
    return ModelCache.get(_keras_key(model, inputs), lambda: _load_forward(model, inputs))


def _keras_key(model: ResolvedModel, inputs: dict):
    return (model.uri, model.tracking_uri, model.registry_uri,
            tuple((name, tuple(shape), dtype) for name, (shape, dtype) in inputs.items()))


def numpy_forward(model: ResolvedModel):
    """The cached numpy forward pass of a tabular ``model`` that has one
    (``model.forward_plan``): a dict of numpy arrays -> a numpy array."""
    from . import mlp_forward

    def load():
        plan = mlp_forward.from_bytes(model.forward_plan)
        return lambda x: mlp_forward.forward(plan, x)
    return ModelCache.get(("numpy", model.uri, model.tracking_uri), load)


class WarmStart:
    """The forward pass an image worker uses: numpy (``model.numpy_start``, see
    :mod:`.cnn_forward`) until this process has spent ``model.numpy_seconds``
    (``score.numpy_start_seconds``) in it, then TensorFlow's, loaded at that point.

    Rent or buy: TensorFlow's import and the model's load cost a worker ~4.5 s on an idle
    core and 8-16 s when both cores are busy; numpy costs ~1.5x TensorFlow per image in the
    UDF (the classic CNN at 28x28: 50,000 images in 6.2-6.3 s against 4.1-4.4 s, one
    thread each) and nothing to start. Each second in numpy costs a third of a second
    more than TensorFlow would have, so after ~24 s the extra paid equals one import (the
    classic rent-or-buy point): a worker that scores fewer images than that (~150,000 at
    28x28, a folder of photos) never pays for the import, and one that scores millions pays
    ~8 s more than if it had started with TensorFlow. Loading TensorFlow in a background
    thread while numpy scores was measured slower than starting with TensorFlow (they share
    the worker's one core: ``docs/performance.md``).

    A model without a numpy plan, or ``numpy_seconds`` = 0, loads TensorFlow before the
    first batch. Both passes give the same probabilities within ``cnn_forward.TOLERANCE``
    (checked when the model was registered), so which one scored a row changes its numbers
    in the 7th digit at most."""
    _spent: "dict[Any, float]" = {}       # seconds in numpy per model, in this process

    def __init__(self, model: ResolvedModel, inputs: dict):
        self._key = _keras_key(model, inputs)
        self._load = lambda: _load_forward(model, inputs)
        self._budget = model.numpy_seconds if model.numpy_start else 0.0
        self.tensorflow = None
        self._numpy = None
        if self._spent.get(self._key, 0.0) >= self._budget:
            self.tensorflow = ModelCache.get(self._key, self._load)
        else:
            from . import cnn_forward

            self._numpy = ModelCache.get(
                ("numpy_start", model.uri, model.tracking_uri),
                lambda: cnn_forward.runner(cnn_forward.from_bytes(model.numpy_start)))

    @property
    def ready(self) -> bool:
        """Whether TensorFlow's pass is in use (from now on)."""
        return self.tensorflow is not None

    def forward(self, x):
        if self.tensorflow is None and self._spent.get(self._key, 0.0) >= self._budget:
            self.tensorflow = ModelCache.get(self._key, self._load)
        if self.tensorflow is not None:
            return self.tensorflow(x)
        import time
        started = time.perf_counter()
        out = self._numpy(x)
        self._spent[self._key] = self._spent.get(self._key, 0.0) + time.perf_counter() - started
        return out


class FirstPrediction:
    """Opt-in timing of a Python worker's model start: with ``$SPARKERAS_WORKER_TIMINGS``
    set to a file path, each UDF appends one JSON line per task, with the seconds from its
    first input batch to its first prediction (model loading included). Local mode and
    clusters whose executors inherit that environment variable."""

    def __init__(self):
        import os
        import time
        self.path = os.environ.get("SPARKERAS_WORKER_TIMINGS")
        self.started = time.perf_counter()
        self.done = not self.path

    def predicted(self) -> None:
        if self.done:
            return
        import json
        import os
        import time
        self.done = True
        with open(self.path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "first_prediction_s":
                                round(time.perf_counter() - self.started, 4)}) + "\n")


def _load_forward(model: ResolvedModel, inputs: dict):
    from .tf_runtime import configure_tensorflow
    # Spark runs one Python worker per task slot: more TF threads only oversubscribe.
    tf = configure_tensorflow(model.threads, model.threads)
    if model.keras_file:
        import os
        import tempfile

        import keras
        fd, path = tempfile.mkstemp(suffix=".keras", prefix="sparkeras-model-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.keras_file)
            keras_model = keras.saving.load_model(path, compile=False)
        finally:
            os.unlink(path)
    else:
        import mlflow

        from .serving import load_keras
        mlflow.set_tracking_uri(model.tracking_uri)
        mlflow.set_registry_uri(model.registry_uri)
        keras_model = load_keras(model.uri)
    signature = {name: tf.TensorSpec((None, *shape), tf.string if dtype == "string" else dtype)
                 for name, (shape, dtype) in inputs.items()}
    (only,) = inputs if len(inputs) == 1 else (None,)

    @tf.function(input_signature=[signature])
    @tf.autograph.experimental.do_not_convert
    def forward(x):
        return keras_model(x if len(x) > 1 else x[only], training=False)

    def run(x):
        return forward(x if isinstance(x, dict) else {only: x}).numpy()
    return run


# --------------------------------------------------------------------------- the stage
@dataclass
class ScoringJob:
    """What a workload brings to the shared scoring stage.

    ``problems(df)`` is a Spark column naming why a row of the input ``df`` cannot be
    scored (null if it can); ``predict(df)`` adds the prediction columns and ``_reason`` (a
    row the model could not score); ``output_columns`` are the scored table's columns before
    the lineage columns; the ``<output>_daily`` view counts ``daily_count`` per day (and per
    ``daily_label`` when there is one) and averages ``daily_average``."""
    workload: str
    model: ResolvedModel
    key: str
    required_columns: list
    problems: Callable[[Any], Any]
    predict: Callable[[Any], Any]
    output_columns: list
    daily_label: Optional[str]
    daily_count: str
    daily_average: str = "confidence"
    table_format: str = "parquet"
    arrow_batch_rows: int = 50000
    required_hint: str = ""            # said when the input lacks required columns
    # the model refuses rows only exceptionally: write in one pass, no cache (see score)
    single_pass: bool = False


@dataclass
class ScoreResult:
    input_rows: int
    scored_rows: int
    quarantined_rows: int
    table: str
    quarantine_table: str
    daily_view: str
    model_uri: str
    batch_ids: list

    def summary(self) -> dict:
        return dict(self.__dict__)


def _default_batch(table: str) -> str:
    return "s" + hashlib.sha1(table.encode()).hexdigest()[:15]


def score(spark, job: ScoringJob, table: str, output: str, batch_id: Optional[str] = None,
          input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score ``table`` into ``output`` (+ ``output_quarantine``, + ``output_daily`` view).

    Each output batch is the input row's ``ingest_batch_id`` (or ``batch_id`` when given,
    or an id derived from the input table's name); re-scoring replaces those batches.
    ``input_batches`` limits the input to rows of those ingest batches (a daily job scores
    only the day's batch).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from .session import temporary_conf

    src = spark.table(table)
    missing = [c for c in job.required_columns if c not in src.columns]
    if missing:
        raise DataError(f"table {table} lacks {job.required_hint or 'the columns'} {missing}")
    if input_batches:
        if INGEST_BATCH not in src.columns:
            raise DataError(f"table {table} has no {INGEST_BATCH} column to select batches by")
        src = src.where(F.col(INGEST_BATCH).isin(*input_batches))
    if batch_id:
        batch = F.lit(batch_id)
    elif INGEST_BATCH in src.columns:
        batch = F.coalesce(F.col(INGEST_BATCH), F.lit(_default_batch(table)))
    else:
        batch = F.lit(_default_batch(table))
    df = src.withColumn("_batch", batch).withColumn("_problem", job.problems(src))
    # One pass over the input: its batches, and per batch how many rows can be scored.
    counts = {(r[0], r[1]): r[2] for r in df.groupBy(
        "_batch", F.col("_problem").isNull()).count().collect()}
    batch_ids = sorted({b for b, _ in counts})
    input_rows = sum(counts.values())
    invalid_batches = {b for b, ok in counts if not ok}
    if len(batch_ids) == 1 and not batch_id:
        # One batch (a table ingested once, a day's batch): written as a constant, Spark's
        # partitioned write needs no sort of every row by it (4,000,000 rows: 0.5-2 s).
        df = df.withColumn("_batch", F.lit(batch_ids[0]))
    qtable = tables.quarantine_name(output)
    model = job.model
    log.info(f"scoring {table} with {model.name} version {model.version} into {output}")

    # One time for the whole run, known here: it also tells this run's rows from older ones.
    now = F.lit(datetime.datetime.now())
    lineage = [F.lit(model.name).alias("model_name"),
               F.lit(model.version).alias("model_version")]
    with temporary_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                                job.arrow_batch_rows}):
        scored = job.predict(df.where(F.col("_problem").isNull()))
        expected = {b: n for (b, ok), n in counts.items() if ok}   # rows given to the model
        if job.single_pass:
            # The model refuses rows only when it returns non-finite numbers (rare): score
            # straight into the table, and look for refused rows only if some are missing.
            scored_batches, failed_batches = set(expected), set()
        else:
            # Rows are often refused (undecodable images): one pass through the model fills
            # a cache that both writes read.
            scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
            outcome = scored.groupBy("_batch", F.col("_reason").isNull()).count().collect()
            scored_batches = {r[0] for r in outcome if r[1] and r[2]}
            failed_batches = {r[0] for r in outcome if not r[1] and r[2]}
        out = scored.where(F.col("_reason").isNull()).select(
            *job.output_columns, *lineage, now.alias("scored_at"),
            F.col("_batch").alias(SCORE_BATCH))
        tables.write_batches(spark, out, output, SCORE_BATCH, batch_ids, job.table_format,
                             written=scored_batches)
        if job.single_pass:
            written = dict(spark.table(output).where(
                F.col(SCORE_BATCH).isin(*batch_ids) & (F.col("scored_at") == now))
                .groupBy(SCORE_BATCH).count().collect())
            failed_batches = {b for b, n in expected.items() if written.get(b, 0) < n}
            # a batch whose every row was refused wrote nothing: its older rows must go
            tables.drop_batches(spark, output, SCORE_BATCH,
                                [b for b in failed_batches if not written.get(b)],
                                job.table_format)
        keep = [c for c in src.columns if c != "image"]      # never copy image bytes
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in keep]))
        failed = scored.where(F.col("_reason").isNotNull()).select(
            *df.columns[:-1], F.col("_reason").alias("_problem"))
        invalid = df.where(F.col("_problem").isNotNull())
        bad = ((invalid.unionByName(failed) if failed_batches else invalid)
               .select(F.col(job.key), raw.alias("raw_record"), F.col("_problem").alias("reason"),
                       *lineage, now.alias("quarantined_at"), F.col("_batch").alias(SCORE_BATCH)))
        tables.write_batches(spark, bad, qtable, SCORE_BATCH, batch_ids, job.table_format,
                             written=invalid_batches | failed_batches)
        if not job.single_pass:
            scored.unpersist()

    daily = f"{output}_daily"
    label = f"{job.daily_label}, " if job.daily_label else ""
    tables.create_view(spark, daily,
                       f"SELECT to_date(scored_at) AS day, {label}COUNT(*) AS {job.daily_count}, "
                       f"AVG({job.daily_average}) AS avg_{job.daily_average} FROM {output} "
                       f"GROUP BY to_date(scored_at){', ' + job.daily_label if label else ''}")
    # Reconciled against what the tables now hold, not against the counts above.
    in_batches = F.col(SCORE_BATCH).isin(*batch_ids)
    scored_rows = spark.table(output).where(in_batches).count()
    quarantined = spark.table(qtable).where(in_batches).count()
    if scored_rows + quarantined != input_rows:
        raise ReconciliationError(f"{input_rows} input rows but {scored_rows} scored and "
                                  f"{quarantined} quarantined")
    return ScoreResult(input_rows, scored_rows, quarantined, output, qtable, daily, model.uri,
                       batch_ids)


def table_and_model(spark, table: str, cfg: Config, model_uri: Optional[str],
                    default_name: str) -> ResolvedModel:
    """Look ``table`` up while :func:`resolve_model` runs in a thread; return the model.

    In a new process both wait on something else: the first table lookup on the metastore's
    start (~3 s, in the JVM), the model on MLflow's import and store (~2.5 s, in Python), so
    a command's start costs the longer of the two instead of their sum. A missing table
    still fails first (with its own error, once the model thread is done)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1, thread_name_prefix="sparkeras-model") as pool:
        model = pool.submit(resolve_model, cfg, model_uri, default_name)
        spark.table(table)
    return model.result()


def score_incidents(spark, cfg: Config, table: str, output: str,
                    model_uri: Optional[str] = None, batch_id: Optional[str] = None,
                    input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score incidents with ``model_uri`` (default: the incident model's champion)."""
    from .workloads import incidents
    model = table_and_model(spark, table, cfg, model_uri, cfg.registry.incident_model)
    return score(spark, incidents.scoring_job(cfg, model), table, output, batch_id,
                 input_batches)


def score_images(spark, cfg: Config, table: str, output: str, model_uri: Optional[str] = None,
                 batch_id: Optional[str] = None,
                 input_batches: Optional[Sequence[str]] = None) -> ScoreResult:
    """Score images with ``model_uri`` (default: the image model's champion)."""
    from .workloads import images
    model = table_and_model(spark, table, cfg, model_uri, cfg.registry.image_model)
    return score(spark, images.scoring_job(cfg, model), table, output, batch_id, input_batches)


def score_tabular(spark, cfg: Config, table: str, output: str, model_uri: Optional[str] = None,
                  batch_id: Optional[str] = None, input_batches: Optional[Sequence[str]] = None,
                  schema=None) -> ScoreResult:
    """Score a table with a model trained on a declared schema (default: the champion of the
    schema ``table`` was ingested with, or of ``schema``)."""
    from .errors import UsageError
    from .workloads import tabular
    if model_uri is None:
        if schema is None:              # the table names its schema: looked up first
            spark.table(table)
            schema = tabular.table_schema(spark, table)
        if schema is None:
            raise UsageError(f"table {table} was not ingested by sparkeras with a schema: name the "
                             f"model (--model models:/NAME@champion) or the schema (--schema)")
        model_uri = (f"models:/{cfg.registry.tabular_prefix}{schema.registered_model}"
                     f"@{cfg.registry.champion_alias}")
    model = table_and_model(spark, table, cfg, model_uri, "")
    return score(spark, tabular.scoring_job(cfg, model), table, output, batch_id, input_batches)
