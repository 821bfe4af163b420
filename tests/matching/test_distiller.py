"""PathwayDistiller in the MGD common case (one reducer over several positions): loss, checkpointing,
assignment updates, no host sync, bad input."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from _mgd import Position, mgd_distiller
from mgd_det.matching import (
    ConstantWeighting,
    NetOutputs,
    TeacherOutput,
    partial_l2_loss,
    reduce_teacher,
    solve_assignment,
)


def run(distiller, student, teacher):
    """The distiller's losses for feature dicts (no head outputs)."""
    return distiller(NetOutputs(student), TeacherOutput(teacher))

POSITIONS = [Position("c2", 4, 8, factor=2.0), Position("c3", 3, 7)]


def feats(batch=2, size=4, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    student = {
        p.name: torch.randn(batch, p.student_channels, size, size, generator=gen) for p in POSITIONS
    }
    teacher = {
        p.name: torch.randn(batch, p.teacher_channels, size, size, generator=gen) for p in POSITIONS
    }
    if requires_grad:
        for t in list(student.values()) + list(teacher.values()):
            t.requires_grad_(True)
    return student, teacher


def margins():
    return {p.name: -torch.rand(p.teacher_channels) for p in POSITIONS}


def test_buffers_and_defaults():
    d = mgd_distiller(POSITIONS)
    assert not bool(d.assigned)
    assert tuple(d.assignment("c2").shape) == (4, 2) and tuple(d.assignment("c3").shape) == (3, 2)
    assert list(d.matchers) == ["c2_g2", "c3_g2"] and d.pathway_names == ("mgd_c2", "mgd_c3")
    keys = set(d.state_dict())
    for name in ("c2", "c3"):
        assert {
            f"matchers.{name}_g2.assignment",
            f"matchers.{name}_g2.margin",
            f"matchers.{name}_g2.margin_set",
            f"pathways.mgd_{name}.norm.weight",
            f"pathways.mgd_{name}.norm.running_mean",
        } <= keys
    assert "assigned" in keys
    assert not any("tracker" in k for k in keys), "tracker statistics are transient"
    assert not any(k.startswith("weighting.") for k in keys), "fixed weights come from the config"


@pytest.mark.parametrize("reducer", ["AMP", "SP", "SM"])
@pytest.mark.parametrize("norm", ["BN", "GN", "none"])
def test_loss_equals_manual_composition(reducer, norm):
    d = mgd_distiller(POSITIONS, reducer=reducer, student_norm=norm)
    if norm == "GN":  # min(32, C) groups
        assert d.pathways["mgd_c2"].norm.num_groups == 4 and d.pathways["mgd_c3"].norm.num_groups == 3
    given = margins()
    d.set_margins({"c2": given["c2"], "c3": None})
    student, teacher = feats()
    losses = run(d, student, teacher)
    assert set(losses) == {"loss_mgd_c2", "loss_mgd_c3"}
    for p in POSITIONS:
        margin = given[p.name] if p.name == "c2" else None
        target, m = reduce_teacher(teacher[p.name], d.assignment(p.name), margin, reducer)
        expected = partial_l2_loss(d.pathways[f"mgd_{p.name}"].norm(student[p.name]), target, m) * p.factor / 2
        assert torch.allclose(losses[f"loss_mgd_{p.name}"], expected, rtol=1e-5)


def test_weighting_scales_losses():
    student, teacher = feats()
    plain = run(mgd_distiller(POSITIONS), student, teacher)  # factors 2.0 and 1.0
    weighted = mgd_distiller(POSITIONS, weighting=ConstantWeighting({"mgd_c2": 0.5, "mgd_c3": 3.0}))
    got = run(weighted, student, teacher)
    # The weighting is the only scale: it replaces the factors, it does not multiply them.
    assert torch.allclose(got["loss_mgd_c2"], 0.25 * plain["loss_mgd_c2"])
    assert torch.allclose(got["loss_mgd_c3"], 3.0 * plain["loss_mgd_c3"])
    with pytest.raises(ValueError, match=r"no weight for pathways \['mgd_c3'\]"):
        mgd_distiller(POSITIONS, weighting=ConstantWeighting({"mgd_c2": 1.0}))


def test_gradient_reaches_student_only():
    d = mgd_distiller(POSITIONS, reducer="RD")
    d.set_margins(margins())
    student, teacher = feats(requires_grad=True)
    sum(run(d, student, teacher).values()).backward()
    assert all(s.grad is not None for s in student.values())
    assert all(t.grad is None for t in teacher.values())
    assert d.pathways["mgd_c2"].norm.weight.grad is not None


@pytest.mark.parametrize("reducer", ["AMP", "RD", "SP", "SM"])
@pytest.mark.parametrize("norm", ["BN", "GN", "SyncBN"])
def test_forward_backward_without_host_sync(reducer, norm):
    d = mgd_distiller(
        POSITIONS,
        reducer=reducer,
        student_norm=norm,
        num_groups=1,
        weighting=ConstantWeighting({"mgd_c2": 1.0, "mgd_c3": 2.0}),
    )
    d.set_margins({"c2": margins()["c2"], "c3": None})
    student, teacher = feats(requires_grad=True)
    mp_ = pytest.MonkeyPatch()
    try:
        for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
            mp_.setattr(torch.Tensor, name, _forbidden(name))
        losses = run(d, student, teacher)
        sum(losses.values()).backward()
    finally:
        mp_.undo()
    assert all(torch.isfinite(v) for v in losses.values())


def _forbidden(name):
    def raiser(*args, **kwargs):
        raise AssertionError(f"host synchronisation: Tensor.{name} called")

    return raiser


def test_sync_guard_is_effective():
    mp_ = pytest.MonkeyPatch()
    try:
        mp_.setattr(torch.Tensor, "item", _forbidden("item"))
        with pytest.raises(AssertionError, match="host synchronisation"):
            torch.ones(1).item()
    finally:
        mp_.undo()


def test_state_dict_round_trip_reproduces_loss():
    d = mgd_distiller(POSITIONS, reducer="AMP", student_norm="BN")
    d.set_margins(margins())
    student, teacher = feats()
    d.start_tracking()
    d.track(student, teacher)
    d.finish_tracking()
    run(d, student, teacher)  # move BN running statistics away from their defaults
    with torch.no_grad():
        d.pathways["mgd_c2"].norm.weight.uniform_(0.5, 2.0)
    fresh = mgd_distiller(POSITIONS, reducer="AMP", student_norm="BN")
    fresh.load_state_dict(d.state_dict())
    d.eval()
    fresh.eval()
    assert bool(fresh.assigned)
    for name in ("c2", "c3"):
        assert torch.equal(fresh.assignment(name), d.assignment(name))
    a, b = run(d, student, teacher), run(fresh, student, teacher)
    assert all(torch.equal(a[k], b[k]) for k in a)


def planted(seed=0):
    """Teacher channels are positively scaled, permuted copies of the student's (G = 2)."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 4, 5, 5, generator=gen)
    perm = torch.randperm(8, generator=gen)
    teacher = torch.cat([student, student], dim=1)[:, perm] * (
        1 + torch.rand(1, 8, 1, 1, generator=gen)
    )
    expected = torch.stack([(perm % 4 == i).nonzero().flatten() for i in range(4)])
    return student, teacher, expected


def test_finish_tracking_recovers_planted_assignment():
    student, teacher, expected = planted()
    d = mgd_distiller([Position("c2", 4, 8)])
    d.start_tracking()
    d.track({"c2": student[:2]}, {"c2": teacher[:2]})
    d.track({"c2": student[2:]}, {"c2": teacher[2:]})
    stats = d.finish_tracking()["c2_g2"]
    assert torch.equal(d.assignment("c2"), expected)
    assert stats["mean_matched_cost"] == pytest.approx(0.0, abs=1e-5)
    assert stats["num_changed"] == int(
        (expected != torch.tensor([[0, 4], [1, 5], [2, 6], [3, 7]])).any(1).sum()
    )
    assert stats["solve_seconds"] >= 0 and bool(d.assigned)
    # Tracking again on the same data changes nothing.
    d.start_tracking()
    d.track({"c2": student}, {"c2": teacher})
    assert d.finish_tracking()["c2_g2"]["num_changed"] == 0


def test_sparse_sharing_distiller():
    d = mgd_distiller([Position("p", 5, 3)], reducer="SM", allow_sharing=True)
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 3, generator=gen), torch.randn(2, 3, 3, 3, generator=gen)
    d.start_tracking()
    d.track({"p": s}, {"p": t})
    d.finish_tracking()
    assert torch.equal(
        d.assignment("p"),
        solve_assignment(d.matchers["p_g1"].tracker.mean_cost(), sparse=True, allow_sharing=True),
    )
    assert torch.bincount(d.assignment("p").flatten(), minlength=3).max() <= 2
    assert run(d, {"p": s}, {"p": t})["loss_mgd_p"].shape == ()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reducer="MAX"), "SM, RD, AMP, SP"),
        (dict(student_norm="LN"), "BN, SyncBN, GN, none"),
        (
            dict(positions=[Position("c5", 8, 4)]),
            "student is wider than the teacher .8 vs 4 channels.: only SM",
        ),
        (dict(positions=[Position("c5", 8, 4)], allow_sharing=True), "SM family"),
        (
            dict(positions=[Position("c5", 6, 12)], student_norm="GN", norm_groups=4),
            "does not divide 6",
        ),
        (dict(positions=[]), "at least one pathway"),
        (dict(positions=[Position("c2", 1, 2), Position("c2", 1, 2)]), "unique"),
    ],
)
def test_bad_construction(kwargs, match):
    kwargs.setdefault("positions", POSITIONS)
    with pytest.raises(ValueError, match=match):
        mgd_distiller(**kwargs)


def test_bad_position_name():
    with pytest.raises(ValueError, match="identifier"):
        mgd_distiller([Position("res.2", 4, 8)])


def test_bad_inputs():
    d = mgd_distiller(POSITIONS)
    student, teacher = feats()
    with pytest.raises(ValueError, match=r"student features lack position\(s\) \['c3'\]"):
        run(d, {"c2": student["c2"]}, teacher)
    with pytest.raises(ValueError, match="pathway 'mgd_c3': spatial sizes differ"):
        run(d, student, {**teacher, "c3": teacher["c3"][:, :, :2]})
    with pytest.raises(ValueError, match="position 'c2': batch sizes differ"):
        d.track(student, {**teacher, "c2": teacher["c2"][:1]})
    with pytest.raises(ValueError, match="pathway 'mgd_c2': expected 4 student and 8 teacher"):
        run(d, student, {**teacher, "c2": teacher["c2"][:, :6]})
    with pytest.raises(ValueError, match=r"positions \['c9'\] that no matched pathway reads"):
        d.set_margins({"c9": None})
    with pytest.raises(ValueError, match=r"must have shape \(8,\)"):
        d.set_margins({"c2": torch.zeros(7)})
    with pytest.raises(RuntimeError, match="no images"):
        d.finish_tracking()


def test_non_finite_features_and_margins():
    d = mgd_distiller(POSITIONS)
    student, teacher = feats()
    teacher["c3"][0, 0, 0, 0] = float("inf")
    d.start_tracking()
    d.track(student, teacher)  # no per-batch read-back; the solve refuses the statistics
    with pytest.raises(FloatingPointError, match="position 'c3'.*NaN/Inf"):
        d.finish_tracking()
    with pytest.raises(FloatingPointError, match="margins for position 'c2'"):
        d.set_margins({"c2": torch.full((8,), float("nan"))})
    assert not bool(d.matchers["c2_g2"].margin_set)


def _distributed_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        student, teacher, _ = planted()
        d = mgd_distiller([Position("c2", 4, 8)])
        d.start_tracking()
        d.track(
            {"c2": student[rank::world]}, {"c2": teacher[rank::world]}
        )  # each rank: its own images
        stats = d.finish_tracking()
        torch.save(
            {"assignment": d.assignment("c2"), "cost": d.matchers["c2_g2"].tracker.mean_cost(), "stats": stats},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_all_reduce_and_broadcast(tmp_path):
    world = 2
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    student, teacher, expected = planted()
    single = mgd_distiller([Position("c2", 4, 8)])
    single.start_tracking()
    single.track({"c2": student}, {"c2": teacher})
    single.finish_tracking()
    for result in results:
        assert torch.equal(result["assignment"], expected)
        assert torch.allclose(result["cost"], single.matchers["c2_g2"].tracker.mean_cost(), atol=1e-6)
    assert results[1]["stats"]["c2_g2"]["solve_seconds"] == 0.0
