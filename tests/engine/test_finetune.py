"""Fine-tuning a pretrained plain student with MGD (configs/mini_digits/mgd_finetune_*.yaml)."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from mgd_det.engine import MGDTrainer
from mgd_det.modeling.teacher import IncompatibleWeightsError

FINETUNE = "mgd_finetune_retinanet_R50_R18_AMP.yaml"
FAST_TEACHER = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]


def fixed_inputs():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), generator=generator).float()
    return [{"image": image, "height": 64, "width": 64}]


def predict(model):
    model.eval()
    with torch.no_grad():
        out = model(fixed_inputs())[0]["instances"]
    return out.pred_boxes.tensor, out.scores, out.pred_classes


class PredictBeforeFirstStep(HookBase):
    """Registered last: runs after the MGD hook's initial assignment update."""

    def before_train(self):
        model = self.trainer.unwrapped_model
        self.predictions = predict(model)
        self.student_state = {k: v.clone() for k, v in model.student.state_dict().items()}
        model.train()


@pytest.mark.slow
def test_wrapped_student_predicts_like_the_pretrained_detector(tmp_path, tiny_cfg, tiny_teacher_weights):
    pretrained = tiny_teacher_weights("retinanet_R18_FPN.yaml", seed=7)  # stands in for a trained R18
    cfg = tiny_cfg(FINETUNE, tmp_path, *FAST_TEACHER, "MODEL.WEIGHTS", pretrained, "SOLVER.MAX_ITER", "1")
    assert cfg.SOLVER.BASE_LR == 0.002  # the fine-tuning config is in effect

    plain_cfg = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path / "plain")
    plain = build_model(plain_cfg)
    DetectionCheckpointer(plain).load(pretrained)
    expected = predict(plain)

    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    probe = PredictBeforeFirstStep()
    trainer.register_hooks([probe])
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert trainer.mgd_hook.num_updates == 1  # the initial assignment ran before the probe
    assert len(expected[0]) > 0
    for ours, theirs in zip(probe.predictions, expected):
        assert torch.equal(ours, theirs)
    plain_state = plain.state_dict()
    assert probe.student_state.keys() == plain_state.keys()
    assert all(torch.equal(probe.student_state[k], plain_state[k]) for k in plain_state)


def test_pretrained_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_cfg, tiny_teacher_weights):
    wrong = tiny_teacher_weights("retinanet_R34_FPN.yaml")
    cfg = tiny_cfg(FINETUNE, tmp_path, *FAST_TEACHER, "MODEL.WEIGHTS", wrong)
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match=f"{wrong}.*student.*unexpected keys.*Nothing was loaded"):
        trainer.resume_or_load(resume=False)
    after = trainer.unwrapped_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_mgd_checkpoint_with_another_teacher_as_weights_recomputes_assignments(
    tmp_path, tiny_cfg, tiny_teacher_weights
):
    """MODEL.WEIGHTS = an MGD checkpoint (not --resume) with a new teacher: the student and
    distillation branch load, the assignment is solved again for the new teacher."""
    first = tiny_cfg(FINETUNE, tmp_path / "first", *FAST_TEACHER, "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1")
    seed_all_rng(first.SEED)
    trainer = MGDTrainer(first)
    trainer.resume_or_load(resume=False)
    trainer.train()
    new_teacher = tiny_teacher_weights("retinanet_R18_FPN.yaml", seed=3)
    cfg = tiny_cfg(FINETUNE, tmp_path / "second", *FAST_TEACHER, "MGD.TEACHER.WEIGHTS", new_teacher,
                   "MODEL.WEIGHTS", str(tmp_path / "first" / "model_final.pth"))
    second = MGDTrainer(cfg)
    second.resume_or_load(resume=False)
    model = second.unwrapped_model
    assert not bool(model.distiller.assigned)
    assert model.teacher_digest() != trainer.unwrapped_model.teacher_digest()
    saved = torch.load(tmp_path / "first" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(v, saved[f"student.{k}"]) for k, v in model.student.state_dict().items())
