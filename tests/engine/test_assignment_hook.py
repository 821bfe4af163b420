"""Scheduling and data of the assignment updates (no training needed)."""
import pytest

from _tiny import tiny_cfg
from mgd_det.engine import UpdateSchedule, epoch_length
from mgd_det.engine.assignment_hook import TrackingBatches


def test_schedule_every_period_then_slower():
    schedule = UpdateSchedule(period=4, slow_after=8, slow_period=6)
    due = [i for i in range(1, 30) if schedule.due(i)]
    assert due == [4, 8, 14, 20, 26]
    assert [i for i in range(1, 10) if UpdateSchedule(3).due(i)] == [3, 6, 9]
    with pytest.raises(ValueError, match="positive"):
        UpdateSchedule(0)


def test_epoch_length_is_ceil_of_images_over_batch(tiny_datasets, tmp_path):
    assert epoch_length(16, 2) == 8 and epoch_length(16, 5) == 4 and epoch_length(1, 16) == 1
    tracking = TrackingBatches(tiny_cfg("retinanet_R18_FPN.yaml", tmp_path), seed=0)
    assert len(tracking.dataset) == 16  # what the hook divides by the batch


def test_tracking_batches_are_seeded_per_update_and_leave_global_rng_alone(tiny_datasets, tmp_path):
    import numpy as np
    import torch

    tracking = TrackingBatches(tiny_cfg("retinanet_R18_FPN.yaml", tmp_path), seed=0)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    ids = lambda update: [[x["image_id"] for x in b] for b in tracking.batches(3, update)]  # noqa: E731
    first = ids(0)
    assert len(first) == 3 and all(len(b) == 2 for b in first)
    assert ids(0) == first and ids(1) != first
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert (np.random.get_state()[1] == np_state).all()
    batch = next(iter(tracking.batches(1, 0)))
    assert "instances" not in batch[0]  # test-time mapper: images only, no augmentation
