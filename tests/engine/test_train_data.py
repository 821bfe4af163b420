"""TrainData: the loader's samplers resume, checkpoint and reload as one value; and the one
ground-truth marker read at both stages (data set dict, mapped input)."""
import numpy as np
import torch

from mgd_det.data.preferential_sampler import PreferentialSampler
from mgd_det.data.samplers import ResumableTrainingSampler
from mgd_det.engine.batch_observer import BatchObserver
from mgd_det.engine.train_data import TrainData
from mgd_det.data.samplers import MixedBatchSampler
from mgd_det.ground_truth import is_unlabeled


def _mixed(seed=3):
    pool = PreferentialSampler(np.arange(1.0, 9.0), seed=seed, rank=0, world_size=1)
    sampler = MixedBatchSampler(ResumableTrainingSampler(5, seed=seed), pool, 5, batch_size=4, num_labeled=1)
    return TrainData([], sampler=sampler, pool_sampler=pool, pool_names=["pool"], pool_images_per_batch=3)


def _take(sampler, n):
    stream = iter(sampler)
    return [next(stream) for _ in range(n)]


def test_state_round_trip_continues_the_stream_of_an_interrupted_run():
    run = _mixed()
    full = _take(run.sampler, 4 * 6)
    state = run.state_dict(completed_iters=3)
    assert state["sampler_seed"] == 3 and state["pool_sampler"]["num_consumed"] == 9  # 3 iterations x 3 pool images
    resumed = _mixed(seed=11)  # a fresh process: its own seed until the state is loaded
    resumed.load_state_dict(state)
    resumed.fast_forward(3, images_per_rank=4)
    assert resumed.sampler.seed == 3 and _take(resumed.sampler, 12) == full[12:]


def test_without_samplers_there_is_no_state_and_nothing_to_skip():
    data = TrainData([[1], [2]])
    data.fast_forward(5, images_per_rank=2)
    assert data.state_dict(completed_iters=5) == {} and data.heldout_dicts is None
    data.load_state_dict({"sampler_seed": 1})  # nothing to restore: ignored


def test_a_wrapped_loader_keeps_the_rest_of_the_data():
    sampler = ResumableTrainingSampler(4, seed=0)
    data = TrainData([[0], [1]], sampler=sampler, heldout_dicts=[{"image_id": 9}])
    wrapped = data.with_loader(BatchObserver(data.loader))
    assert isinstance(wrapped.loader, BatchObserver) and list(wrapped.loader) == [[0], [1]]
    assert wrapped.sampler is sampler and wrapped.heldout_dicts == [{"image_id": 9}]
    assert data.loader == [[0], [1]]  # the original value is unchanged


def test_ground_truth_marker_at_both_stages():
    assert is_unlabeled({"file_name": "a.png"})
    assert not is_unlabeled({"file_name": "a.png", "annotations": []})  # annotated, no objects
    assert not is_unlabeled({"image": torch.zeros(3, 2, 2), "instances": object()})  # mapped, labeled
    assert is_unlabeled({"image": torch.zeros(3, 2, 2)})  # mapped, unlabeled
