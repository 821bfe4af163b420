"""Assignment solver: optimality against brute force, validity, and the Cs > Ct rule."""

import itertools
import math

import numpy as np
import pytest
import torch

from mgd_det.matching import default_assignment, matched_cost, solve_assignment


def brute_force(cost, groups, capacity=1):
    """Minimum total cost over all ways to give each student `groups` distinct teachers,
    with each teacher used at most `capacity` times."""
    num_student, num_teacher = cost.shape
    best = math.inf
    for choice in itertools.product(range(num_teacher), repeat=num_student * groups):
        rows = [choice[i * groups : (i + 1) * groups] for i in range(num_student)]
        if groups > 1 and any(list(r) != sorted(set(r)) for r in rows):
            continue  # distinct within a student; count each set once (sorted)
        if max(choice.count(j) for j in set(choice)) > capacity:
            continue
        total = sum(cost[i, j] for i, r in enumerate(rows) for j in r)
        best = min(best, total)
    return best


def total(cost, assignment):
    return float(np.take_along_axis(cost, assignment.numpy(), axis=1).sum())


def check_valid(assignment, num_student, num_teacher, groups, capacity=1):
    assert assignment.dtype == torch.long
    assert tuple(assignment.shape) == (num_student, groups)
    a = assignment.numpy()
    assert (a >= 0).all() and (a < num_teacher).all()
    assert (np.diff(a, axis=1) > 0).all(), "rows must be sorted with distinct entries"
    assert np.bincount(a.ravel(), minlength=num_teacher).max() <= capacity


CASES = [
    # (Cs, Ct, sparse, allow_sharing, G, capacity)
    (4, 4, False, False, 1, 1),  # permutation
    (2, 4, False, False, 2, 1),  # Ct = G * Cs
    (3, 6, False, False, 2, 1),
    (2, 5, False, False, 2, 1),  # Ct % Cs != 0
    (3, 7, False, False, 2, 1),
    (3, 5, True, False, 1, 1),  # sparse
    (5, 2, True, True, 1, 3),  # Cs > Ct, sharing
    (5, 3, True, True, 1, 2),
    (4, 2, False, True, 1, 2),  # sharing also applies without the sparse flag
]


@pytest.mark.parametrize("cs,ct,sparse,share,groups,capacity", CASES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", ["scipy", "flow"])
def test_optimal_and_valid(cs, ct, sparse, share, groups, capacity, seed, backend):
    cost = np.random.default_rng(seed).uniform(0, 4, size=(cs, ct))
    assignment = solve_assignment(cost, sparse=sparse, allow_sharing=share, backend=backend)
    check_valid(assignment, cs, ct, groups, capacity)
    # The flow backend rounds costs to 1e-8 (module docstring): optimal within Cs * G * 5e-9.
    assert total(cost, assignment) == pytest.approx(brute_force(cost, groups, capacity), abs=1e-7)


def test_flow_and_scipy_agree_on_r50_to_r18_sized_problem():
    cost = np.random.default_rng(0).uniform(0, 4, size=(64, 256))
    flow, stacked = (solve_assignment(cost, backend=b) for b in ("flow", "scipy"))
    check_valid(flow, 64, 256, 4)
    assert total(cost, flow) == pytest.approx(total(cost, stacked), abs=1e-5)
    with pytest.raises(ValueError, match="unknown assignment backend"):
        solve_assignment(cost, backend="magic")


def test_drops_worst_matching_not_highest_indexed():
    # Teacher channel 0 matches nobody, channel 4 (the highest index) matches well.
    cost = np.array([[4.0, 0.1, 0.2, 3.0, 0.3], [4.0, 3.0, 0.2, 0.1, 0.3]])
    assignment = solve_assignment(cost)
    assert 0 not in assignment.numpy()
    shaved = solve_assignment(cost[:, :4])  # the original code's choice: drop channel 4
    assert total(cost, assignment) < total(cost[:, :4], shaved) - 1.0


def test_accepts_device_tensor_and_float32():
    cost = torch.rand(3, 6, dtype=torch.float32)
    a = solve_assignment(cost)
    b = solve_assignment(cost.double().numpy())
    assert torch.equal(a, b)
    assert matched_cost(cost, a) == pytest.approx(float(cost.gather(1, a).mean()))


def test_student_wider_than_teacher_needs_sharing():
    with pytest.raises(ValueError, match="more channels .* than the teacher"):
        solve_assignment(np.zeros((5, 3)), sparse=True)
    with pytest.raises(ValueError, match="sharing"):
        solve_assignment(np.zeros((5, 3)))


def test_rejects_bad_cost():
    with pytest.raises(ValueError, match="2-D"):
        solve_assignment(np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        solve_assignment(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize("cs,ct,sparse,share,groups,capacity", CASES)
def test_default_assignment_is_valid(cs, ct, sparse, share, groups, capacity):
    check_valid(default_assignment(cs, ct, sparse, share), cs, ct, groups, capacity)
