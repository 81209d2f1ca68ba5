"""What Spark plans to run for a DataFrame, read from its physical plan."""
import contextlib
import io
import re


def python_passes(df) -> int:
    """How many times Spark's plan for ``df`` sends rows through Python (pandas UDFs,
    ``mapInPandas``): a UDF the optimizer copied counts twice."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        df.explain()
    return len(re.findall(r"\b(?:ArrowEvalPython|BatchEvalPython|MapInPandas)\b",
                          text.getvalue()))


def write_plans(spark, table: str) -> list:
    """The physical plans of the writes into ``table`` (its folder's name) this session has
    run, oldest first (Spark's SQL status store, the one its UI reads; kept with the UI off
    too)."""
    jsc = spark.sparkContext._jsc.sc()
    jsc.listenerBus().waitUntilEmpty()           # the store is filled by a listener
    executions = spark._jsparkSession.sharedState().statusStore().executionsList()
    plans = [executions.apply(i).physicalPlanDescription() for i in range(executions.size())]
    into = re.compile(r"Execute InsertIntoHadoopFsRelationCommand\n.*\nArguments: \S+/"
                      + re.escape(table) + ",")
    return [p for p in plans if into.search(p)]


def sorts_before_write(plan: str) -> bool:
    """Whether a write's plan sorts its rows (Spark sorts by the partition columns unless
    they are constants)."""
    return bool(re.search(r"\bSort\b", plan.split("\n\n")[0]))
