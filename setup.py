"""sparkeras: distributed Keras training and batch inference on Spark and Databricks."""
from setuptools import find_packages, setup

setup(
    name="sparkeras",
    version="0.1.0",
    description="Train Keras models with tf.distribute on Spark, track them in MLflow, "
                "and score tables at scale with pandas UDFs.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"sparkeras": ["resources/*"]},
    python_requires=">=3.10",
    # Databricks ML runtimes ship Spark and TensorFlow themselves: they are not hard
    # requirements of the wheel, only of the local/dev extra.
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
        "local": ["pyspark>=3.5", "tensorflow-cpu>=2.16"],
        # scikit-learn: its bundled real datasets (handwritten digits, ...) feed the tests
        "dev": ["pyspark>=3.5", "tensorflow-cpu>=2.16", "pytest>=8", "databricks-bundles>=1.22",
                "scikit-learn>=1.3"],
        # train.feed: petastorm - only on the Spark 3.5 stack (pyarrow <= 14, numpy < 2)
        "petastorm": ["petastorm>=0.13.1"],
    },
    entry_points={"console_scripts": ["sparkeras=sparkeras.cli:main"]},
)
