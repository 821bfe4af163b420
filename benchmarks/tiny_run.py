"""The tiny-run settings: a config on the tiny mini digits split, small enough for a test or a
one-minute measurement on a CPU.

Shared by the measurements here (benchmarks/distpro_radius.py) and the tests (tests/_tiny.py
re-exports them), so that neither imports the other's folder and the settings exist once.
"""
import os

from mgd_det.config import setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "configs", "mini_digits")

# Small, fast settings: 64x64 images of the tiny split, batch 2, scores kept for COCO eval.
TINY_OPTS = [
    "DATASETS.TRAIN", "('mini_digits_tiny_train',)",
    "DATASETS.TEST", "('mini_digits_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MGD.UPDATE.NUM_BATCHES", "2",
    # R-CNN box heads train on 16 sampled ROIs per image, not the configs' 128: at 64x64 with
    # 1-3 digits 16 hold every positive, and the convolutional box head on 128 x batch ROIs
    # was most of a tiny Mask R-CNN step (~2 s of it at batch 4).
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.DEVICE", "cpu",  # CPU tests stay CPU tests on a machine with CUDA
]


def config_path(name: str) -> str:
    """A config by file name in configs/mini_digits, or a path as given."""
    return name if os.path.isfile(name) else os.path.join(MINI, name)


def tiny_cfg(config_name: str, output_dir, *opts, freeze=True, evaluate=True, teacher_weights=None):
    """The one tiny-run config: ``config_name`` on the tiny sets, batch 2.

    ``evaluate`` keeps the tiny validation set as DATASETS.TEST. ``teacher_weights``
    (config file -> checkpoint path, e.g. the tests' ``tiny_teacher_weights`` fixture) fills an
    MGD config's MGD.TEACHER.WEIGHTS unless ``opts`` set it.
    """
    base = TINY_OPTS + ([] if evaluate else ["DATASETS.TEST", "()"])
    cfg = setup_cfg(config_path(config_name), base + ["OUTPUT_DIR", str(output_dir)] + list(opts))
    if (teacher_weights is not None and cfg.MODEL.META_ARCHITECTURE == "MGDDistiller"
            and "MGD.TEACHER.WEIGHTS" not in opts):
        cfg.MGD.TEACHER.WEIGHTS = teacher_weights(cfg.MGD.TEACHER.CONFIG_FILE)
    if freeze:
        cfg.freeze()
    return cfg
