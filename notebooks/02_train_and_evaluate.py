# Databricks notebook source
# MAGIC %md
# MAGIC # 2. Train and evaluate the root-cause model
# MAGIC Trains on the incident table (on the driver, or on `train.workers` Spark barrier
# MAGIC tasks), logs the run to MLflow, registers a new model version, and moves the champion
# MAGIC alias only when the new version beats the champion on the same test split.
# MAGIC Widgets: `conf`, `table`.

# COMMAND ----------

try:
    import sparkeras  # noqa: F401  the wheel (job clusters, local installs)
except ImportError:   # a bundle or Git folder without it: the library sits next to notebooks/
    import os
    import sys
    sys.path.insert(0, os.path.abspath("../lib"))

# COMMAND ----------

from sparkeras import explore, tracking
from sparkeras.notebook import start
from sparkeras.train import train_incidents

nb = start(globals())
table = nb.cfg.table_name(nb.widget("table", "incidents"))

# COMMAND ----------

result = train_incidents(nb.spark, nb.cfg, table)
nb.display({k: result[k] for k in ("run_id", "model_name", "model_version", "became_champion",
                                   "champion_reason", "epochs_run", "test_metrics")})

# COMMAND ----------

# MAGIC %md Test split: rows are true root causes, columns predictions, with each cause's recall.

# COMMAND ----------

nb.display(explore.confusion_frame(result["labels"], result["test_confusion_matrix"]))

# COMMAND ----------

# MAGIC %md Every registered version, its test macro F1 and which one is the champion.

# COMMAND ----------

nb.display(tracking.model_versions(nb.cfg, result["model_name"]))
