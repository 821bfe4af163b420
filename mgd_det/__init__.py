"""Matching Guided Distillation for object detectors, as a Detectron2 extension.

Importing the package registers its Detectron2 components: the ``MGDDistiller``
meta-architecture and the bundled mini digits data sets.
"""
from mgd_det.config import add_mgd_config, get_mgd_cfg
from mgd_det import data  # noqa: F401  (registers data sets)
from mgd_det import modeling  # noqa: F401  (registers MGDDistiller)

__version__ = "0.1.0"
__all__ = ["add_mgd_config", "get_mgd_cfg"]
