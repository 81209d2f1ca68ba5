# Databricks notebook source
# MAGIC %md
# MAGIC # Incident root cause: ingest, train, score
# MAGIC All logic lives in the `sparkeras` library; this notebook only calls it.

# COMMAND ----------

from sparkeras.config import load_config
from sparkeras.ingest import ingest_incidents
from sparkeras.scoring import score_incidents
from sparkeras.session import get_spark
from sparkeras.train import train_incidents

def widget(name, default):
    try:
        dbutils.widgets.text(name, default)  # noqa: F821 (defined on Databricks)
        return dbutils.widgets.get(name)  # noqa: F821
    except NameError:
        return default

cfg = load_config(widget("conf", "conf/local.yml"))
spark = get_spark(cfg)
source = widget("source", f"{cfg.state_dir}/demo/incidents_csv")
table = cfg.table_name(widget("table", "incidents"))

# COMMAND ----------

print(ingest_incidents(spark, source, table, "csv", cfg.tables.format).summary())

# COMMAND ----------

print(train_incidents(spark, cfg, table))

# COMMAND ----------

print(score_incidents(spark, cfg, table, cfg.table_name("incident_scores")).summary())
