"""Detectron2 side of MGD. Importing this package registers ``MGDDistiller`` in
META_ARCH_REGISTRY, the loss weightings (``weighting.py``) and the checks of the keys its
modules own (pathways and family options in ``pathway_config.py``, weighting and replay, teacher) in :mod:`mgd_det.config_checks`."""
from .batched_retinanet import BatchedRetinaNet  # registers the batched-loss RetinaNet
from .feature_taps import FeatureTaps
from .meta_arch import MGDDistiller, build_student
from .teacher import IncompatibleWeightsError, StrictCheckpointer, build_teacher, build_teacher_cfg
from .pathway_config import pathway_specs_from_cfg
from .weighting import LOSS_WEIGHTINGS, build_loss_weighting
