"""Pathways: parsing, shared matching, the PKD/KD/BOX families, one weighting for all."""
import pytest
import torch

from mgd_det.matching import (
    ConstantWeighting,
    NetOutputs,
    PathwayDistiller,
    PathwaySpec,
    TeacherOutput,
    parse_pathway,
    solve_assignment,
)
from mgd_det.matching.families.kd import dense_kd_loss


@pytest.mark.parametrize(
    "text,expected",
    [
        ("AMP:res4:2e-7", PathwaySpec("AMP", "res4", 2e-7, "amp_res4")),
        ("sm4=SM:res4", PathwaySpec("SM", "res4", 1.0, "sm4")),
        ("pkd:p3:0.5", PathwaySpec("PKD", "p3", 0.5, "pkd_p3")),
        ("KD:0.25", PathwaySpec("KD", None, 0.25, "kd")),
        ("BOX", PathwaySpec("BOX", None, 1.0, "box")),
    ],
)
def test_parse_pathway(text, expected):
    assert parse_pathway(text) == expected


@pytest.mark.parametrize(
    "text,match",
    [
        ("MAX:res4", "unknown pathway family 'MAX'"),
        ("AMP", "needs a position"),
        ("AMP:res4:x", "factor 'x' is not a number"),
        ("AMP:res4:1:2", "too many ':' fields"),
        ("AMP:res4:-1", "finite and >= 0"),
        ("a.b=AMP:res4", "cannot read pathway|identifier"),
    ],
)
def test_parse_pathway_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_pathway(text)


def _feats(channels, batch=2, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = {p: torch.randn(batch, cs, size, size, generator=gen) for p, (cs, _) in channels.items()}
    teacher = {p: torch.randn(batch, ct, size, size, generator=gen) for p, (_, ct) in channels.items()}
    return student, teacher


def test_pathways_on_one_position_share_one_matcher_and_one_solve():
    channels = {"c4": (4, 8)}
    specs = [PathwaySpec("AMP", "c4", 1.0), PathwaySpec("SP", "c4", 2.0), PathwaySpec("SM", "c4", 0.5)]
    d = PathwayDistiller(specs, channels, option_defaults={"student_norm": "none"})
    # AMP and SP: G = 2, one matcher; SM: G = 1, its own one-to-one matching.
    assert sorted(d.matchers) == ["c4_g1", "c4_g2"]
    assert d.pathways["amp_c4"].matcher is d.pathways["sp_c4"].matcher is d.matchers["c4_g2"]
    calls = []

    def counting_solve(cost, **kwargs):
        calls.append(kwargs["sparse"])
        return solve_assignment(cost, **kwargs)

    student, teacher = _feats(channels)
    d.start_tracking()
    d.track(student, teacher)
    d.finish_tracking(solve_fn=counting_solve)
    assert sorted(calls) == [False, True], "one solve per matcher, not per pathway"
    losses = d(NetOutputs(student), TeacherOutput(teacher))
    assert sorted(losses) == ["loss_amp_c4", "loss_sm_c4", "loss_sp_c4"]
    # Equal widths: G = 1 either way, so SM and AMP share the matcher too.
    shared = PathwayDistiller([PathwaySpec("AMP", "p3"), PathwaySpec("SM", "p3")], {"p3": (4, 4)})
    assert list(shared.matchers) == ["p3_g1"]


def test_pkd_is_two_times_one_minus_pearson_and_ignores_scale():
    d = PathwayDistiller([PathwaySpec("PKD", "p3", 1.0)], {"p3": (3, 3)})
    assert isinstance(d.pathways["pkd_p3"].connector, torch.nn.Identity)
    student, teacher = _feats({"p3": (3, 3)}, size=5)
    loss = d(NetOutputs(student), TeacherOutput(teacher))["loss_pkd_p3"]
    s, t = student["p3"].flatten(2), teacher["p3"].flatten(2)
    s, t = s - s.mean(2, keepdim=True), t - t.mean(2, keepdim=True)
    pearson = (s * t).sum(2) / (s.norm(dim=2) * t.norm(dim=2))
    assert float(loss) == pytest.approx(float((2 * (1 - pearson)).mean()), rel=1e-3)
    # A per-channel positive affine copy of the student is a perfect teacher.
    scaled = {"p3": student["p3"] * torch.tensor([2.0, 5.0, 0.1]).view(1, 3, 1, 1) + 7.0}
    assert float(d(NetOutputs(student), TeacherOutput(scaled))["loss_pkd_p3"]) < 1e-4
    # Different widths: a trainable 1x1 connector, and gradients reach it.
    wide = PathwayDistiller([PathwaySpec("PKD", "p3")], {"p3": (3, 6)})
    student, teacher = _feats({"p3": (3, 6)})
    wide(NetOutputs(student), TeacherOutput(teacher))["loss_pkd_p3"].backward()
    assert wide.pathways["pkd_p3"].connector.weight.grad is not None


def _head(batch=2, anchors=3, classes=4, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        [torch.randn(batch, anchors * classes, size, size, generator=gen) for _ in range(2)],
        [torch.randn(batch, anchors * 4, size, size, generator=gen) for _ in range(2)],
    )


def test_kd_and_box_are_weighted_pathways():
    specs = [PathwaySpec("AMP", "c3", 2.0), PathwaySpec("KD", factor=0.5), PathwaySpec("BOX", factor=3.0)]
    d = PathwayDistiller(specs, {"c3": (2, 4)}, option_defaults={"temperature": 2.0}, num_classes=4)
    student, teacher = _feats({"c3": (2, 4)})
    s_logits, s_deltas = _head(seed=1)
    t_logits, t_deltas = _head(seed=2)
    losses = d(NetOutputs(student, s_logits, s_deltas), TeacherOutput(teacher, t_logits, t_deltas))
    expected_kd = dense_kd_loss(s_logits, t_logits, 2.0)
    assert float(losses["loss_kd"]) == pytest.approx(0.5 * float(expected_kd), rel=1e-6)
    assert float(losses["loss_box"]) > 0
    # One weighting sees every pathway, KD and BOX included.
    reweighted = PathwayDistiller(
        specs, {"c3": (2, 4)}, option_defaults={"temperature": 2.0}, num_classes=4,
        weighting=ConstantWeighting({"amp_c3": 0.0, "kd": 1.0, "box": 0.0}),
    )
    got = reweighted(NetOutputs(student, s_logits, s_deltas), TeacherOutput(teacher, t_logits, t_deltas))
    assert float(got["loss_kd"]) == pytest.approx(2 * float(losses["loss_kd"]), rel=1e-6)
    assert float(got["loss_amp_c3"]) == 0.0 and float(got["loss_box"]) == 0.0
    # Identical box outputs: nothing to learn; missing head outputs: a clear error.
    same = d(NetOutputs(student, s_logits, t_deltas), TeacherOutput(teacher, t_logits, t_deltas))
    assert float(same["loss_box"]) == 0.0
    with pytest.raises(ValueError, match="pathway 'kd' needs the student's dense head outputs"):
        d(NetOutputs(student), TeacherOutput(teacher, t_logits, t_deltas))


def test_bad_pathway_sets():
    with pytest.raises(ValueError, match=r"\['amp_c3'\] appear more than once"):
        PathwayDistiller([PathwaySpec("AMP", "c3"), PathwaySpec("AMP", "c3")], {"c3": (2, 4)})
    with pytest.raises(ValueError, match="no channel counts for position 'c9'"):
        PathwayDistiller([PathwaySpec("AMP", "c9")], {"c3": (2, 4)})
    with pytest.raises(ValueError, match="BOX family needs the head's number of classes"):
        PathwayDistiller([PathwaySpec("BOX")], {})
    with pytest.raises(ValueError, match="at least one pathway"):
        PathwayDistiller([], {})
    with pytest.raises(ValueError, match="finite and >= 0"):
        ConstantWeighting({"a": -1.0})
