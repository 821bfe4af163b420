"""Coordinate descent between channel assignments and student weights.

Before the first step (of a fresh run) the hook computes the teacher margins and solves the
assignment once; then it re-solves every period (one epoch by default). An update tracks K
batches of the *training* set with both nets in eval mode and no grad, all-reduces the costs,
then solves one assignment problem per matcher (one rank solves, the others receive the
answer).

With ``MGD.UPDATE.APPLY_DELAY`` > 0 the solve overlaps training: it runs in a worker process
and its result is installed exactly APPLY_DELAY iterations after the tracking, so the run is
the same whatever the solve takes. A checkpoint taken in between holds the pending costs; a
resumed run solves them again (the solvers are deterministic) and installs at the same
iteration.
"""
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetFromList, DatasetMapper, MapDataset
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

from mgd_det.cfg_facts import config_seed, per_rank_batch_size
from mgd_det.config_checks import is_number, number_problems, register_config_check
from mgd_det.data.mapper import FileNamingMapper
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper
from mgd_det.ground_truth import is_unlabeled
from mgd_det.matching.background_solve import BackgroundSolver, solve_jobs

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

    def next_due(self, completed_iters: int) -> int:
        """The first iteration count after ``completed_iters`` that ends with an update."""
        for candidate in range(completed_iters + 1, completed_iters + self.period + self.slow_period + 1):
            if self.due(candidate):
                return candidate
        raise AssertionError("unreachable: a period always comes due within period + slow_period")


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
        mapper = FileNamingMapper(DatasetMapper(cfg, is_train=False), cfg.DATASETS.TRAIN, cfg.INPUT.FORMAT)
        if any(is_unlabeled(d) for d in dicts):  # image folders: robust reads, no labels
            mapper = UnlabeledDatasetMapper(cfg, False, fallback_dicts=dicts, labeled_mapper=mapper)
        self.dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
        self.batch_size = max(1, per_rank_batch_size(cfg, comm.get_world_size()))
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


@dataclass
class PendingUpdate:
    """An update whose costs are tracked and whose assignment is not installed yet."""

    apply_at: int  # install when this many iterations are complete
    tracked_at: int
    costs: Dict[str, torch.Tensor]  # all-reduced mean costs per matcher, on the host
    track_seconds: float
    future: Optional[object] = None  # rank 0's background solve; None after a resume


class MGDAssignmentHook(HookBase):
    """Recomputes the channel assignments; when training stops, names the features that went
    non-finite (the model flags them, see ``MGDDistiller.nonfinite_sources``)."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        mgd = cfg.MGD.UPDATE
        # The training set is read once, for tracking; the epoch length follows from it.
        self.tracking = TrackingBatches(cfg, seed=config_seed(cfg, 0))
        period = mgd.PERIOD or epoch_length(len(self.tracking.dataset), cfg.SOLVER.IMS_PER_BATCH)
        self.schedule = UpdateSchedule(period, mgd.SLOW_AFTER, mgd.SLOW_PERIOD)
        self.num_batches = mgd.NUM_BATCHES
        self.log_period = max(1, mgd.LOG_PERIOD)
        self.apply_delay = mgd.APPLY_DELAY
        if self.apply_delay >= period and period < cfg.SOLVER.MAX_ITER:  # PERIOD 0: refused up front otherwise
            logger.warning(
                "MGD.UPDATE.APPLY_DELAY (%d) >= the update period (one epoch: %d iterations): each assignment "
                "is installed when the next update comes due, %d iterations after its tracking; set "
                "MGD.UPDATE.PERIOD, or an APPLY_DELAY below it", self.apply_delay, period, period,
            )
        self.num_updates = 0
        self.update_iters: List[int] = []  # iterations (trainer.iter) after which tracking ran
        self.applied_iters: List[int] = []  # iterations after which assignments were installed
        self.pending: Optional[PendingUpdate] = None
        self.solver = BackgroundSolver()

    @property
    def model(self):
        return unwrap_model(self.trainer.model)

    @staticmethod
    def _solving_rank() -> bool:
        return comm.get_rank() == 0

    # ------------------------------------------------------------ hook API
    def before_train(self):
        if self.apply_delay and self._solving_rank():
            self.solver.start()  # imports in the worker overlap the first epoch
        self.model.refresh_margins()
        if not bool(self.model.distiller.assigned):  # fresh run; a resumed run keeps its state
            self.update(at_iter=self.trainer.start_iter, synchronous=True)
        elif self.pending is not None and self.pending.future is None and self._solving_rank():
            # Resumed between tracking and installation: solve the saved costs again.
            self.pending.future = self.solver.submit(self.model.distiller.solve_jobs(self.pending.costs))

    def after_train(self):
        self.solver.close()
        # Runs in the trainer's `finally`: when Detectron2 stopped on a NaN/Inf loss, say
        # which position (and which net) produced non-finite features. The model flags them
        # on the steps MGD.CHECK_FINITE_PERIOD picks, as device tensors; read only here.
        self._raise_on_nonfinite()

    def after_step(self):
        completed = self.trainer.iter + 1
        due = completed < self.trainer.max_iter and self.schedule.due(completed)
        if self.pending is not None and (completed >= self.pending.apply_at or due):
            self.install_pending(completed)
        if due:
            self.update(at_iter=completed)

    def state_dict(self):
        state = {"num_updates": self.num_updates}
        if self.pending is not None:
            state["pending"] = {
                "apply_at": self.pending.apply_at,
                "tracked_at": self.pending.tracked_at,
                "costs": dict(self.pending.costs),
            }
        return state

    def load_state_dict(self, state_dict):
        self.num_updates = int(state_dict["num_updates"])
        pending = state_dict.get("pending")
        self.pending = None if pending is None else PendingUpdate(
            int(pending["apply_at"]), int(pending["tracked_at"]), dict(pending["costs"]), 0.0
        )

    # ------------------------------------------------------------ work
    def _raise_on_nonfinite(self) -> None:
        bad = self.model.nonfinite_sources()
        if bad:
            raise FloatingPointError(
                f"Non-finite (NaN/Inf) distillation features by iteration {self.trainer.iter} in: "
                f"{', '.join(bad)}. Lower the learning rate, enable gradient clipping, or check "
                "the teacher weights and input images."
            )

    def track(self) -> float:
        """Track K training batches (eval mode, no grad); returns the seconds it took."""
        model = self.model
        was_training = model.training
        model.eval()
        model.distiller.start_tracking()
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
        return time.perf_counter() - start

    def update(self, at_iter: int, synchronous: bool = False) -> Optional[dict]:
        """Track K batches and all-reduce the costs; then solve and install now
        (synchronous, returns the statistics) or leave the solve pending (returns None)."""
        distiller = self.model.distiller
        track_seconds = self.track()
        costs = distiller.mean_costs()  # collective: every rank, same point
        self.num_updates += 1
        self.update_iters.append(at_iter)
        if synchronous or not self.apply_delay:
            solved = solve_jobs(distiller.solve_jobs(costs)) if self._solving_rank() else None
            return self._install(solved, costs, at_iter, at_iter, track_seconds)
        host_costs = {key: cost.detach().cpu() for key, cost in costs.items()}
        future = self.solver.submit(distiller.solve_jobs(host_costs)) if self._solving_rank() else None
        apply_at = self.install_iteration(at_iter)
        self.pending = PendingUpdate(apply_at, at_iter, host_costs, track_seconds, future)
        max_iter = self.trainer.max_iter
        after_end = (f", after this run's last ({max_iter}, SOLVER.MAX_ITER): only a resumed run that trains "
                     "longer installs it") if apply_at > max_iter else ""
        logger.info("MGD assignment update %d tracked at iteration %d; installs at iteration %d%s",
                    self.num_updates, at_iter, apply_at, after_end)
        return None

    def install_iteration(self, tracked_at: int) -> int:
        """The iteration count after which an update tracked at ``tracked_at`` is installed:
        APPLY_DELAY later, or earlier when the next update comes due first (see after_step)."""
        apply_at = tracked_at + self.apply_delay
        next_due = self.schedule.next_due(tracked_at)
        return next_due if next_due < min(apply_at, self.trainer.max_iter) else apply_at

    def install_pending(self, completed: int) -> dict:
        """Install the pending update's assignment (waiting for its solve if needed)."""
        pending, self.pending = self.pending, None
        solved = None
        if self._solving_rank():
            if pending.future is None:  # resumed and not resubmitted (e.g. hook used directly)
                solved = solve_jobs(self.model.distiller.solve_jobs(pending.costs))
            else:
                start = time.perf_counter()
                solved = pending.future.result()
                waited = time.perf_counter() - start
                if waited > 0.01:
                    logger.info("MGD: waited %.2fs for the background solve", waited)
        device_costs = {k: c.to(self.model.device) for k, c in pending.costs.items()}
        return self._install(solved, device_costs, pending.tracked_at, completed, pending.track_seconds)

    def _install(self, solved, costs, tracked_at: int, at_iter: int, track_seconds: float) -> dict:
        stats = self.model.distiller.install(solved, costs)
        self.applied_iters.append(at_iter)
        self._log(stats, track_seconds, tracked_at, at_iter)
        return stats

    def _log(self, stats: dict, track_seconds: float, tracked_at: int, at_iter: int) -> None:
        storage = get_event_storage()
        solve_seconds = sum(s["solve_seconds"] for s in stats.values())
        storage.put_scalar("mgd/track_seconds", track_seconds, smoothing_hint=False)
        storage.put_scalar("mgd/solve_seconds", solve_seconds, smoothing_hint=False)
        for name, s in stats.items():
            storage.put_scalar(f"mgd/{name}/matched_cost", s["mean_matched_cost"], smoothing_hint=False)
            storage.put_scalar(f"mgd/{name}/changed", s["num_changed"], smoothing_hint=False)
        summary = ", ".join(f"{n}: cost {s['mean_matched_cost']:.4f}, changed {s['num_changed']}" for n, s in stats.items())
        logger.info(
            "MGD assignment update %d (tracked at iteration %d, installed at %d; tracking %.1fs, solve %.2fs): %s",
            self.num_updates, tracked_at, at_iter, track_seconds, solve_seconds, summary,
        )


# ------------------------------------------------------------------------ checks
@register_config_check
def check_update_schedule(cfg) -> Iterator[str]:
    for key in ("MGD.UPDATE.PERIOD", "MGD.UPDATE.SLOW_AFTER", "MGD.UPDATE.SLOW_PERIOD"):
        yield from number_problems(cfg, key, minimum=0, integer=True, hint=" (0: see mgd_det/config.py)")
    yield from number_problems(cfg, "MGD.UPDATE.NUM_BATCHES", minimum=0, strict=True, integer=True,
                               hint=": the assignment needs tracked batches, e.g. 20")
    yield from number_problems(cfg, "MGD.UPDATE.LOG_PERIOD", minimum=0, integer=True)
    yield from number_problems(cfg, "MGD.UPDATE.APPLY_DELAY", minimum=0, integer=True)
    yield from apply_delay_problems(cfg)


def apply_delay_problems(cfg) -> Iterator[str]:
    """MGD.UPDATE.APPLY_DELAY < every period the config sets: an update's assignment must be
    installed before the next update is tracked. A period of one epoch (PERIOD 0) is known
    only once the data is read; the assignment hook handles it (installs when the next
    update comes due, and says so)."""
    update = cfg.MGD.UPDATE
    delay = update.APPLY_DELAY
    if not is_number(delay) or delay <= 0:
        return
    periods = [("MGD.UPDATE.PERIOD", update.PERIOD)]
    if is_number(update.SLOW_AFTER) and update.SLOW_AFTER > 0:
        periods.append(("MGD.UPDATE.SLOW_PERIOD", update.SLOW_PERIOD))
    for key, period in periods:
        if is_number(period) and 0 < period <= delay:
            yield (f"MGD.UPDATE.APPLY_DELAY ({delay}) must be < {key} ({period}): a matching solved at "
                   "iteration k is installed at k + APPLY_DELAY, before the next one is solved; lower "
                   f"APPLY_DELAY or raise {key.rsplit('.', 1)[1]}")
