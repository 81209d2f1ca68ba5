"""Train, register, gate the champion and score, on real Spark, TensorFlow and MLflow."""
import copy
import json

import pytest
from mlflow import MlflowClient
from plans import python_passes, sorts_before_write, write_plans
from pyspark.sql import functions as F

from sparkeras.ingest import ingest_incidents
from sparkeras.scoring import score_incidents
from sparkeras.train import train_incidents
from sparkeras.workloads import incidents

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages

MODEL = "incident_root_cause"


@pytest.fixture(scope="module")
def trained(spark, cfg, incident_table):
    return train_incidents(spark, cfg, incident_table("tr_incidents", 12000, seed=11))


def test_first_model_is_registered_and_becomes_champion(trained, cfg):
    assert trained["model_version"] == "1" and trained["became_champion"]
    m = trained["test_metrics"]
    # Clearly learned: close to the best achievable accuracy (0.856), far above chance.
    assert m["accuracy"] > incidents.bayes_accuracy() - 0.04
    assert m["rows"] == sum(map(sum, trained["test_confusion_matrix"]))
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_run_has_params_epoch_metrics_artifacts_and_model(trained, cfg):
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(trained["run_id"])
    assert run.data.params["hidden_units"] == "[32, 32]"
    assert run.data.params["rows_test"] == str(trained["rows"]["test"])
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == trained["epochs_run"]
    for key in ("test_accuracy", "test_macro_f1", "test_precision_MEMORY_LEAK",
                "test_recall_NETWORK_DELAY", "test_f1_DATABASE_ISSUE"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.json", "evaluation/confusion_matrix.png",
                         "evaluation/training_curves.png"}
    path = client.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.json")
    cm = json.loads(open(path).read())
    assert cm["labels"] == incidents.LABELS and cm["matrix"] == trained["test_confusion_matrix"]
    from mlflow.models import get_model_info
    info = get_model_info(f"models:/{MODEL}/1")
    assert info.metadata["labels"] == incidents.LABELS
    # named columns in, the scored table's prediction columns out (tests/test_serving.py)
    assert info.signature.inputs.input_names() == incidents.FEATURES
    assert info.signature.outputs.input_names() == [
        "predicted_root_cause", "confidence",
        *[f"probability_{c}" for c in incidents.LABELS]]
    assert info.saved_input_example_info is not None
    assert "python_function" in info.flavors


def test_worse_model_does_not_take_the_champion_alias(trained, spark, cfg):
    weak = copy.deepcopy(cfg)
    weak.train.epochs = 1
    weak.train.learning_rate = 1e-7
    result = train_incidents(spark, weak, "default.tr_incidents")
    assert result["model_version"] == "2"
    assert not result["became_champion"]
    assert "champion stays at version 1" in result["champion_reason"]
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert client.get_run(result["run_id"]).data.tags["became_champion"] == "false"


def test_scoring_reconciles_and_rerun_replaces(trained, spark, cfg):
    first = score_incidents(spark, cfg, "default.tr_incidents", "default.tr_scores")
    assert first.model_uri == f"models:/{MODEL}/1"
    assert (first.input_rows, first.scored_rows, first.quarantined_rows) == (12000, 12000, 0)
    again = score_incidents(spark, cfg, "default.tr_incidents", "default.tr_scores")
    assert again.scored_rows == 12000 and spark.table("tr_scores").count() == 12000
    out = spark.table("tr_scores")
    assert out.columns == ["ID", "predicted_root_cause", "confidence",
                           "probability_MEMORY_LEAK", "probability_NETWORK_DELAY",
                           "probability_DATABASE_ISSUE", "model_name", "model_version",
                           "scored_at", "batch_id"]
    bad = out.where("abs(probability_MEMORY_LEAK + probability_NETWORK_DELAY + "
                    "probability_DATABASE_ISSUE - 1) > 1e-5 or confidence < 1.0/3 - 1e-6 "
                    "or model_version != '1'").count()
    assert bad == 0
    # predicted label is the arg-max of the probabilities
    assert out.where("""predicted_root_cause != CASE
        WHEN probability_MEMORY_LEAK = confidence THEN 'MEMORY_LEAK'
        WHEN probability_NETWORK_DELAY = confidence THEN 'NETWORK_DELAY'
        ELSE 'DATABASE_ISSUE' END""").count() == 0
    daily = spark.sql("select sum(incidents) from tr_scores_daily").first()[0]
    assert daily == 12000
    # Scored by the model's registered numpy forward pass: the Keras model's own numbers.
    import numpy as np

    from sparkeras.scoring import resolve_model
    from sparkeras.serving import load_keras
    model = resolve_model(cfg, None, MODEL)
    assert model.forward_plan
    assert model.metadata["numpy_forward"]["max_abs_difference"] <= 1e-5
    probs = [f"probability_{c}" for c in incidents.LABELS]
    rows = (out.join(spark.table("tr_incidents"), "ID").orderBy("ID").limit(500)
            .select(*incidents.FEATURES, *probs).toPandas())
    keras_probs = load_keras(model.uri).predict_on_batch(
        rows[incidents.FEATURES].to_numpy(np.float32))
    np.testing.assert_allclose(rows[probs].to_numpy(), keras_probs, rtol=0, atol=1e-6)


def test_the_model_runs_once_per_row(trained, spark, cfg):
    """Scoring keeps the rows whose outputs are finite: that filter on the model's outputs
    must not make Spark run the model a second time (it did: the optimizer pushed the
    filter below the projection with a copy of the UDF, and the pass took twice as long)."""
    from sparkeras.scoring import resolve_model
    model = resolve_model(cfg, None, MODEL)
    scored = incidents.predict_columns(spark.table("tr_incidents"), model)
    kept = scored.where(F.col("_reason").isNull()).select("ID", "predicted_label")
    assert python_passes(kept) == 1
    assert kept.count() == 12000


def test_one_batch_is_written_without_sorting_the_rows_by_it(trained, spark, cfg):
    """A table's rows are written partitioned by their batch, and Spark sorts every row by a
    partition column unless it is a constant: one batch (a table ingested once, a day's
    batch) is written as one (the sort took 0.5-2 s of a 4,000,000-row command); several
    batches are sorted, as Spark requires."""
    src = spark.table("tr_incidents").limit(1000)
    for table, batch in (("tr_one_batch", F.lit("b1")),
                         ("tr_two_batches", F.when(F.col("ID") % 2 == 0, "b1").otherwise("b2"))):
        src.withColumn("ingest_batch_id", batch).write.mode("overwrite").saveAsTable(table)
    one = score_incidents(spark, cfg, "default.tr_one_batch", "default.tr_batch_scores")
    assert (one.batch_ids, one.scored_rows) == (["b1"], 1000)
    (written,) = write_plans(spark, "tr_batch_scores")
    assert not sorts_before_write(written)
    two = score_incidents(spark, cfg, "default.tr_two_batches", "default.tr_batch_scores")
    assert (two.batch_ids, two.scored_rows) == (["b1", "b2"], 1000)
    assert sorts_before_write(write_plans(spark, "tr_batch_scores")[-1])
    assert dict(spark.table("tr_batch_scores").groupBy("batch_id").count().collect()) == \
        {"b1": 500, "b2": 500}
    # re-scoring one batch into the existing table (the daily case: an insert, not a create)
    again = score_incidents(spark, cfg, "default.tr_one_batch", "default.tr_batch_scores")
    assert (again.batch_ids, again.scored_rows) == (["b1"], 1000)
    assert len(write_plans(spark, "tr_batch_scores")) == 3
    assert not sorts_before_write(write_plans(spark, "tr_batch_scores")[-1])
    assert dict(spark.table("tr_batch_scores").groupBy("batch_id").count().collect()) == \
        {"b1": 1000, "b2": 500}


def test_unscorable_rows_go_to_quarantine(trained, spark, cfg):
    cols = ", ".join(f"{c} int" for c in incidents.FEATURES)
    spark.createDataFrame(
        [(1, 1, 0, 0, 1, 0, 0, 0), (2, None, 0, 0, 1, 0, 0, 0), (3, 2, 0, 0, 1, 0, 0, 0),
         (None, 1, 0, 0, 1, 0, 0, 0), (5, 0, 1, 1, 0, 0, 0, 1)], f"ID int, {cols}"
    ).write.mode("overwrite").saveAsTable("tr_new")
    result = score_incidents(spark, cfg, "default.tr_new", "default.tr_new_scores",
                             model_uri=f"models:/{MODEL}/2", batch_id="2026-11-21")
    assert (result.input_rows, result.scored_rows, result.quarantined_rows) == (5, 2, 3)
    assert {r.ID for r in spark.table("tr_new_scores").collect()} == {1, 5}
    assert {r.model_version for r in spark.table("tr_new_scores").collect()} == {"2"}
    reasons = {r.ID: r.reason for r in spark.table("tr_new_scores_quarantine").collect()}
    assert reasons == {2: "missing CPU_LOAD", 3: "CPU_LOAD must be 0 or 1, got 2", None: "missing ID"}


def test_a_batch_whose_rows_became_invalid_loses_its_scores_to_the_quarantine(trained, spark,
                                                                              cfg):
    """Re-scoring a table where one batch's rows can no longer be scored: that batch's
    earlier scores go, its rows are quarantined with their reason, the other batch is
    scored again, and the counts stay exact."""
    cols = ", ".join(f"{c} int" for c in incidents.FEATURES)

    def table(cpu_of_b):
        spark.createDataFrame(
            [(1, 1, 0, 0, 1, 0, 0, 0, "a"), (2, 0, 1, 1, 0, 0, 0, 1, "a"),
             (3, cpu_of_b, 0, 0, 1, 0, 0, 0, "b"), (4, cpu_of_b, 1, 0, 0, 0, 1, 0, "b")],
            f"ID int, {cols}, ingest_batch_id string",
        ).write.mode("overwrite").saveAsTable("tr_invalid")

    table(1)
    first = score_incidents(spark, cfg, "default.tr_invalid", "default.tr_invalid_scores")
    assert (first.input_rows, first.scored_rows, first.quarantined_rows) == (4, 4, 0)
    table(2)                                  # batch b's rows are no longer 0/1 signals
    again = score_incidents(spark, cfg, "default.tr_invalid", "default.tr_invalid_scores")
    assert (again.input_rows, again.scored_rows, again.quarantined_rows) == (4, 2, 2)
    assert again.batch_ids == ["a", "b"]
    scored = spark.table("tr_invalid_scores").select("ID", "batch_id")
    assert sorted(tuple(r) for r in scored.collect()) == [(1, "a"), (2, "a")]
    reasons = {(r.ID, r.batch_id): r.reason
               for r in spark.table("tr_invalid_scores_quarantine").collect()}
    assert reasons == {(3, "b"): "CPU_LOAD must be 0 or 1, got 2",
                       (4, "b"): "CPU_LOAD must be 0 or 1, got 2"}


@pytest.mark.parametrize("sql_type,values,bad", [
    # text: exact spellings of 0/1 score as 0/1, anything else is quarantined with its value
    ("string", ["1", "1.0", " 0 ", "x", None, "0.5"],
     {4: "CPU_LOAD must be 0 or 1, got x", 5: "missing CPU_LOAD",
      6: "CPU_LOAD must be 0 or 1, got 0.5"}),
    ("double", [1.0, 1.0, 0.0, 2.5, None, float("nan")],
     {4: "CPU_LOAD must be 0 or 1, got 2.5", 5: "missing CPU_LOAD",
      6: "CPU_LOAD must be 0 or 1, got NaN"}),
])
def test_scoring_input_of_another_type_is_exact_or_quarantined(trained, spark, cfg, sql_type,
                                                                values, bad):
    """A feature column of the wrong type never crashes the job (Spark 4's ANSI casts fail
    on '1.0' -> tinyint) and is never cast silently: each row scores as the 0/1 it spells,
    or is quarantined with its value."""
    others = ", ".join(f"{c} int" for c in incidents.FEATURES[1:])
    rows = [(i + 1, v, 0, 0, 1, 0, 0, 0) for i, v in enumerate(values)]
    spark.createDataFrame(rows, f"ID int, CPU_LOAD {sql_type}, {others}") \
        .write.mode("overwrite").saveAsTable("tr_types")
    result = score_incidents(spark, cfg, "default.tr_types", "default.tr_types_scores",
                             model_uri=f"models:/{MODEL}/2", batch_id="types")
    assert (result.input_rows, result.scored_rows, result.quarantined_rows) == (6, 3, 3)
    reasons = {r.ID: r.reason for r in spark.table("tr_types_scores_quarantine").collect()}
    assert reasons == bad
    # rows that spell 1 score exactly as an int 1 does
    reference = spark.table("tr_new_scores").where("ID = 1").first()
    scored = {r.ID: r for r in spark.table("tr_types_scores").collect()}
    assert scored[1].probability_MEMORY_LEAK == scored[2].probability_MEMORY_LEAK
    assert scored[1].predicted_root_cause == reference.predicted_root_cause


def test_missing_feature_column_is_a_clear_error(trained, spark, cfg):
    spark.createDataFrame([(1, 0)], "ID int, CPU_LOAD int").write.mode("overwrite").saveAsTable("tr_thin")
    with pytest.raises(ValueError, match=r"lacks the model's input columns \['MEMORY_LEAK_LOAD'"):
        score_incidents(spark, cfg, "default.tr_thin", "default.tr_thin_scores")


def test_daily_scoring_scores_only_the_named_ingest_batch(trained, spark, cfg, tmp_path):
    """The daily job: each day's exports are ingested as batch <day> and only that batch is
    scored; other days' scores stay as they were, and rerunning a day replaces it."""
    days = {"2026-11-20": 40, "2026-11-21": 25}
    for seed, (day, n) in enumerate(days.items()):
        incidents.generate(spark, n, seed=100 + seed, labeled=False).withColumn(
            "ID", F.col("ID") + 10_000 * (seed + 1)       # IDs unique across the days
        ).toPandas().to_csv(tmp_path / f"{day}.csv", index=False)
        ingest_incidents(spark, cfg, str(tmp_path / f"{day}.csv"), "tr_daily", "csv",
                         batch_id=day)
    first = score_incidents(spark, cfg, "default.tr_daily", "default.tr_daily_scores",
                            input_batches=["2026-11-20"])
    assert (first.input_rows, first.scored_rows, first.batch_ids) == (40, 40, ["2026-11-20"])
    second = score_incidents(spark, cfg, "default.tr_daily", "default.tr_daily_scores",
                             input_batches=["2026-11-21"])
    assert (second.input_rows, second.scored_rows, second.batch_ids) == (25, 25, ["2026-11-21"])
    again = score_incidents(spark, cfg, "default.tr_daily", "default.tr_daily_scores",
                            input_batches=["2026-11-21"])
    assert again.scored_rows == 25
    per_batch = {r[0]: r[1] for r in spark.table("tr_daily_scores").groupBy("batch_id").count().collect()}
    assert per_batch == days
    spark.table("tr_daily").drop("ingest_batch_id").write.mode("overwrite").saveAsTable("tr_nobatch")
    with pytest.raises(ValueError, match="has no ingest_batch_id column"):
        score_incidents(spark, cfg, "default.tr_nobatch", "default.tr_x", input_batches=["d"])
