"""train.feed: petastorm. On the Spark 3.5 stack (`make test-compat`) training is fed by
petastorm's Spark converter, on the driver and on barrier workers; on the primary stack,
where petastorm cannot import, choosing it is a clear configuration-time error."""
import copy
import importlib.util
import warnings

import pytest

from sparkeras.train import train_images, train_incidents

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages


def _petastorm_imports() -> bool:
    if importlib.util.find_spec("petastorm") is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import petastorm.spark  # noqa: F401
    except ImportError:
        return False
    return True


HAS_PETASTORM = _petastorm_imports()
needs_petastorm = pytest.mark.skipif(not HAS_PETASTORM, reason="petastorm imports only on the "
                                     "Spark 3.5 stack: run `make test-compat`")


@pytest.fixture(scope="module")
def ps_cfg(cfg, incident_table):
    incident_table("ps_incidents", 8000, seed=31)
    c = copy.deepcopy(cfg)
    c.registry.incident_model = "ps_root_cause"
    c.train.feed = "petastorm"
    c.train.epochs = 4
    c.train.batch_size = 128
    c.tensorflow.intra_op_threads = 1
    return c


@pytest.mark.skipif(HAS_PETASTORM, reason="petastorm imports on this stack")
def test_petastorm_feed_on_the_primary_stack_is_a_clear_error(spark, ps_cfg):
    with pytest.raises(ValueError, match=r"train.feed: petastorm needs petastorm 0.13.1.*"
                                         r"pyarrow <= 14 and numpy < 2"):
        train_incidents(spark, ps_cfg, "ps_incidents")


@needs_petastorm
@pytest.mark.parametrize("workers", [0, 2])
def test_petastorm_feed_trains_on_the_driver_and_on_barrier_workers(spark, ps_cfg, workers):
    import mlflow
    c = copy.deepcopy(ps_cfg)
    c.train.workers = workers
    result = train_incidents(spark, c, "ps_incidents")
    assert result["epochs_run"] == 4 and result["workers"] == workers
    assert len(set(result["weights_digests"])) == 1            # the workers agree
    assert result["test_metrics"]["accuracy"] > 0.8            # the optimum is 0.8556
    params = mlflow.get_run(result["run_id"]).data.params
    assert params["feed"] == "petastorm"
    # every worker ran the same steps: its share of the converter's rows
    assert int(params["steps_per_epoch"]) == result["rows"]["train"] // max(workers, 1) // (
        128 // max(workers, 1))


@needs_petastorm
def test_petastorm_feed_decodes_image_bytes(spark, cfg, tmp_path):
    from sparkeras.ingest import ingest_images
    from sparkeras.workloads import image_synth
    image_synth.generate(spark, 1400, str(tmp_path / "idx"), "idx", seed=5, n_classes=4)
    ingest_images(spark, cfg, str(tmp_path / "idx"), "ps_images", "idx", size=[28, 28, 1])
    c = copy.deepcopy(cfg)
    c.registry.image_model = "ps_images"
    c.train.feed = "petastorm"
    c.train.epochs = 3
    c.train.batch_size = 64
    result = train_images(spark, c, "ps_images")
    assert result["rows"]["test"] == 200 and result["test_metrics"]["accuracy"] > 0.6  # chance 0.25
