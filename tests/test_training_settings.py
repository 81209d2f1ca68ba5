"""The automatic training settings alone (no Spark, no TensorFlow): small sets get small
batches and more epochs, large sets keep large batches, explicit values win."""
import pytest

from sparkeras.training.settings import resolve

AUTO = "auto"


def auto(shard_rows, replicas_per_worker=1, **explicit):
    values = {"batch_size": AUTO, "epochs": AUTO, "patience": AUTO, "learning_rate": AUTO,
              **explicit}
    return resolve(values["batch_size"], values["epochs"], values["patience"],
                   values["learning_rate"], shard_rows, replicas_per_worker)


def test_a_1000_row_export_gets_small_batches_and_room_to_converge():
    s = auto([809])
    assert (s.global_batch, s.per_worker_batch, s.steps_per_epoch) == (32, 32, 25)
    assert (s.epochs, s.patience, s.learning_rate) == (40, 5, 0.001)
    assert s.why["batch_size"] == "auto: 809 training rows, 25 steps per pass"
    assert "batch_size 32 (auto: 809 training rows, 25 steps per pass)" in s.describe()


def test_a_million_rows_keep_the_large_fast_batch_and_ten_epochs():
    s = auto([799_532])
    assert (s.global_batch, s.steps_per_epoch, s.epochs, s.patience) == (1024, 780, 10, 3)
    assert s.learning_rate == 0.001


@pytest.mark.parametrize("rows, batch", [(1_454, 32), (4_000, 64), (9_600, 128),
                                         (30_000, 512), (100_000, 1024)])
def test_the_batch_gives_at_least_fifty_steps_until_it_reaches_1024(rows, batch):
    s = auto([rows])
    assert s.global_batch == batch
    assert s.steps_per_epoch >= 50 or batch == 32


def test_workers_share_the_global_batch_and_run_the_same_steps():
    one, two = auto([9_600]), auto([4_800, 4_801])
    assert (two.global_batch, two.per_worker_batch) == (one.global_batch, 64)
    assert two.steps_per_epoch == 4_800 // 64
    assert two.why["batch_size"] == "auto: 9,601 training rows on 2 workers, 75 steps per pass"


def test_tiny_sets_are_cycled_so_an_epoch_has_25_steps():
    s = auto([10, 12])                                   # one step per pass over the rows
    assert (s.per_worker_batch, s.global_batch, s.steps_per_epoch) == (10, 20, 25)
    assert (s.epochs, s.why["epochs"]) == (
        40, "auto: at most 40 of 25 steps (25 passes over the rows each); early stopping decides")
    assert auto([7], epochs=30).steps_per_epoch == 1     # an explicit epoch is one pass
    with pytest.raises(ValueError, match="a training worker has no training rows"):
        auto([5, 0])


def test_explicit_values_win_and_an_impossible_batch_is_a_clear_error():
    s = auto([809], batch_size=64, epochs=7, patience=2, learning_rate=0.01)
    assert (s.global_batch, s.epochs, s.patience, s.learning_rate) == (64, 7, 2, 0.01)
    assert set(s.why.values()) == {"set"}
    with pytest.raises(ValueError, match="809 training rows per worker are fewer than one "
                                         "batch of 1024"):
        auto([809], batch_size=1024)
    with pytest.raises(ValueError, match="smaller than the 4 workers"):
        auto([100] * 4, batch_size=2)


def test_the_learning_rate_follows_the_square_root_of_a_batch_above_1024():
    assert auto([800_000], batch_size=4096).learning_rate == 0.002
    assert auto([800_000], batch_size=16384).learning_rate == 0.004
    assert auto([800_000], batch_size=16384, learning_rate=0.001).learning_rate == 0.001


def test_sets_of_20000_rows_or_more_keep_ten_epochs():
    assert auto([9_600]).epochs == 14           # small: more passes, 134,400 samples in all
    assert auto([19_999]).epochs == 10
    assert auto([30_000]).epochs == 10 and auto([80_000]).epochs == 10


def test_the_batch_is_shared_evenly_by_the_devices_of_a_worker():
    s = auto([809], replicas_per_worker=4)        # four GPUs on the driver
    assert s.per_worker_batch % 4 == 0 and s.per_worker_batch == 32
    assert auto([300], replicas_per_worker=4).per_worker_batch == 32
    with pytest.raises(ValueError, match="cannot share evenly: use a multiple of 8"):
        auto([5000, 5000], batch_size=36, replicas_per_worker=4)
