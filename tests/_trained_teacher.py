"""A tiny RetinaNet teacher *trained* on CPU in about a minute, for tests where the teacher's
scores must mean something (preferential sampling of an unlabeled pool).

A random teacher scores every image 0 (uniform fallback), and a teacher over-fitted on the 16
images of ``mini_digits_tiny_train`` scores the pool's shapes and letters as high as its
digits. This one trains ``ITERATIONS`` steps of 8 images on a generated set of
``NUM_IMAGES`` 64x64 digit images (the tiny pool's digit sizes and handwriting samples) at
64x64: on a pool of 160 such images (25 % digits) the ROC AUC of its largest detection score
is ~0.71-0.74 and the default ("rank") score draws ~40 % digit images (trained while the 2
cores were shared: ~45 s to ~12 min). Its config file (the bundled R18 RetinaNet at 64x64) and weights
go to ``MGD.TEACHER.CONFIG_FILE`` / ``WEIGHTS``: the same architecture as the tiny student.
"""
import os
import time

from _tiny import MINI

from mgd_det.config import setup_cfg
from mgd_det.data.mini_digits import MiniDigitsSpec, ensure_split
from mgd_det.data.pool import PoolSpec, ensure_pool, load_relevance

NUM_IMAGES = 320
ITERATIONS = 160
IMAGE_SIZE = 64
LR = 0.02
TRAIN_SET = "trained_teacher_digits"
# The pool the trained teacher is judged on: the tiny pool's content, 5x as many images (so
# that shares of draws are not decided by 2 or 3 images), with ground-truth relevance.
POOL_SPEC = dict(subdir="trained_teacher_pool", num_images=160, relevant_share=0.25, image_size=IMAGE_SIZE,
                 max_digits=3, digit_scale=(12, 32), seed=1)
# The teacher's training and test size (the tiny sets' 64x64): written into its own config file.
TEACHER_YAML = f"""_BASE_: "{os.path.join(MINI, 'retinanet_R18_FPN.yaml')}"
INPUT:
  MIN_SIZE_TRAIN: ({IMAGE_SIZE},)
  MAX_SIZE_TRAIN: {IMAGE_SIZE}
  MIN_SIZE_TEST: {IMAGE_SIZE}
  MAX_SIZE_TEST: {IMAGE_SIZE}
"""


def train_tiny_teacher(folder: str, data_root: str, iterations: int = ITERATIONS, num_images: int = NUM_IMAGES,
                       lr: float = LR):
    """Train the teacher into ``folder``; returns (config file, weights file, seconds)."""
    from detectron2.utils.env import seed_all_rng

    from mgd_det.engine import MGDTrainer

    start = time.perf_counter()
    spec = MiniDigitsSpec(TRAIN_SET, "train", num_images, image_size=IMAGE_SIZE, max_digits=3, digit_scale=(12, 32))
    json_file = ensure_split(data_root, spec)
    image_dir = os.path.join(os.path.dirname(os.path.dirname(json_file)), "train")
    config_file = os.path.join(folder, "tiny_teacher.yaml")
    with open(config_file, "w", encoding="utf-8") as f:
        f.write(TEACHER_YAML)
    cfg = setup_cfg(config_file, [
        "MODEL.DEVICE", "cpu", "SEED", "0",
        "DATASETS.COCO_SETS", f"('{TRAIN_SET}:{json_file}:{image_dir}',)",
        "DATASETS.TRAIN", f"('{TRAIN_SET}',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.BASE_LR", str(lr),
        "SOLVER.MAX_ITER", str(iterations), "SOLVER.WARMUP_ITERS", "10",
        "SOLVER.STEPS", f"({int(iterations * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD", str(10 * iterations),
        "OUTPUT_DIR", os.path.join(folder, "run"),
    ])
    cfg.freeze()
    seed_all_rng(0)  # the same teacher every session (CPU, one thread)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return config_file, os.path.join(folder, "run", "model_final.pth"), time.perf_counter() - start


def ensure_teacher_pool(data_root: str):
    """(image folder, {image_id: relevant}) of :data:`POOL_SPEC` under ``data_root``."""
    image_dir = ensure_pool(PoolSpec(**POOL_SPEC), data_root)
    return image_dir, load_relevance(os.path.join(os.path.dirname(image_dir), "relevance.json"))
