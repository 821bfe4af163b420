"""Config-driven glue for unlabeled pools: teacher scoring and the sampler from cfg.MGD.UNLABELED.

The trainer (and ``tools/score_unlabeled.py``) call these three functions; the pieces they
assemble (:mod:`.scoring`, :mod:`.score_cache`, :mod:`.preferential_sampler`,
:mod:`.unlabeled_mapper`) stay usable on their own.
"""

import logging
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from mgd_det.cfg_facts import config_seed
from mgd_det.config_checks import raise_problems, register_config_check
from mgd_det.errors import ConfigError
from mgd_det.registry import Registry

from .preferential_sampler import PreferentialSampler
from .score_cache import ScoreCache, teacher_identity
from .scoring import SCORE_KINDS, ImageScores, score_images, scoring_settings
from .unlabeled_mapper import UnlabeledDatasetMapper

logger = logging.getLogger(__name__)

# How pool images are drawn (MGD.UNLABELED.SAMPLING): each entry maps (cfg, teacher or None,
# the teacher's config or None, pool dicts) to (per-image weights, whether to draw uniformly).
POOL_SAMPLINGS: Registry = Registry("pool sampling")
DEFAULT_CACHE_NAME = "unlabeled_scores.json"


@register_config_check(mgd_only=False)  # also read by tools/score_unlabeled.py with a plain detector
def unlabeled_cfg_problems(cfg) -> Iterator[str]:
    """The bad MGD.UNLABELED values, one problem each (a registered config check)."""
    u = cfg.MGD.UNLABELED
    checks = (
        ("SAMPLING", u.SAMPLING in POOL_SAMPLINGS, f"one of {POOL_SAMPLINGS.names()}"),
        ("SCORE", u.SCORE in SCORE_KINDS, f"one of {SCORE_KINDS.names()}"),
        ("TEMPERATURE", u.TEMPERATURE > 0, "> 0 (1: proportional to the score; large: uniform)"),
        ("UNIFORM_SHARE", 0.0 <= u.UNIFORM_SHARE <= 1.0, "in [0, 1]"),
        ("SCORE_EPS", u.SCORE_EPS > 0, "> 0"),
        ("SCORE_QUANTILE", 0.0 <= u.SCORE_QUANTILE <= 1.0, "in [0, 1]"),
        ("SCORE_BATCH_SIZE", u.SCORE_BATCH_SIZE >= 1, ">= 1"),
        ("LABELED_SHARE", 0.0 < u.LABELED_SHARE < 1.0, "in (0, 1): the labeled share of a mixed batch"),
        ("STATS_PERIOD", u.STATS_PERIOD >= 1, ">= 1"),
    )
    for key, ok, expected in checks:
        if not ok:
            yield f"MGD.UNLABELED.{key} is {getattr(u, key)!r}; it must be {expected}"


def check_unlabeled_cfg(cfg) -> None:
    """A :class:`~mgd_det.errors.ConfigError` (a ValueError) listing the bad MGD.UNLABELED values."""
    raise_problems(unlabeled_cfg_problems(cfg))


def score_cache_path(cfg) -> str:
    """MGD.UNLABELED.SCORE_CACHE, else OUTPUT_DIR/unlabeled_scores.json."""
    return cfg.MGD.UNLABELED.SCORE_CACHE or os.path.join(cfg.OUTPUT_DIR, DEFAULT_CACHE_NAME)


def score_unlabeled_from_cfg(
    cfg, teacher, teacher_cfg, dataset_dicts: Sequence[Dict], cache_path: Optional[str] = None
) -> ImageScores:
    """Score ``dataset_dicts`` with ``teacher`` as cfg.MGD.UNLABELED says, through the cache.

    ``teacher_cfg`` is the teacher's own config (:func:`~mgd_det.modeling.teacher.build_teacher_cfg`:
    at the student's test sizes): its INPUT.FORMAT and test sizes prepare the images, and its
    MODEL section, those sizes and TEST.DETECTIONS_PER_IMAGE are part of the cache identity with
    the teacher's weights (hashed from the module in memory) and the threshold. Images are
    decoded by DATALOADER.NUM_WORKERS workers. In a multi-process run every process must call
    this: each scores its share of the missing images, the values are all-gathered, rank 0
    writes the cache, and every process returns the same scores.
    """
    from detectron2.utils import comm

    check_unlabeled_cfg(cfg)
    u = cfg.MGD.UNLABELED
    identity = teacher_identity(teacher, scoring_settings(teacher_cfg, u.SCORE_THRESH))
    cache = ScoreCache(cache_path or score_cache_path(cfg), identity)
    mapper = UnlabeledDatasetMapper(teacher_cfg, is_train=False)
    return score_images(
        teacher, dataset_dicts, mapper, batch_size=u.SCORE_BATCH_SIZE, threshold=u.SCORE_THRESH,
        score_kind=u.SCORE, cache=cache, log_period_s=u.SCORE_LOG_PERIOD,
        num_workers=cfg.DATALOADER.NUM_WORKERS, quantile=u.SCORE_QUANTILE,
        shard=(comm.get_rank(), comm.get_world_size()), gather=comm.all_gather,
    )


def build_unlabeled_sampler(cfg, scores, seed: Optional[int] = None, uniform: Optional[bool] = None,
                            **kwargs) -> PreferentialSampler:
    """The pool's sampler: tempered scores, or uniform (u = 1: epochs without replacement)
    when SAMPLING is "uniform" or ``uniform`` is True (e.g. uninformative scores).

    Uniform sampling uses the same class so that unreadable images (NaN scores) are skipped
    and the checkpointed state is the same. ``seed`` defaults to cfg.SEED when >= 0.
    ``kwargs`` (rank, world_size, block_size) go to the sampler.
    """
    check_unlabeled_cfg(cfg)
    u = cfg.MGD.UNLABELED
    if seed is None:
        seed = config_seed(cfg, None)
    uniform = u.SAMPLING == "uniform" if uniform is None else bool(uniform)
    return PreferentialSampler(
        scores, temperature=u.TEMPERATURE, uniform_share=1.0 if uniform else u.UNIFORM_SHARE,
        eps=u.SCORE_EPS, seed=seed, **kwargs,
    )


@POOL_SAMPLINGS.register("preferential")
def teacher_score_weights(cfg, teacher, teacher_cfg, pool_dicts: Sequence[Dict]) -> Tuple[np.ndarray, bool]:
    """The teacher's scores of the pool (:func:`score_unlabeled_from_cfg`); scores that cannot
    rank the pool (a random or untrained teacher: all 0, or all equal) give uniform sampling,
    with one warning."""
    if teacher is None:
        raise ConfigError(
            "preferential sampling of unlabeled images needs a teacher to score them; use an MGD "
            "config, or set MGD.UNLABELED.SAMPLING uniform", key="MGD.UNLABELED.SAMPLING",
        )
    result = score_unlabeled_from_cfg(cfg, teacher, teacher_cfg, pool_dicts)
    reason = result.uninformative
    if reason is not None:
        logger.warning(
            "Teacher scores carry no information (%s; score %r, detections >= %.3f): uniform sampling "
            "instead of preferential. Check that MGD.TEACHER.WEIGHTS is a trained detector of the "
            "pool's objects, or set MGD.UNLABELED.SAMPLING uniform.",
            reason, result.score_kind, result.score_threshold,
        )
    return np.asarray(result.scores, dtype=np.float64), reason is not None


@POOL_SAMPLINGS.register("uniform")
def uniform_weights(cfg, teacher, teacher_cfg, pool_dicts: Sequence[Dict]) -> Tuple[np.ndarray, bool]:
    """Every pool image alike; no teacher pass."""
    return np.ones(len(pool_dicts)), True
