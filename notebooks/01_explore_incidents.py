# Databricks notebook source
# MAGIC %md
# MAGIC # 1. Explore incidents
# MAGIC Ingest a folder of incident exports (CSV) into a table, then look at it: how the root
# MAGIC causes are balanced, how often each signal fires per root cause, and why rows were
# MAGIC quarantined. Widgets: `conf` (e.g. `conf/dev.yml`), `source`, `table`.
# MAGIC All logic lives in the `sparkeras` library; this notebook only calls it.

# COMMAND ----------

try:
    import sparkeras  # noqa: F401  the wheel (job clusters, local installs)
except ImportError:   # a bundle or Git folder without it: the library sits next to notebooks/
    import os
    import sys
    sys.path.insert(0, os.path.abspath("../lib"))

# COMMAND ----------

from sparkeras import explore
from sparkeras.ingest import ingest_incidents
from sparkeras.notebook import start

nb = start(globals())
source = nb.widget("source", f"{nb.cfg.state_dir}/demo/incidents_csv")
table = nb.cfg.table_name(nb.widget("table", "incidents"))

# COMMAND ----------

# MAGIC %md Ingest: valid rows go to the table, the rest to `<table>_quarantine` with a reason.
# MAGIC Re-running the same files replaces their batch.

# COMMAND ----------

ingested = ingest_incidents(nb.spark, nb.cfg, source, table, "csv")
nb.display(ingested.summary())

# COMMAND ----------

incidents = nb.spark.table(table)
nb.display(explore.label_balance(incidents))

# COMMAND ----------

# MAGIC %md Share of incidents with each signal set, per root cause.

# COMMAND ----------

nb.display(explore.signal_rates(incidents))

# COMMAND ----------

nb.display(explore.quarantine_reasons(nb.spark, table))
