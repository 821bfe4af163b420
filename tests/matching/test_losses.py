"""Partial L2 loss and channel reducers against reference computations."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from mgd_det.matching import REDUCERS, partial_l2_loss, reduce_teacher


def reference_partial_l2(student, target, margin):
    total = 0.0
    for idx in itertools.product(*(range(n) for n in student.shape)):
        s, t = float(student[idx]), float(target[idx])
        if margin is not None:
            t = max(t, float(margin.expand_as(target)[idx]))
            if not (s > t or t > 0):
                continue
        total += (s - t) ** 2
    return total


@pytest.mark.parametrize("with_margin", [False, True])
def test_partial_l2_matches_reference(with_margin):
    gen = torch.Generator().manual_seed(0)
    student, target = torch.randn(2, 3, 2, 2, generator=gen), torch.randn(2, 3, 2, 2, generator=gen)
    margin = torch.tensor([-0.5, -0.1, -1.0]).view(1, 3, 1, 1) if with_margin else None
    got = partial_l2_loss(student, target, margin)
    assert float(got) == pytest.approx(reference_partial_l2(student, target, margin), rel=1e-5)


def test_partial_l2_margin_enabled_flag_selects_plain_l2():
    student, target = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    margin = torch.full((1, 3, 1, 1), -0.3)
    off = partial_l2_loss(student, target, margin, torch.tensor(False))
    on = partial_l2_loss(student, target, margin, torch.tensor(True))
    assert torch.allclose(off, partial_l2_loss(student, target))
    assert torch.allclose(on, partial_l2_loss(student, target, margin))


def test_partial_l2_gradient_only_to_student_and_shape_check():
    student = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.randn(1, 2, 3, 3, requires_grad=True)
    partial_l2_loss(student, target, torch.full((1, 2, 1, 1), -0.2)).backward()
    assert student.grad is not None and target.grad is None
    with pytest.raises(ValueError, match="shapes differ"):
        partial_l2_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 2))
    with pytest.raises(ValueError, match="does not broadcast"):
        partial_l2_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 1, 1))


def reference_reduce(teacher, assignment, margin, reducer, choice=None):
    """Loops over every element; `choice` (N, Cs, H, W) gives RD's drawn group."""
    n, _, h, w = teacher.shape
    cs, groups = assignment.shape
    target = torch.zeros(n, cs, h, w)
    elem_margin = torch.zeros(n, cs, h, w)
    for k, i, y, x in itertools.product(range(n), range(cs), range(h), range(w)):
        values = [float(teacher[k, int(assignment[i, g]), y, x]) for g in range(groups)]
        margins = [float(margin[int(assignment[i, g])]) for g in range(groups)]
        if reducer == "SM":
            pick, m = values[0], margins[0]
        elif reducer == "RD":
            g = int(choice[k, i, y, x])
            pick, m = values[g], margins[g]
        elif reducer == "AMP":
            pick, m = max(values, key=abs), sum(margins) / groups
        else:
            pick, m = max(values), max(margins)
        target[k, i, y, x], elem_margin[k, i, y, x] = pick, m
    return target, elem_margin


def _inputs(groups):
    gen = torch.Generator().manual_seed(groups)
    teacher = torch.randn(2, 6, 3, 2, generator=gen)
    assignment = torch.randperm(6, generator=gen)[: 3 * groups].view(3, groups).sort(dim=1).values
    margin = -torch.rand(6, generator=gen)
    return teacher, assignment, margin


@pytest.mark.parametrize(
    "reducer,groups", [("SM", 1), ("AMP", 2), ("SP", 2), ("AMP", 1), ("SP", 1)]
)
def test_deterministic_reducers_match_reference(reducer, groups):
    teacher, assignment, margin = _inputs(groups)
    target, got_margin = reduce_teacher(teacher, assignment, margin, reducer)
    ref_target, ref_margin = reference_reduce(teacher, assignment, margin, reducer)
    assert torch.equal(target, ref_target)
    assert got_margin.shape == (1, 3, 1, 1)
    assert torch.allclose(got_margin.expand_as(ref_margin), ref_margin)
    target2, none_margin = reduce_teacher(teacher, assignment, None, reducer)
    assert none_margin is None and torch.equal(target2, target)


def test_random_drop_matches_reference_and_is_reproducible():
    teacher, assignment, margin = _inputs(2)
    first, m1 = reduce_teacher(teacher, assignment, margin, "RD", torch.Generator().manual_seed(7))
    again, m2 = reduce_teacher(teacher, assignment, margin, "RD", torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and torch.equal(m1, m2)
    assert m1.shape == first.shape
    # Recover the drawn group from the gathered values and replay it through the reference.
    gathered = teacher[:, assignment]
    choice = (gathered == first.unsqueeze(2)).float().argmax(dim=2)
    ref_target, ref_margin = reference_reduce(teacher, assignment, margin, "RD", choice)
    assert torch.equal(first, ref_target) and torch.allclose(m1, ref_margin)
    assert set(choice.unique().tolist()) == {0, 1}

    gen = torch.Generator().manual_seed(7)
    draws = [reduce_teacher(teacher, assignment, None, "RD", gen)[0] for _ in range(2)]
    assert not torch.equal(draws[0], draws[1]), "RD must resample on every call"
    other_seed = reduce_teacher(teacher, assignment, None, "RD", torch.Generator().manual_seed(8))[
        0
    ]
    assert not torch.equal(first, other_seed)


def test_reducer_errors():
    teacher, assignment, margin = _inputs(2)
    with pytest.raises(ValueError, match="SM, RD, AMP, SP"):
        reduce_teacher(teacher, assignment, margin, "MAX")
    with pytest.raises(ValueError, match="'SM' needs one teacher channel"):
        reduce_teacher(teacher, assignment, margin, "SM")
    with pytest.raises(ValueError, match=r"shape \[Ct\]"):
        reduce_teacher(teacher, assignment, margin[:4], "AMP")
    with pytest.raises(ValueError, match="long tensor"):
        reduce_teacher(teacher, assignment.int(), margin, "AMP")


@pytest.mark.parametrize("reducer", REDUCERS)
def test_reducers_pass_no_gradient_to_teacher(reducer):
    teacher, assignment, margin = _inputs(1 if reducer == "SM" else 2)
    teacher.requires_grad_(True)
    student = torch.randn(2, 3, 3, 2, requires_grad=True)
    target, m = reduce_teacher(teacher, assignment, margin, reducer)
    partial_l2_loss(student, target, m).backward()
    assert student.grad is not None and teacher.grad is None
