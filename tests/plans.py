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
