"""Training on unlabeled images: label-free distillation, or labeled and unlabeled mixed.

When DATASETS.TRAIN names unlabeled sets (image folders, see :mod:`mgd_det.data.unlabeled`),
the trainer builds its training data here (a :class:`~mgd_det.engine.train_data.TrainData`
with the pool's sampler, names and dicts):

- label-free (only unlabeled sets): every batch is drawn from the pool; the student learns
  from the teacher alone (feature pathways, plus KD / BOX for the teacher's outputs), and no
  annotation file is read for training;
- mixed (labeled and unlabeled sets): each batch holds ``MGD.UNLABELED.LABELED_SHARE`` of
  labeled images (detection losses on those, distillation on all);
- pool images are drawn by :class:`~mgd_det.data.preferential_sampler.PreferentialSampler`:
  in proportion to the tempered teacher score mixed with a uniform share (or uniformly). The
  teacher scores every pool image once before training (each rank its share, gathered, rank 0
  writing the on-disk cache; the frozen teacher's scores do not change, so there is nothing
  to rescore later), so every rank samples from the same distribution; scores that carry no
  information (a random teacher) give uniform sampling and a warning.
"""
import logging
import operator
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm

from mgd_det.cfg_facts import config_seed, per_rank_batch_size
from mgd_det.data.mapper import FileNamingMapper
from mgd_det.data.preferential_sampler import PreferentialSampler
from mgd_det.data.samplers import MixedAspectRatioGroupedDataset, MixedBatchSampler, ResumableTrainingSampler
from mgd_det.data.unlabeled import register_unlabeled_from_cfg, split_labeled_unlabeled
from mgd_det.data.unlabeled_cfg import POOL_SAMPLINGS, build_unlabeled_sampler
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper
from mgd_det.engine.train_data import TrainData

logger = logging.getLogger(__name__)


def unlabeled_train_sets(cfg) -> List[str]:
    """The unlabeled sets among DATASETS.TRAIN (registering the configured folders first)."""
    register_unlabeled_from_cfg(cfg)
    return split_labeled_unlabeled(cfg.DATASETS.TRAIN)[1]


def _pool_scores(cfg, model, pool_dicts: List[Dict]) -> Tuple[np.ndarray, bool]:
    """(weights of the pool's images, whether to sample uniformly) by MGD.UNLABELED.SAMPLING:
    the same on every rank (each scores its share of the images missing from the on-disk
    cache; rank 0 writes it)."""
    sampling = POOL_SAMPLINGS.get(cfg.MGD.UNLABELED.SAMPLING, key="MGD.UNLABELED.SAMPLING")
    teacher = getattr(model, "teacher", None)
    teacher_cfg = None
    if teacher is not None:
        from mgd_det.modeling.teacher import build_teacher_cfg

        teacher_cfg = build_teacher_cfg(cfg)
    return sampling(cfg, teacher, teacher_cfg, pool_dicts)


def _mixed_loader(cfg, dataset, sampler, mapper, num_labeled: int, per_rank: int, seed: int):
    """Batches of exactly ``num_labeled`` labeled + the rest pool images, grouped by aspect
    ratio when DATALOADER.ASPECT_RATIO_GROUPING is on (Detectron2's grouping reorders them)."""
    if not cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, mapper=mapper, seed=seed,
                                            aspect_ratio_grouping=False)
    from detectron2.data.build import worker_init_reset_seed
    from detectron2.data.common import MapDataset, ToIterableDataset

    generator = torch.Generator()
    generator.manual_seed(seed)
    elements = torch.utils.data.DataLoader(
        ToIterableDataset(MapDataset(dataset, mapper), sampler, shard_chunk_size=per_rank),
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=operator.itemgetter(0),
        worker_init_fn=worker_init_reset_seed, generator=generator,
    )
    return MixedAspectRatioGroupedDataset(elements, num_labeled, per_rank - num_labeled)


def build_unlabeled_train_data(cfg, model) -> TrainData:
    """The training data when DATASETS.TRAIN includes unlabeled sets (see the module doc):
    its sampler (fast-forwarded on resume, seed saved) and the pool's sampler (state saved).
    No held-out split (``heldout_dicts`` None): DistPro's learned weighting refuses it.
    """
    labeled_names, pool_names = split_labeled_unlabeled(cfg.DATASETS.TRAIN)
    labeled = []
    if labeled_names:
        labeled = get_detection_dataset_dicts(labeled_names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    pool = [d for name in pool_names for d in DatasetCatalog.get(name)]
    scores, uniform = _pool_scores(cfg, model, pool)
    seed = config_seed(cfg, None)
    pool_sampler = build_unlabeled_sampler(cfg, scores, seed=seed, uniform=uniform)
    mode = "uniform" if uniform else "preferential"
    per_rank = per_rank_batch_size(cfg, comm.get_world_size())
    if labeled:
        share = cfg.MGD.UNLABELED.LABELED_SHARE
        labeled_sampler = ResumableTrainingSampler(len(labeled), seed=pool_sampler.seed)
        sampler = MixedBatchSampler(labeled_sampler, pool_sampler, len(labeled), per_rank, round(share * per_rank))
        logger.info("Training on %d labeled and %d unlabeled images: %d + %d per batch and process (%s sampling)",
                    len(labeled), len(pool), sampler.num_labeled, per_rank - sampler.num_labeled, mode)
    else:
        sampler = pool_sampler
        logger.info("Label-free training on %d unlabeled images (%s sampling)", len(pool), mode)
    labeled_mapper = FileNamingMapper(DatasetMapper(cfg, True), labeled_names, cfg.INPUT.FORMAT) if labeled else None
    mapper = UnlabeledDatasetMapper(cfg, True, fallback_dicts=pool, labeled_mapper=labeled_mapper)
    if labeled:
        loader = _mixed_loader(cfg, labeled + pool, sampler, mapper, sampler.num_labeled, per_rank, pool_sampler.seed)
    else:
        loader = build_detection_train_loader(cfg, dataset=pool, sampler=sampler, mapper=mapper,
                                              seed=pool_sampler.seed)
    pool_per_batch = per_rank - sampler.num_labeled if labeled else per_rank
    return TrainData(loader, sampler=sampler, pool_sampler=pool_sampler, pool_names=pool_names,
                     pool_dicts=pool, pool_images_per_batch=pool_per_batch)


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


def build_sampling_stats_hook(cfg, data: TrainData) -> SamplingStatsHook:
    """The stats hook of ``data``'s pool, with relevance ground truth when the pool is a
    bundled one."""
    from mgd_det.data.pool import POOL_SPECS, load_relevance, relevance_flags, relevance_path

    names, dicts = data.pool_names, data.pool_dicts
    relevant = None
    if dicts is not None and len(names) == 1 and names[0] in POOL_SPECS:
        relevant = relevance_flags(dicts, load_relevance(relevance_path(names[0])))
    return SamplingStatsHook(data.pool_sampler, relevant, cfg.MGD.UNLABELED.STATS_PERIOD)
