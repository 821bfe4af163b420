"""Output distillation of two-stage heads (RPN_KD, RPN_BOX, ROI_KD, ROI_BOX, MASK_KD): each loss
against a hand computation on tiny inputs, what each family reads, and that a head output
missing on one side is named."""
import math

import pytest
import torch

from mgd_det.matching import NetOutputs, PathwayDistiller, PathwaySpec, TeacherOutput
from mgd_det.matching.families import family_names, parse_pathway, reads
from mgd_det.matching.outputs import MASKS, REGIONS, RPN, RegionOutputs

K = 3  # classes (+ background in the ROI head's last column)
RCNN_FAMILIES = ["RPN_KD", "RPN_BOX", "ROI_KD", "ROI_BOX", "MASK_KD"]


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _smooth_l1(d, beta):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def _distil(family, student: NetOutputs, teacher: TeacherOutput, **options):
    spec = PathwaySpec(family, options=options)
    distiller = PathwayDistiller([spec], {}, option_defaults={})
    return distiller.raw_losses(student, teacher)[spec.name]


def test_the_two_stage_families_read_their_head_and_take_no_position_field():
    assert [f for f in family_names() if f in RCNN_FAMILIES] == RCNN_FAMILIES
    assert [reads(f) for f in RCNN_FAMILIES] == [RPN, RPN, REGIONS, REGIONS, MASKS]
    spec = parse_pathway("ROI_KD:0.5:temperature=2")
    assert (spec.name, spec.factor, spec.options) == ("roi_kd", 0.5, {"temperature": 2.0})
    with pytest.raises(ValueError, match="too many .:. fields"):
        parse_pathway("MASK_KD:res4:1.0")
    distiller = PathwayDistiller([PathwaySpec("RPN_KD"), PathwaySpec("MASK_KD")], {}, option_defaults={})
    assert distiller.reads == {RPN, MASKS} and distiller.needs_head


def _rpn_pair():
    """One level, 2 anchors per location on a 1x2 map: student and teacher objectness logits
    and deltas."""
    s_logits = torch.tensor([[[[0.0, -1.0]], [[2.0, 0.5]]]], requires_grad=True)
    t_logits = torch.tensor([[[[3.0, -4.0]], [[1.0, 0.2]]]])
    s_deltas = torch.arange(16, dtype=torch.float32).reshape(1, 8, 1, 2).mul(0.05).requires_grad_()
    t_deltas = torch.zeros(1, 8, 1, 2)
    return (NetOutputs(rpn_logits=[s_logits], rpn_deltas=[s_deltas]),
            TeacherOutput(rpn_logits=[t_logits], rpn_deltas=[t_deltas]))


def test_rpn_kd_is_the_focal_binary_kl_over_anchors_divided_by_the_objectness_mass():
    student, teacher = _rpn_pair()
    T, tau, gamma = 2.0, 0.5, 2.0
    s = student.rpn_logits[0].detach().flatten().tolist()
    t = teacher.rpn_logits[0].flatten().tolist()
    total = 0.0
    for si, ti in zip(s, t):
        ps, pt = _sigmoid(si / T), _sigmoid(ti / T)
        kl = (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))) * T * T
        total += kl * abs(ps - pt) ** gamma
    mass = sum(_sigmoid(ti / tau) for ti in t)
    expected = total / max(mass, 1.0)
    got = _distil("RPN_KD", student, teacher, temperature=T, fg_temperature=tau, focal_gamma=gamma)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_rpn_box_weights_each_anchor_by_the_teachers_sharpened_objectness():
    student, teacher = _rpn_pair()
    tau, beta = 0.5, 0.1
    t = teacher.rpn_logits[0]  # (1, A=2, 1, 2)
    s_deltas = student.rpn_deltas[0].detach().view(1, 2, 4, 1, 2)
    total, weights = 0.0, 0.0
    for a in range(2):
        for x in range(2):
            w = _sigmoid(float(t[0, a, 0, x]) / tau)
            err = sum(_smooth_l1(float(s_deltas[0, a, c, 0, x]), beta) for c in range(4))
            total += w * err
            weights += w
    got = _distil("RPN_BOX", student, teacher, fg_temperature=tau, beta=beta)
    assert float(got) == pytest.approx(total / max(weights, 1.0), rel=1e-5)


def _regions(mask_rois=None):
    """Three ROIs, K = 3 classes + background: the teacher sure of class 1 on ROI 0, of
    background on ROI 1, unsure on ROI 2."""
    t_logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 6.0], [1.0, 0.0, 2.0, 1.5]])
    s_logits = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.0, 0.1, 0.0], [0.0, 0.3, 0.0, 0.0]], requires_grad=True)
    t_deltas = torch.arange(3 * 4 * K, dtype=torch.float32).reshape(3, 4 * K).mul(0.1)
    s_deltas = torch.zeros(3, 4 * K, requires_grad=True)
    return (NetOutputs(regions=RegionOutputs(s_logits, s_deltas, mask_rois=mask_rois)),
            TeacherOutput(regions=RegionOutputs(t_logits, t_deltas, mask_rois=mask_rois)))


def test_roi_kd_is_hintons_softmax_kl_times_t_squared_averaged_over_rois():
    student, teacher = _regions()
    T = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.regions.class_logits.detach().tolist(), teacher.regions.class_logits.tolist()):
        ps, pt = _softmax([v / T for v in s_row]), _softmax([v / T for v in t_row])
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt)) * T * T
    got = _distil("ROI_KD", student, teacher, temperature=T)
    assert float(got) == pytest.approx(expected / 3, rel=1e-5)
    # zero where the student matches
    same = NetOutputs(regions=RegionOutputs(teacher.regions.class_logits.clone(), None))
    assert float(_distil("ROI_KD", same, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_roi_box_compares_the_teachers_class_deltas_weighted_by_its_foreground_probability():
    student, teacher = _regions()
    beta = 0.1
    total, weights = 0.0, 0.0
    for r, row in enumerate(teacher.regions.class_logits.tolist()):
        p = _softmax(row)
        w = 1.0 - p[-1]
        c = max(range(K), key=lambda k: row[k])
        t = teacher.regions.box_deltas[r, 4 * c: 4 * c + 4].tolist()
        total += w * sum(_smooth_l1(0.0 - v, beta) for v in t)
        weights += w
    got = _distil("ROI_BOX", student, teacher, beta=beta)
    assert float(got) == pytest.approx(total / max(weights, 1.0), rel=1e-5)
    got.backward()
    grad = student.regions.box_deltas.grad
    # only the deltas of the teacher's class get a gradient: class 1 on ROI 0, class 2 on ROI 2
    assert grad[0, 4:8].abs().sum() > 0 and grad[0, :4].abs().sum() == 0 and grad[0, 8:].abs().sum() == 0
    assert grad[2, 8:12].abs().sum() > 0 and grad[2, :8].abs().sum() == 0
    # ROI 1, background to the teacher: weight ~ 1 - softmax(6 vs 0s) ~ 0.007
    assert grad[1].abs().sum() < 0.01 * grad[0].abs().sum()


def test_mask_kd_is_the_per_pixel_binary_kl_of_the_teachers_class_on_its_foreground_rois():
    mask_rois = torch.tensor([True, False, True])
    student, teacher = _regions(mask_rois)
    gen = torch.Generator().manual_seed(0)
    teacher.regions.mask_logits = torch.randn(2, K, 2, 2, generator=gen)
    student.regions.mask_logits = torch.randn(2, K, 2, 2, generator=gen).requires_grad_()
    classes = [1, 2]  # the teacher's largest non-background class on ROIs 0 and 2
    expected = 0.0
    for m, c in enumerate(classes):
        per_roi = 0.0
        for s, t in zip(student.regions.mask_logits[m, c].detach().flatten().tolist(),
                        teacher.regions.mask_logits[m, c].flatten().tolist()):
            ps, pt = _sigmoid(s), _sigmoid(t)
            per_roi += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
        expected += per_roi / 4
    got = _distil("MASK_KD", student, teacher)
    assert float(got) == pytest.approx(expected / 2, rel=1e-5)
    got.backward()
    grad = student.regions.mask_logits.grad
    assert grad[0, 1].abs().sum() > 0 and grad[0, 0].abs().sum() == 0 and grad[1, 2].abs().sum() > 0


def test_mask_kd_without_foreground_rois_is_zero_and_keeps_the_student_in_the_graph():
    student, teacher = _regions(torch.zeros(3, dtype=torch.bool))
    weight = torch.ones(K, 1, 1, requires_grad=True)
    student.regions.mask_logits = torch.zeros(0, K, 2, 2) * weight
    teacher.regions.mask_logits = torch.zeros(0, K, 2, 2)
    got = _distil("MASK_KD", student, teacher)
    assert float(got) == 0.0 and got.requires_grad


@pytest.mark.parametrize("family,kind", [("RPN_KD", "rpn"), ("ROI_BOX", "regions"), ("MASK_KD", "masks")])
def test_a_head_output_missing_on_one_side_is_named(family, kind):
    student, teacher = _regions()
    with pytest.raises(ValueError, match=f"needs the student's {kind} head outputs"):
        _distil(family, NetOutputs(), teacher)
