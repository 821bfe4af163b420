"""Wrong weights and checkpoints, as a new user meets them: a teacher not trained yet, of
another architecture or class count, an MGD checkpoint where a plain one belongs, truncated
files, files torch refuses to load, and ``--resume`` into a folder whose checkpoints do not
fit the run (another reducer, teacher, depth or config, a lost last_checkpoint). Each is one
ERROR line naming the file and the fix, or a WARNING saying where the run resumes from; no
checkpoint of the folder is harmed.
"""
import os
import shutil

import pytest

from _as_user import (MGD, OPTS, R18_TEACHER, Case, check, numpy_checkpoint, params, run_files, truncate,
                      truncated_copy, write)

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

UNREADABLE = r"\(.+\): the file is truncated or corrupt .*replace or delete it"
REFUSED = r"is a valid file but holds a Python object .*it is not corrupt. If you trust its origin, convert it once"
UNTRAINED = "output/never_trained_teacher"


def copied_run(u):
    return u.copy_run(u.base.mgd_run)


def run_without_last_checkpoint(u):
    os.remove(os.path.join(copied_run(u), "last_checkpoint"))


def run_with_a_plain_checkpoint(u):
    """The MGD run's folder, its last_checkpoint naming a plain detector's checkpoint."""
    shutil.copy(u.base.teacher, os.path.join(copied_run(u), "model_0000009.pth"))
    write(u.c("run", "last_checkpoint"), "model_0000009.pth")


def resume_mgd(*opts):
    return lambda u: u.mgd(*opts, run=u.c("run"), flags=["--resume"])


def resumed_with(key, value):
    return Case(f"resume_with_{key.split('.')[-1].lower()}_{value.lower()}", resume_mgd(key, value),
                setup=copied_run, protect=run_files,
                error=r"checkpoint {case}/run/model_final.pth was trained with " + key + r" 'AMP' \(now '" + value
                      + r"'\): resume with the settings it was trained with, or start a fresh OUTPUT_DIR")


CASES = [
    # ------------------------------------------------------------ the teacher's weights
    Case("teacher_not_trained_yet",  # the first run of an MGD config
         lambda u: u.tool("train_net", "--config-file", MGD, *OPTS, "DATASETS.TRAIN", "('mini_digits_train',)",
                          "MGD.TEACHER.WEIGHTS", f"{UNTRAINED}/model_final.pth", "OUTPUT_DIR", u.c("out")),
         error=rf"Teacher weights not found: {UNTRAINED}/model_final.pth \(MGD.TEACHER.WEIGHTS\): train the teacher "
               rf"first: python tools/train_net.py --config-file \S+ OUTPUT_DIR {UNTRAINED}"),
    Case("teacher_weights_are_an_mgd_checkpoint",
         lambda u: u.mgd("MGD.TEACHER.WEIGHTS", os.path.join(u.base.mgd_run, "model_final.pth")),
         error=r"teacher weights {base}/mgd/model_final.pth are an MGD checkpoint .*export the student with "
               r"python tools/export_student.py"),
    Case("teacher_weights_truncated", lambda u: u.mgd("MGD.TEACHER.WEIGHTS", u.c("teacher.pth")),
         setup=lambda u: truncated_copy(u.base.teacher, u.c("teacher.pth")),
         error=r"cannot read teacher weights {case}/teacher.pth " + UNREADABLE),
    Case("teacher_weights_of_another_architecture",  # an R50 teacher config, R18 weights
         lambda u: u.mgd("MGD.TEACHER.CONFIG_FILE", "retinanet_R50_FPN.yaml"),
         error=r"Teacher weights do not match its config \({base}/plain/model_final.pth\): missing keys: .*"
               r"shape mismatches: .*Check that the weights were trained with this config"),
    Case("teacher_trained_with_other_classes", lambda u: u.mgd("MODEL.RETINANET.NUM_CLASSES", "3"),
         error=r"Teacher weights do not match its config .*The file was trained with 10 classes, the teacher is "
               r"built with 3 .*set MGD.TEACHER.OVERRIDES \"\['MODEL.RETINANET.NUM_CLASSES', '10'\]\""),
    Case("teacher_weights_hold_numpy_arrays", lambda u: u.mgd("MGD.TEACHER.WEIGHTS", u.c("np.pth")),
         setup=lambda u: numpy_checkpoint(u.base.teacher, u.c("np.pth")), protect=lambda u: [u.c("np.pth")],
         error=r"teacher weights {case}/np.pth " + REFUSED),
    # ------------------------------------------------------------ MODEL.WEIGHTS
    Case("model_weights_missing", lambda u: u.plain("MODEL.WEIGHTS", u.c("nope.pth")),
         error=r"checkpoint {case}/nope.pth not found \(MODEL.WEIGHTS, or the last_checkpoint file of {case}/out\): "
               r"check the path, or leave MODEL.WEIGHTS empty to start from scratch"),
    Case("model_weights_truncated", lambda u: u.plain("MODEL.WEIGHTS", u.c("w.pth")),
         setup=lambda u: truncated_copy(u.base.teacher, u.c("w.pth")),
         error=r"cannot read checkpoint {case}/w.pth " + UNREADABLE),
    Case("model_weights_hold_numpy_arrays", lambda u: u.plain("MODEL.WEIGHTS", u.c("np.pth")),
         setup=lambda u: numpy_checkpoint(u.base.teacher, u.c("np.pth")), protect=lambda u: [u.c("np.pth")],
         error=r"checkpoint {case}/np.pth " + REFUSED),
    # ------------------------------------------------------------ --resume
    Case("resume_last_checkpoint_names_a_truncated_file", resume_mgd(),
         setup=lambda u: truncate(os.path.join(copied_run(u), "model_final.pth")),
         protect=lambda u: [u.c("run", "model_0000000.pth")],
         error=r"cannot read checkpoint {case}/run/model_final.pth " + UNREADABLE
               + r"; to resume from an earlier one \(model_0000001.pth, model_0000000.pth\), write its name into "
                 r"{case}/run/last_checkpoint"),
    Case("resume_without_last_checkpoint", resume_mgd(), setup=run_without_last_checkpoint, protect=run_files,
         rc=0, warning=r"--resume: {case}/run/last_checkpoint does not exist; resuming from the newest readable "
                       r"checkpoint {case}/run/model_final.pth"),
    Case("resume_with_only_unreadable_checkpoints",
         lambda u: u.plain("SOLVER.MAX_ITER", "1", run=u.c("run"), flags=["--resume"]),
         setup=lambda u: write(u.c("run", "model_0000007.pth"), "garbage"), rc=0,
         warning=r"--resume: {case}/run/last_checkpoint does not exist and no checkpoint in {case}/run is readable "
                 r"\(model_0000007.pth \(UnpicklingError\)\): starting a new run from MODEL.WEIGHTS at iteration 0"),
    Case("resume_mgd_run_meets_a_plain_checkpoint", resume_mgd(), setup=run_with_a_plain_checkpoint,
         protect=lambda u: [u.c("run", "model_final.pth"), u.c("run", "model_0000009.pth")],
         error=r"cannot resume this MGD run from {case}/run/model_0000009.pth: it is a plain detector checkpoint "
               r".*start the MGD run in a fresh OUTPUT_DIR"),
    resumed_with("MGD.REDUCER", "SP"),
    resumed_with("MGD.REDUCER", "SM"),
    Case("resume_with_another_teacher_file",
         lambda u: u.tool("train_net", "--config-file", MGD, "--resume", *OPTS, *R18_TEACHER, "MGD.TEACHER.WEIGHTS",
                          os.path.join(u.base.plain_run, "model_0000000.pth"), "OUTPUT_DIR", u.c("run")),
         setup=copied_run, protect=run_files,
         error=r"Cannot resume from {case}/run/model_final.pth: it was trained with a teacher whose weights file has "
               r"SHA-256 \w+, but the current teacher file {base}/plain/model_0000000.pth has SHA-256 \w+\. .*"
               r"Restore the original teacher file, or start a new run in a fresh OUTPUT_DIR"),
    Case("resume_with_another_student_depth", resume_mgd("MODEL.RESNETS.DEPTH", "34"), setup=copied_run,
         protect=run_files,
         error=r"Checkpoint {case}/run/model_final.pth does not fit the MGD model .*missing keys: .*Nothing was "
               r"loaded\. .*export the student with tools/export_student.py"),
    Case("resume_plain_config_in_an_mgd_run_folder", lambda u: u.plain(run=u.c("run"), flags=["--resume"]),
         setup=copied_run, protect=run_files,
         error=r"checkpoint {case}/run/model_final.pth is an MGD checkpoint .* but this config builds a plain "
               r"detector: use the MGD config it was trained with, or export its student"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_wrong_weights_or_checkpoint(case, user):
    check(case, user)
