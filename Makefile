# Two commands for a fresh machine: `make run` (set up + end-to-end demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sparkeras-installed

# The Spark 3.5 mirror of Databricks LTS ML runtimes (pyspark 3.5, pyarrow 14, numpy 1.26,
# petastorm): a second virtual environment, the same tests.
COMPAT_VENV  ?= .venv-compat
COMPAT_PY    := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.sparkeras-installed

.PHONY: help run test test-fast lint test-compat setup setup-compat java bench bench-images \
	bench-stages bench-startup bench-train bench-feeds clean spark-sql
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: setup  ## set up, then run the end-to-end demo (1M incidents)
	$(VENV)/bin/sparkeras demo

test: setup lint  ## lint, then the whole test suite (35-60 minutes on 2 cores)
	$(PY) -m pytest tests --durations=15

test-fast: setup  ## the fast tier: no training, barrier stages or CLI runs (under 2 minutes)
	$(PY) -m pytest tests -m "not slow"

lint: setup  ## ruff: pycodestyle, pyflakes, import order, bugbear (settings in pyproject.toml)
	$(VENV)/bin/ruff check .

# The same TensorFlow runs on both stacks; what the Spark 3.5 mirror adds is checked by the
# fast tier and the slow tests marked `compat` (the CLI and server tests run on the primary).
test-compat: setup-compat  ## the fast tier and the `compat` slow tests on the Spark 3.5 mirror
	$(COMPAT_PY) -m pytest tests -m "not slow or compat" --durations=15

setup: java $(STAMP)  ## .venv with the pinned stack (and Java 17 if missing)

setup-compat: java $(COMPAT_STAMP)

# pip compiles each installed module to bytecode on one core (half of a venv's setup time);
# installing with --no-compile, then compiling the venv's packages on every core, ends with
# the same .pyc files in less time (84 -> 60 s, compat 105 -> 72 s on 2 cores). The .pyc files
# are needed: with PYTHONDONTWRITEBYTECODE set, imports never write them later, and importing
# TensorFlow, PySpark, MLflow and pandas then takes 17-20 s instead of 7 s in every process.
PIP_INSTALL = -m pip install -q --no-compile
COMPILE     = -m compileall -q -j 0 "$$($(1) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

$(STAMP): setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PY) $(PIP_INSTALL) -c constraints.txt -e ".[dev,connect]"
	$(PY) $(call COMPILE,$(PY))
	$(PY) -m pip check
	touch $(STAMP)

$(COMPAT_STAMP): setup.py pyproject.toml constraints-compat.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) $(PIP_INSTALL) --upgrade pip setuptools wheel
	$(COMPAT_PY) $(PIP_INSTALL) -c constraints-compat.txt -e ".[dev,petastorm]"
	$(COMPAT_PY) $(call COMPILE,$(COMPAT_PY))
	$(COMPAT_PY) -m pip check
	touch $(COMPAT_STAMP)

# Spark needs a Java 17 runtime; install Debian's when none is on PATH.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing openjdk-17-jre-headless" >&2; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q openjdk-17-jre-headless; }

bench: setup  ## scoring benchmark, incidents (bench/results/)
	$(PY) bench/score_incidents.py

bench-images: setup  ## scoring benchmark, images
	$(PY) bench/score_images.py

bench-stages: setup  ## whole commands (score, ingest) beside their floor jobs
	$(PY) bench/stages.py

bench-startup: setup  ## a 1,000-row file's commands with and without the JVM class archive
	$(PY) bench/startup.py

bench-train: setup  ## training throughput, 1 and 2 workers
	$(PY) bench/train_scaling.py

# The training feeds side by side on the Spark 3.5 stack: sparkeras' Arrow reader vs petastorm.
bench-feeds: setup-compat  ## training feeds: arrow vs petastorm (Spark 3.5 stack)
	$(COMPAT_PY) bench/train_scaling.py --feeds arrow,petastorm --workers 0,2

clean:  ## remove the local state (.sparkeras: warehouse, metastore, MLflow, logs)
	rm -rf .sparkeras

# The interactive spark-sql shell on the local warehouse and metastore.
spark-sql: setup  ## the interactive spark-sql shell on the local warehouse
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH spark-sql \
	  --conf spark.sql.warehouse.dir=$(CURDIR)/.sparkeras/warehouse \
	  --conf "spark.hadoop.javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName=$(CURDIR)/.sparkeras/metastore_db;create=true"
