"""Channel cost tracker: direct computation, dead channels, bad input."""

import pytest
import torch

from mgd_det.matching import ChannelCostTracker


def direct_cost(student, teacher):
    """Per-image loop: sum over images of 2 - 2 cos(s_i, t_j), a zero map counting cos 0."""
    n, cs, ct = student.shape[0], student.shape[1], teacher.shape[1]
    total = torch.zeros(cs, ct, dtype=torch.float64)
    for k in range(n):
        for i in range(cs):
            for j in range(ct):
                s, t = student[k, i].flatten().double(), teacher[k, j].flatten().double()
                denom = s.norm() * t.norm()
                cos = (s @ t) / denom if denom > 0 else 0.0
                total[i, j] += 2 - 2 * cos
    return total


def test_matches_direct_computation_over_batches():
    gen = torch.Generator().manual_seed(0)
    tracker = ChannelCostTracker(3, 5)
    batches = [
        (torch.randn(2, 3, 4, 3, generator=gen), torch.randn(2, 5, 4, 3, generator=gen))
        for _ in range(2)
    ]
    batches.append((torch.randn(1, 3, 4, 3, generator=gen), torch.randn(1, 5, 4, 3, generator=gen)))
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for s, t in batches:
        tracker.update(s, t)
        expected += direct_cost(s, t)
    assert float(tracker.num_images) == 5
    assert torch.allclose(tracker.cost_sum.double(), expected, atol=1e-5)
    assert torch.allclose(tracker.mean_cost().double(), expected / 5, atol=1e-5)
    tracker.reset()
    assert float(tracker.num_images) == 0 and float(tracker.cost_sum.abs().sum()) == 0
    with pytest.raises(RuntimeError, match="no images"):
        tracker.mean_cost()


def test_dead_channels_give_finite_cost():
    student = torch.randn(2, 2, 3, 3)
    student[:, 1] = 0
    teacher = torch.randn(2, 3, 3, 3)
    teacher[:, 0] = 0
    tracker = ChannelCostTracker(2, 3)
    tracker.update(student, teacher)
    cost = tracker.mean_cost()
    assert torch.isfinite(cost).all()
    assert torch.allclose(cost[1], torch.full((3,), 2.0))
    assert torch.allclose(cost[:, 0], torch.full((2,), 2.0))
    assert torch.allclose(cost.double(), direct_cost(student, teacher) / 2, atol=1e-5)


def test_identical_channels_cost_zero_and_scale_invariant():
    student = torch.randn(3, 2, 4, 4)
    tracker = ChannelCostTracker(2, 2)
    tracker.update(student, 5.0 * student)
    assert torch.allclose(tracker.mean_cost().diagonal(), torch.zeros(2), atol=1e-5)


@pytest.mark.parametrize(
    "student,teacher,match",
    [
        ((2, 3, 4, 4), (3, 5, 4, 4), "batch sizes differ"),
        ((2, 3, 4, 4), (2, 5, 4, 2), "spatial sizes differ"),
        ((2, 4, 4, 4), (2, 5, 4, 4), "expected 3 student and 5 teacher"),
        ((2, 3, 4, 4), (2, 6, 4, 4), "expected 3 student and 5 teacher"),
        ((2, 3, 16), (2, 5, 16), "4-D"),
    ],
)
def test_bad_shapes(student, teacher, match):
    tracker = ChannelCostTracker(3, 5)
    with pytest.raises(ValueError, match=match) as info:
        tracker.update(torch.zeros(student), torch.zeros(teacher))
    assert str(tuple(student)) in str(info.value)


def test_non_finite_features():
    tracker = ChannelCostTracker(1, 1)
    bad = torch.ones(1, 1, 2, 2)
    bad[0, 0, 0, 0] = float("nan")
    tracker.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    tracker.update(torch.ones(1, 1, 2, 2), bad)  # no per-batch read-back ...
    with pytest.raises(FloatingPointError, match="NaN/Inf in the tracked"):
        tracker.mean_cost()  # ... the solve refuses the poisoned statistics


def test_buffers_persistence_flag():
    assert "cost_sum" in ChannelCostTracker(1, 2).state_dict()
    assert ChannelCostTracker(1, 2, persistent=False).state_dict() == {}


def test_all_reduce_without_process_group_is_noop():
    tracker = ChannelCostTracker(1, 2)
    tracker.update(torch.randn(1, 1, 2, 2), torch.randn(1, 2, 2, 2))
    before = tracker.cost_sum.clone()
    tracker.all_reduce()
    assert torch.equal(before, tracker.cost_sum)
