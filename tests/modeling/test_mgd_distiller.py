"""End-to-end MGD distillation with real Detectron2 models on the tiny mini digits split."""
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import _tiny
from _tiny import MINI, REPO, tiny_cfg, train
from mgd_det.modeling import IncompatibleWeightsError, MGDDistiller

MGD_RETINA = "mgd_retinanet_R50_R18_AMP.yaml"


@pytest.fixture(autouse=True)
def _tiny_data(tiny_datasets):
    return tiny_datasets


@pytest.fixture
def weights(tiny_teacher_weights):
    """Plain detector checkpoints (fixed seed) standing in for trained teachers."""
    return tiny_teacher_weights


def mgd_cfg(tmp_path, weights, config_name=MGD_RETINA, teacher="retinanet_R50_FPN.yaml", *opts):
    return tiny_cfg(
        config_name, tmp_path,
        "MGD.TEACHER.CONFIG_FILE", teacher, "MGD.TEACHER.WEIGHTS", weights(teacher), *opts,
    )


def fixed_batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


def mgd_losses(losses):
    return {k: v for k, v in losses.items() if k.startswith("loss_mgd_")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name,teacher,tasks",
    [
        (MGD_RETINA, "retinanet_R50_FPN.yaml", ["bbox"]),
        ("mgd_mask_rcnn_R50_R18_AMP.yaml", "mask_rcnn_R50_FPN.yaml", ["bbox", "segm"]),
        ("mgd_mask_rcnn_R50_to_retinanet_R18_AMP.yaml", "mask_rcnn_R50_FPN.yaml", ["bbox"]),
    ],
)
def test_mgd_trains_updates_each_epoch_and_evaluates_student(tmp_path, weights, config_name, teacher, tasks):
    # 16 tiny training images / batch 2 = 8 iterations per epoch; 9 iterations cross one boundary.
    cfg = mgd_cfg(tmp_path, weights, config_name, teacher, "SOLVER.MAX_ITER", "9")
    trainer, results = train(cfg)
    assert trainer.mgd_hook.update_iters == [0, 8]
    for task in tasks:
        assert all(math.isfinite(results[task][k]) for k in ("AP", "AP50", "AP75"))
    history = trainer.storage.history("loss_mgd_res2").values()
    assert len(history) > 0 and all(math.isfinite(v) for v, _ in history)
    assert bool(trainer.unwrapped_model.distiller.assigned)


@pytest.fixture(autouse=True)
def event_storage():
    """Detectron2 heads log to an EventStorage during training forwards."""
    with EventStorage(0) as storage:
        yield storage


@pytest.mark.slow
def test_distillation_loss_decreases_on_a_fixed_batch(tmp_path, weights):
    torch.manual_seed(0)
    cfg = mgd_cfg(tmp_path, weights)
    model = build_model(cfg).train()
    batch = fixed_batch(cfg)
    model.eval()
    model.distiller.start_tracking()
    model.track_batch(batch)
    model.distiller.finish_tracking()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    totals = []
    for _ in range(8):
        loss = sum(mgd_losses(model(batch)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss))
    assert all(math.isfinite(t) for t in totals)
    assert all(b < a for a, b in zip(totals, totals[1:])), totals


def test_teacher_frozen_in_eval_and_each_backbone_runs_once_per_step(tmp_path, weights):
    cfg = mgd_cfg(tmp_path, weights)
    model = build_model(cfg)
    model.train()
    assert not model.teacher.training and model.student.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # The teacher is not a registered sub-module: not in state_dict, parameters or DDP.
    assert [k for k in model.state_dict() if "teacher" in k] == ["teacher_sha256"]
    assert not any("teacher" in n for n, _ in model.named_parameters())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    calls = {"teacher": 0, "teacher_fpn": 0, "student": 0}
    # Only resN positions and no KD: the teacher's ResNet runs, its FPN (unread) does not.
    model.teacher.backbone.bottom_up.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    model.teacher.backbone.register_forward_hook(lambda *a: calls.__setitem__("teacher_fpn", calls["teacher_fpn"] + 1))
    model.student.backbone.register_forward_hook(lambda *a: calls.__setitem__("student", calls["student"] + 1))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        losses = model(fixed_batch(cfg))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert calls == {"teacher": 2, "teacher_fpn": 0, "student": 2}
    assert all(p.grad is None for p in model.teacher.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not model.teacher.training


def test_eval_mode_returns_student_predictions(tmp_path, weights):
    cfg = mgd_cfg(tmp_path, weights)
    model = build_model(cfg).eval()
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in fixed_batch(cfg, 1)]
    with torch.no_grad():
        ours, students = model(inputs), model.student(inputs)
    assert torch.equal(ours[0]["instances"].scores, students[0]["instances"].scores)


# ----------------------------------------------------------------------------- bad input
def test_missing_teacher_config_and_weights(tmp_path, weights):
    with pytest.raises(FileNotFoundError, match="Teacher config file not found"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml",
                            "MGD.TEACHER.CONFIG_FILE", "no_such_teacher.yaml"))
    with pytest.raises(FileNotFoundError, match="Teacher weights not found"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml",
                            "MGD.TEACHER.WEIGHTS", str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="MGD.TEACHER.WEIGHTS is empty"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.TEACHER.WEIGHTS", ""))


def test_teacher_weights_of_another_architecture(tmp_path, weights):
    r18 = weights("retinanet_R18_FPN.yaml")
    with pytest.raises(IncompatibleWeightsError, match="Teacher weights do not match"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.TEACHER.WEIGHTS", r18))


def test_partial_teacher_load_only_with_the_explicit_switch(tmp_path, weights, caplog):
    r34 = weights("retinanet_R34_FPN.yaml")  # same layer names as R18 plus extra blocks
    teacher18 = "retinanet_R18_FPN.yaml"
    with pytest.raises(IncompatibleWeightsError, match="unexpected keys"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, teacher18, "MGD.TEACHER.WEIGHTS", r34))
    with caplog.at_level("WARNING", logger="mgd_det.modeling.teacher"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, teacher18, "MGD.TEACHER.WEIGHTS", r34,
                            "MGD.TEACHER.ALLOW_PARTIAL_LOAD", "True"))
    assert any("PARTIAL LOAD" in r.getMessage() for r in caplog.records)


def test_position_that_does_not_exist(tmp_path, weights):
    with pytest.raises(ValueError, match=r"position\(s\) \['p2'\] do not exist"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml",
                            "MGD.POSITIONS", "['res5', 'p2']", "MGD.FACTORS", "[1.0, 1.0]"))


def test_factor_count_must_match_positions(tmp_path, weights):
    with pytest.raises(ValueError, match="one factor per position"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.FACTORS", "[1.0]"))


DC5_TEACHER = """
_BASE_: "{mini}/mask_rcnn_R50_FPN.yaml"
MODEL:
  MASK_ON: False
  BACKBONE: {{NAME: "build_resnet_backbone"}}
  RESNETS: {{OUT_FEATURES: ["res5"], RES5_DILATION: 2}}
  RPN: {{IN_FEATURES: ["res5"]}}
  ANCHOR_GENERATOR: {{SIZES: [[16, 32, 64]]}}
  ROI_HEADS: {{IN_FEATURES: ["res5"]}}
"""


def test_different_spatial_sizes_are_reported(tmp_path, weights):
    # A dilated res5 (DC5 teacher) has stride 16 where the student's has stride 32.
    teacher_file = tmp_path / "teacher_dc5.yaml"
    teacher_file.write_text(DC5_TEACHER.format(mini=MINI))
    cfg = mgd_cfg(tmp_path, weights, MGD_RETINA, str(teacher_file), "MGD.POSITIONS", "['res5']", "MGD.FACTORS", "[1.0]")
    model = build_model(cfg).train()
    with pytest.raises(ValueError, match="res5.*spatial|spatial.*res5"):
        model(fixed_batch(cfg))


def test_wider_student_than_teacher_needs_sharing(tmp_path, weights):
    with pytest.raises(ValueError, match="student is wider than the teacher"):
        build_model(mgd_cfg(tmp_path, weights, "mgd_retinanet_R50_R18_AMP.yaml", "retinanet_R18_FPN.yaml",
                            "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256"))


def test_unknown_reducer(tmp_path, weights):
    with pytest.raises(ValueError, match="XYZ"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.REDUCER", "XYZ"))


def test_nan_in_teacher_features_is_reported_with_position(tmp_path, weights):
    cfg = mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "SOLVER.MAX_ITER", "3")
    from mgd_det.engine import MGDTrainer

    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    # Poison the teacher's res4 after margins are computed: the features go NaN there.
    trainer.register_hooks([_PoisonAfterFirstStep(trainer.unwrapped_model.teacher.backbone.bottom_up.res4)])
    with pytest.raises(FloatingPointError, match="teacher res4"):
        trainer.train()


class _PoisonAfterFirstStep(HookBase):
    """Makes one teacher stage produce NaN from the second step on."""

    def __init__(self, stage):
        self.stage = stage

    def before_step(self):
        if self.trainer.iter == 1:
            with torch.no_grad():
                self.stage[-1].conv1.weight.fill_(float("nan"))


def test_unlabeled_batch_gives_distillation_losses_only(tmp_path, weights):
    """Ground truth is optional: label-free distillation trains the student backbone."""
    cfg = mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.KD.ENABLED", "True")
    model = build_model(cfg).train()
    unlabeled = [{k: v for k, v in x.items() if k != "instances"} for x in fixed_batch(cfg)]
    losses = model(unlabeled)
    assert sorted(losses) == ["loss_kd"] + [f"loss_mgd_res{i}" for i in range(2, 6)]
    sum(losses.values()).backward()
    assert model.student.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    assert model.student.head.cls_score.weight.grad.abs().sum() > 0  # through the KD loss
    assert model.student.head.bbox_pred.weight.grad is None


def _train_net():
    import runpy

    return runpy.run_path(os.path.join(REPO, "tools", "train_net.py"), run_name="train_net")


@pytest.mark.slow
def test_train_net_eval_teacher_and_eval_only_student(tmp_path, weights):
    """tools/train_net.py: --eval-teacher evaluates the teacher alone; --eval-only the student."""
    tool = _train_net()
    base = ["--config-file", os.path.join(MINI, MGD_RETINA)] + _tiny.TINY_OPTS + [
        "OUTPUT_DIR", str(tmp_path), "MGD.TEACHER.WEIGHTS", weights("retinanet_R50_FPN.yaml"),
        "MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.SCORE_THRESH_TEST', '0.0']"]
    teacher_results = tool["main"](tool["parse_args"](base[:2] + ["--eval-teacher"] + base[2:]))
    assert math.isfinite(teacher_results["bbox"]["AP"])
    trainer, trained = train(mgd_cfg(tmp_path, weights))
    student_results = tool["main"](tool["parse_args"](
        base[:2] + ["--eval-only"] + base[2:] + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]))
    assert student_results["bbox"] == pytest.approx(trained["bbox"], nan_ok=True)


def test_loss_weighting_is_pluggable(tmp_path, weights):
    from mgd_det.matching.weighting import ConstantWeighting
    from mgd_det.modeling import LOSS_WEIGHTINGS

    @LOSS_WEIGHTINGS.register("only_res5")
    def only_res5(cfg, specs):
        return ConstantWeighting({s.name: 1.0 if s.position == "res5" else 0.0 for s in specs})

    cfg = mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.WEIGHTING", "only_res5")
    losses = mgd_losses(build_model(cfg).train()(fixed_batch(cfg)))
    assert float(losses["loss_mgd_res2"]) == 0.0 and float(losses["loss_mgd_res5"]) > 0.0
    with pytest.raises(ValueError, match=r"MGD\.WEIGHTING must be one of .*\(got 'nope'\)"):
        build_model(mgd_cfg(tmp_path, weights, MGD_RETINA, "retinanet_R50_FPN.yaml", "MGD.WEIGHTING", "nope"))


def test_teacher_padding_is_cropped_but_a_stride_mismatch_is_not():
    """A teacher needing a coarser canvas (e.g. RetinaNet's 128 vs an R-CNN student's 32)
    sees extra bottom/right padding; only that explained difference is cropped away."""
    from mgd_det.matching import Canvas, TeacherOutput

    student = {"res5": torch.zeros(1, 4, 6, 6), "res4": torch.zeros(1, 4, 12, 12)}
    teacher = TeacherOutput(
        {"res5": torch.arange(64.0).view(1, 1, 8, 8).repeat(1, 8, 1, 1),
         "res4": torch.zeros(1, 8, 32, 32)},  # stride 8 where the student has 16
        canvas=Canvas((256, 256), (192, 192)))
    cropped = teacher.features_for(student)
    assert cropped["res5"].shape[-2:] == (6, 6) and torch.equal(cropped["res5"][0, 0], torch.arange(64.0).view(8, 8)[:6, :6])
    assert cropped["res4"].shape[-2:] == (32, 32)  # left for the distiller to report
