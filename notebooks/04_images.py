# Databricks notebook source
# MAGIC %md
# MAGIC # 4. Images: ingest a dataset, train a classifier, score new images
# MAGIC Formats: `idx` (MNIST/Fashion-MNIST), `cifar` (CIFAR-10 binary batches), `folder` (one
# MAGIC sub-folder per class, as in cats-vs-dogs). Widgets: `conf`, `format`, `source`,
# MAGIC `table`, `output`, and `new_images` (optional: a folder of new, unlabelled images, ingested
# MAGIC into `new_table` and scored instead of `table`).
# MAGIC All logic lives in the `sparkeras` library; this notebook only calls it.

# COMMAND ----------

try:
    import sparkeras  # noqa: F401  the wheel (job clusters, local installs)
except ImportError:   # a bundle or Git folder without it: the library sits next to notebooks/
    import os
    import sys
    sys.path.insert(0, os.path.abspath("../lib"))

# COMMAND ----------

from sparkeras import analyst, explore, tracking
from sparkeras.ingest import ingest_images
from sparkeras.notebook import start
from sparkeras.scoring import score_images
from sparkeras.train import train_images

nb = start(globals())
cfg = nb.cfg
fmt = nb.widget("format", "idx")
source = nb.widget("source", f"{cfg.state_dir}/demo/images_{fmt}")
table = cfg.table_name(nb.widget("table", "images"))
new_images = nb.widget("new_images", "")
new_table = cfg.table_name(nb.widget("new_table", "new_images"))
scored = cfg.table_name(nb.widget("output", "image_scores"))

# COMMAND ----------

ingested = ingest_images(nb.spark, cfg, source, table, fmt)
nb.display(ingested.summary())
nb.display(explore.label_balance(nb.spark.table(table), "label"))

# COMMAND ----------

result = train_images(nb.spark, cfg, table)
nb.display(explore.confusion_frame(result["labels"], result["test_confusion_matrix"]))
nb.display(tracking.model_versions(cfg, result["model_name"]))

# COMMAND ----------

# MAGIC %md Score the new images when `new_images` is set, otherwise the ingested table.

# COMMAND ----------

to_score = table
if new_images:
    to_score = new_table
    # new photos, stored at the size the model was trained on
    nb.display(ingest_images(nb.spark, cfg, new_images, to_score, "folder", labeled=False,
                             size=getattr(cfg.images.size, fmt)).summary())
nb.display(score_images(nb.spark, cfg, to_score, scored).summary())
nb.display(nb.spark.sql(analyst.least_confident_images(scored)))
