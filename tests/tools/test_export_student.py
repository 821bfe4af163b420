"""The exported student works in stock Detectron2, without mgd_det."""
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.env import seed_all_rng

from _runner import run_code, run_tool
from _tiny import config_path
from mgd_det.engine import MGDTrainer

STUDENT_CONFIG = config_path("retinanet_R18_FPN.yaml")
VAL = "mini_digits_tiny_val"

# Runs in a fresh interpreter: plain Detectron2 only. Prints a JSON report.
PLAIN_DETECTRON2 = r"""
import json, sys
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

config_file, weights, image_file, json_file, image_root, out_dir, preds_file = sys.argv[1:]
cfg = get_cfg()
cfg.merge_from_file(config_file)
cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", "64",
                     "INPUT.MAX_SIZE_TEST", "64", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
                     "DATASETS.TEST", "('plain_val',)", "DATALOADER.NUM_WORKERS", "0"])
model = build_model(cfg)
result = model.load_state_dict(torch.load(weights, weights_only=True)["model"], strict=True)
report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
instances = DefaultPredictor(cfg)(read_image(image_file, format="BGR"))["instances"]
torch.save({k: v for k, v in instances.get_fields().items() if k != "pred_boxes"}
           | {"pred_boxes": instances.pred_boxes.tensor}, preds_file)
register_coco_instances("plain_val", {}, json_file, image_root)
model.eval()
results = DefaultTrainer.test(cfg, model, evaluators=[COCOEvaluator("plain_val", output_dir=out_dir)])
report["bbox"] = results["bbox"]
report["mgd_det_imported"] = any(m == "mgd_det" or m.startswith("mgd_det.") for m in sys.modules)
print("REPORT " + json.dumps(report))
"""


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("tools.test_export_student")


@pytest.fixture(scope="module")
def mgd_run(tmp_path_factory, tiny_cfg):
    """A 2-iteration MGD run (R18 teacher and student): its config and trainer."""
    out = tmp_path_factory.mktemp("mgd_run")
    cfg = tiny_cfg(
        "mgd_retinanet_R50_R18_AMP.yaml", out, "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml",
        "DATASETS.TEST", f"('{VAL}',)",
    )
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with our COCO evaluation on the tiny val set
    return cfg, trainer


def _detections(folder):
    with open(os.path.join(folder, "coco_instances_results.json")) as f:
        dets = json.load(f)
    return sorted((d["image_id"], d["category_id"], d["score"], *d["bbox"]) for d in dets)


@pytest.mark.slow
def test_export_loads_in_plain_detectron2_with_same_predictions_and_ap(mgd_run, tmp_path):
    cfg, trainer = mgd_run
    exported = tmp_path / "student.pth"
    proc = run_tool("export_student", os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), exported,
                    "--config-file", STUDENT_CONFIG)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(exported, weights_only=True)["model"]
    assert state and not any(k.startswith(("student.", "distiller.", "teacher")) for k in state)

    meta = MetadataCatalog.get(VAL)
    image_file = sorted(os.listdir(meta.image_root))[0]
    image_file = os.path.join(meta.image_root, image_file)
    preds_file = tmp_path / "plain_preds.pt"
    proc = run_code(PLAIN_DETECTRON2, STUDENT_CONFIG, exported, image_file, meta.json_file, meta.image_root,
                    tmp_path / "plain_eval", preds_file, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("REPORT "))[7:])
    assert report["missing"] == [] and report["unexpected"] == []
    assert not report["mgd_det_imported"]

    # Predictions on a fixed image: the wrapper in eval mode vs stock DefaultPredictor.
    model = trainer.unwrapped_model.eval()
    image = read_image(image_file, format="BGR")
    inputs = {"image": torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1))),
              "height": image.shape[0], "width": image.shape[1]}
    with torch.no_grad():
        ours = model([inputs])[0]["instances"]
    plain = torch.load(preds_file, weights_only=True)
    assert len(ours) == len(plain["scores"]) > 0
    torch.testing.assert_close(ours.pred_boxes.tensor, plain["pred_boxes"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.scores, plain["scores"], rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.pred_classes, plain["pred_classes"])

    # AP: our end-of-training evaluation vs stock DefaultTrainer.test on the exported file.
    # (A barely trained student has AP near 0, so compare every scored detection as well.)
    ours_dets = _detections(os.path.join(cfg.OUTPUT_DIR, "inference", VAL))
    plain_dets = _detections(tmp_path / "plain_eval")
    assert len(ours_dets) == len(plain_dets) > 0
    # Pair them up by value, not by sorted position: two detections of one image and class
    # with scores equal to ~1e-5 may sort either way.
    unmatched = list(plain_dets)
    for a in ours_dets:
        match = next((b for b in unmatched if a[:2] == b[:2] and a[2:] == pytest.approx(b[2:], rel=1e-4, abs=1e-3)), None)
        assert match is not None, f"no stock-Detectron2 detection matches {a}"
        unmatched.remove(match)
    ours_ap, plain_ap = trainer._last_eval_results["bbox"], report["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        a, b = ours_ap[key], plain_ap[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), key


@pytest.mark.slow
def test_export_refuses_a_plain_checkpoint(tmp_path, tiny_teacher_weights):
    proc = run_tool("export_student", tiny_teacher_weights("retinanet_R18_FPN.yaml"), tmp_path / "x.pth")
    assert proc.returncode != 0 and "not an MGD checkpoint" in proc.stderr
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.slow
def test_export_of_a_truncated_file_names_it(tmp_path, mgd_run):
    cfg, _ = mgd_run
    broken = tmp_path / "broken.pth"
    data = open(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), "rb").read()
    broken.write_bytes(data[: len(data) // 3])
    proc = run_tool("export_student", broken, tmp_path / "x.pth")
    assert proc.returncode != 0 and str(broken) in proc.stderr
