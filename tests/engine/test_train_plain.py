"""Plain (non-distilled) training and COCO evaluation through the project's trainer."""
import json
import math
import os

import pytest

from _tiny import config_path, tiny_cfg, train
from mgd_det.config import setup_cfg


@pytest.fixture(autouse=True)
def _tiny_data(tiny_datasets):
    return tiny_datasets


def _assert_coco_metrics(results, task):
    metrics = results[task]
    for key in ("AP", "AP50", "AP75"):
        assert key in metrics
        assert math.isfinite(metrics[key])


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name,tasks",
    [("retinanet_R18_FPN.yaml", ["bbox"]), ("mask_rcnn_R18_FPN.yaml", ["bbox", "segm"])],
)
def test_two_iterations_write_checkpoint_and_coco_metrics(tmp_path, config_name, tasks):
    trainer, results = train(tiny_cfg(config_name, tmp_path))
    assert os.path.isfile(tmp_path / "model_final.pth")
    for task in tasks:
        _assert_coco_metrics(results, task)
    lines = [json.loads(x) for x in open(tmp_path / "metrics.json")]
    assert any("total_loss" in x and math.isfinite(x["total_loss"]) for x in lines)


def test_unknown_config_key_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="MGD.NOT_A_KEY.*mgd_det/config.py"):
        setup_cfg(config_path("retinanet_R18_FPN.yaml"), ["MGD.NOT_A_KEY", "1"])


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        setup_cfg("configs/nope.yaml")


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    from mgd_det.data import register_coco_dataset

    register_coco_dataset("user_missing_set", str(tmp_path / "no" / "ann.json"), str(tmp_path / "no"))
    cfg = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path, "DATASETS.TRAIN", "('user_missing_set',)")
    with pytest.raises(FileNotFoundError, match="ann.json"):
        train(cfg)


def test_corrupt_annotation_file_is_a_clear_error(tmp_path):
    from mgd_det.data import register_coco_dataset

    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [ {"id": 1, ')  # truncated JSON
    register_coco_dataset("user_corrupt_set", str(ann), str(tmp_path))
    cfg = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path, "DATASETS.TRAIN", "('user_corrupt_set',)")
    with pytest.raises(ValueError, match="ann.json"):
        train(cfg)
