"""DistPro's cost: M training steps with learned weights (one meta-step, then M steps) against
M steps with fixed weights, interleaved block by block.

Both arms train the same pathways on the same batch from the same initial student (the
teacher's weights are random unless given: costs do not depend on them). The learned arm
runs the trainer's own :class:`~mgd_det.engine.distpro.DistProHook.meta_step` (held-out
batch drawn and mapped from the real training set, teacher pass, virtual step, finite
difference, Adam, logging), so the figure is what a run pays per M iterations.
"""
import logging
import time
from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from benchmarks.stats import interleaved_times, ratio_summary, summarize
from benchmarks.workloads import TrainStep, build_models, num_classes, synthetic_batch
from mgd_det.data.datasets import ensure_dataset_ready
from mgd_det.engine.batch_observer import BatchObserver
from mgd_det.engine.distpro import DistProHook, split_seed, training_split

logger = logging.getLogger(__name__)


def fixed_weights_cfg(cfg: CfgNode) -> CfgNode:
    """The same config with MGD.WEIGHTING "constant" (the learned run's reference weights)."""
    fixed = cfg.clone()
    fixed.defrost()
    fixed.MGD.WEIGHTING = "constant"
    fixed.freeze()
    return fixed


def heldout_dicts(cfg: CfgNode) -> List[dict]:
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        ensure_dataset_ready(name)
        dicts.extend(DatasetCatalog.get(name))
    return training_split(cfg, dicts)[1]


def measure_distpro_overhead(
    cfg: CfgNode, batch_size: int, image_size: int, reps: int, warmup: int, teacher_weights: str = "", seed: int = 0
) -> Dict[str, object]:
    """Arms ``fixed`` (M steps, constant weights) and ``learned`` (meta-step + M steps),
    interleaved; M = MGD.DISTPRO.PERIOD of the learned ``cfg``. Also times the meta-step alone
    inside the learned arm. Returns summaries and the per-repetition ratio learned / fixed
    (= per-iteration cost with learned weights, relative to fixed weights)."""
    period = cfg.MGD.DISTPRO.PERIOD
    learned_model, _ = build_models(cfg, teacher_weights, seed)
    fixed_model, _ = build_models(fixed_weights_cfg(cfg), teacher_weights, seed)
    fixed_model.student.load_state_dict(learned_model.student.state_dict())
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(seed))
    learned_step, fixed_step = TrainStep(learned_model, cfg), TrainStep(fixed_model, cfg)
    held = heldout_dicts(cfg)
    hook = DistProHook(cfg, learned_model, learned_step.optimizer, held, BatchObserver([]))
    meta_seconds: List[float] = []

    def fixed(_rep):
        for _ in range(period):
            fixed_step(batch)

    def learned(rep):
        start = time.perf_counter()
        with EventStorage(max(rep, 0) * period):
            hook.meta_step(batch, max(rep, 0) * period)
        if rep >= 0:
            meta_seconds.append(time.perf_counter() - start)
        for _ in range(period):
            learned_step(batch)

    logger.info("DistPro overhead: M %d, batch %d of %dx%d, %d held-out images, %d reps (+%d warm-up)",
                period, batch_size, image_size, image_size, len(held), reps, warmup)
    times = interleaved_times({"fixed": fixed, "learned": learned}, reps, warmup)
    weights = learned_model.distiller.weighting.weight_vector().tolist()
    return {
        "period": period,
        "batch_size": batch_size,
        "image_size": image_size,
        "reps": reps,
        "warmup": warmup,
        "heldout_images": len(held),
        "heldout_seed": split_seed(cfg),
        "seconds_per_block": {name: summarize(values) for name, values in times.items()},
        "meta_step_seconds": summarize(meta_seconds),
        "step_seconds_fixed": summarize([t / period for t in times["fixed"]]),
        "ratio_learned_vs_fixed": ratio_summary(times["learned"], times["fixed"]),
        "meta_step_in_fixed_steps": ratio_summary(meta_seconds, [t / period for t in times["fixed"]]),
        "final_weights": dict(zip(learned_model.distiller.weighting.names, weights)),
        "raw_seconds": {**times, "meta_step": meta_seconds},
    }
