"""Small facts read off a config, each written once: the dotted-key walk, whether a config is
an MGD distiller and which detector it trains, the per-process batch and the seed fallback.

A leaf: no Detectron2, no other ``mgd_det`` module, so every layer (config checks, data,
modeling, engine, tools) can use it. The functions take any nested mapping (a ``CfgNode``
or the plain dict of a YAML file).
"""
from typing import Any, Mapping

# MODEL.META_ARCHITECTURE of an MGD config (mgd_det.modeling registers it).
MGD_META_ARCHITECTURE = "MGDDistiller"


def get_key(cfg: Mapping, key: str) -> Any:
    """The value at dotted ``key`` ("MGD.TEACHER.WEIGHTS"); KeyError (or TypeError when a
    part is not a mapping) if it is not there."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def has_key(cfg: Mapping, key: str) -> bool:
    """Whether dotted ``key`` is set in ``cfg``."""
    try:
        get_key(cfg, key)
    except (KeyError, TypeError, AttributeError):
        return False
    return True


def set_key(cfg: Mapping, key: str, value: Any) -> None:
    """Set dotted ``key`` (its parents must exist) to ``value``."""
    *parents, leaf = key.split(".")
    node = get_key(cfg, ".".join(parents)) if parents else cfg
    node[leaf] = value


def is_mgd(cfg) -> bool:
    """Whether ``cfg`` describes an MGD distiller (teacher + student) rather than a plain detector."""
    return cfg.MODEL.META_ARCHITECTURE == MGD_META_ARCHITECTURE


def detector_meta_architecture(cfg) -> str:
    """The meta-architecture of the detector being trained: the student's for an MGD config."""
    return cfg.MGD.STUDENT_META_ARCHITECTURE if is_mgd(cfg) else cfg.MODEL.META_ARCHITECTURE


def per_rank_batch_size(cfg, world_size: int) -> int:
    """Images per process per iteration: SOLVER.IMS_PER_BATCH split over ``world_size``."""
    return cfg.SOLVER.IMS_PER_BATCH // world_size


def config_seed(cfg, fallback):
    """``cfg.SEED``, or ``fallback`` when it is negative (Detectron2's "random seed")."""
    return cfg.SEED if cfg.SEED >= 0 else fallback

