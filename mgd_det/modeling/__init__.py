"""Detectron2 side of MGD: registering this package adds ``MGDDistiller`` to META_ARCH_REGISTRY."""
from .feature_taps import FeatureTaps
from .meta_arch import MGDDistiller, build_student
from .teacher import IncompatibleWeightsError, StrictCheckpointer, build_teacher, build_teacher_cfg
from .weighting import LOSS_WEIGHTING_REGISTRY, build_loss_weighting
