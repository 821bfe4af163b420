"""KD and BOX on dense heads, normalised by the teacher's foreground mass: a foreground
anchor's gradient does not shrink with the number of background anchors, and the weight of
the box loss sits on the anchors the teacher calls objects."""
import pytest
import torch

from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
from mgd_det.matching.pathways import OutputBoxPathway, OutputKDPathway

CLASSES = 4


def _teacher_head(num_background, num_foreground=6, seed=0):
    """One level, (1, 1*C, 1, anchors): foreground anchors at p ~0.8 for one class; background
    anchors at p 0.05-0.3 (a realistic teacher's crowd of low-confidence anchors)."""
    gen = torch.Generator().manual_seed(seed)
    anchors = num_foreground + num_background
    p = 0.01 + 0.02 * torch.rand(anchors, CLASSES, generator=gen)
    p[num_foreground:, 0] = 0.05 + 0.25 * torch.rand(num_background, generator=gen)
    p[:num_foreground, 1] = 0.8
    logits = torch.logit(p).t().reshape(1, CLASSES, 1, anchors)
    deltas = torch.randn(1, 4, 1, anchors, generator=gen)
    return logits, deltas


def _kd_grad_on_foreground(num_background):
    t_logits, t_deltas = _teacher_head(num_background)
    s_logits = torch.full_like(t_logits, -4.0, requires_grad=True)
    kd = OutputKDPathway(PathwaySpec("KD"), temperature=1.0)
    loss = kd(NetOutputs({}, [s_logits], [t_deltas]), TeacherOutput({}, [t_logits], [t_deltas]), {})
    loss.backward()
    return float(s_logits.grad[0, 1, 0, :6].abs().mean()), float(loss)


def test_kd_foreground_gradient_does_not_depend_on_the_number_of_background_anchors():
    few, _ = _kd_grad_on_foreground(100)
    many, _ = _kd_grad_on_foreground(3000)
    assert many == pytest.approx(few, rel=0.05)
    # ~ (sigmoid(-4) - 0.8) / (foreground mass ~6): order 0.1, not 1/(anchors x classes)
    assert many > 0.05


def test_kd_is_zero_at_the_teacher_and_positive_elsewhere():
    t_logits, t_deltas = _teacher_head(200)
    kd = OutputKDPathway(PathwaySpec("KD"), temperature=2.0)
    same = kd(NetOutputs({}, [t_logits.clone()], [t_deltas]), TeacherOutput({}, [t_logits], [t_deltas]), {})
    assert float(same) == pytest.approx(0.0, abs=1e-5), "no entropy floor"
    other = kd(NetOutputs({}, [t_logits + 1.0], [t_deltas]), TeacherOutput({}, [t_logits], [t_deltas]), {})
    assert float(other) > 0.01


def test_box_weight_sits_on_teacher_foreground_anchors():
    t_logits, t_deltas = _teacher_head(3000)
    s_deltas = torch.zeros_like(t_deltas, requires_grad=True)
    box = OutputBoxPathway(PathwaySpec("BOX"), num_classes=CLASSES)
    loss = box(NetOutputs({}, [t_logits], [s_deltas]), TeacherOutput({}, [t_logits], [t_deltas]), {})
    loss.backward()
    grad = s_deltas.grad[0].abs().sum(dim=0)[0]  # per anchor
    share = float(grad[:6].sum() / grad.sum())
    # 6 anchors at p 0.8 among 3,000 at 0.05-0.3: the teacher-probability weighting gave them ~1 %
    assert share > 0.8, share
    with pytest.raises(Exception, match="positive"):
        OutputBoxPathway(PathwaySpec("BOX"), num_classes=CLASSES, fg_temperature=0.0)
