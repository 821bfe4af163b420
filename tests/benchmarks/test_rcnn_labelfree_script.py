"""benchmarks/rcnn_labelfree.sh (issue 29's evidence run) end to end on the tiny sets: the
teacher, then the supervised and the label-free Mask R-CNN students side by side, each evaluated
for boxes and masks; the label-free one trains on the unlabeled view through the output pathways."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_script_trains_all_three_and_reports_box_and_mask_ap(tmp_path, tiny_datasets):
    env = dict(os.environ, DATA="mini_digits_tiny", TEACHER_ITERS="2", STUDENT_ITERS="2", PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "rcnn_labelfree.sh"), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["teacher", "supervised", "labelfree"]
    assert all("(bbox)" in line and "(segm)" in line for line in lines)
    labelfree_log = (tmp_path / "labelfree" / "log.txt").read_text()
    assert "mini_digits_tiny_train_images" in labelfree_log
    assert all(f"loss_{name}" in labelfree_log for name in ("rpn_kd", "roi_kd", "roi_box", "mask_kd"))
    assert "loss_mask:" not in labelfree_log  # no annotation read: no supervised mask loss
