"""Connections across positions (student res4 from teacher res5) and the width-free AT family:
parsing and expanding a connection set, the attention loss against a hand computation, the
teacher map aligned to the student's stride, and the families that refuse to cross."""
import pytest
import torch
import torch.nn.functional as F

from mgd_det.errors import ConfigError
from mgd_det.matching import NetOutputs, PathwayDistiller, PathwaySpec, TeacherOutput, parse_pathway
from mgd_det.matching.families import parse_pathways
from mgd_det.matching.outputs import Canvas


def test_a_connection_set_in_one_entry_expands_to_every_pair():
    specs = parse_pathways("AT:res3,res4<res4,res5:0.5:power=1")
    assert [(s.name, s.position, s.source, s.factor, s.options) for s in specs] == [
        ("at_res3_res4", "res3", "res4", 0.5, {"power": 1.0}),
        ("at_res3_res5", "res3", "res5", 0.5, {"power": 1.0}),
        ("at_res4", "res4", "res4", 0.5, {"power": 1.0}),  # same position: the usual name
        ("at_res4_res5", "res4", "res5", 0.5, {"power": 1.0}),
    ]
    assert [s.name for s in parse_pathways("PKD:p3,p4")] == ["pkd_p3", "pkd_p4"]
    assert parse_pathway("x=PKD:p3<p4").name == "x"


@pytest.mark.parametrize("text,match", [
    ("AMP:res4<res5", r"the AMP family compares student and teacher at one position .* connect different "
                      r"positions with PKD or AT"),
    ("x=AT:res3,res4<res5", "a name .* fits one"),
    ("AT:res3<res4<res5", "STUDENT or STUDENT<TEACHER"),
    ("AT:res3,<res4", "an empty position"),
    ("KD:res4", "factor .res4. is not a number"),
])
def test_bad_connections_are_named(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_pathways(text)


def _attention(x, p=2.0):
    a = x.abs().pow(p).mean(dim=1).flatten(1)
    return a / a.norm(dim=1, keepdim=True)


def test_attention_loss_equals_a_hand_computation_at_one_position():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    t = torch.randn(2, 7, 4, 4, generator=gen)  # other width: AT needs no connector
    d = PathwayDistiller([parse_pathway("AT:c3:2.0")], {"c3": (3, 7)})
    loss = d(NetOutputs({"c3": s}), TeacherOutput({"c3": t}))["loss_at_c3"]
    expected = 2.0 * (_attention(s) - _attention(t)).pow(2).sum() / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert float(d(NetOutputs({"c3": t}), TeacherOutput({"c3": t}))["loss_at_c3"]) == pytest.approx(0.0, abs=1e-10)
    assert list(d.parameters()) == []  # nothing to train besides the student


def test_across_positions_the_teacher_map_is_aligned_to_the_student_stride():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 8, 8, generator=gen)
    t5 = torch.randn(2, 5, 4, 4, generator=gen)  # the teacher's coarser position
    d = PathwayDistiller([parse_pathway("AT:c4<c5:1.0:power=1"), parse_pathway("PKD:c4<c5")],
                         {"c4": (3, 0), "c5": (0, 5)})
    assert d.positions == ["c4"] and d.teacher_positions == ["c5"]
    losses = d(NetOutputs({"c4": s}), TeacherOutput({"c5": t5}))
    target = F.interpolate(t5.abs().mean(1, keepdim=True), size=(8, 8), mode="bilinear", align_corners=False)
    expected = (_attention(s, 1.0) - target.flatten(1) / target.flatten(1).norm(dim=1, keepdim=True)).pow(2).sum() / 2
    assert float(losses["loss_at_c4_c5"]) == pytest.approx(float(expected), rel=1e-5)
    assert d.pathways["pkd_c4_c5"].connector.out_channels == 5 and torch.isfinite(losses["loss_pkd_c4_c5"])
    with pytest.raises(ConfigError, match=r"teacher features lack position\(s\) \['c5'\]"):
        d(NetOutputs({"c4": s}), TeacherOutput({"c4": s}))


def test_a_teacher_position_the_student_does_not_tap_is_cropped_to_the_students_canvas():
    # teacher canvas 128 (coarser divisibility), student canvas 96: at stride 32 the teacher map
    # has 4 rows, of which ceil(96 / 32) = 3 cover the student's image
    teacher = TeacherOutput({"res5": torch.zeros(1, 2, 4, 4)}, canvas=Canvas((128, 128), (96, 96)))
    assert tuple(teacher.features_for({"res4": torch.zeros(1, 2, 6, 6)})["res5"].shape[-2:]) == (3, 3)


def test_the_attention_power_is_checked():
    with pytest.raises(ConfigError, match="option power=0.0 must be a number > 0"):
        PathwayDistiller([PathwaySpec("AT", "c3", options={"power": 0.0})], {"c3": (2, 2)})
