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

.PHONY: run test test-compat setup setup-compat java bench bench-images bench-train bench-feeds clean spark-sql

run: setup
	$(VENV)/bin/sparkeras demo

test: setup
	$(PY) -m pytest tests

test-compat: setup-compat
	$(COMPAT_PY) -m pytest tests

setup: java $(STAMP)

setup-compat: java $(COMPAT_STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

$(COMPAT_STAMP): setup.py constraints-compat.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip setuptools wheel
	$(COMPAT_PY) -m pip install -q -c constraints-compat.txt -e ".[dev,petastorm]"
	$(COMPAT_PY) -m pip check
	touch $(COMPAT_STAMP)

# Spark needs a Java 17 runtime; install Debian's when none is on PATH.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing openjdk-17-jre-headless" >&2; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q openjdk-17-jre-headless; }

bench: setup
	$(PY) bench/score_incidents.py

bench-images: setup
	$(PY) bench/score_images.py

bench-train: setup
	$(PY) bench/train_scaling.py

# The training feeds side by side on the Spark 3.5 stack: sparkeras' Arrow reader vs petastorm.
bench-feeds: setup-compat
	$(COMPAT_PY) bench/train_scaling.py --feeds arrow,petastorm --workers 0,2

clean:
	rm -rf .sparkeras

# The interactive spark-sql shell on the local warehouse and metastore.
spark-sql: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH spark-sql \
	  --conf spark.sql.warehouse.dir=$(CURDIR)/.sparkeras/warehouse \
	  --conf "spark.hadoop.javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName=$(CURDIR)/.sparkeras/metastore_db;create=true"
