"""Every notebook in notebooks/ runs here as Databricks would run it, on small data, with a
tiny stand-in for dbutils (text widgets) and a display() that records what it was given."""
import runpy
from pathlib import Path

import pandas as pd
import pytest
from pyspark.testing import assertDataFrameEqual

from sparkeras.workloads import incidents

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


class Widgets:
    """dbutils.widgets: text widgets hold their default unless the job passed a value."""

    def __init__(self, values):
        self.values, self.defined = dict(values), {}

    def text(self, name, default_value, label=None):
        self.defined[name] = default_value

    def get(self, name):
        if name not in self.defined:       # as on Databricks: get before text fails
            raise ValueError(f"InputWidgetNotDefined: {name}")
        return self.values.get(name, self.defined[name])


class DBUtils:
    def __init__(self, values):
        self.widgets = Widgets(values)


def run_notebook(name, widgets):
    """Run notebooks/<name>.py; return what it displayed (Spark DataFrames as pandas)."""
    shown = []

    def display(obj):
        shown.append(obj.toPandas() if hasattr(obj, "toPandas") else obj)
    source = (NOTEBOOKS / f"{name}.py").read_text()
    assert source.startswith("# Databricks notebook source\n")
    assert "# COMMAND ----------" in source
    dbutils = DBUtils(widgets)
    runpy.run_path(str(NOTEBOOKS / f"{name}.py"),
                   init_globals={"dbutils": dbutils, "display": display})
    assert set(widgets) <= set(dbutils.widgets.defined), "a widget the test sets was never read"
    return shown


def test_every_notebook_is_run_by_a_test():
    tested = {"01_explore_incidents", "02_train_and_evaluate", "03_batch_score_and_query",
              "04_images"}
    assert {p.stem for p in NOTEBOOKS.glob("*.py")} == tested


def test_incident_notebooks_explore_train_and_score(spark, write_conf, tmp_path):
    conf = write_conf("registry.incident_model=nb_incident_root_cause", "train.epochs=6",
                      "train.batch_size=64")
    source = tmp_path / "exports"
    source.mkdir()
    incidents.generate(spark, 3000, seed=11).toPandas().to_csv(source / "a.csv", index=False)
    (source / "b.csv").write_text(
        "ID,CPU_LOAD,MEMORY_LEAK_LOAD,DELAY,ERROR_1000,ERROR_1001,ERROR_1002,ERROR_1003,"
        "ROOT_CAUSE\nx1,2,0,0,0,0,0,0,MEMORY_LEAK\nx2,1,0,0,0,0,0,0,COSMIC_RAYS\n")
    expected = pd.read_csv(source / "a.csv")
    widgets = {"conf": conf, "table": "nb_incidents"}

    summary, balance, rates, reasons = run_notebook(
        "01_explore_incidents", {**widgets, "source": str(source)})
    assert (summary["input_rows"], summary["valid_rows"], summary["quarantined_rows"]) == (3002, 3000, 2)
    counts = expected["ROOT_CAUSE"].value_counts()
    assert dict(zip(balance["ROOT_CAUSE"], balance["rows"])) == counts.to_dict()
    assert list(balance["rows"]) == sorted(counts, reverse=True)
    assert balance["share"].sum() == pytest.approx(1.0, abs=1e-3)
    means = expected.groupby("ROOT_CAUSE")[incidents.FEATURES].mean().round(4).reset_index()
    means.insert(1, "rows", expected.groupby("ROOT_CAUSE").size().values)
    assertDataFrameEqual(spark.createDataFrame(rates), spark.createDataFrame(means), rtol=1e-6)
    assert reasons["rows"].sum() == 2 and len(reasons) == 2
    assert all(f.endswith("b.csv") for f in reasons["example_source_file"])

    result, confusion, versions = run_notebook("02_train_and_evaluate", widgets)
    assert result["model_name"] == "nb_incident_root_cause" and result["model_version"] == "1"
    assert result["became_champion"] is True
    labels = list(confusion.index)
    assert sorted(labels) == sorted(counts.index) and list(confusion.columns) == [*labels, "recall"]
    assert int(confusion[labels].to_numpy().sum()) == result["test_metrics"]["rows"]
    diag = [confusion.loc[lab, lab] / confusion.loc[lab, labels].sum() for lab in labels]
    assert list(confusion["recall"]) == pytest.approx(diag, abs=1e-4)
    assert list(versions["version"]) == [1] and list(versions["aliases"]) == ["champion"]
    assert versions["test_macro_f1"][0] == pytest.approx(result["test_metrics"]["macro_f1"], abs=1e-6)
    assert result["test_metrics"]["accuracy"] > 0.75          # the optimum is 0.8556

    scored, per_day, unsure = run_notebook(
        "03_batch_score_and_query", {**widgets, "output": "nb_incident_scores"})
    assert (scored["input_rows"], scored["scored_rows"], scored["quarantined_rows"]) == (3000, 3000, 0)
    assert per_day["incidents"].sum() == 3000 and set(per_day["predicted_root_cause"]) <= set(labels)
    assert len(unsure) == 10 and list(unsure["confidence"]) == sorted(unsure["confidence"])
    assert unsure["confidence"].max() <= per_day["avg_confidence"].max()


def test_images_notebook_trains_and_scores_new_images(spark, write_conf, tmp_path):
    from PIL import Image

    from sparkeras.workloads import image_synth
    conf = write_conf("registry.image_model=nb_image_classifier", "train.epochs=4",
                      "train.batch_size=64")
    image_synth.generate(spark, 700, str(tmp_path / "idx"), "idx", seed=3, n_classes=4)
    new = tmp_path / "new"
    new.mkdir()
    for i, mode in enumerate(["L", "RGB", "RGBA"]):
        Image.new(mode, (40 + i, 30), color=(90 + 40 * i,) * len(mode)).save(new / f"n{i}.png")
    (new / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n-truncated")

    shown = run_notebook("04_images", {"conf": conf, "format": "idx", "table": "nb_images",
                                       "source": str(tmp_path / "idx"),
                                       "new_images": str(new), "new_table": "nb_new_images",
                                       "output": "nb_image_scores"})
    ingested, balance, confusion, versions, new_ingested, scored, unsure = shown
    assert (ingested["input_rows"], ingested["valid_rows"], ingested["quarantined_rows"]) == (700, 700, 0)
    assert balance["rows"].sum() == 700 and len(balance) == 4
    assert int(confusion.drop(columns="recall").to_numpy().sum()) == 100     # the t10k file
    assert list(versions["aliases"]) == ["champion"]
    assert (new_ingested["input_rows"], new_ingested["valid_rows"],
            new_ingested["quarantined_rows"]) == (4, 3, 1)
    assert (scored["input_rows"], scored["scored_rows"], scored["quarantined_rows"]) == (3, 3, 0)
    assert len(unsure) == 3 and set(unsure["predicted_label"]) <= set(balance["label"])
