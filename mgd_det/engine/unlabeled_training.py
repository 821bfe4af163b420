"""Training on unlabeled images: label-free distillation, or labeled and unlabeled mixed.

When DATASETS.TRAIN names unlabeled sets (image folders, see :mod:`mgd_det.data.unlabeled`),
the trainer builds its loader here:

- label-free (only unlabeled sets): every batch is drawn from the pool; the student learns
  from the teacher alone (feature pathways, plus KD / BOX for the teacher's outputs), and no
  annotation file is read for training;
- mixed (labeled and unlabeled sets): each batch holds ``MGD.UNLABELED.LABELED_SHARE`` of
  labeled images (detection losses on those, distillation on all);
- pool images are drawn by :class:`~mgd_det.data.preferential_sampler.PreferentialSampler`:
  in proportion to the tempered teacher score mixed with a uniform share (or uniformly). The
  teacher scores every pool image once before training (rank 0, through the on-disk cache;
  the frozen teacher's scores do not change, so there is nothing to rescore later), and the
  scores are broadcast so that every rank samples from the same distribution.
"""
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm

from mgd_det.data.mapper import FileNamingMapper
from mgd_det.data.preferential_sampler import PreferentialSampler
from mgd_det.data.samplers import ResumableTrainingSampler
from mgd_det.data.unlabeled import register_unlabeled_from_cfg, split_labeled_unlabeled
from mgd_det.data.unlabeled_cfg import build_unlabeled_sampler, score_unlabeled_from_cfg
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper
from mgd_det.errors import ConfigError

logger = logging.getLogger(__name__)


def unlabeled_train_sets(cfg) -> List[str]:
    """The unlabeled sets among DATASETS.TRAIN (registering the configured folders first)."""
    register_unlabeled_from_cfg(cfg)
    return split_labeled_unlabeled(cfg.DATASETS.TRAIN)[1]


class MixedBatchSampler(Sampler):
    """Per batch of ``batch_size`` indices: ``num_labeled`` from the labeled stream, then the
    rest from the pool's stream (offset by the number of labeled images).

    Both streams are resumable: :meth:`fast_forward` splits the consumed count between them.
    Batches are exact as long as the loader batches contiguous runs of this stream
    (NUM_WORKERS <= 1, one image orientation or no aspect-ratio grouping), as for
    :class:`~mgd_det.data.samplers.ResumableTrainingSampler`.
    """

    def __init__(self, labeled: ResumableTrainingSampler, pool: PreferentialSampler, num_labeled_dicts: int,
                 batch_size: int, num_labeled: int):
        if not 0 < num_labeled < batch_size:
            raise ConfigError(
                f"a mixed batch of {batch_size} images per process needs 1..{batch_size - 1} labeled "
                f"images; MGD.UNLABELED.LABELED_SHARE gives {num_labeled}. Change the share or the batch.",
                key="MGD.UNLABELED.LABELED_SHARE",
            )
        self.labeled, self.pool = labeled, pool
        self.offset, self.batch_size, self.num_labeled = num_labeled_dicts, batch_size, num_labeled

    @property
    def seed(self) -> int:
        return self.labeled.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.labeled.seed = value

    def fast_forward(self, num_consumed: int) -> None:
        batches, rest = divmod(int(num_consumed), self.batch_size)
        labeled = batches * self.num_labeled + min(rest, self.num_labeled)
        self.labeled.fast_forward(labeled)
        self.pool.fast_forward(num_consumed - labeled)

    def __iter__(self):
        labeled, pool = iter(self.labeled), iter(self.pool)
        while True:
            for _ in range(self.num_labeled):
                yield next(labeled)
            for _ in range(self.batch_size - self.num_labeled):
                yield self.offset + next(pool)


def _pool_scores(cfg, model, pool_dicts: List[Dict]) -> np.ndarray:
    """Teacher scores of the pool on rank 0 (cached on disk), the same array on every rank."""
    if cfg.MGD.UNLABELED.SAMPLING == "uniform":
        return np.ones(len(pool_dicts))
    teacher = getattr(model, "teacher", None)
    if teacher is None:
        raise ConfigError(
            "preferential sampling of unlabeled images needs a teacher to score them; use an MGD "
            "config, or set MGD.UNLABELED.SAMPLING uniform", key="MGD.UNLABELED.SAMPLING",
        )
    scores = None
    if comm.is_main_process():
        from mgd_det.modeling.teacher import build_teacher_cfg

        scores = score_unlabeled_from_cfg(cfg, teacher, build_teacher_cfg(cfg), pool_dicts).scores
    if comm.get_world_size() > 1:
        holder = [scores]
        torch.distributed.broadcast_object_list(holder, src=0)
        scores = holder[0]
    return np.asarray(scores, dtype=np.float64)


def build_unlabeled_train_loader(cfg, model):
    """The training loader when DATASETS.TRAIN includes unlabeled sets (see the module doc).

    The loader carries ``resumable_sampler`` (the trainer fast-forwards it on resume and
    saves its seed) and ``pool_sampler`` (whose state the trainer checkpoints).
    """
    labeled_names, pool_names = split_labeled_unlabeled(cfg.DATASETS.TRAIN)
    labeled = []
    if labeled_names:
        labeled = get_detection_dataset_dicts(labeled_names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    pool = [d for name in pool_names for d in DatasetCatalog.get(name)]
    scores = _pool_scores(cfg, model, pool)
    seed = cfg.SEED if cfg.SEED >= 0 else None
    pool_sampler = build_unlabeled_sampler(cfg, scores, seed=seed)
    per_rank = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    if labeled:
        share = cfg.MGD.UNLABELED.LABELED_SHARE
        labeled_sampler = ResumableTrainingSampler(len(labeled), seed=pool_sampler.seed)
        sampler = MixedBatchSampler(labeled_sampler, pool_sampler, len(labeled), per_rank, round(share * per_rank))
        logger.info("Training on %d labeled and %d unlabeled images: %d + %d per batch and process",
                    len(labeled), len(pool), sampler.num_labeled, per_rank - sampler.num_labeled)
    else:
        sampler = pool_sampler
        logger.info("Label-free training on %d unlabeled images (%s sampling)", len(pool), cfg.MGD.UNLABELED.SAMPLING)
    labeled_mapper = FileNamingMapper(DatasetMapper(cfg, True), labeled_names, cfg.INPUT.FORMAT) if labeled else None
    mapper = UnlabeledDatasetMapper(cfg, True, fallback_dicts=pool, labeled_mapper=labeled_mapper)
    loader = build_detection_train_loader(cfg, dataset=labeled + pool, sampler=sampler, mapper=mapper,
                                          seed=pool_sampler.seed)
    loader.resumable_sampler = sampler
    loader.pool_sampler = pool_sampler
    loader.pool_names, loader.pool_dicts = pool_names, pool
    return loader


class SamplingStatsHook(HookBase):
    """Logs the pool's sampling distribution (entropy, share of the top-scored decile) and,
    when the pool ships its relevance ground truth, the expected precision of sampling."""

    def __init__(self, sampler: PreferentialSampler, relevant: Optional[np.ndarray] = None, period: int = 20):
        self.sampler, self.relevant, self.period = sampler, relevant, max(1, int(period))

    def before_train(self):
        stats = self.sampler.stats(relevant=self.relevant)
        logger.info("Unlabeled sampling: %s", ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))

    def after_step(self):
        if (self.trainer.iter + 1) % self.period == 0:
            for key, value in self.sampler.stats(relevant=self.relevant).items():
                self.trainer.storage.put_scalar(f"unlabeled/{key}", value, smoothing_hint=False)


def pool_images_per_batch(sampler, images_per_rank: int) -> int:
    """How many of a process's batch come from the pool."""
    if isinstance(sampler, MixedBatchSampler):
        return sampler.batch_size - sampler.num_labeled
    return images_per_rank


def pool_sampler_state(trainer) -> Dict:
    """The pool sampler's state after ``trainer.iter + 1`` finished iterations."""
    per_rank = trainer.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    consumed = (trainer.iter + 1) * pool_images_per_batch(trainer.train_sampler, per_rank)
    return trainer.pool_sampler.state_dict(num_consumed=consumed)


def build_sampling_stats_hook(cfg, sampler: PreferentialSampler, pool_names: List[str], pool_dicts=None):
    """The stats hook, with relevance ground truth when the pool is a bundled one."""
    from mgd_det.data.pool import POOL_SPECS, load_relevance, relevance_flags, relevance_path

    relevant = None
    if pool_dicts is not None and len(pool_names) == 1 and pool_names[0] in POOL_SPECS:
        relevant = relevance_flags(pool_dicts, load_relevance(relevance_path(pool_names[0])))
    return SamplingStatsHook(sampler, relevant, cfg.MGD.UNLABELED.STATS_PERIOD)
