"""Job entry point: `sparkeras ingest incidents` with this job's arguments.

For spark-submit (`spark-submit jobs/<name>.py ...`) or a Databricks spark_python_task; the
bundle's own jobs call the wheel's `sparkeras` entry point (python_wheel_task) instead. All
logic lives in the library. Example: ingest_incidents.py --conf conf/dev.yml ...
"""
import sys

from sparkeras.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "incidents", *sys.argv[1:]]))
