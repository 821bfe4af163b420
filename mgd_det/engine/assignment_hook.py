"""Coordinate descent between channel assignments and student weights.

Before the first step (of a fresh run) the hook computes the teacher margins and solves the
assignment once; then it re-solves every period (one epoch by default). An update tracks K
batches of the *training* set with both nets in eval mode and no grad, then solves one
assignment problem per position (one rank solves, the others receive the answer).
"""
import contextlib
import logging
import math
import time
from typing import Iterable, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetFromList, DatasetMapper, MapDataset
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def unwrap_model(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def epoch_length(num_images: int, ims_per_batch: int) -> int:
    """Iterations per epoch, Detectron2-style: ceil(training images / global batch)."""
    return max(1, math.ceil(num_images / ims_per_batch))


class UpdateSchedule:
    """Which iterations end with an assignment update."""

    def __init__(self, period: int, slow_after: int = 0, slow_period: int = 0):
        if period <= 0:
            raise ValueError(f"assignment update period must be positive, got {period}")
        self.period = period
        self.slow_after = slow_after
        self.slow_period = slow_period or period

    def due(self, completed_iters: int) -> bool:
        """True when an update should follow ``completed_iters`` finished iterations."""
        if self.slow_after and completed_iters > self.slow_after:
            return (completed_iters - self.slow_after) % self.slow_period == 0
        return completed_iters % self.period == 0


@contextlib.contextmanager
def preserved_numpy_rng():
    """Restore numpy's global RNG afterwards: Detectron2's resize transforms draw from it
    even at test time, and the training augmentations share that stream."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


class TrackingBatches:
    """K batches of training images for one update, without touching the training stream.

    Uses the test-time mapper (no random augmentation) with numpy's global RNG preserved,
    and its own seeded generator, so tracking never changes what the training loader
    yields. Each rank takes a disjoint share of the chosen images.
    """

    def __init__(self, cfg, seed: int):
        dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
        self.dataset = MapDataset(DatasetFromList(dicts, copy=False), DatasetMapper(cfg, is_train=False))
        self.batch_size = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        self.seed = seed

    def batches(self, num_batches: int, update_index: int) -> Iterable[List[dict]]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + update_index)
        world, rank = comm.get_world_size(), comm.get_rank()
        total = num_batches * self.batch_size * world
        order = torch.randperm(len(self.dataset), generator=generator)
        order = order.repeat(math.ceil(total / len(order)))[:total]
        mine = order[rank::world].tolist()
        for start in range(0, len(mine), self.batch_size):
            with preserved_numpy_rng():
                batch = [self.dataset[i] for i in mine[start : start + self.batch_size]]
            yield batch


class MGDAssignmentHook(HookBase):
    """Recomputes the channel assignments; also reports non-finite features by position."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        mgd = cfg.MGD.UPDATE
        # The training set is read once, for tracking; the epoch length follows from it.
        self.tracking = TrackingBatches(cfg, seed=cfg.SEED if cfg.SEED >= 0 else 0)
        period = mgd.PERIOD or epoch_length(len(self.tracking.dataset), cfg.SOLVER.IMS_PER_BATCH)
        self.schedule = UpdateSchedule(period, mgd.SLOW_AFTER, mgd.SLOW_PERIOD)
        self.num_batches = mgd.NUM_BATCHES
        self.log_period = max(1, mgd.LOG_PERIOD)
        self.check_finite_period = cfg.MGD.CHECK_FINITE_PERIOD
        self.num_updates = 0
        self.update_iters: List[int] = []  # iterations (trainer.iter) after which updates ran

    @property
    def model(self):
        return unwrap_model(self.trainer.model)

    # ------------------------------------------------------------ hook API
    def before_train(self):
        self.model.refresh_margins()
        if not bool(self.model.distiller.assigned):  # fresh run; a resumed run keeps its state
            self.update(at_iter=self.trainer.start_iter)

    def before_step(self):
        period = self.check_finite_period
        self.model.check_finite = bool(period) and self.trainer.iter % period == 0

    def after_train(self):
        # Runs in the trainer's `finally`: when Detectron2 stopped on a NaN/Inf loss, say
        # which position (and which net) produced non-finite features. The flags are device
        # tensors accumulated during the steps; they are only read here, never per step.
        self._raise_on_nonfinite()

    def after_step(self):
        completed = self.trainer.iter + 1
        if completed < self.trainer.max_iter and self.schedule.due(completed):
            self.update(at_iter=completed)

    def state_dict(self):
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state_dict):
        self.num_updates = int(state_dict["num_updates"])

    # ------------------------------------------------------------ work
    def _raise_on_nonfinite(self) -> None:
        report = self.model.nonfinite_report
        if not report:
            return
        flags = torch.stack(list(report.values())).cpu().tolist()
        bad = [name for name, flag in zip(report, flags) if flag]
        if bad:
            raise FloatingPointError(
                f"Non-finite (NaN/Inf) distillation features by iteration {self.trainer.iter} in: "
                f"{', '.join(bad)}. Lower the learning rate, enable gradient clipping, or check "
                "the teacher weights and input images."
            )

    def update(self, at_iter: int) -> dict:
        """Track K batches, then solve; logs the per-position statistics."""
        model = self.model
        was_training = model.training
        model.eval()
        distiller = model.distiller
        distiller.start_tracking()
        start = time.perf_counter()
        try:
            for index, batch in enumerate(self.tracking.batches(self.num_batches, self.num_updates), 1):
                model.track_batch(batch)
                if index % self.log_period == 0 or index == self.num_batches:
                    elapsed = time.perf_counter() - start
                    eta = elapsed / index * (self.num_batches - index)
                    logger.info("MGD tracking: batch %d/%d, ETA %.1fs", index, self.num_batches, eta)
        finally:
            model.train(was_training)
        track_seconds = time.perf_counter() - start
        stats = distiller.finish_tracking()
        self.num_updates += 1
        self.update_iters.append(at_iter)
        self._log(stats, track_seconds, at_iter)
        return stats

    def _log(self, stats: dict, track_seconds: float, at_iter: int) -> None:
        storage = get_event_storage()
        solve_seconds = sum(s["solve_seconds"] for s in stats.values())
        storage.put_scalar("mgd/track_seconds", track_seconds, smoothing_hint=False)
        storage.put_scalar("mgd/solve_seconds", solve_seconds, smoothing_hint=False)
        for name, s in stats.items():
            storage.put_scalar(f"mgd/{name}/matched_cost", s["mean_matched_cost"], smoothing_hint=False)
            storage.put_scalar(f"mgd/{name}/changed", s["num_changed"], smoothing_hint=False)
        summary = ", ".join(f"{n}: cost {s['mean_matched_cost']:.4f}, changed {s['num_changed']}" for n, s in stats.items())
        logger.info(
            "MGD assignment update %d at iteration %d (tracking %.1fs, solve %.2fs): %s",
            self.num_updates, at_iter, track_seconds, solve_seconds, summary,
        )
