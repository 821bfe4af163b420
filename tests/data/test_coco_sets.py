"""Your own COCO data without Python, checked once, parsed once.

- DATASETS.COCO_SETS ("NAME:ANNOTATIONS.json:IMAGE_DIR") registers sets from the config or the
  command line; ``python tools/train_net.py`` trains and evaluates on them;
- bad boxes are dropped or clipped when a set is first used, with one summary line naming
  counts and example ids; an unreadable image names its file; each JSON is parsed once;
- the class count must cover the data's categories; evaluation tasks follow the config and a
  model that predicts nothing gets explicit 0.0 rows (segm included).
"""
import json
import logging
import math
import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.structures import Instances

from _runner import run_tool
from _tiny import TINY_OPTS, config_path
from mgd_det.config import setup_cfg
from mgd_det.data import coco_json, register_config_datasets
from mgd_det.data.annotation_checks import CLIPPED
from mgd_det.data.mapper import FileNamingMapper
from mgd_det.engine import MGDTrainer
from mgd_det.engine.trainer import ExplicitCOCOEvaluator, evaluation_tasks
from mgd_det.errors import ConfigError, DataError


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("data.test_coco_sets")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, tiny_datasets):
    """A copy of the tiny train split as 'your own' data, plus a copy with bad boxes."""
    meta = MetadataCatalog.get("mini_digits_tiny_train")
    DatasetCatalog.get("mini_digits_tiny_train")  # generated and metadata set
    root = tmp_path_factory.mktemp("own")
    images = root / "images"
    shutil.copytree(meta.image_root, images)
    data = json.load(open(meta.json_file))
    good = root / "train.json"
    good.write_text(json.dumps(data))
    anns, image = data["annotations"], {i["id"]: i for i in data["images"]}
    w = image[anns[4]["image_id"]]["width"]
    del anns[0]["bbox"]                                   # without bbox
    anns[1]["bbox"] = [1.0, 2.0, float("nan"), 5.0]       # non-finite
    anns[2]["bbox"] = [10.0, 10.0, -5.0, 8.0]             # negative width
    anns[3]["bbox"] = []                                  # empty
    x, y, bw, bh = anns[4]["bbox"]
    anns[4]["bbox"] = [w - bw + 0.5, y, bw, bh]           # overshoots by 0.5 px: clipped
    anns[5]["bbox"] = [w + 20.0, y, bw, bh]               # outside the image: dropped
    bad = root / "bad.json"
    bad.write_text(json.dumps(data))
    return {"root": root, "images": images, "good": good, "bad": bad, "ids": [a["id"] for a in anns[:6]],
            "num_anns": len(anns), "width": w}


def cfg_with_sets(*entries, extra=()):
    cfg = setup_cfg(config_path("retinanet_R18_FPN.yaml"), list(TINY_OPTS) + [
        "DATASETS.COCO_SETS", repr(tuple(entries)), *extra])
    return cfg


def test_bad_boxes_are_dropped_or_clipped_with_one_summary_line(own_data, caplog):
    cfg = cfg_with_sets(f"own_bad:{own_data['bad']}:{own_data['images']}")
    assert register_config_datasets(cfg) == ["own_bad"]
    with caplog.at_level(logging.INFO, logger="mgd_det.data.annotation_checks"):
        dicts = DatasetCatalog.get("own_bad")
        DatasetCatalog.get("own_bad")  # a second load: checked again, not reported again
    lines = [r.getMessage() for r in caplog.records if r.name == "mgd_det.data.annotation_checks"]
    assert len(lines) == 1, lines
    line = lines[0]
    ids = own_data["ids"]
    assert "dropped 5, clipped 1" in line
    for kind, ann_id in [("without bbox", ids[0]), ("non-finite bbox", ids[1]),
                         ("width or height <= 0", ids[2]), (CLIPPED, ids[4]),
                         ("outside the image", ids[5])]:
        assert kind in line and f"ann {ann_id}" in line, (kind, line)
    assert "without bbox (e.g. ann {}, ann {})".format(ids[0], ids[3]) in line  # the empty list too
    kept = {a["id"]: a for d in dicts for a in d["annotations"]}
    assert len(kept) == own_data["num_anns"] - 5
    x0, _, bw, _ = kept[ids[4]]["bbox"]
    assert x0 + bw == pytest.approx(own_data["width"])
    assert all(all(math.isfinite(v) for v in a["bbox"]) and a["bbox"][2] > 0 for a in kept.values())


def test_annotation_json_is_parsed_once_per_process(own_data, tmp_path):
    json_file = str(tmp_path / "once.json")
    shutil.copy(own_data["good"], json_file)
    cfg = cfg_with_sets(f"own_once:{json_file}:{own_data['images']}", extra=["OUTPUT_DIR", str(tmp_path)])
    register_config_datasets(cfg)
    from mgd_det.data import ensure_dataset_ready

    ensure_dataset_ready("own_once")
    DatasetCatalog.get("own_once")
    DatasetCatalog.get("own_once")
    MGDTrainer.build_evaluator(cfg, "own_once")
    MGDTrainer.build_evaluator(cfg, "own_once")
    assert coco_json.PARSE_COUNT[json_file] == 1
    os.utime(json_file, ns=(1, 1))  # an edited file is read again
    DatasetCatalog.get("own_once")
    assert coco_json.PARSE_COUNT[json_file] == 2


def test_coco_sets_entries_are_checked(own_data):
    with pytest.raises(ConfigError, match="DATASETS.COCO_SETS entry 'only_a_name'.*NAME:ANNOTATIONS"):
        register_config_datasets(cfg_with_sets("only_a_name"))
    with pytest.raises(ConfigError, match="bundled name"):
        register_config_datasets(cfg_with_sets(f"mini_digits_train:{own_data['good']}:{own_data['images']}"))
    register_config_datasets(cfg_with_sets(f"own_twice:{own_data['good']}:{own_data['images']}"))
    register_config_datasets(cfg_with_sets(f"own_twice:{own_data['good']}:{own_data['images']}"))  # idempotent
    with pytest.raises(ConfigError, match="already registered"):
        register_config_datasets(cfg_with_sets(f"own_twice:{own_data['bad']}:{own_data['images']}"))


def test_unreadable_image_names_the_file(own_data, tmp_path):
    cfg = cfg_with_sets()
    record = dict(DatasetCatalog.get("mini_digits_tiny_train")[0])
    broken = tmp_path / "broken.png"
    data = open(record["file_name"], "rb").read()
    broken.write_bytes(data[: len(data) // 2])
    mapper = FileNamingMapper(DatasetMapper(cfg, True), ("own_set",), cfg.INPUT.FORMAT)
    mapper(dict(record))  # a good image passes through
    with pytest.raises(DataError, match=f"cannot read image {broken} \\(data set own_set\\)"):
        mapper(dict(record, file_name=str(broken)))
    with pytest.raises(KeyError):  # not an image problem: the original error, unchanged
        FileNamingMapper(lambda d: d["missing_key"])(dict(record))


def test_class_count_must_cover_the_categories(own_data, tmp_path):
    cfg = cfg_with_sets(f"own_classes:{own_data['good']}:{own_data['images']}",
                        extra=["DATASETS.TRAIN", "('own_classes',)", "MODEL.RETINANET.NUM_CLASSES", "5",
                               "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ConfigError, match="'own_classes' has 10 categories but MODEL.RETINANET.NUM_CLASSES is 5"):
        MGDTrainer(cfg)


def test_evaluation_tasks_follow_the_config_and_empty_predictions_give_zero_rows(tiny_datasets, tmp_path):
    cfg = setup_cfg(config_path("mask_rcnn_R18_FPN.yaml"), list(TINY_OPTS))
    assert evaluation_tasks(cfg) == ("bbox", "segm")
    assert evaluation_tasks(setup_cfg(config_path("retinanet_R18_FPN.yaml"), list(TINY_OPTS))) == ("bbox",)
    name = "mini_digits_tiny_val"
    evaluator = MGDTrainer.build_evaluator(cfg, name, output_folder=str(tmp_path))._evaluators[0]
    assert isinstance(evaluator, ExplicitCOCOEvaluator)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        empty = Instances((record["height"], record["width"]))
        empty.pred_boxes = torch.zeros(0, 4)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": empty}])
    results = evaluator.evaluate()
    assert set(results) == {"bbox", "segm"}
    assert results["segm"]["AP"] == 0.0 and results["bbox"]["AP50"] == 0.0


@pytest.mark.slow
def test_train_on_own_data_from_the_command_line(own_data, tmp_path):
    """No Python: sets named on the command line, trained and evaluated by train_net."""
    out = tmp_path / "out"
    sets = (f"own_train:{own_data['good']}:{own_data['images']}", f"own_val:{own_data['good']}:{own_data['images']}")
    opts = list(TINY_OPTS) + ["DATASETS.COCO_SETS", repr(sets), "DATASETS.TRAIN", "('own_train',)",
                              "DATASETS.TEST", "('own_val',)", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)]
    proc = run_tool("train_net", "--config-file", config_path("retinanet_R18_FPN.yaml"), *opts, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Registered data set 'own_train'" in log and "Data set 'own_train'" in log
    assert os.path.isfile(out / "model_final.pth")
    assert os.path.isfile(out / "inference" / "own_val" / "coco_instances_results.json")
