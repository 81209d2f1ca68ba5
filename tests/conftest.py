"""One SparkSession for the whole test run: local[2], 2 shuffle partitions, and a private
state folder (warehouse, Derby metastore, MLflow SQLite store) under pytest's tmp dir."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def cfg(tmp_path_factory):
    from sparkeras.config import load_config
    state = tmp_path_factory.mktemp("state")
    return load_config(None, [
        f"state_dir={state}",
        "spark.master=local[2]",
        "spark.conf={spark.sql.shuffle.partitions: 2, spark.default.parallelism: 2}",
        "tensorflow.intra_op_threads=2",
        "tensorflow.inter_op_threads=1",
        "train.batch_size=256",
        "train.epochs=3",
        "train.hidden_units=[32, 32]",
        "score.arrow_batch_rows=10000",
    ])


@pytest.fixture(scope="session")
def spark(cfg):
    from sparkeras.session import get_spark
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path
