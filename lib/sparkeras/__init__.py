"""sparkeras: distributed Keras training and batch inference on Spark and Databricks."""
__version__ = "0.1.0"
