"""Output distillation of two-stage heads in the real model: a Mask R-CNN student learns from a
frozen Mask R-CNN teacher's RPN, box head (on the student's proposals) and mask head.
Gradients reach the student only, the teacher stays frozen and in eval mode, unlabeled images
get the distillation losses only, the distillation ROIs are held under DistPro's probes, a
fixed batch's output losses fall step by step, and pairs that cannot be compared are refused
when the model is built, with one line naming MGD.PATHWAYS."""
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from mgd_det.errors import ConfigError
from mgd_det.modeling import region_pass

# slow; one worker runs this file (pytest -n 2 --dist loadgroup): its module fixture is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("modeling.test_rcnn_output_distillation")]

STUDENT = "mgd_mask_rcnn_R50_R18_AMP.yaml"
# an R18 teacher keeps the model small; the pathways do not depend on the teacher's depth
TEACHER = ["MGD.TEACHER.CONFIG_FILE", "mask_rcnn_R18_FPN.yaml"]
OUTPUT_FAMILIES = ["RPN_KD", "RPN_BOX", "ROI_KD", "ROI_BOX", "MASK_KD"]
ALL = ["MGD.PATHWAYS", str(["AMP:res4:2e-6"] + [f"{f}:1.0" for f in OUTPUT_FAMILIES]),
       "MGD.RCNN.ROIS_PER_IMAGE", "16"]
# which student parameters each family must reach
HEAD_OF = {"rpn_kd": "proposal_generator.rpn_head.objectness_logits.weight",
           "rpn_box": "proposal_generator.rpn_head.anchor_deltas.weight",
           "roi_kd": "roi_heads.box_predictor.cls_score.weight",
           "roi_box": "roi_heads.box_predictor.bbox_pred.weight",
           "mask_kd": "roi_heads.mask_head.predictor.weight"}


@pytest.fixture(scope="module")
def model_and_batch(tiny_cfg, tmp_path_factory):
    cfg = tiny_cfg(STUDENT, tmp_path_factory.mktemp("rcnn"), *TEACHER, *ALL)
    seed_all_rng(0)
    model = build_model(cfg)
    _opinionated(model.teacher)
    batch = next(iter(build_detection_train_loader(cfg)))
    return model, batch


def _opinionated(teacher, scale=100.0):
    """A random teacher's classifiers scaled up: confident, varied objectness, classes and
    masks (a random one says p ~ 0.5 everywhere, background on every ROI), so that every
    output pathway has something to teach."""
    with torch.no_grad():
        for layer in (teacher.proposal_generator.rpn_head.objectness_logits, teacher.roi_heads.box_predictor.cls_score,
                      teacher.roi_heads.mask_head.predictor):
            layer.weight.mul_(scale)


def _unlabeled(batch):
    return [{k: v for k, v in x.items() if k != "instances"} for x in batch]


def test_each_head_pathway_reaches_its_student_head_and_never_the_teacher(model_and_batch):
    model, batch = model_and_batch
    model.train()
    assert not model.teacher.training
    with EventStorage(0):
        detection, raw = model.split_losses(batch)
    assert {"loss_rpn_cls", "loss_cls", "loss_mask"} <= set(detection)
    assert set(raw) == {"amp_res4", "rpn_kd", "rpn_box", "roi_kd", "roi_box", "mask_kd"}
    params = dict(model.student.named_parameters())
    for name, head in HEAD_OF.items():
        assert torch.isfinite(raw[name]) and raw[name] >= 0, name
        model.zero_grad(set_to_none=True)
        raw[name].backward(retain_graph=True)
        assert params[head].grad is not None and params[head].grad.abs().sum() > 0, name
        assert all(p.grad is None for p in model.teacher.parameters()), name
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())


def test_unlabeled_images_get_the_distillation_losses_only(model_and_batch):
    model, batch = model_and_batch
    model.train()
    with EventStorage(0):
        detection, raw = model.split_losses(_unlabeled(batch))
    assert detection == {}
    assert set(raw) >= set(HEAD_OF) and all(torch.isfinite(v) for v in raw.values())


def test_the_rois_are_the_students_most_confident_proposals_pooled_by_both_nets(model_and_batch):
    model, batch = model_and_batch
    model.train()
    with EventStorage(0):
        batch_on_device = model.upload(batch)
        teacher_out = model.teacher_pass(batch_on_device)
        model.split_losses(batch_on_device, teacher_out=teacher_out)
    regions = teacher_out.regions
    assert regions.class_logits.shape == (len(batch) * 16, 11)  # 10 classes + background
    assert regions.box_deltas.shape == (len(batch) * 16, 40)
    assert regions.mask_logits.shape[0] == int(regions.mask_rois.sum()) > 0
    foreground = regions.class_logits.argmax(dim=1) != 10
    assert not (regions.mask_rois & ~foreground).any()
    assert all(int(n) <= 8 for n in regions.mask_rois.view(len(batch), 16).sum(dim=1))  # MASK_ROIS_PER_IMAGE


def test_mask_rois_are_the_teachers_surest_foreground_rois_of_each_image():
    # two images of 3 ROIs, 2 classes + background; background probabilities per ROI:
    # image 0: 0.1 (fg), 0.8 (bg), 0.3 (fg); image 1: 0.9 (bg), 0.2 (fg), 0.05 (fg)
    logits = torch.tensor([[3.0, 0.0, 0.8], [0.0, 0.0, 2.0], [1.5, 0.0, 0.7],
                           [0.0, 0.0, 3.0], [2.0, 0.0, 0.9], [0.0, 4.0, 1.0]])
    assert region_pass.mask_rois(logits, [3, 3], 1).tolist() == [True, False, False, False, False, True]
    assert region_pass.mask_rois(logits, [3, 3], 5).tolist() == [True, False, True, False, True, True]


def test_distpro_probes_reuse_the_rois_and_teacher_outputs_recorded_at_the_base_point(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    model.train()
    held = model.distiller.held_factors
    calls = []
    original = region_pass.teacher_regions
    monkeypatch.setattr(region_pass, "teacher_regions", lambda *a, **k: calls.append(1) or original(*a, **k))
    with EventStorage(0):
        teacher_out = model.teacher_pass(model.upload(batch))
        with held.recording():
            _, base = model.split_losses(batch, teacher_out=teacher_out)
        recorded = teacher_out.regions
        # move the student's RPN: its proposals, and so fresh ROIs, would change
        with torch.no_grad():
            model.student.proposal_generator.rpn_head.objectness_logits.bias.add_(torch.randn(3) * 3)
        with held.replaying():
            _, probe = model.split_losses(batch, teacher_out=teacher_out)
        assert teacher_out.regions is recorded and len(calls) == 1
        _, fresh = model.split_losses(batch, teacher_out=teacher_out)
    assert len(calls) == 2
    assert float(probe["roi_kd"]) == pytest.approx(float(base["roi_kd"]), rel=1e-4)
    assert float(fresh["roi_kd"]) != pytest.approx(float(base["roi_kd"]), rel=1e-4)


def test_a_fixed_batchs_output_distillation_loss_falls_step_by_step(tiny_cfg, tmp_path):
    cfg = tiny_cfg(STUDENT, tmp_path, *TEACHER, "MGD.PATHWAYS", str([f"{f}:1.0" for f in OUTPUT_FAMILIES]),
                   "MGD.RCNN.ROIS_PER_IMAGE", "16")
    seed_all_rng(0)  # the model's weights and the loader's order, whatever ran before
    model = build_model(cfg)
    _opinionated(model.teacher)
    batch = _unlabeled(next(iter(build_detection_train_loader(cfg))))
    heads = [p for n, p in model.student.named_parameters() if not n.startswith("backbone")]
    optimizer = torch.optim.SGD(heads, lr=0.001)
    model.train()
    totals, first, last = [], None, None
    with EventStorage(0):
        teacher_out = model.teacher_pass(model.upload(batch))
        for _ in range(6):
            _, raw = model.split_losses(batch, teacher_out=teacher_out)
            total = sum(raw.values())
            totals.append(float(total))
            first, last = first or {k: float(v) for k, v in raw.items()}, {k: float(v) for k, v in raw.items()}
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    assert all(b < a for a, b in zip(totals, totals[1:])), totals
    assert all(first[k] > 0 and last[k] < first[k] for k in first), (first, last)


def _refusal(tiny_cfg, tmp_path, *opts, config=STUDENT):
    cfg = tiny_cfg(config, tmp_path, *TEACHER, *opts)
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    assert err.value.key == "MGD.PATHWAYS" and "\n" not in str(err.value)
    return str(err.value)


def test_an_rcnn_teacher_with_a_retinanet_student_is_refused_for_output_pathways(tiny_cfg, tmp_path):
    message = _refusal(tiny_cfg, tmp_path, "MGD.PATHWAYS", "['AMP:res4:2e-6', 'ROI_KD:1.0']",
                       config="mgd_mask_rcnn_R50_to_retinanet_R18_AMP.yaml")
    assert "ROI_KD/ROI_BOX" in message and "student is dense (RetinaNet)" in message and "teacher two-stage" in message


def test_a_retinanet_pair_is_refused_for_rpn_pathways(tiny_cfg, tmp_path):
    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", tmp_path, "MGD.PATHWAYS", "['RPN_KD:1.0']",
                   "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml")
    with pytest.raises(ConfigError, match=r"RPN_KD/RPN_BOX pathways need two-stage .* \(for RetinaNet pairs use KD, BOX\)"):
        build_model(cfg)


def test_mask_kd_without_a_student_mask_head_is_refused(tiny_cfg, tmp_path):
    message = _refusal(tiny_cfg, tmp_path, "MGD.PATHWAYS", "['MASK_KD:1.0']", "MODEL.MASK_ON", "False")
    assert "MASK_KD pathways need mask heads on both sides (MODEL.MASK_ON: student False, teacher True)" in message


def test_different_anchors_are_refused_for_rpn_pathways(tiny_cfg, tmp_path):
    message = _refusal(tiny_cfg, tmp_path, "MGD.PATHWAYS", "['RPN_BOX:1.0']",
                       "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]")
    assert "anchor shapes (ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS)" in message


def test_rois_per_image_is_checked_up_front(tiny_cfg, tmp_path):
    from mgd_det.config_checks import validate_mgd_config

    cfg = tiny_cfg(STUDENT, tmp_path, *TEACHER, "MGD.RCNN.ROIS_PER_IMAGE", "0")
    with pytest.raises(ConfigError, match="MGD.RCNN.ROIS_PER_IMAGE"):
        validate_mgd_config(cfg)
