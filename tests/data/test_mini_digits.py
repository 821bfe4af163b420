"""The bundled mini digits generator: determinism, COCO validity, registration, errors."""
import hashlib
import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mgd_det.data import ensure_dataset_ready, ensure_generated, generate_mini_digits, register_coco_dataset


def _digest_tree(folder):
    digest = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            digest[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


def _generate(root, seed):
    return generate_mini_digits(str(root), "train", num_images=6, image_size=64, seed=seed,
                                max_digits=3, digit_scale=(12, 32))


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    _generate(tmp_path / "a", 3)
    _generate(tmp_path / "b", 3)
    _generate(tmp_path / "c", 4)
    a, b, c = (_digest_tree(tmp_path / x) for x in "abc")
    assert len(a) == 7 and a == b  # 6 images + 1 JSON
    assert a != c


def test_json_is_valid_coco_with_boxes_and_masks_inside_images(tmp_path):
    coco = COCO(_generate(tmp_path, 0))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [str(d) for d in range(10)]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 6
    for ann in anns:
        image = coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        mask = mask_util.decode(ann["segmentation"])
        assert mask.shape == (image["height"], image["width"])
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
        assert ann["area"] == int(mask.sum())


def test_registered_tiny_split_loads_with_coco_metadata(tiny_datasets):
    dicts = DatasetCatalog.get("mini_digits_tiny_train")
    assert len(dicts) == 16
    assert all(os.path.isfile(d["file_name"]) and d["annotations"] for d in dicts)
    meta = MetadataCatalog.get("mini_digits_tiny_train")
    assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 10
    assert meta.json_file.startswith(tiny_datasets)


def test_generated_on_first_use_with_a_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MGD_DATASETS", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="mgd_det.data"):
        json_file = ensure_generated("mini_digits_tiny_val")
    assert json_file.startswith(str(tmp_path)) and os.path.isfile(json_file)
    assert any("Generating mini digits" in r.getMessage() and str(tmp_path) in r.getMessage() for r in caplog.records)


def test_corrupt_generated_annotation_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MGD_DATASETS", str(tmp_path))
    json_file = ensure_generated("mini_digits_tiny_val")
    with open(json_file, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*delete"):
        ensure_generated("mini_digits_tiny_val")
    with open(json_file, "w") as f:
        json.dump({"images": []}, f)
    with pytest.raises(ValueError, match="not a COCO instances file"):
        ensure_generated("mini_digits_tiny_val")


def test_missing_user_dataset_is_a_clear_error(tmp_path):
    register_coco_dataset("user_set_without_files", str(tmp_path / "x.json"), str(tmp_path / "imgs"))
    with pytest.raises(FileNotFoundError, match="x.json.*not found"):
        ensure_dataset_ready("user_set_without_files")
    with pytest.raises(KeyError, match="not registered"):
        ensure_dataset_ready("no_such_dataset")


def test_root_is_resolved_at_load_time_two_roots_in_one_process(tmp_path, monkeypatch):
    for sub in ("one", "two"):
        root = str(tmp_path / sub)
        monkeypatch.setenv("MGD_DATASETS", root)
        dicts = DatasetCatalog.get("mini_digits_tiny_val")
        meta = MetadataCatalog.get("mini_digits_tiny_val")
        assert all(d["file_name"].startswith(root) for d in dicts)
        assert meta.json_file.startswith(root) and meta.image_root.startswith(root)
        assert meta.evaluator_type == "coco"
