"""``tools/export_student.py`` and ``scripts/setup.sh`` given bad inputs, as a new user meets
them: an output that would overwrite the input or an existing file, a missing output folder, a
checkpoint that is plain, truncated or verified against the wrong config, overrides without a
config; a PYTHON that is not Python. Each is one ERROR line naming the file and the fix, and
no input or existing output is harmed.
"""
import os
import shutil

import pytest

from _as_user import PLAIN, Case, check, params, run_files, truncated_copy
from _runner import REPO

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def mgd_final(u):
    return os.path.join(u.base.mgd_run, "model_final.pth")


def keep_file(u):
    """Setup: an existing file at the export's output (a valid checkpoint)."""
    shutil.copy(u.base.teacher, u.c("keep.pth"))


CASES = [
    Case("export_onto_its_own_input", lambda u: u.export(u.c("run", "model_final.pth"), u.c("run", "model_final.pth")),
         setup=lambda u: u.copy_run(u.base.mgd_run), protect=run_files,
         error=r"output {case}/run/model_final.pth is the input checkpoint: .*choose another output file"),
    Case("export_onto_an_existing_file_without_force", lambda u: u.export(mgd_final(u), u.c("keep.pth")),
         setup=keep_file, protect=lambda u: [u.c("keep.pth")],
         error=r"output {case}/keep.pth exists: choose another file, or add --force to replace it"),
    Case("export_verified_against_the_wrong_class_count",
         lambda u: u.export(mgd_final(u), u.c("keep.pth"), "--force", "--config-file", PLAIN,
                            "MODEL.RETINANET.NUM_CLASSES", "3"),
         setup=keep_file, protect=lambda u: [u.c("keep.pth")],
         error=r"the exported student does not fit \S+retinanet_R18_FPN.yaml MODEL.RETINANET.NUM_CLASSES 3: shape "
               r"mismatches: .*nothing was written: give the student's config"),
    Case("export_of_a_plain_checkpoint", lambda u: u.export(u.base.teacher, u.c("x.pth")),
         error=r"{base}/plain/model_final.pth: not an MGD checkpoint: .*it is already a plain checkpoint: "
               r"use it as it is"),
    Case("export_of_a_truncated_checkpoint", lambda u: u.export(u.c("t.pth"), u.c("x.pth")),
         setup=lambda u: truncated_copy(mgd_final(u), u.c("t.pth")),
         error=r"cannot read checkpoint {case}/t.pth \(.+\): the file is truncated or corrupt .*replace or delete it"),
    Case("export_overrides_without_config_file",
         lambda u: u.export(mgd_final(u), u.c("x.pth"), "MODEL.RETINANET.NUM_CLASSES", "3"),
         error=r"config overrides \['MODEL.RETINANET.NUM_CLASSES', '3'\] need --config-file"),
    Case("export_into_a_missing_folder", lambda u: u.export(mgd_final(u), u.c("no", "such", "student.pth")),
         error=r"output folder {case}/no/such does not exist: create it first \(mkdir -p {case}/no/such\)"),
    Case("setup_script_with_a_python_that_is_not_python", lambda u: [os.path.join(REPO, "scripts", "setup.sh")],
         program="bash", env=lambda u: {"PYTHON": "/bin/true", "MGD_VENV": u.c("venv")},
         error=r"^setup.sh: ERROR: PYTHON=/bin/true is not a Python 3.9 or newer interpreter: "
               r"set PYTHON=/path/to/python3"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_export_or_setup_input(case, user):
    check(case, user)
