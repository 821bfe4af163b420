"""Exact resume, weights-only checkpoints, and clear errors for bad checkpoints."""
import os
import shutil

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from mgd_det.engine import MGDTrainer
from mgd_det.engine.checkpoint_errors import CheckpointLoadError, TeacherChangedError
from mgd_det.modeling.teacher import IncompatibleWeightsError

N = 2  # iterations before the interruption; the full run has 2N
# About one float32 ulp: MGDTrainer.train keeps TorchScript on one path, so a resume is bitwise
# exact on CPU (with the JIT's optimisation on, RetinaNet's losses differed by ~5e-7).
LOSS_RTOL = 1e-7
WEIGHT_RTOL, WEIGHT_ATOL = 1e-6, 1e-9


class Interrupted(Exception):
    pass


class InterruptAfter(HookBase):
    """Raises after the step of ``iteration`` (after the checkpointer ran), like a crash."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Interrupted()


class LossRecorder(HookBase):
    """Raw per-iteration losses (metrics.json holds window-smoothed values)."""

    def __init__(self):
        self.losses = {}

    def after_step(self):
        latest = self.trainer.storage.latest()
        self.losses[self.trainer.iter] = {
            k: v for k, (v, it) in latest.items() if k.startswith("loss") or k == "total_loss"
        }


def run(cfg, resume=False, interrupt_after=None):
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    recorder = LossRecorder()
    trainer.register_hooks([recorder] + ([InterruptAfter(interrupt_after)] if interrupt_after is not None else []))
    trainer.resume_or_load(resume=resume)
    if interrupt_after is None:
        trainer.train()
    else:
        with pytest.raises(Interrupted):
            trainer.train()
    return trainer, recorder.losses


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# Update the assignment every N iterations: the update right before the interruption must
# be in the checkpoint, and the resumed run must not redo it.
COMMON = ["SOLVER.MAX_ITER", str(2 * N), "SOLVER.CHECKPOINT_PERIOD", str(N), "MGD.UPDATE.PERIOD", str(N),
          "MGD.UPDATE.APPLY_DELAY", "1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name,opts",
    [
        # RD draws from the global torch RNG on every step: checks the RNG state restore.
        ("mgd_retinanet_R50_R18_RD.yaml", []),
        # Mask R-CNN samples proposals with the global RNG; R18 teacher to keep it fast.
        ("mgd_mask_rcnn_R50_R18_AMP.yaml", ["MGD.TEACHER.CONFIG_FILE", "mask_rcnn_R18_FPN.yaml"]),
    ],
    ids=["retinanet_RD", "mask_rcnn_AMP"],
)
def test_resume_equals_uninterrupted_run(tmp_path, tiny_cfg, config_name, opts):
    full_cfg = tiny_cfg(config_name, tmp_path / "full", *COMMON, *opts)
    _, full_losses = run(full_cfg)

    cut_cfg = tiny_cfg(config_name, tmp_path / "cut", *COMMON, *opts)
    _, first_losses = run(cut_cfg, interrupt_after=N - 1)
    checkpoint = tmp_path / "cut" / f"model_{N - 1:07d}.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensor-only
    assert saved["iteration"] == N - 1 and "rng" in saved["trainer"]
    assert saved["trainer"]["hooks"]["MGDAssignmentHook"]["num_updates"] == 2
    assert not any(k.startswith("_teacher") for k in saved["model"])  # teacher not duplicated

    trainer, second_losses = run(cut_cfg, resume=True)
    assert trainer.start_iter == N
    assert trainer.mgd_hook.num_updates == 2  # no initial update after resume

    # Bitwise in practice (see LOSS_RTOL). A lost state (e.g. RetinaNet's loss normaliser EMA,
    # the RNG or the data order) shows up as >1e-3 relative.
    assert sorted({**first_losses, **second_losses}) == sorted(full_losses) == list(range(2 * N))
    for it, losses in {**first_losses, **second_losses}.items():
        assert losses == pytest.approx(full_losses[it], rel=LOSS_RTOL), f"iteration {it}"
    full_state = model_state(tmp_path / "full" / "model_final.pth")
    resumed_state = model_state(tmp_path / "cut" / "model_final.pth")
    assert full_state.keys() == resumed_state.keys()
    for key, value in full_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed_state[key], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=key)
        else:
            assert torch.equal(resumed_state[key], value), key


# ------------------------------------------------------------------------ bad input
# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("engine.test_resume")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_cfg):
    """A finished 2-iteration MGD run (R18 teacher and student) with a checkpoint each step."""
    out = tmp_path_factory.mktemp("short_run")
    opts = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", "SOLVER.CHECKPOINT_PERIOD", "1"]
    run(tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *opts))
    return out, opts


def copy_run(short_run, tmp_path):
    out, opts = short_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst, opts


def fresh_trainer_and_state(cfg):
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    return trainer, {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def assert_unchanged(trainer, before):
    after = trainer.unwrapped_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_resume_with_another_teacher_is_a_clear_error(short_run, tmp_path, tiny_cfg, tiny_teacher_weights):
    out, opts = copy_run(short_run, tmp_path)
    other_teacher = tiny_teacher_weights("retinanet_R18_FPN.yaml", seed=1)
    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *opts, "MGD.TEACHER.WEIGHTS", other_teacher)
    trainer, _ = fresh_trainer_and_state(cfg)
    with pytest.raises(TeacherChangedError, match="teacher changed") as info:
        trainer.resume_or_load(resume=True)
    assert other_teacher in str(info.value) and "model_final.pth" in str(info.value)


@pytest.mark.slow
def test_checkpoint_of_another_student_architecture_is_refused(short_run, tmp_path, tiny_cfg):
    out, opts = copy_run(short_run, tmp_path)
    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *opts, "MODEL.RESNETS.DEPTH", "34")
    trainer, before = fresh_trainer_and_state(cfg)
    with pytest.raises(IncompatibleWeightsError, match="model_final.pth.*missing keys.*student.backbone.*more.*Nothing was loaded"):
        trainer.resume_or_load(resume=True)
    assert_unchanged(trainer, before)  # nothing partially loaded


@pytest.mark.slow
def test_truncated_checkpoint_is_a_clear_error(short_run, tmp_path, tiny_cfg):
    out, opts = copy_run(short_run, tmp_path)
    last = out / "model_final.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *opts)
    trainer, before = fresh_trainer_and_state(cfg)
    with pytest.raises(CheckpointLoadError, match=str(last)):
        trainer.resume_or_load(resume=True)
    assert_unchanged(trainer, before)
    assert trainer.start_iter == 0
