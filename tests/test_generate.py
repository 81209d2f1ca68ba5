"""The synthetic incident generator: deterministic, balanced, learnable, not perfect."""
import numpy as np
from pyspark.testing import assertDataFrameEqual

from sparkeras.workloads import incidents


def test_bayes_accuracy_is_documented_value():
    # docs/incidents.md quotes this number; the generator's rule defines it exactly.
    assert round(incidents.bayes_accuracy(), 4) == 0.8556


def test_same_seed_same_rows_regardless_of_partitioning(spark):
    a = incidents.generate(spark, 2000, seed=5, partitions=2)
    b = incidents.generate(spark, 2000, seed=5, partitions=7)
    assertDataFrameEqual(a, b)
    c = incidents.generate(spark, 2000, seed=6, partitions=2)
    assert a.exceptAll(c).count() > 0


def test_schema_and_label_balance(spark):
    df = incidents.generate(spark, 30000, seed=1)
    assert df.columns == incidents.COLUMNS
    rows = df.groupBy("ROOT_CAUSE").count().collect()
    shares = {r["ROOT_CAUSE"]: r["count"] / 30000 for r in rows}
    assert set(shares) == set(incidents.LABELS)
    assert all(0.31 < s < 0.356 for s in shares.values())
    flags = df.selectExpr(*[f"{agg}({c}) as {agg}_{c}" for c in incidents.FEATURES
                            for agg in ("min", "max")]).first()
    assert set(flags.asDict().values()) == {0, 1}


def test_signal_rates_follow_the_rule(spark):
    df = incidents.generate(spark, 60000, seed=3).toPandas()
    for cause, probs in incidents.SIGNAL_PROBABILITY.items():
        rates = df[df.ROOT_CAUSE == cause][incidents.FEATURES].mean().to_numpy()
        assert np.allclose(rates, probs, atol=0.02), (cause, rates)


def test_unlabeled_has_no_root_cause(spark):
    assert incidents.generate(spark, 10, labeled=False).columns == incidents.COLUMNS[:-1]
