# Databricks notebook source
# MAGIC %md
# MAGIC # Images: ingest a dataset, train a CNN, score new images
# MAGIC All logic lives in the `sparkeras` library; this notebook only calls it.
# MAGIC Formats: `idx` (MNIST/Fashion-MNIST), `cifar` (CIFAR-10 binary), `folder` (one
# MAGIC sub-folder per class, as in cats-vs-dogs).

# COMMAND ----------

from sparkeras.ingest import ingest_images
from sparkeras.notebook import start
from sparkeras.scoring import score_images
from sparkeras.train import train_images

cfg, spark, widget = start(globals().get("dbutils"))
fmt = widget("format", "idx")
source = widget("source", f"{cfg.state_dir}/demo/images_{fmt}")
table = cfg.table_name(widget("table", "images"))
new_images = widget("new_images", "")

# COMMAND ----------

print(ingest_images(spark, source, table, fmt, getattr(cfg.images.size, fmt), cfg.tables.format,
                    class_names=cfg.images.class_names,
                    decode_batch_rows=cfg.images.decode_batch_rows).summary())

# COMMAND ----------

print(train_images(spark, cfg, table))

# COMMAND ----------

to_score = table
if new_images:   # a folder of new, unlabelled images
    to_score = cfg.table_name("new_images")
    print(ingest_images(spark, new_images, to_score, "folder", getattr(cfg.images.size, fmt),
                        cfg.tables.format, labeled=False,
                        decode_batch_rows=cfg.images.decode_batch_rows).summary())
print(score_images(spark, cfg, to_score, cfg.table_name("image_scores")).summary())
