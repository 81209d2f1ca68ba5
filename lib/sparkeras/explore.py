"""Exploration and evaluation views for notebooks and analysts: small DataFrames that
answer the usual first questions about a table, a quarantine or a trained model."""
from __future__ import annotations

from typing import Sequence

from .tables import quarantine_name
from .workloads import incidents


def label_balance(df, label: str = incidents.LABEL):
    """label, rows, share of rows (0..1), most frequent first; unlabeled rows as null."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    counts = df.groupBy(label).agg(F.count(F.lit(1)).alias("rows"))
    total = F.sum("rows").over(Window.partitionBy())
    return (counts.withColumn("share", F.round(F.col("rows") / total, 4))
            .orderBy(F.desc("rows"), F.asc(label)))


def signal_rates(df, features: Sequence[str] = tuple(incidents.FEATURES),
                 label: str = incidents.LABEL):
    """Per label: rows and the share of incidents with each 0/1 signal set (0..1)."""
    from pyspark.sql import functions as F
    return (df.groupBy(label)
            .agg(F.count(F.lit(1)).alias("rows"),
                 *[F.round(F.avg(F.col(f).cast("double")), 4).alias(f) for f in features])
            .orderBy(label))


def quarantine_reasons(spark, table: str):
    """reason, rows, and one example source file per reason in ``table``'s quarantine."""
    from pyspark.sql import functions as F
    q = spark.table(quarantine_name(table))
    example = "source_file" if "source_file" in q.columns else q.columns[0]
    return (q.groupBy("reason").agg(F.count(F.lit(1)).alias("rows"),
                                    F.min(example).alias(f"example_{example}"))
            .orderBy(F.desc("rows"), "reason"))


def confusion_frame(labels: Sequence[str], matrix: Sequence[Sequence[int]]):
    """A confusion matrix as a pandas DataFrame: one row per true label, one column per
    predicted label, plus each true label's recall."""
    import pandas as pd
    frame = pd.DataFrame([list(r) for r in matrix], index=list(labels), columns=list(labels))
    frame.index.name = "true \\ predicted"
    totals = frame.sum(axis=1).replace(0, 1)
    frame["recall"] = [round(frame.loc[lab, lab] / totals[lab], 4) for lab in labels]
    return frame
