"""Matching Guided Distillation for object detectors, as a Detectron2 extension.

Importing ``mgd_det`` (or its Detectron2-free core ``mgd_det.matching``) does not import
Detectron2. ``mgd_det.config`` only declares keys (a leaf); the Detectron2 side registers
itself when it is imported: ``mgd_det.modeling`` (the ``MGDDistiller`` meta-architecture,
the loss weightings, its config checks) and ``mgd_det.data`` (the bundled data sets, its
config checks); ``mgd_det.engine`` imports both. Entry points import what they use
(``import mgd_det.modeling  # registers``).
"""

__version__ = "0.1.0"
__all__ = ["add_mgd_config", "get_mgd_cfg"]


def __getattr__(name):
    # The config helpers need Detectron2: imported on first use, not with the package.
    if name in __all__:
        from mgd_det import config

        return getattr(config, name)
    raise AttributeError(f"module 'mgd_det' has no attribute {name!r}")
