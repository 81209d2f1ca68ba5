"""Job entry point: `sparkeras train incidents` with this job's arguments.

For spark-submit (`spark-submit jobs/<name>.py ...`) or a Databricks spark_python_task; the
bundle's own jobs call the wheel's `sparkeras` entry point (python_wheel_task) instead. All
logic lives in the library. Example: train_incidents.py --conf conf/dev.yml ...
"""
import sys

from sparkeras.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "incidents", *sys.argv[1:]]))
