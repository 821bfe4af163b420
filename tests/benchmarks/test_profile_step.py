"""benchmarks/profile_step.py (the GPU step-profile script) runs every part on the CPU at
tiny sizes and reports what it claims; no timing is asserted."""
import json
import os

import pytest

from benchmarks import profile_step

MGD_CONFIG = "configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml"
TINY = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('mini_digits_tiny_train',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]


def run(tmp_path, *argv):
    args = ["--out-dir", str(tmp_path), "--batch-size", "2", "--image-size", "64", *argv, *TINY]
    return profile_step.main(args)


@pytest.mark.slow
def test_syncs_steps_profile_and_mapper(tiny_datasets, tmp_path):
    results = run(tmp_path, "--only", "syncs,steps,profile,mapper", "--reps", "1", "--warmup", "0",
                  "--profile-steps", "1", "--mapper-images", "4")
    assert set(results["syncs"]) == {"RetinaNet", "BatchedRetinaNet"}
    assert results["syncs"]["BatchedRetinaNet"]["host_sync_ops"]["student_step"] == 0
    assert results["syncs"]["RetinaNet"]["host_sync_ops"]["student_step"] > 0
    arms = ("plain", "plain_batched", "mgd", "mgd_batched")
    assert all(results["steps"][a]["images_per_s"] > 0 for a in arms)
    assert results["steps"]["mgd_batched_vs_plain_batched"]["n"] == 1
    for arm in arms:
        assert results["profile"][arm]["cpu_s_per_step"] > 0
        assert results["profile"][arm]["kernels_per_step"] == 0  # no CUDA here
        assert os.path.getsize(tmp_path / f"profile_{arm}.txt") > 0
    mapper = results["mapper"]
    assert mapper["images"] == 4 and mapper["train_mapper_images_per_s"] > 0
    assert 0 < mapper["decode_share_of_train_mapper"] <= 1.5
    assert json.load(open(tmp_path / "results.json"))["steps"].keys() == results["steps"].keys()
    assert "| plain_batched |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # launches two training processes
def test_loader_and_parallel_processes(tiny_datasets, tmp_path):
    results = run(tmp_path, "--only", "loader,parallel", "--loader-workers", "0", "--loader-steps", "2",
                  "--parallel", "2", "--parallel-seconds", "1", "--parallel-workers", "0")
    loader = results["loader"]["0"]
    assert loader["steps"] == 2 and loader["images"] == 4 and 0 <= loader["loader_wait_share"] < 1
    parallel = results["parallel"]["2"]
    assert parallel["exit_codes"] == [0, 0] and len(parallel["per_process_images_per_s"]) == 2
    assert parallel["total_images_per_s"] == pytest.approx(sum(parallel["per_process_images_per_s"]))
