"""One SparkSession for the whole test run: local[2], 2 shuffle partitions, and a private
state folder (warehouse, Derby metastore, MLflow SQLite store) under pytest's tmp dir."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


SETTINGS = [
    "spark.master=local[2]",
    "spark.conf={spark.sql.shuffle.partitions: 2, spark.default.parallelism: 2}",
    "tensorflow.intra_op_threads=2",
    "tensorflow.inter_op_threads=1",
    "train.batch_size=256",
    "train.epochs=3",
    "train.hidden_units=[32, 32]",
    "score.arrow_batch_rows=10000",
]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def cfg(state_dir):
    from sparkeras.config import load_config
    return load_config(None, [f"state_dir={state_dir}", *SETTINGS])


@pytest.fixture(scope="session")
def write_conf(state_dir, tmp_path_factory):
    """write_conf(*extra) -> the path of a YAML config file equal to the session's ``cfg``
    plus ``extra`` key=value settings (for notebooks and subprocesses that read a file)."""
    import yaml

    from sparkeras.config import parse_override

    def write(*extra: str) -> str:
        data: dict = {}
        for text in [f"state_dir={state_dir}", *SETTINGS, *extra]:
            keys, value = parse_override(text)
            node = data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        path = tmp_path_factory.mktemp("conf") / "test.yml"
        path.write_text(yaml.safe_dump(data))
        return str(path)
    return write


@pytest.fixture(scope="session")
def spark(cfg):
    from sparkeras.session import get_spark
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


@pytest.fixture(scope="session")
def incident_table(spark, cfg, tmp_path_factory):
    """incident_table(name, rows, seed) -> ``rows`` generated incidents, exported as CSV and
    ingested into the table ``name``; returns its qualified name."""
    from sparkeras.ingest import ingest_incidents
    from sparkeras.workloads import incidents

    def make(name: str, rows: int, seed: int) -> str:
        src = str(tmp_path_factory.mktemp(name) / "incidents")
        incidents.write_generated(spark, rows, src, seed=seed)
        ingest_incidents(spark, cfg, src, name, "csv")
        return f"default.{name}"
    return make


@pytest.fixture(scope="session")
def photo_commands(tmp_path_factory):
    """A folder of photos through the command line, each step a new process: ``generate
    images`` (210 in 3 classes, plus one broken file) -> ``ingest images`` -> ``train images``
    (2 barrier workers, the classic CNN). Shared by the CLI test that checks each step and the
    drill that kills a scoring worker: the three commands cost ~80 s. Returns the state folder
    and each command's JSON summary."""
    from types import SimpleNamespace

    from clirun import sparkeras, summary
    root = tmp_path_factory.mktemp("photos")
    state, photos = root / "state", root / "photos"
    generated = summary(sparkeras(state, "generate", "images", "--count", "210", "--out",
                                  str(photos), "--format", "folder", "--classes", "3"))
    (photos / "train" / "angle_060" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    size = ["--set", "images.size.folder=[32, 32, 3]"]
    ingested = summary(sparkeras(state, *size, "ingest", "images", "--source", str(photos),
                                 "--table", "shapes", "--format", "folder"))
    trained = summary(sparkeras(state, *size, "--set", "images.architecture=classic_cnn",
                                "train", "images", "--table", "shapes", "--epochs", "1",
                                "--batch-size", "32", "--workers", "2"))
    return SimpleNamespace(state=state, generated=generated, ingested=ingested, trained=trained)
