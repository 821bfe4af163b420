"""Data sets: the bundled mini digits set and COCO-format registration.

Importing this package registers the mini digits sets in Detectron2's catalogs.
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
