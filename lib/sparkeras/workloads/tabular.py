"""The tabular workload: any table described by a :class:`~sparkeras.schema.TableSchema`
(numeric, binary and categorical features; a classification or regression target), and its
part in the three stages (:func:`ingest_job`, :func:`training_job`, :func:`scoring_job`).

The incident workload is this one with a preset schema (``conf/schemas/incidents.yml``).

- **ingest** types every value from the schema and says why a record is refused:
  ``BMI must be a number, got 'abc'``, ``empty field BMI``, ``SEX: unknown category 'X'``
  (declared values only), ``unknown class 'DISK_FULL'`` (declared classes only), plus the
  reader's reasons and duplicate or already-ingested ids. The target may be absent or empty.
- **train** puts the preprocessing inside the saved model (normalisation with statistics of
  the training split, a vocabulary lookup with an out-of-vocabulary bucket per category, the
  target's scale for regression), so scoring and any MLflow consumer need nothing but it.
- **score** writes ``<id>``, ``predicted_<target>`` and, for classification, ``confidence``
  and ``probability_<class>``.

Table layout (``<table>``): the id (``int`` or ``bigint``), binary features as ``int``, numbers
as ``double``, categories as ``string``, the target (``string`` for classification, ``double``
for regression; null while unknown), ``source_file``, ``ingested_at``, ``ingest_batch_id``.
"""
from __future__ import annotations

import json
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from .. import serving
from ..schema import TableSchema

INT32_MAX = 2**31 - 1
NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$"
SCHEMA_PROPERTY = "sparkeras.schema"      # table property: the schema a table was ingested with
FEATURES_INPUT = "features"               # the model's float input: number and binary features


# ----------------------------------------------------------------------------- validation
def _quoted(c):
    from pyspark.sql import functions as F
    return F.concat(F.lit("'"), c, F.lit("'"))


def _empty(c):
    from pyspark.sql import functions as F
    return F.when(F.col(c).isNull(), F.lit(f"missing field {c}")) \
            .when(F.col(c) == "", F.lit(f"empty field {c}"))


def _as_double(col):
    """A string column as a finite double, or null (never an error under ANSI mode)."""
    from pyspark.sql import functions as F
    value = F.when(col.rlike(NUMBER), col).cast("double")
    return F.when(F.abs(value) < F.lit(float("inf")), value)


def _id_value(schema: TableSchema):
    """The typed id, or null when the text is not an integer of the id's type."""
    from pyspark.sql import functions as F
    c = F.col(schema.id)
    if schema.id_type == "int":
        as_long = F.when(c.rlike(r"^[+-]?[0-9]{1,10}$"), c.cast("long"))
        return F.when(F.coalesce(F.abs(as_long) <= INT32_MAX, F.lit(False)), c.cast("int"))
    return F.when(c.rlike(r"^[+-]?[0-9]{1,19}$"), F.expr(f"try_cast(`{schema.id}` AS BIGINT)"))


def _value_check(feature):
    """A Spark column: why ``feature``'s value is wrong (null when it is fine)."""
    from pyspark.sql import functions as F
    c = F.col(feature.name)
    if feature.kind == "binary":
        bad = F.when(~c.isin("0", "1"), F.concat(F.lit(f"{feature.name} must be 0 or 1, got "),
                                                  _quoted(c)))
    elif feature.kind == "number":
        bad = F.when(_as_double(c).isNull(), F.concat(
            F.lit(f"{feature.name} must be a number, got "), _quoted(c)))
    elif feature.values:
        bad = F.when(~c.isin(*feature.values), F.concat(
            F.lit(f"{feature.name}: unknown category "), _quoted(c)))
    else:
        bad = F.lit(None).cast("string")
    return F.coalesce(_empty(feature.name), bad)


def validate(raw, schema: TableSchema):
    """Add ``reason`` (null for a valid record) and the typed key ``_key`` to reader output
    (:mod:`sparkeras.readers`): every value checked against its declared kind.

    Reasons, joined with "; " when a record has several: missing or empty field, id not an
    integer, a value not of its kind, an unknown declared category or class. Ids that are
    not unique (within the input, or already ingested) are the ingest stage's check, made
    after this one (:attr:`~sparkeras.ingest.IngestJob.unique_in_input`)."""
    from pyspark.sql import functions as F
    key = _id_value(schema)
    checks = [F.coalesce(_empty(schema.id), F.when(key.isNull(), F.concat(
        F.lit(f"{schema.id} is not an integer: "), _quoted(F.col(schema.id)))))]
    checks += [_value_check(f) for f in schema.features]
    t = schema.target
    target = F.col(t.column)
    if t.kind == "regression":
        checks.append(F.when((target != "") & _as_double(target).isNull(), F.concat(
            F.lit(f"{t.column} must be a number, got "), _quoted(target))))
    elif t.classes:
        checks.append(F.when((target != "") & ~target.isin(*t.classes), F.concat(
            F.lit(f"unknown {t.label} "), _quoted(target))))
    field_reason = F.concat_ws("; ", *checks)
    reason = F.coalesce(F.col("_parse_error"), F.when(field_reason != "", field_reason))

    return raw.select("*", reason.alias("reason"), key.alias("_key"))


def valid_columns(schema: TableSchema) -> list:
    """The table's typed columns, from valid records of :func:`validate` output."""
    from pyspark.sql import functions as F
    cols = [F.col("_key").alias(schema.id)]
    for f in schema.features:
        c = F.col(f.name)
        cols.append(c.cast("int").alias(f.name) if f.kind == "binary" else
                    _as_double(c).alias(f.name) if f.kind == "number" else c.alias(f.name))
    t = F.col(schema.target.column)
    cols.append((_as_double(t) if schema.target.kind == "regression" else
                 F.when(t != "", t)).alias(schema.target.column))
    return [*cols, F.col("source_file")]


def table_schema(spark, table: str) -> Optional[TableSchema]:
    """The schema ``table`` was ingested with (a table property), or None."""
    from ..schema import schema_from_dict
    from ..tables import properties
    text = properties(spark, table).get(SCHEMA_PROPERTY)
    return schema_from_dict(json.loads(text), f"table {table}") if text else None


# --------------------------------------------------------------------------------- ingest
def ingest_job(cfg, schema: TableSchema, fmt: str = "csv", workload: Optional[str] = None):
    """The tabular workload's part in the ingest stage: read ``fmt`` files, type and
    validate every value from ``schema``."""
    from pyspark.sql import functions as F

    from .. import readers
    from ..ingest import IngestJob
    if fmt not in readers.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(readers.FORMATS)}")

    def read(spark, files):
        raw = readers.read(spark, files, fmt, schema.columns, schema.required, schema.id)
        return validate(raw, schema)
    return IngestJob(
        workload=workload or schema.name, key=schema.id, table_format=cfg.tables.format,
        read=read, unique_in_input=True, valid_columns=valid_columns(schema),
        quarantine_columns=[F.col("raw").alias("raw_record"), "reason", "source_file"],
        table_properties={SCHEMA_PROPERTY: json.dumps(schema.to_dict())})  # in order


# ------------------------------------------------------------------------------- training
def _vocabularies(train, schema: TableSchema) -> dict[str, list[str]]:
    """Each category's most frequent values in the training split (ties by value)."""
    from pyspark.sql import functions as F
    vocab = {}
    for f in schema.categorical:
        rows = (train.where(F.col(f.name).isNotNull()).groupBy(f.name).count()
                .orderBy(F.desc("count"), F.asc(f.name)).limit(schema.max_categories).collect())
        vocab[f.name] = [str(r[0]) for r in rows]
    return vocab


def _statistics(train, schema: TableSchema) -> dict:
    """Means and variances of the number features (and the regression target) over the
    training split: the model's normalisation, computed once by Spark."""
    from pyspark.sql import functions as F
    numbers = [f.name for f in schema.numeric if f.kind == "number"]
    exprs = []
    for c in numbers:
        exprs += [F.avg(F.col(c).cast("double")), F.var_pop(F.col(c).cast("double"))]
    regression = schema.target.kind == "regression"
    if regression:
        t = F.col(schema.target.column).cast("double")
        exprs += [F.avg(t), F.stddev_pop(t)]
    if not exprs:
        return {}
    row = train.agg(*exprs).first()
    stats = {c: (float(row[2 * i] or 0.0), float(row[2 * i + 1] or 0.0))
             for i, c in enumerate(numbers)}
    out = {"numbers": stats}
    if regression:
        mean, std = row[-2], row[-1]
        out["target"] = (float(mean or 0.0), float(std) if std else 1.0)
    return out


def training_job(spark, cfg, schema: TableSchema, table: str, model_name: Optional[str] = None,
                 workload: Optional[str] = None):
    """The tabular workload's part in the training stage: an MLP over the schema's features
    (preprocessing inside the model) on the rows of ``table`` whose target is known."""
    from pyspark.sql import functions as F

    from ..columns import index_of
    from ..train import TrainingJob
    from ..training import feed
    tcfg = cfg.train
    target = schema.target
    df = spark.table(table).where(F.col(target.column).isNotNull())
    if schema.is_classification:
        labels = list(target.classes) or sorted(
            str(r[0]) for r in df.select(F.col(target.column).cast("string")).distinct().collect())
        if len(labels) < 2:
            raise ValueError(f"table {table} has {len(labels)} class(es) of {target.column}; "
                             f"classification needs 2 or more")
        df = df.where(F.col(target.column).cast("string").isin(*labels))
        label = index_of(labels, F.col(target.column).cast("string")).cast("int")
    else:
        labels = []
        label = F.col(target.column).cast("float")
    split = feed.assign_split(df, schema.id, tcfg.split.train, tcfg.split.validation,
                              tcfg.split.seed)
    train_rows = split.where(F.col("split") == "train")
    vocab = _vocabularies(train_rows, schema)
    stats = _statistics(train_rows, schema)
    numeric = [f.name for f in schema.numeric]
    categorical = [f.name for f in schema.categorical]
    data = split.select(
        *[F.col(c).cast("float").alias(c) for c in numeric],
        *[F.coalesce(F.col(c).cast("string"), F.lit("")).alias(c) for c in categorical],
        label.alias("label"), "split", feed.BUCKET)
    hidden = list(schema.hidden_units if schema.hidden_units is not None else tcfg.hidden_units)
    number_stats = stats.get("numbers", {})
    model_spec = {
        "kind": "tabular", "numeric": numeric,
        "normalization": [list(number_stats[c]) if c in number_stats else None for c in numeric],
        "categories": vocab, "hidden_units": hidden, "task": target.kind,
        "n_classes": len(labels), "target_scale": stats.get("target"), "seed": tcfg.seed}
    return TrainingJob(
        cfg=cfg, workload=workload or schema.name, table=table,
        model_name=model_name or cfg.registry.tabular_prefix + schema.registered_model,
        labels=labels, data=data,
        decoder=feed.TabularDecoder(numeric, categorical,
                                    "int32" if schema.is_classification else "float32"),
        model_spec=model_spec, input_name=FEATURES_INPUT, task=target.kind,
        params={"hidden_units": json.dumps(hidden), "features": json.dumps(schema.feature_names)},
        metadata={"features": schema.feature_names, "task": target.kind,
                  # JSON text: MLflow writes metadata as YAML with sorted keys, and the
                  # features' order is the model's input order
                  "schema": json.dumps(schema.to_dict()), "vocabularies": vocab},
        serving=serving.tabular_config(schema, labels), shuffle_buffer=tcfg.shuffle_buffer)


# -------------------------------------------------------------------------------- scoring
def probability_columns(labels) -> list[str]:
    return [f"probability_{label}" for label in labels]


def model_schema(model) -> TableSchema:
    """The schema a registered model was trained with (models from before declared schemas:
    the incident preset)."""
    from ..schema import schema_from_dict
    if "schema" in model.metadata:
        return schema_from_dict(json.loads(model.metadata["schema"]), f"model {model.uri}")
    from . import incidents
    return incidents.SCHEMA


def _arrow_input(feature, dtype):
    """The narrowest exact type a feature crosses into Python as: 0/1 as int8, numbers as
    their column's own integer or floating type, categories as text. Columns of other types
    (text ``'1.0'``, doubles ``1.0``) are converted as :func:`input_problems` checked them,
    through a double, never by a cast that fails under ANSI mode (``'1.0'`` to tinyint)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType, IntegralType
    c = F.col(feature.name)
    if feature.kind == "binary":
        return c.cast("tinyint") if isinstance(dtype, IntegralType) else \
            F.expr(f"try_cast(`{feature.name}` AS double)").cast("tinyint")
    if feature.kind == "number":
        return c if isinstance(dtype, (IntegralType, FloatType)) else \
            _as_double(c.cast("string"))
    return c.cast("string")


def predict_udf(model, schema: TableSchema):
    """An iterator pandas UDF: struct of the feature columns -> struct of probability floats
    (classification) or one ``prediction`` double (regression)."""
    from pyspark.sql.functions import pandas_udf

    from ..scoring import FirstPrediction, keras_forward, numpy_forward
    numeric = [f.name for f in schema.numeric]
    categorical = [f.name for f in schema.categorical]
    classification = schema.is_classification
    names = probability_columns(model.labels) if classification else ["prediction"]
    # float32 crosses Arrow at half the bytes of double; Spark widens it in the JVM.
    schema_ddl = ", ".join(f"`{n}` {'float' if classification else 'double'}" for n in names)
    inputs = {FEATURES_INPUT: ((len(numeric),), "float32")} if numeric else {}
    inputs.update({c: ((1,), "string") for c in categorical})
    # all inputs are 0/1 flags (the incidents): each distinct row goes through the model once
    flags_only = bool(numeric) and not categorical and all(
        f.kind == "binary" for f in schema.numeric)

    @pandas_udf(schema_ddl)
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        forward = None
        for pdf in batches:
            if forward is None:
                timer = FirstPrediction()
                forward = (numpy_forward(model) if model.forward_plan
                           else keras_forward(model, inputs))
                if flags_only:
                    forward = _by_distinct_rows(forward)
            x = {}
            if numeric:
                x[FEATURES_INPUT] = pdf[numeric].to_numpy(dtype=np.float32)
            for c in categorical:
                x[c] = pdf[c].to_numpy(dtype=object).reshape(-1, 1)
            p = forward(x)
            timer.predicted()
            yield pd.DataFrame({n: p[:, i] for i, n in enumerate(names)}, copy=False)
    # Non-deterministic to the optimizer, so that it never copies the model pass: a filter
    # on the outputs (``_reason``) is otherwise pushed below the projection, and Spark runs
    # the model once for the filter and once more for the columns (measured: twice the time).
    return predict.asNondeterministic()


def _by_distinct_rows(forward):
    """``forward`` for inputs that are all flags: each distinct row computed once."""
    from .. import mlp_forward
    return lambda x: mlp_forward.on_distinct_flags(
        lambda rows: forward({FEATURES_INPUT: rows}), x[FEATURES_INPUT])


def input_problems(schema: TableSchema, dtypes: dict):
    """A Spark column: why a row of the table to score cannot be scored (null if it can):
    a missing id or feature, a flag that is not 0/1, a number that is not a number.
    Unknown categories are scored (the model's out-of-vocabulary bucket)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType
    checks = [F.when(F.col(schema.id).isNull(), F.lit(f"missing {schema.id}"))]
    for f in schema.features:
        c = F.col(f.name)
        check = F.when(c.isNull(), F.lit(f"missing {f.name}"))
        if f.kind == "binary":
            check = check.when(~F.coalesce(F.expr(f"try_cast(`{f.name}` AS double)")
                                           .isin(0.0, 1.0), F.lit(False)),
                               F.concat(F.lit(f"{f.name} must be 0 or 1, got "),
                                        c.cast("string")))
        elif f.kind == "number" and not isinstance(dtypes[f.name], NumericType):
            check = check.when(_as_double(c.cast("string")).isNull(), F.concat(
                F.lit(f"{f.name} must be a number, got "), _quoted(c.cast("string"))))
        checks.append(check)
    reason = F.concat_ws("; ", *checks)
    return F.when(reason != "", reason)


def predict_columns(df, model, schema: TableSchema):
    """``df`` + the prediction columns (classification: probabilities, ``predicted_label``
    and ``confidence``; regression: ``prediction``) + ``_reason`` (pure transform)."""
    from pyspark.sql import functions as F
    udf = predict_udf(model, schema)
    dtypes = {f.name: f.dataType for f in df.schema.fields}
    args = [_arrow_input(f, dtypes[f.name]).alias(f.name) for f in schema.features]
    out = df.withColumn("_p", udf(F.struct(*args)))
    if not schema.is_classification:
        p = F.col("prediction")
        return (out.withColumn("prediction", F.col("_p.prediction")).drop("_p")
                .withColumn("_reason", F.when(F.isnan(p) | p.isNull() |
                                              (F.abs(p) == F.lit(float("inf"))), F.lit(
                    "the model returned a non-finite prediction"))))
    names = probability_columns(model.labels)
    out = out.select("*", *[F.col(f"_p.`{n}`").cast("double").alias(n) for n in names]).drop("_p")
    confidence = F.greatest(*[F.col(n) for n in names])
    predicted = F.lit(None).cast("string")
    for label, n in reversed(list(zip(model.labels, names))):  # first max wins, as argmax
        predicted = F.when(F.col(n) == confidence, F.lit(label)).otherwise(predicted)
    finite = F.lit(True)
    for n in names:
        finite = finite & ~F.isnan(F.col(n)) & F.col(n).isNotNull()
    return (out.withColumn("confidence", confidence).withColumn("predicted_label", predicted)
               .withColumn("_reason", F.when(~finite, F.lit(
                   "the model returned non-finite probabilities"))))


def scoring_job(cfg, model, workload: Optional[str] = None):
    """The tabular workload's part in the scoring stage: ``<id>``, ``predicted_<target>``
    and, for classification, ``confidence`` and one probability per class."""
    from pyspark.sql import functions as F

    from ..scoring import ScoringJob, check_workload
    schema = model_schema(model)
    if workload is not None:
        check_workload(model, workload)
    prediction = schema.prediction_column
    classification = schema.is_classification
    if classification:
        outputs = [F.col(schema.id), F.col("predicted_label").alias(prediction), "confidence",
                   *probability_columns(model.labels)]
    else:
        outputs = [F.col(schema.id), F.col("prediction").alias(prediction)]

    def problems(df):
        return input_problems(schema, {f.name: f.dataType for f in df.schema.fields})
    return ScoringJob(
        workload=workload or schema.name, model=model, key=schema.id,
        required_columns=[schema.id, *schema.feature_names],
        required_hint="the model's input columns", problems=problems,
        predict=lambda df: predict_columns(df, model, schema), output_columns=outputs,
        daily_label=prediction if classification else None, daily_count=schema.count_column,
        daily_average="confidence" if classification else prediction,
        table_format=cfg.tables.format, arrow_batch_rows=cfg.score.arrow_batch_rows,
        single_pass=True)
