"""benchmarks.score_auc's measurements on synthetic inputs (the figures of BENCHMARKS.md §10)."""
import math

import numpy as np
import pytest
import torch

from _dense_heads import dense_teacher_head
from benchmarks.score_auc import gradient_shares, old_box_loss, roc_auc

CLASSES = 3


def _batch(num_fg=4, num_bg=400, seed=0):
    """One level (1, A*C, 1, anchors) with A = 1: ``num_fg`` anchors at p 0.9, the rest at 0.05-0.3."""
    t_logits, t_deltas = dense_teacher_head(num_fg, num_bg, CLASSES, 0.9, seed)
    s_logits = torch.full_like(t_logits, -4.0)
    s_deltas = torch.zeros_like(t_deltas)
    return [s_logits], [s_deltas], [t_logits], [t_deltas]


def test_box_share_moves_to_the_foreground_and_tau_one_is_the_old_weighting():
    sharp = gradient_shares([_batch()], CLASSES, fg_temperature=0.1)
    assert sharp["foreground_anchors_per_image"] == 4
    assert sharp["box"]["old"]["foreground_share"] < 0.1
    assert sharp["box"]["new"]["foreground_share"] > 0.9
    assert sharp["box"]["weight_share_on_foreground"]["new"] > 0.9
    soft = gradient_shares([_batch()], CLASSES, fg_temperature=1.0)
    assert soft["box"]["new"]["foreground_share"] == pytest.approx(soft["box"]["old"]["foreground_share"], rel=1e-5)


def test_kd_floor_and_foreground_gradient():
    result = gradient_shares([_batch()], CLASSES, fg_temperature=0.1)
    kd = result["kd"]
    assert kd["loss_at_the_teacher"]["new"] == pytest.approx(0.0, abs=1e-5)
    assert kd["loss_at_the_teacher"]["old"] > 0.05  # the teacher's entropy
    assert kd["new"]["mean_abs_grad_per_foreground_anchor"] > 100 * kd["old"]["mean_abs_grad_per_foreground_anchor"]


def _fresh_student_batch(num_fg=4, num_bg=3000, seed=0):
    """A fresh student (prior 0.01 everywhere) against a trained teacher (1e-4 on background,
    one class at 0.9 on ``num_fg`` anchors): one level (1, C, 1, anchors)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.full((num_fg + num_bg, CLASSES), 1e-4)
    p[torch.arange(num_fg), torch.randint(0, CLASSES, (num_fg,), generator=gen)] = 0.9
    t_logits = torch.logit(p).t().reshape(1, CLASSES, 1, num_fg + num_bg)
    t_deltas = torch.randn(1, 4, 1, num_fg + num_bg, generator=gen)
    return [torch.full_like(t_logits, math.log(0.01 / 0.99))], [torch.zeros_like(t_deltas)], [t_logits], [t_deltas]


def test_kd_rows_old_plain_focal_on_a_fresh_student():
    # measured: loss old 0.012 / plain 25.2 / focal 3.03; foreground share 3.9 % / 3.9 % / 99.7 %
    result = gradient_shares([_fresh_student_batch()], CLASSES, fg_temperature=0.1)
    kd, loss = result["kd"], result["kd"]["loss_fresh_student"]
    assert result["kd_focal_gamma"] == 2.0
    assert kd["fg_mass_plain"]["foreground_share"] < 0.05
    # one level: the plain KL sum is the old mean's gradient rescaled, so the same share
    assert kd["fg_mass_plain"]["foreground_share"] == pytest.approx(kd["old"]["foreground_share"], rel=1e-3)
    assert kd["new"]["foreground_share"] > 0.9
    assert loss["fg_mass_plain"] > 20 and 0.3 < loss["new"] < 10, loss
    assert kd["loss_at_the_teacher"]["fg_mass_plain"] == pytest.approx(0.0, abs=1e-5)
    assert kd["loss_at_the_teacher"]["new"] == pytest.approx(0.0, abs=1e-5)
    plain = gradient_shares([_fresh_student_batch()], CLASSES, fg_temperature=0.1, focal_gamma=0.0)["kd"]
    assert plain["new"]["foreground_share"] == pytest.approx(kd["fg_mass_plain"]["foreground_share"])


def test_old_box_loss_is_the_probability_weighted_mean():
    s_logits, s_deltas, t_logits, t_deltas = _batch(num_fg=1, num_bg=1)
    weight = torch.sigmoid(t_logits[0]).view(CLASSES, 2).amax(dim=0)
    err = torch.nn.functional.smooth_l1_loss(s_deltas[0], t_deltas[0], beta=0.1, reduction="none").view(4, 2).sum(0)
    expected = (err * weight).sum() / weight.sum().clamp(min=1.0)
    assert float(old_box_loss(s_deltas, t_logits, t_deltas, CLASSES)) == pytest.approx(float(expected), rel=1e-6)


def test_roc_auc():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    assert roc_auc(np.zeros(4), np.array([False, True, False, True])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.ones(3), np.ones(3, dtype=bool)))


def test_score_report_covers_every_score_kind(tmp_path, tiny_datasets):
    """The report on a real (random) R18 teacher and the bundled tiny pool: every score kind,
    the old path preferential whatever the scores, the others uniform with the reason."""
    import mgd_det.data  # noqa: F401  (registers the bundled pools)
    from benchmarks.score_auc import DEFAULT_STUDENT_CONFIG, load_detector, score_report
    from mgd_det.data.scoring import SCORE_KINDS

    teacher, cfg = load_detector(DEFAULT_STUDENT_CONFIG, None, seed=0)
    report = score_report(cfg, teacher, "mini_digits_pool_tiny", str(tmp_path / "cache.json"))
    assert report["num_images"] == 32 and report["num_relevant"] == 8
    assert report["default"] == cfg.MGD.UNLABELED.SCORE == "rank"
    assert set(report) >= {"old", *[k for k in SCORE_KINDS if k != "mass"]}
    assert report["old"]["sampling"]["mode"] == "preferential"  # the old scorer: no fallback
    for kind in ("relative", "rank", "max"):
        entry = report[kind]
        assert entry["score"] == kind and entry["auc"] == pytest.approx(0.5)
        assert entry["warning_fires"] and entry["sampling"]["mode"] == "uniform"
        assert entry["sampling"]["distinct_drawn"] == 32, "uniform epochs draw every image once"


def test_old_kd_loss_is_the_element_mean_sigmoid_cross_entropy_with_the_teacher_entropy_as_floor():
    from benchmarks.score_auc import old_kd_loss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 4, generator=gen, requires_grad=True), torch.randn(3, 4, generator=gen)
    temp = 2.0
    q = torch.sigmoid(teacher / temp)
    p = torch.sigmoid(student.detach() / temp)
    reference = -(q * p.log() + (1 - q) * (1 - p).log()).mean() * temp**2
    got = old_kd_loss([student], [teacher], temp)
    assert float(got) == pytest.approx(float(reference), rel=1e-5)
    entropy = -(q * q.log() + (1 - q) * (1 - q).log()).mean() * temp**2
    at_teacher = float(old_kd_loss([teacher], [teacher], temp))
    assert at_teacher == pytest.approx(float(entropy), rel=1e-5) and at_teacher < float(got)
    got.backward()
    assert student.grad is not None
