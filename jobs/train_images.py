"""Job entry point: `sparkeras train images` with this job's arguments.

Used by the Databricks bundle (spark_python_task) and by spark-submit; all logic lives in
the library. Example: train_images.py --conf conf/dev.yml ...
"""
import sys

from sparkeras.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "images", *sys.argv[1:]]))
