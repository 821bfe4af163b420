"""Data sets: the bundled mini digits set and COCO-format registration.

Importing this package registers the mini digits sets and the bundled unlabeled pools in
Detectron2's catalogs, and the checks of the data keys (DATASETS.COCO_SETS, MGD.UNLABELED.*)
in :mod:`mgd_det.config_checks`.
"""

from .datasets import (
    dataset_root,
    ensure_dataset_ready,
    ensure_generated,
    register_coco_dataset,
    register_config_datasets,
    register_mini_digits,
)
from .mapper import FileNamingMapper
from .mini_digits import DEFAULT_SPECS, generate_mini_digits

register_mini_digits()

__all__ = [
    "DEFAULT_SPECS",
    "FileNamingMapper",
    "dataset_root",
    "ensure_dataset_ready",
    "ensure_generated",
    "generate_mini_digits",
    "register_coco_dataset",
    "register_config_datasets",
    "register_mini_digits",
]
from .unlabeled import register_image_folder, register_unlabeled_from_cfg  # noqa: E402,F401  (registers the bundled unlabeled pools)
from . import unlabeled_cfg  # noqa: E402,F401  (registers the MGD.UNLABELED check)
