# Databricks notebook source
# MAGIC %md
# MAGIC # Incident root cause: ingest, train, score
# MAGIC All logic lives in the `sparkeras` library; this notebook only calls it.

# COMMAND ----------

from sparkeras.ingest import ingest_incidents
from sparkeras.notebook import start
from sparkeras.scoring import score_incidents
from sparkeras.train import train_incidents

cfg, spark, widget = start(globals().get("dbutils"))
source = widget("source", f"{cfg.state_dir}/demo/incidents_csv")
table = cfg.table_name(widget("table", "incidents"))

# COMMAND ----------

print(ingest_incidents(spark, source, table, "csv", cfg.tables.format).summary())

# COMMAND ----------

print(train_incidents(spark, cfg, table))

# COMMAND ----------

print(score_incidents(spark, cfg, table, cfg.table_name("incident_scores")).summary())
