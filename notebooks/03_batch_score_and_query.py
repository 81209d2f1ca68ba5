# Databricks notebook source
# MAGIC %md
# MAGIC # 3. Batch score, then query as an analyst
# MAGIC Scores a table of incidents with the registered champion (a pandas UDF on every
# MAGIC executor) into `<output>`, `<output>_quarantine` and the `<output>_daily` view, then runs
# MAGIC the queries analysts run in Databricks SQL. Widgets: `conf`, `table`, `output`.

# COMMAND ----------

try:
    import sparkeras  # noqa: F401  the wheel (job clusters, local installs)
except ImportError:   # a bundle or Git folder without it: the library sits next to notebooks/
    import os
    import sys
    sys.path.insert(0, os.path.abspath("../lib"))

# COMMAND ----------

from sparkeras import analyst
from sparkeras.notebook import start
from sparkeras.scoring import score_incidents

nb = start(globals())
table = nb.cfg.table_name(nb.widget("table", "incidents"))
scored = nb.cfg.table_name(nb.widget("output", "incident_scores"))

# COMMAND ----------

nb.display(score_incidents(nb.spark, nb.cfg, table, scored).summary())

# COMMAND ----------

# MAGIC %md Root causes per day, from the daily view (the same SQL works in a SQL warehouse).

# COMMAND ----------

nb.display(nb.spark.sql(analyst.root_causes_per_day(scored)))

# COMMAND ----------

# MAGIC %md The incidents the model is least sure about: candidates for a human look.

# COMMAND ----------

nb.display(nb.spark.sql(analyst.least_confident(scored)))
