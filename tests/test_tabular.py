"""Your own tables: a schema declared in a file, ingested, trained and scored - on real data
(scikit-learn's diabetes table: 442 patients, ten measurements, one-year progression)."""
import copy
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from sparkeras.ingest import ingest_incidents, ingest_tabular
from sparkeras.schema import load_schema, schema_from_dict
from sparkeras.scoring import score_tabular
from sparkeras.train import train_tabular

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["AGE", "SEX", "BMI", "BP", "S1", "S2", "S3", "S4", "S5", "S6"]
HEADER = "ID," + ",".join(COLUMNS) + ",PROGRESSION"
# (record, reason or None): every kind of bad row, and one not yet known (valid)
EXTRA = [
    ("1001,59,2,abc,101,157,93.2,38,4,4.8598,87,151", "BMI must be a number, got 'abc'"),
    ("1002,48,1,,87,183,103.2,70,3,3.8918,69,75", "empty field BMI"),
    ("1003,72,X,30.5,93,156,93.6,41,4,4.6728,85,141", "SEX: unknown category 'X'"),
    ("1004,24,1,25.3,84,198,131.4,40,5,4.8903,89,n/a", "PROGRESSION must be a number, got 'n/a'"),
    ("x1005,50,1,23,101,192,125.4,52,4,4.2905,80,97", "ID is not an integer: 'x1005'"),
    ("1006,23,1,22.6,89,139,64.8,61,2,4.1897,68", "short row: 11 fields, the header has 12"),
    ("1007,36,2,22,90,160,99.6,50,3,3.9512,82,138",
     "duplicate ID 1007: 2 rows with this ID in the input"),
    ("1007,36,2,22,90,160,99.6,50,3,3.9512,82,139",
     "duplicate ID 1007: 2 rows with this ID in the input"),
    ("1009,60,2,NaN,100,200,100,50,4,4.5,90,120", "BMI must be a number, got 'NaN'"),
    ("1010,1e999,2,25,100,200,100,50,4,4.5,90,120", "AGE must be a number, got '1e999'"),
    ("1008,66,2,26.2,114,255,185,56,4.55,4.2485,92,", None),
]
REGRESSION = {
    "name": "diabetes", "id": "ID",
    "features": {"AGE": "number", "SEX": {"type": "category", "values": [1, 2]},
                 **{c: "number" for c in COLUMNS[2:]}},
    "target": {"column": "PROGRESSION", "kind": "regression"},
}


def diabetes_rows():
    """scikit-learn's diabetes data as the raw values a clinic would export."""
    from sklearn.datasets import load_diabetes
    data = load_diabetes(scaled=False)
    rows = []
    for i, (x, y) in enumerate(zip(data.data, data.target), start=1):
        values = [f"{int(v)}" if c in ("AGE", "SEX") else f"{v:g}" for c, v in zip(COLUMNS, x)]
        rows.append([i, *values, y])
    return rows


@pytest.fixture(scope="module")
def diabetes(spark, cfg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diabetes")
    lines = [HEADER] + [",".join(str(v) for v in r[:-1]) + f",{int(r[-1])}"
                        for r in diabetes_rows()]
    (folder / "export.csv").write_text("\n".join(lines + [r for r, _ in EXTRA]) + "\n")
    schema = schema_from_dict(REGRESSION)
    result = ingest_tabular(spark, cfg, schema, str(folder), "diabetes")
    return schema, result


def test_every_bad_row_is_quarantined_with_its_reason(spark, diabetes):
    _, result = diabetes
    assert (result.input_rows, result.valid_rows, result.quarantined_rows) == (453, 443, 10)
    reasons = sorted((r.raw_record, r.reason) for r in
                     spark.table("diabetes_quarantine").collect())
    assert reasons == sorted((line, reason) for line, reason in EXTRA if reason)


def test_the_table_is_typed_from_the_schema(spark, diabetes):
    t = spark.table("diabetes")
    assert [(f.name, f.dataType.simpleString()) for f in t.schema.fields] == [
        ("ID", "bigint"), ("AGE", "double"), ("SEX", "string"),
        *[(c, "double") for c in COLUMNS[2:]], ("PROGRESSION", "double"),
        ("source_file", "string"), ("ingested_at", "timestamp"), ("ingest_batch_id", "string")]
    row = t.where("ID = 1008").first()                 # target not known yet: kept, null
    assert (row.SEX, row.BMI, row.PROGRESSION) == ("2", 26.2, None)
    assert t.where("ID = 1").first().PROGRESSION == 151.0


@pytest.fixture(scope="module")
def regression(spark, cfg, diabetes):
    schema, _ = diabetes
    c = copy.deepcopy(cfg)
    c.train = copy.deepcopy(type(cfg)().train)        # the defaults: auto settings
    c.train.checkpoint_dir, c.train.cache_dir = cfg.train.checkpoint_dir, cfg.train.cache_dir
    return c, train_tabular(spark, c, schema, "default.diabetes")


def test_regression_trains_with_its_metrics_and_plots(regression):
    from mlflow import MlflowClient
    c, result = regression
    assert result["task"] == "regression" and result["labels"] == []
    assert result["rows"]["train"] + result["rows"]["validation"] + result["rows"]["test"] == 442
    m = result["test_metrics"]
    assert set(m) == {"mae", "rmse", "r2", "rows"}
    assert m["r2"] > 0.25, m                     # linear models reach about 0.5 on this data
    assert m["rmse"] < 77                        # the target's standard deviation
    assert result["became_champion"] and "test_confusion_matrix" not in result
    client = MlflowClient(c.mlflow.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "evaluation")}
    assert {"evaluation/predicted_vs_actual.png", "evaluation/residuals.png",
            "evaluation/training_curves.png"} <= artifacts
    assert client.get_run(result["run_id"]).data.metrics["test_rmse"] == pytest.approx(m["rmse"])


def test_regression_scores_and_the_daily_view_averages(spark, regression):
    c, result = regression
    scored = score_tabular(spark, c, "default.diabetes", "default.diabetes_scores")
    assert scored.model_uri == f"models:/diabetes/{result['model_version']}"
    assert (scored.input_rows, scored.scored_rows, scored.quarantined_rows) == (443, 443, 0)
    out = spark.table("diabetes_scores")
    assert out.columns == ["ID", "predicted_progression", "model_name", "model_version",
                           "scored_at", "batch_id"]
    low, high = out.agg(F.min("predicted_progression"), F.max("predicted_progression")).first()
    assert 25 < low < high < 346                # within the target's range, and not constant
    daily = spark.table("diabetes_scores_daily")
    assert daily.columns == ["day", "rows", "avg_predicted_progression"]
    assert daily.first().rows == 443
    # the registered pyfunc: the declared features by name -> predicted_progression
    import mlflow
    model = mlflow.pyfunc.load_model(scored.model_uri)
    rows = spark.table("diabetes").orderBy("ID").limit(20).toPandas()
    answer = model.predict(rows[COLUMNS].astype({"SEX": str}))
    expected = {r.ID: r.predicted_progression for r in out.where("ID < 1000").collect()}
    assert list(answer.columns) == ["predicted_progression"]
    for i, row in rows.iterrows():
        assert answer.predicted_progression[i] == pytest.approx(expected[row.ID], rel=1e-5)


def test_rows_the_model_cannot_score_are_quarantined_and_their_batch_replaced(spark, regression):
    """BMI = 1e300 is a number, but not in float32: the model has no finite prediction for
    it. Such a row goes to the quarantine with that reason; a batch made only of such rows
    no longer holds its earlier scores."""
    c, result = regression

    def score_with(bmi_of_4):
        bmi = (F.when(F.col("ID") == 3, F.lit(1e300)).when(F.col("ID") == 4, F.lit(bmi_of_4))
               .otherwise(F.col("BMI")))
        (spark.table("diabetes").where("ID IN (1, 2, 3, 4)").withColumn("BMI", bmi)
         .withColumn("ingest_batch_id", F.when(F.col("ID") == 4, "b2").otherwise("b1"))
         .write.mode("overwrite").saveAsTable("refused_in"))
        r = score_tabular(spark, c, "default.refused_in", "default.refused_out",
                          f"models:/diabetes/{result['model_version']}")
        return (r.input_rows, r.scored_rows, r.quarantined_rows), {
            (q.ID, q.batch_id): q.reason for q in spark.table("refused_out_quarantine").collect()}

    counts, refused = score_with(30.0)
    assert counts == (4, 3, 1)
    assert refused == {(3, "b1"): "the model returned a non-finite prediction"}
    assert spark.table("refused_out").where("batch_id = 'b2'").count() == 1
    counts, refused = score_with(1e300)
    assert counts == (4, 2, 2)
    assert refused == {(3, "b1"): "the model returned a non-finite prediction",
                       (4, "b2"): "the model returned a non-finite prediction"}
    assert sorted(r.ID for r in spark.table("refused_out").collect()) == [1, 2]


def test_one_batch_with_invalid_and_refused_rows_adds_up(spark, regression):
    """One batch (the usual case; written with the batch as a constant): invalid rows, rows
    the model refuses and scored rows add up to the input, and a batch whose every row is
    refused loses its earlier scores."""
    c, result = regression
    uri = f"models:/diabetes/{result['model_version']}"

    def score_with(bmi):
        (spark.table("diabetes").where("ID IN (1, 2, 3, 4, 5)").withColumn("BMI", bmi)
         .withColumn("ingest_batch_id", F.lit("b1"))
         .write.mode("overwrite").saveAsTable("one_batch_in"))
        r = score_tabular(spark, c, "default.one_batch_in", "default.one_batch_out", uri)
        return (r.input_rows, r.scored_rows, r.quarantined_rows), {
            q.ID: q.reason for q in spark.table("one_batch_out_quarantine").collect()}

    counts, quarantined = score_with(F.when(F.col("ID") == 3, F.lit(1e300))
                                     .when(F.col("ID") == 4, F.lit(None)).otherwise(F.col("BMI")))
    assert counts == (5, 3, 2)
    assert quarantined == {3: "the model returned a non-finite prediction", 4: "missing BMI"}
    assert sorted(r.ID for r in spark.table("one_batch_out").collect()) == [1, 2, 5]
    counts, quarantined = score_with(F.lit(1e300))
    assert counts == (5, 0, 5)
    assert quarantined == dict.fromkeys(range(1, 6), "the model returned a non-finite prediction")
    assert spark.table("one_batch_out").count() == 0
    counts, quarantined = score_with(F.col("BMI"))
    assert (counts, quarantined) == ((5, 5, 0), {})
    assert spark.table("one_batch_out").count() == 5


def test_a_worse_regression_model_stays_out_by_rmse(spark, regression, diabetes):
    c, first = regression
    schema, _ = diabetes
    weak = copy.deepcopy(c)
    weak.train.epochs, weak.train.learning_rate = 1, 1e-6
    result = train_tabular(spark, weak, schema, "default.diabetes")
    assert not result["became_champion"]
    assert result["champion_reason"].startswith("test RMSE ")
    assert f"> {first['test_metrics']['rmse']:.4f} of champion version" in result["champion_reason"]


@pytest.fixture(scope="module")
def classification(spark, cfg, diabetes):
    """Numeric and categorical features (SEX), a class target learned from the table."""
    schema, _ = diabetes
    data = {**REGRESSION, "name": "diabetes_risk",
            "target": {"column": "RISK", "kind": "classification"}}
    risk_schema = schema_from_dict(data)
    spark.table("diabetes").withColumn(
        "RISK", F.when(F.col("PROGRESSION") > 140, "high").when(F.col("PROGRESSION").isNotNull(),
                                                                 "low")
    ).drop("PROGRESSION").write.mode("overwrite").saveAsTable("diabetes_risk")
    c = copy.deepcopy(cfg)
    c.train.epochs = 30
    c.train.batch_size = "auto"
    return c, risk_schema, train_tabular(spark, c, risk_schema, "default.diabetes_risk")


def test_numeric_and_categorical_classification(classification):
    _, _, result = classification
    assert result["labels"] == ["high", "low"] and result["task"] == "classification"
    m = result["test_metrics"]
    assert m["accuracy"] > 0.65 and m["macro_f1"] > 0.6, m      # chance is about 0.5
    assert sum(map(sum, result["test_confusion_matrix"])) == m["rows"]


def test_the_saved_model_holds_its_preprocessing(spark, classification):
    """An unseen category scores through the out-of-vocabulary bucket; the registered model,
    given raw values, returns exactly what the scored table holds."""
    import mlflow
    c, schema, result = classification
    new = spark.table("diabetes_risk").where("ID IN (1, 2, 3)").withColumn(
        "SEX", F.when(F.col("ID") == 3, F.lit("3")).otherwise(F.col("SEX")))
    new = new.unionByName(new.where("ID = 1").withColumn("ID", F.lit(9999).cast("bigint"))
                          .withColumn("BMI", F.lit(None).cast("double")))
    new.write.mode("overwrite").saveAsTable("risk_new")
    scored = score_tabular(spark, c, "default.risk_new", "default.risk_scores",
                           f"models:/diabetes_risk/{result['model_version']}")
    assert (scored.input_rows, scored.scored_rows, scored.quarantined_rows) == (4, 3, 1)
    assert spark.table("risk_scores_quarantine").first().reason == "missing BMI"
    out = {r.ID: r for r in spark.table("risk_scores").collect()}
    assert set(out) == {1, 2, 3}
    assert spark.table("risk_scores").columns[:5] == [
        "ID", "predicted_risk", "confidence", "probability_high", "probability_low"]
    # The registered pyfunc, given the raw named columns, answers as the scored table.
    model = mlflow.pyfunc.load_model(f"models:/diabetes_risk/{result['model_version']}")
    rows = spark.table("risk_new").where("ID IN (1, 2, 3)").orderBy("ID").toPandas()
    answer = model.predict(rows[schema.feature_names].astype({"SEX": str}))
    assert list(answer.columns) == ["predicted_risk", "confidence", "probability_high",
                                    "probability_low"]
    for i, row in rows.iterrows():
        assert answer.predicted_risk[i] == out[row.ID].predicted_risk
        assert answer.probability_high[i] == pytest.approx(out[row.ID].probability_high,
                                                           abs=1e-6)


def test_scoring_needs_the_model_or_a_schema_for_tables_it_did_not_ingest(spark, classification):
    c, _, _ = classification
    with pytest.raises(ValueError, match="was not ingested by sparkeras with a schema"):
        score_tabular(spark, c, "default.risk_new", "default.nothing")


def test_the_incident_preset_writes_the_tables_the_incident_workload_always_wrote(
        spark, cfg, tmp_path):
    """The same export through `ingest incidents` and `ingest tabular --schema
    conf/schemas/incidents.yml`: equal tables, with the incident table layout."""
    from test_ingest_incidents import write_export
    src = str(write_export(tmp_path / "export"))
    a = ingest_incidents(spark, cfg, src, "preset_a", "csv")
    schema = load_schema(str(ROOT / "conf" / "schemas" / "incidents.yml"))
    b = ingest_tabular(spark, cfg, schema, src, "preset_b", "csv")
    assert {k: v for k, v in a.summary().items() if "table" not in k} == \
           {k: v for k, v in b.summary().items() if "table" not in k}
    for table in ("preset_{}", "preset_{}_quarantine"):
        left = spark.table(table.format("a")).drop("ingested_at", "quarantined_at")
        right = spark.table(table.format("b")).drop("ingested_at", "quarantined_at")
        assertDataFrameEqual(left, right)
    assert [(f.name, f.dataType.simpleString()) for f in spark.table("preset_a").schema] == [
        ("ID", "int"), *[(c, "int") for c in ["CPU_LOAD", "MEMORY_LEAK_LOAD", "DELAY",
                                                 "ERROR_1000", "ERROR_1001", "ERROR_1002",
                                                 "ERROR_1003"]],
        ("ROOT_CAUSE", "string"), ("source_file", "string"), ("ingested_at", "timestamp"),
        ("ingest_batch_id", "string")]
    props = json.loads(dict(spark.sql("SHOW TBLPROPERTIES preset_b").collect())
                       ["sparkeras.schema"])
    assert schema_from_dict(props) == schema

