"""Resume and teacher-loading errors that say what happened.

- a plain detector checkpoint met by ``--resume`` of an MGD run, an MGD checkpoint given to a
  plain model, a changed MGD.REDUCER / pathways on resume: named as such, nothing loaded;
- the teacher loader: file named, key lists capped, an MGD checkpoint recognised, the
  student's class count inherited (OVERRIDES win), the class-count mismatch hint, and the
  exact command that trains a missing teacher.
"""
import os
import shutil

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from mgd_det.engine import MGDTrainer
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.checkpoint_errors import ResumeMismatchError
from mgd_det.engine.resume_settings import SETTINGS_KEY
from mgd_det.errors import CheckpointError, UserFileNotFoundError
from mgd_det.modeling.teacher import IncompatibleWeightsError, build_teacher_cfg, teacher_training_command

MGD_CONFIG = "mgd_retinanet_R50_R18_AMP.yaml"
TEACHER = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("engine.test_checkpoint_errors")


@pytest.fixture(scope="module")
def mgd_run(tmp_path_factory, tiny_cfg):
    """A finished 2-iteration MGD run (R18 teacher and student)."""
    out = tmp_path_factory.mktemp("mgd_run")
    cfg = tiny_cfg(MGD_CONFIG, out, *TEACHER)
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out


def copy_of(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def state_of(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def unchanged(trainer, before):
    after = trainer.unwrapped_model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_records_the_mgd_settings(mgd_run):
    saved = torch.load(mgd_run / "model_final.pth", weights_only=True)
    assert saved[SETTINGS_KEY]["MGD.REDUCER"] == "AMP"
    assert saved[SETTINGS_KEY]["MGD.POSITIONS"] == ["res2", "res3", "res4", "res5"]


@pytest.mark.parametrize("reducer", ["SP", "SM"])
def test_changed_reducer_on_resume_is_named(mgd_run, tmp_path, tiny_cfg, reducer):
    out = copy_of(mgd_run, tmp_path)
    trainer = MGDTrainer(tiny_cfg(MGD_CONFIG, out, *TEACHER, "MGD.REDUCER", reducer))
    before = state_of(trainer)
    with pytest.raises(ResumeMismatchError, match=f"MGD.REDUCER 'AMP' \\(now '{reducer}'\\)"):
        trainer.resume_or_load(resume=True)
    assert unchanged(trainer, before) and trainer.start_iter == 0


def test_changed_distillation_state_without_recorded_settings_is_named(mgd_run, tmp_path, tiny_cfg):
    """Older checkpoints carry no settings: the distillation state's keys and shapes decide."""
    out = copy_of(mgd_run, tmp_path)
    data = torch.load(out / "model_final.pth", weights_only=True)
    del data[SETTINGS_KEY]
    key = next(k for k in data["model"] if k.startswith("distiller.") and data["model"][k].dim() == 2)
    data["model"][key] = data["model"][key].repeat(1, 2)  # as if trained with G = 2 (AMP vs SM)
    torch.save(data, out / "model_final.pth")
    trainer = MGDTrainer(tiny_cfg(MGD_CONFIG, out, *TEACHER))
    before = state_of(trainer)
    with pytest.raises(ResumeMismatchError, match=f"different MGD.REDUCER / pathways.*{key}.*Nothing was loaded"):
        trainer.resume_or_load(resume=True)
    assert unchanged(trainer, before)


def test_changed_loss_weight_on_resume_is_logged_not_refused(mgd_run, tmp_path, tiny_cfg, caplog):
    out = copy_of(mgd_run, tmp_path)
    trainer = MGDTrainer(tiny_cfg(MGD_CONFIG, out, *TEACHER, "MGD.LOSS_WEIGHT", "2.0"))
    with caplog.at_level("WARNING", logger="mgd_det.engine.checkpoint"):
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    assert any("MGD.LOSS_WEIGHT 1.0 -> 2.0" in r.getMessage() for r in caplog.records)


def test_plain_checkpoint_met_by_resume_of_an_mgd_run(mgd_run, tmp_path, tiny_cfg, tiny_teacher_weights):
    out = copy_of(mgd_run, tmp_path)
    shutil.copy(tiny_teacher_weights("retinanet_R18_FPN.yaml"), out / "model_0000009.pth")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    trainer = MGDTrainer(tiny_cfg(MGD_CONFIG, out, *TEACHER))
    before = state_of(trainer)
    with pytest.raises(ResumeMismatchError, match="plain detector checkpoint.*fresh OUTPUT_DIR"):
        trainer.resume_or_load(resume=True)
    assert unchanged(trainer, before)


def test_mgd_checkpoint_given_to_a_plain_model(mgd_run, tmp_path, tiny_cfg):
    cfg = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path)
    model = build_model(cfg)
    with pytest.raises(ResumeMismatchError, match="MGD checkpoint.*plain detector.*export_student"):
        MGDCheckpointer(model, str(tmp_path)).resume_or_load(str(mgd_run / "model_final.pth"), resume=False)


def test_mgd_checkpoint_with_other_settings_as_model_weights_loads_its_student(mgd_run, tmp_path, tiny_cfg, caplog):
    """Fine-tuning (no --resume) from an MGD run with another distillation setup: the
    student is kept, the distillation branch starts fresh (said in a WARNING)."""
    data = torch.load(mgd_run / "model_final.pth", weights_only=True)
    key = next(k for k in data["model"] if k.startswith("distiller.") and data["model"][k].dim() == 2)
    data["model"][key] = data["model"][key].repeat(1, 2)
    weights = tmp_path / "other_settings.pth"
    torch.save(data, weights)
    trainer = MGDTrainer(tiny_cfg(MGD_CONFIG, tmp_path / "out", *TEACHER, "MODEL.WEIGHTS", str(weights)))
    with caplog.at_level("WARNING", logger="mgd_det.engine.checkpoint"):
        trainer.resume_or_load(resume=False)
    assert any("loading its student only" in r.getMessage() for r in caplog.records)
    student = trainer.unwrapped_model.student.state_dict()
    name = next(k for k in student if k.endswith("weight") and student[k].dim() == 4)
    assert torch.equal(student[name], data["model"]["student." + name])


# ---------------------------------------------------------------------------- teacher
def test_mgd_checkpoint_given_as_teacher_weights(mgd_run, tmp_path, tiny_cfg):
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, *TEACHER, "MGD.TEACHER.WEIGHTS", str(mgd_run / "model_final.pth"))
    with pytest.raises(CheckpointError, match="MGD checkpoint.*export_student.py.*MGD.TEACHER.WEIGHTS"):
        build_model(cfg)


def test_truncated_teacher_weights_are_named(tmp_path, tiny_cfg, tiny_teacher_weights):
    broken = tmp_path / "teacher.pth"
    data = open(tiny_teacher_weights("retinanet_R18_FPN.yaml"), "rb").read()
    broken.write_bytes(data[: len(data) // 3])
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, *TEACHER, "MGD.TEACHER.WEIGHTS", str(broken))
    with pytest.raises(CheckpointError, match=f"teacher weights {broken}.*truncated or corrupt"):
        build_model(cfg)


def test_teacher_takes_the_students_class_count_unless_overridden(tiny_cfg, tmp_path):
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, *TEACHER, "MODEL.RETINANET.NUM_CLASSES", "3")
    assert build_teacher_cfg(cfg).MODEL.RETINANET.NUM_CLASSES == 3
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, *TEACHER, "MODEL.RETINANET.NUM_CLASSES", "3",
                   "MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASSES', '10']")
    assert build_teacher_cfg(cfg).MODEL.RETINANET.NUM_CLASSES == 10


def test_teacher_with_another_class_count_suggests_overrides(tmp_path, tiny_cfg, tiny_teacher_weights):
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, *TEACHER, "MODEL.RETINANET.NUM_CLASSES", "3",
                   "MGD.TEACHER.WEIGHTS", tiny_teacher_weights("retinanet_R18_FPN.yaml"))
    with pytest.raises(IncompatibleWeightsError) as info:
        build_model(cfg)
    message = str(info.value)
    assert "trained with 10 classes" in message and "MGD.TEACHER.OVERRIDES" in message
    assert "MODEL.RETINANET.NUM_CLASSES', '10'" in message
    assert message.count("...") <= 3  # key lists capped


def test_missing_teacher_prints_the_command_that_trains_it(tmp_path, tiny_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = "output/my_teacher/model_final.pth"
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, "MGD.TEACHER.WEIGHTS", weights, "DATASETS.TRAIN", "('mini_digits_train',)")
    command = teacher_training_command(cfg)
    assert command.startswith("python tools/train_net.py --config-file ")
    assert command.split("--config-file ")[1].split()[0].endswith("configs/mini_digits/retinanet_R50_FPN.yaml")
    assert command.endswith("OUTPUT_DIR output/my_teacher")
    with pytest.raises(UserFileNotFoundError, match="Teacher weights not found.*train the teacher first: python tools/train_net.py"):
        build_model(cfg)
    # The configured path is the teacher config's own OUTPUT_DIR: no OUTPUT_DIR needed.
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, "MGD.TEACHER.WEIGHTS", "output/mini_digits/retinanet_R50_FPN/model_final.pth")
    assert "OUTPUT_DIR" not in teacher_training_command(cfg)
    # Elsewhere than a run's model_final.pth: the command plus where to copy its result.
    cfg = tiny_cfg(MGD_CONFIG, tmp_path, "MGD.TEACHER.WEIGHTS", "weights/teacher.pth")
    assert teacher_training_command(cfg).endswith("copy its OUTPUT_DIR/model_final.pth to weights/teacher.pth")
    assert os.getcwd() == str(tmp_path)
