"""Training on Spark barrier workers: TF_CONFIG, equivalence with one worker, resume after a
killed worker, and failing fast when the cluster is too small."""
import copy
import json

import pytest

from sparkeras.train import train_incidents
from sparkeras.training import launcher

pytestmark = [pytest.mark.slow, pytest.mark.compat]   # processes, training, barrier stages


@pytest.fixture(scope="module")
def dist_cfg(cfg, incident_table):
    incident_table("dist_incidents", 12000, seed=21)
    c = copy.deepcopy(cfg)
    c.registry.incident_model = "dist_root_cause"
    c.train.epochs = 3
    c.train.batch_size = 200
    c.train.hidden_units = [32, 32]
    c.tensorflow.intra_op_threads = 1
    c.tensorflow.inter_op_threads = 1
    return c


def _train(spark, cfg, workers, monkeypatch=None, kill=None):
    c = copy.deepcopy(cfg)
    c.train.workers = workers
    if kill:
        monkeypatch.setenv("SPARKERAS_KILL_WORKER", kill)
    try:
        return train_incidents(spark, c, "dist_incidents")
    finally:
        if kill:
            monkeypatch.delenv("SPARKERAS_KILL_WORKER")


@pytest.fixture(scope="module")
def one_and_two(spark, dist_cfg):
    return _train(spark, dist_cfg, 1), _train(spark, dist_cfg, 2)


def test_two_workers_hold_identical_weights_and_match_one_worker(one_and_two):
    one, two = one_and_two
    assert two["workers"] == 2 and two["attempts"] == 1 and two["epochs_run"] == 3
    assert len(two["weights_digests"]) == 2
    assert two["weights_digests"][0] == two["weights_digests"][1]
    assert abs(two["test_metrics"]["accuracy"] - one["test_metrics"]["accuracy"]) <= 0.02
    assert two["test_metrics"]["accuracy"] > 0.8            # the optimum is 0.8556


def test_a_killed_worker_resumes_from_the_last_epoch(spark, dist_cfg, one_and_two, monkeypatch):
    import mlflow
    _, uninterrupted = one_and_two
    before = len(mlflow.MlflowClient().search_model_versions("name='dist_root_cause'"))
    resumed = _train(spark, dist_cfg, 2, monkeypatch, kill="1:2")   # worker 1, epoch 2
    assert resumed["attempts"] == 2 and resumed["resumed_from_epoch"] == 1
    assert resumed["epochs_run"] == 3
    # model and optimizer state and the epoch-seeded data order are restored exactly:
    assert resumed["weights_digests"] == uninterrupted["weights_digests"]
    assert resumed["test_metrics"] == uninterrupted["test_metrics"]
    after = mlflow.MlflowClient().search_model_versions("name='dist_root_cause'")
    assert len(after) == before + 1                               # one model registered
    run = mlflow.get_run(resumed["run_id"])
    assert run.data.metrics["attempts"] == 2 and run.data.metrics["resumed_from_epoch"] == 1


def test_more_workers_than_slots_fails_at_once(spark, dist_cfg):
    c = copy.deepcopy(dist_cfg)
    c.train.workers = 3
    with pytest.raises(launcher.NotEnoughSlots, match="needs 3 task slots at once .* has 2"):
        train_incidents(spark, c, "dist_incidents")


def test_tf_config_ports_and_gpu_pinning():
    config = json.loads(launcher.tf_config(["10.0.0.1:4001", "10.0.0.2:4002"], 1))
    assert config == {"cluster": {"worker": ["10.0.0.1:4001", "10.0.0.2:4002"]},
                      "task": {"type": "worker", "index": 1}}
    assert len({launcher.free_port() for _ in range(5)}) >= 2

    class Resource:   # what TaskContext.resources() holds: ResourceInformation objects
        def __init__(self, addresses):
            self.addresses = addresses
    assert launcher.gpu_environment({"gpu": Resource(["2", "3"])}) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert launcher.gpu_environment({}) == {"CUDA_VISIBLE_DEVICES": "-1"}


def test_mixed_precision_on_the_driver_leaves_the_policy_as_it_was(spark, dist_cfg):
    import keras
    c = copy.deepcopy(dist_cfg)
    c.train.precision = "mixed_bfloat16"
    c.registry.incident_model = "dist_bf16"
    result = _train(spark, c, 0)
    assert result["test_metrics"]["accuracy"] > 0.8
    assert keras.mixed_precision.global_policy().name == "float32"
