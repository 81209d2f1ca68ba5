"""sparkeras: distributed Keras training and batch inference on Spark and Databricks.

Build settings and tool configuration live in pyproject.toml; the version in
lib/sparkeras/__init__.py.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (HERE / "lib" / "sparkeras" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="sparkeras",
    version=VERSION,
    description="Train Keras models with tf.distribute on Spark, track them in MLflow, "
                "and score tables at scale with pandas UDFs.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"sparkeras": ["resources/*"]},
    python_requires=">=3.10",
    # Databricks ML runtimes ship Spark and TensorFlow themselves: they are not hard
    # requirements of the wheel, only of the `local` extra (and so of `dev`).
    install_requires=[
        "mlflow>=2.16",
        "pandas>=2.0",
        "pyarrow>=14.0.2",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
        "pillow>=10.0",
    ],
    extras_require={
        # run anywhere without a Databricks runtime: Spark and TensorFlow (CPU)
        "local": ["pyspark>=3.5", "tensorflow-cpu>=2.16"],
        # develop: the local stack, the test suite (scikit-learn's bundled real datasets feed
        # it), the offline bundle check and the linter
        "dev": ["sparkeras[local]", "pytest>=8", "databricks-bundles>=1.22",
                "scikit-learn>=1.3", "ruff>=0.6"],
        # Spark Connect clients: `sparkeras server`, spark.remote / SPARK_REMOTE (the primary
        # stack; pyspark 3.5 wheels carry no Connect server)
        "connect": ["pyspark[connect]>=3.5"],
        # train.feed: petastorm - only on the Spark 3.5 stack (pyarrow <= 14, numpy < 2)
        "petastorm": ["petastorm>=0.13.1"],
    },
    entry_points={"console_scripts": ["sparkeras=sparkeras.cli:main"]},
)
