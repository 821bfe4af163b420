"""KD and BOX on dense heads, normalised by the teacher's foreground mass: a foreground
anchor's gradient does not shrink with the number of background anchors, and the weight of
the box loss sits on the anchors the teacher calls objects. KD's focal weight
(MGD.KD.FOCAL_GAMMA) keeps the background a fresh student already nearly matches from
swamping the foreground: gamma 0 is the plain KL, the gradient vanishes at a match."""
import math

import pytest
import torch

from _dense_heads import dense_teacher_head
from _tiny import MINI
from mgd_det.config import setup_cfg
from mgd_det.config_checks import validate_mgd_config
from mgd_det.engine.resume_settings import LOGGED, RESUME_SETTINGS
from mgd_det.errors import ConfigError
from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
from mgd_det.matching import PathwayDistiller
from mgd_det.matching.families.box import OutputBoxPathway
from mgd_det.matching.families.kd import FOCAL_GAMMA, OutputKDPathway, bernoulli_kl, dense_kd_loss
from mgd_det.matching.foreground import foreground_weight
from mgd_det.modeling.pathway_config import build_pathway_distiller

CLASSES = 4
LABEL_FREE = "mgd_retinanet_R50_R18_labelfree_pool.yaml"


def _teacher_head(num_background, num_foreground=6, seed=0):
    """Foreground anchors at p 0.8 for one class, background at p 0.05-0.3."""
    return dense_teacher_head(num_foreground, num_background, CLASSES, 0.8, seed)


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
    with pytest.raises(ConfigError, match="option fg_temperature=0.0 must be a number > 0"):
        PathwayDistiller([PathwaySpec("BOX", options={"fg_temperature": 0.0})], {}, num_classes=CLASSES)


# ---------------------------------------------------------------- focal weight (MGD.KD.FOCAL_GAMMA)
FPN_SIZES = (16, 8, 4, 2, 1)  # RetinaNet P3-P7 of a 128x128 image
FPN_ANCHORS, FPN_CLASSES = 9, 10


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _fresh_student_vs_trained_teacher(num_fg=20, images=2, seed=0):
    """The measured imbalance in miniature: 2 images of 5 levels x 9 anchors x 10 classes
    (61,380 elements); the teacher says 1e-4 everywhere but on ``num_fg`` level-0 anchors,
    where one class is at 0.9; the student sits at its prior 0.01 everywhere.
    Returns (student logits, teacher logits, (images, anchors, 16, 16) foreground mask)."""
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.full((images, FPN_ANCHORS * FPN_CLASSES, s, s), _logit(1e-4)) for s in FPN_SIZES]
    student = [torch.full_like(t, _logit(0.01)) for t in teacher]
    mask = torch.zeros(images, FPN_ANCHORS, 16, 16, dtype=torch.bool)
    mask.view(-1)[torch.randperm(mask.numel(), generator=gen)[:num_fg]] = True
    n, a, y, x = torch.nonzero(mask, as_tuple=True)
    cls = torch.randint(0, FPN_CLASSES, (num_fg,), generator=gen)
    teacher[0].view(images, FPN_ANCHORS, FPN_CLASSES, 16, 16)[n, a, cls, y, x] = _logit(0.9)
    return student, teacher, mask


def _loss_and_foreground_share(gamma):
    student, teacher, mask = _fresh_student_vs_trained_teacher()
    student = [s.requires_grad_(True) for s in student]
    loss = dense_kd_loss(student, teacher, temperature=1.0, focal_gamma=gamma)
    loss.backward()
    per_anchor = [s.grad.abs().view(s.shape[0], FPN_ANCHORS, FPN_CLASSES, *s.shape[-2:]).sum(dim=2) for s in student]
    total = sum(float(g.sum()) for g in per_anchor)
    return float(loss.detach()), float(per_anchor[0][mask].sum()) / total


def test_gamma_zero_is_the_plain_foreground_mass_kl_exactly():
    gen = torch.Generator().manual_seed(1)
    teacher = [torch.randn(2, 12, 4, 4, generator=gen) * 3 - 2, torch.randn(2, 12, 2, 2, generator=gen) * 3 - 2]
    student = [torch.randn(t.shape, generator=gen) for t in teacher]
    plain = sum(bernoulli_kl(s, t, 2.0).sum() for s, t in zip(student, teacher)) / sum(
        foreground_weight(t).sum() for t in teacher).clamp(min=2.0)
    assert torch.equal(dense_kd_loss(student, teacher, 2.0, focal_gamma=0.0), plain)
    # gamma 2: the same sum with each element weighted by |p_s - p_t|^2 (at temperature 2)
    weight = [(torch.sigmoid(s / 2) - torch.sigmoid(t / 2)).pow(2) for s, t in zip(student, teacher)]
    focal = sum((bernoulli_kl(s, t, 2.0) * w).sum() for s, t, w in zip(student, teacher, weight)) / sum(
        foreground_weight(t).sum() for t in teacher).clamp(min=2.0)
    assert float(dense_kd_loss(student, teacher, 2.0, focal_gamma=2.0)) == pytest.approx(float(focal), rel=1e-6)
    assert float(focal) < 0.5 * float(plain)


def test_focal_gamma_lifts_the_background_swamp_of_a_fresh_student():
    # measured: gamma 0 -> loss 32.9, foreground share 3.1 %; gamma 2 -> loss 3.03, share 99.6 %
    plain_loss, plain_share = _loss_and_foreground_share(0.0)
    focal_loss, focal_share = _loss_and_foreground_share(2.0)
    assert plain_loss > 20 and plain_share < 0.05, (plain_loss, plain_share)
    assert 0.3 < focal_loss < 10 and focal_share > 0.9, (focal_loss, focal_share)
    # the foreground term itself is about KL(0.9 || 0.01) x 0.89^2 = 3.0 per foreground anchor
    assert focal_loss == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_gradient_is_zero_at_a_match_and_follows_the_mismatch(gamma):
    temperature = 2.0
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(1, 8, 5, 5, generator=gen) * 3
    student = torch.randn(teacher.shape, generator=gen) * 3
    matched = torch.rand(teacher.shape, generator=gen) < 0.3
    student = torch.where(matched, teacher, student).requires_grad_(True)
    dense_kd_loss([student], [teacher], temperature, focal_gamma=gamma).backward()
    grad = student.grad
    assert bool((grad[matched] == 0).all())
    gap = torch.sigmoid(student.detach() / temperature) - torch.sigmoid(teacher / temperature)
    assert torch.equal(torch.sign(grad[~matched]), torch.sign(gap[~matched]))
    # detached weight: d/ds of w * KL * T^2 is w * T * (p_s - p_t), over the foreground mass
    mass = foreground_weight(teacher).sum().clamp(min=1.0)
    expected = gap.abs().pow(gamma) * temperature * gap / mass
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("gamma", [-0.5, float("nan"), float("inf")])
def test_the_kd_family_refuses_a_bad_gamma_when_built(gamma):
    for spec, defaults in ((PathwaySpec("KD", options={"focal_gamma": gamma}), {}),
                           (PathwaySpec("KD"), {"focal_gamma": gamma})):
        with pytest.raises(ConfigError, match="option focal_gamma=.* must be a number >= 0") as info:
            PathwayDistiller([spec], {}, num_classes=CLASSES, option_defaults=defaults)
        assert info.value.option == "focal_gamma" and info.value.from_default == bool(defaults)


def test_negative_focal_gamma_is_named_at_config_check():
    cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu", "MGD.KD.FOCAL_GAMMA", "-1.0"])
    with pytest.raises(ConfigError, match=r"MGD\.KD\.FOCAL_GAMMA must be a number >= 0"):
        validate_mgd_config(cfg)
    cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu", "MGD.KD.FOCAL_GAMMA", "0.0"])
    validate_mgd_config(cfg)  # 0 is the plain KL, allowed
    assert cfg.MGD.KD.FOCAL_GAMMA == 0.0
    assert setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu"]).MGD.KD.FOCAL_GAMMA == FOCAL_GAMMA == 2.0
    assert RESUME_SETTINGS["MGD.KD.FOCAL_GAMMA"] == RESUME_SETTINGS["MGD.KD.FOREGROUND_TEMPERATURE"] == LOGGED


def test_the_core_distiller_error_names_the_key():
    cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu", "MGD.KD.FOCAL_GAMMA", "-1.0"])
    with pytest.raises(ConfigError, match=r"MGD\.KD\.FOCAL_GAMMA must be a number >= 0 \(got -1.0\)") as info:
        build_pathway_distiller(cfg, [PathwaySpec("KD")], {}, num_classes=FPN_CLASSES)
    assert info.value.key == "MGD.KD.FOCAL_GAMMA"


def test_focal_gamma_reaches_the_kd_pathway_from_the_config():
    student, teacher, _ = _fresh_student_vs_trained_teacher()
    outputs = {}
    for gamma in ("0.0", "2.0"):
        cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu", "MGD.KD.FOCAL_GAMMA", gamma])
        kd = build_pathway_distiller(cfg, [PathwaySpec("KD")], {}, num_classes=FPN_CLASSES).pathways["kd"]
        assert kd.focal_gamma == float(gamma)
        outputs[gamma] = float(kd(NetOutputs({}, student, []), TeacherOutput({}, teacher, []), {}))
    assert outputs["0.0"] > 5 * outputs["2.0"], outputs


def test_focal_gamma_reaches_the_kd_pathway_of_a_built_model(tmp_path, tiny_cfg):
    from detectron2.modeling import build_model

    cfg = tiny_cfg(LABEL_FREE, tmp_path, "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml",
                   "MGD.PATHWAYS", "['AMP:res4:2e-6', 'KD:1.0']", "MGD.KD.FOCAL_GAMMA", "0.5")
    assert build_model(cfg).distiller.pathways["kd"].focal_gamma == pytest.approx(0.5)
