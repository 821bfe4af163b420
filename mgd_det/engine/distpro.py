"""DistPro in Detectron2's trainer: learned pathway weights (``MGD.WEIGHTING "learned"``) and
their replay (``"replay"``). The method itself (weighting, meta-step, trajectory file) is the
Detectron2-free core :mod:`mgd_det.matching.distpro`; this module decides when it runs, on
which batches, and what is logged and checkpointed.

Learned mode, per run:

- The weighting is ``model.distiller.weighting`` (built by ``MGD.WEIGHTING``), so the
  model's forward uses it. Its logits are frozen outside the meta-step (``requires_grad``
  False from the builder on): the ordinary backward gives them no gradient, the student's
  optimizer never holds them (:func:`exclude_weighting_params` also removes them by
  identity) and DDP, which wraps the model after they were frozen, neither registers nor
  averages them. Only the meta-step moves them, with its own Adam; the hypergradient is
  averaged over processes there, so every rank holds the same logits.
- When and on what: every ``MGD.DISTPRO.PERIOD`` iterations (at iterations 0, M, 2M, ...),
  before that step's forward, on the very batch that step trains on. The training loader is
  wrapped in a :class:`~mgd_det.engine.batch_observer.BatchObserver` whose callback runs the
  meta-step as the batch is handed to ``run_step``; Detectron2's ``run_step`` is not copied.
  (Detectron2 counts that time as the step's ``data_time``.)
- Held-out batches: a seeded share of the training set, excluded from the training stream
  (:mod:`mgd_det.engine.heldout`).
- What the meta-step's extra forwards would change is put back: parameters, buffers, the
  RNG and every module's plain attributes -- e.g. RetinaNet's loss-normaliser EMA, deleted
  again when the meta-step at iteration 0 created it (the core does that, before each of its
  forwards too) -- and the heads' own scalars (they go to a scratch ``EventStorage``). Its
  forwards (``split_losses``) do not check features for NaN/Inf, so the finiteness report
  covers the training steps only. So a run's training stream does
  not depend on anything but the weights the meta-step chose.
- The virtual step clips gradients as SOLVER.CLIP_GRADIENTS makes the student's optimizer do
  (:mod:`mgd_det.matching.distpro.clipping`). The Hessian-vector product is a finite
  difference (FD_RADIUS) or, with ``MGD.DISTPRO.HYPERGRADIENT "exact"``, a double backward.
- A meta-step whose held-out loss (or hypergradient) is not finite is skipped: the weights
  and their Adam state stay as they were; a WARNING names the iteration.
- Logged at every meta-step to EventStorage and written out before the next one (the file
  writers are flushed at the start of the following iteration, so metrics.json and TensorBoard
  hold every meta-step, iteration 0 included): ``distpro/weight_<pathway>``,
  ``distpro/hypergradient_<pathway>``, ``distpro/hypergradient_norm``, ``distpro/heldout_loss``
  (after the virtual step; these three not for a skipped step), ``distpro/skipped_steps``
  (running count) and ``distpro/seconds``. The trajectory (the weights after every meta-step,
  with the reference weights, SOLVER.MAX_ITER and PERIOD a replay needs) is written to
  ``OUTPUT_DIR/distpro_trajectory.json`` at every checkpoint period and when training ends
  (atomically; ``tools/plot_weights.py`` plots it, ``"replay"`` replays it).
- Checkpoint: the hook's state (``trainer.state_dict()["hooks"]["DistProHook"]``) holds the
  logits with their Adam state, the held-out position and the trajectory, all tensors or
  plain values. The trajectory is kept here, not in the weighting: the model's state dict is
  loaded with a strict shape check, so the model checkpoint holds only the fixed-shape logits
  and reference factors.

Replay mode: ``ReplayHook`` sets the iteration of the
:class:`~mgd_det.matching.distpro.ReplayWeighting` before every step; no meta-step, no split.
The replayed weights are relative to this run's reference (factor x MGD.LOSS_WEIGHT) and
stretched from the recorded schedule (``mgd_det.modeling.weighting.replay``).
"""
import contextlib
import logging
import os
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, get_event_storage

from mgd_det.cfg_facts import config_seed, is_mgd
from mgd_det.config_checks import choice_problems, is_number, number_problems, register_config_check
from mgd_det.engine.batch_observer import BatchObserver
from mgd_det.engine.heldout import HeldOutBatches, split_heldout
from mgd_det.engine.train_data import TrainData
from mgd_det.errors import CheckpointError, ConfigError
from mgd_det.matching.distpro.meta_step import MODES as HYPERGRADIENT_MODES
from mgd_det.modeling.pathway_config import pathway_names
from mgd_det.matching.distpro import (
    AttributeSnapshot,
    GradientClipping,
    LearnedWeighting,
    MetaWeightStep,
    ReplayWeighting,
    Trajectory,
    save_trajectory,
)

logger = logging.getLogger(__name__)

LEARNED, REPLAY = "learned", "replay"
TRAJECTORY_FILE = "distpro_trajectory.json"
SCALAR_PREFIX = "distpro/"


def distpro_mode(cfg) -> str:
    """"learned", "replay" or "" (no DistPro: constant weights or no MGD at all)."""
    if not is_mgd(cfg):
        return ""
    return cfg.MGD.WEIGHTING if cfg.MGD.WEIGHTING in (LEARNED, REPLAY) else ""


def split_seed(cfg) -> int:
    """Seed of the held-out split and order: SEED, or 0 when SEED is random (-1), so that a
    resumed run and every rank cut the same split."""
    return config_seed(cfg, 0)


def training_split(cfg, dicts: Sequence[dict]) -> Tuple[List[dict], List[dict]]:
    """(dicts to train on, held-out dicts): the held-out split in learned mode, else all."""
    if distpro_mode(cfg) != LEARNED:
        return list(dicts), []
    return split_heldout(dicts, cfg.MGD.DISTPRO.HELDOUT_FRACTION, split_seed(cfg))


def wrap_train_data(cfg, data: TrainData) -> TrainData:
    """The training data, its loader observable by the DistPro hook in learned mode (else
    unchanged)."""
    return data.with_loader(BatchObserver(data.loader)) if distpro_mode(cfg) == LEARNED else data


def weighting_params(model) -> List[torch.nn.Parameter]:
    distiller = getattr(model, "distiller", None)
    return list(distiller.weighting.parameters()) if distiller is not None else []


def exclude_weighting_params(optimizer: torch.optim.Optimizer, model) -> torch.optim.Optimizer:
    """Remove the loss weighting's parameters (DistPro's logits) from the student's optimizer,
    by identity. They are frozen, so Detectron2's builder already skips them; this keeps it
    so whatever builds the optimizer."""
    own = {id(p) for p in weighting_params(model)}
    removed = 0
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) not in own]
        removed += len(group["params"]) - len(kept)
        group["params"] = kept
    if removed:
        logger.info("Removed %d loss-weighting parameter(s) from the student's optimizer", removed)
    return optimizer


def build_distpro_hooks(cfg, model, optimizer, data: TrainData) -> List[HookBase]:
    """The hooks of ``cfg``'s DistPro mode; [] without DistPro.

    ``model``: the unwrapped MGDDistiller; ``optimizer``: the student's; ``data``: the
    training data (from :func:`wrap_train_data`: its held-out dicts and observed loader).
    """
    mode = distpro_mode(cfg)
    if not mode:
        return []
    weighting = model.distiller.weighting
    if mode == REPLAY:
        return [ReplayHook(weighting, cfg.MGD.DISTPRO.PERIOD)]
    if not isinstance(data.loader, BatchObserver):
        raise RuntimeError("DistPro needs the training loader wrapped by wrap_train_data (MGDTrainer does it)")
    heldout = data.heldout_dicts
    if heldout is None:  # a loader without a held-out split, e.g. unlabeled folders
        raise ConfigError(
            f"MGD.WEIGHTING 'learned' needs labeled training sets only (DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} "
            "includes unlabeled image folders, whose loader has no held-out split): use MGD.WEIGHTING "
            "'constant' or 'replay' for label-free and mixed training", key="MGD.WEIGHTING",
        )
    return [DistProHook(cfg, model, optimizer, heldout, data.loader)]


# ---------------------------------------------------------------------------- learned
def gradient_clipping(cfg) -> Optional[GradientClipping]:
    """SOLVER.CLIP_GRADIENTS (what the student's optimizer applies) for the virtual step."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    return GradientClipping(clip.CLIP_TYPE, float(clip.CLIP_VALUE), float(clip.NORM_TYPE))


def file_writers(trainer) -> List:
    """The trainer's metrics.json / TensorBoard writers (its PeriodicWriter's, main process
    only), not the console printer."""
    return [writer for hook in trainer._hooks if isinstance(hook, hooks.PeriodicWriter)
            for writer in hook._writers if not isinstance(writer, CommonMetricPrinter)]


class TrajectoryRecord:
    """The weights after every meta-step, as host lists; tensors in ``state_dict``. The run's
    reference weights, schedule length and PERIOD go into the trajectory file with them (what a
    replay needs to transfer it, :mod:`mgd_det.matching.distpro.trajectory`): the weighting's
    reference (the checkpoint's after a resume) and this run's SOLVER.MAX_ITER and PERIOD."""

    def __init__(self, names: Sequence[str], reference: Sequence[float] = None, source_iters: int = None,
                 period: int = None):
        self.names = tuple(names)
        self.metadata = {"reference": None if reference is None else tuple(map(float, reference)),
                         "source_iters": source_iters, "period": period}
        self.iterations: List[int] = []
        self.weights: List[List[float]] = []

    def append(self, iteration: int, weights: Sequence[float]) -> None:
        self.iterations.append(int(iteration))
        self.weights.append([float(w) for w in weights])

    def __len__(self) -> int:
        return len(self.iterations)

    def trajectory(self) -> Trajectory:
        return Trajectory(self.names, tuple(self.iterations), tuple(map(tuple, self.weights)), **self.metadata)

    def state_dict(self) -> dict:
        return {
            "trajectory_iterations": torch.tensor(self.iterations, dtype=torch.int64),
            "trajectory_weights": torch.tensor(self.weights, dtype=torch.float64).reshape(-1, len(self.names)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iterations = [int(i) for i in state["trajectory_iterations"].tolist()]
        self.weights = [list(map(float, row)) for row in state["trajectory_weights"].tolist()]


@contextlib.contextmanager
def meta_step_scope(model, logits: torch.nn.Parameter, iteration: int) -> Iterator[None]:
    """Undo what the meta-step's forwards change and the core does not restore (see the module
    doc), and unfreeze the logits for the duration (the hypergradient is taken w.r.t. them)."""
    attributes = AttributeSnapshot(model)  # e.g. loss_normalizer, also when the meta-step creates it
    logits.requires_grad_(True)
    try:
        with EventStorage(iteration):  # scratch: the heads' scalars stay out of the run's logs
            yield
    finally:
        logits.requires_grad_(False)
        attributes.restore()


class DistProHook(HookBase):
    """Runs DistPro's meta-step every ``MGD.DISTPRO.PERIOD`` iterations (see the module doc).

    Args:
        model: the unwrapped MGDDistiller (not DDP); its ``distiller.weighting`` is learned.
        student_optimizer: read for the virtual step's per-parameter LR (never stepped).
        heldout_dicts: the held-out split's data set dicts.
        observer: the training loader's BatchObserver; the hook registers its callback there.
    """

    def __init__(self, cfg, model, student_optimizer, heldout_dicts: Sequence[dict], observer: BatchObserver):
        distpro = cfg.MGD.DISTPRO
        weighting = model.distiller.weighting
        if not isinstance(weighting, LearnedWeighting):
            raise TypeError(f"DistProHook needs a LearnedWeighting; the model has {type(weighting).__name__}")
        self.model = model
        self.weighting = weighting
        self.period = distpro.PERIOD
        self.meta = MetaWeightStep(
            model, self._train_losses, weighting, lr=distpro.LR, virtual_lr=distpro.VIRTUAL_LR or None,
            student_optimizer=student_optimizer, fd_radius=distpro.FD_RADIUS, mode=distpro.HYPERGRADIENT,
            compute_heldout_losses=self._heldout_losses, measure_heldout_before=False,
            clipping=gradient_clipping(cfg), held_factors=model.distiller.held_factors,
        )
        self.heldout = HeldOutBatches(cfg, heldout_dicts, seed=split_seed(cfg))
        self.record = TrajectoryRecord(weighting.names, weighting.reference.tolist(), cfg.SOLVER.MAX_ITER, self.period)
        self.num_meta_steps = 0
        self.num_skipped = 0  # meta-steps skipped for a non-finite loss or hypergradient
        self._flush_writers = False  # a meta-step's scalars wait for the writers (before_step)
        self.trajectory_file = os.path.join(cfg.OUTPUT_DIR, TRAJECTORY_FILE)
        self.checkpoint_period = cfg.SOLVER.CHECKPOINT_PERIOD
        self._loaded = False
        self._teacher = None  # (training batch, its teacher output) during a meta-step
        observer.add_callback(self._on_batch)

    # ------------------------------------------------------------ losses for the core
    def _train_losses(self, batch):
        teacher_out = self._teacher[1] if self._teacher is not None and batch is self._teacher[0] else None
        return self.model.split_losses(batch, teacher_out=teacher_out)

    def _heldout_losses(self, batch):
        return self.model.student(batch)  # task losses only: no teacher, no pathways

    # ------------------------------------------------------------ the step
    def _on_batch(self, batch) -> None:
        iteration = self.trainer.iter
        if iteration % self.period == 0:
            self.meta_step(batch, iteration)

    def meta_step(self, batch, iteration: int):
        """One bi-level update on ``batch`` (this step's training batch) and the next held-out
        batch; logs and records the new weights. Returns the core's MetaStepStats."""
        start = time.perf_counter()
        model = self.model
        train = model.upload(batch)
        heldout = model.upload(self.heldout.batch(self.num_meta_steps))
        with meta_step_scope(model, self.weighting.logits, iteration):
            self._teacher = (train, model.teacher_pass(train))  # the teacher is frozen: once
            try:
                stats = self.meta.step(train, heldout)
            finally:
                self._teacher = None
        self.num_meta_steps += 1
        if stats.skipped:
            self.num_skipped += 1
            logger.warning(
                "DistPro meta-step at iteration %d skipped: non-finite held-out loss (%s) or hypergradient; "
                "the weights and their Adam state are unchanged (%d of %d meta-steps skipped so far)",
                iteration, stats.heldout_after, self.num_skipped, self.num_meta_steps,
            )
        self.record.append(iteration, [stats.weights[n] for n in self.weighting.names])
        self._log(stats, iteration, time.perf_counter() - start)
        return stats

    def _log(self, stats, iteration: int, seconds: float) -> None:
        storage = get_event_storage()
        for name, weight in stats.weights.items():
            storage.put_scalar(f"{SCALAR_PREFIX}weight_{name}", weight, smoothing_hint=False)
        if not stats.skipped:
            for name, value in stats.hypergradient.items():
                storage.put_scalar(f"{SCALAR_PREFIX}hypergradient_{name}", value, smoothing_hint=False)
            storage.put_scalar(f"{SCALAR_PREFIX}hypergradient_norm", stats.hypergradient_norm, smoothing_hint=False)
            storage.put_scalar(f"{SCALAR_PREFIX}heldout_loss", stats.heldout_after, smoothing_hint=False)
        storage.put_scalar(f"{SCALAR_PREFIX}skipped_steps", self.num_skipped, smoothing_hint=False)
        storage.put_scalar(f"{SCALAR_PREFIX}seconds", seconds, smoothing_hint=False)
        self._flush_writers = True
        logger.info(
            "DistPro meta-step %d at iteration %d (%.2fs): held-out loss %.4f, |hypergradient| %.3g, weights %s",
            self.num_meta_steps, iteration, seconds, stats.heldout_after, stats.hypergradient_norm,
            ", ".join(f"{n} {w:.3g}" for n, w in stats.weights.items()),
        )

    # ------------------------------------------------------------ hook API
    def before_train(self):
        if self.trainer.start_iter > 0 and not self._loaded:
            raise CheckpointError(
                f"resuming at iteration {self.trainer.start_iter} with MGD.WEIGHTING 'learned', but the "
                "checkpoint holds no learned-weighting state (it was trained with another MGD.WEIGHTING): "
                "resume with the weighting it was trained with, or start a fresh OUTPUT_DIR"
            )

    def before_step(self):
        # Detectron2's writers keep only each scalar's latest value between their writes (every
        # 20 iterations): a meta-step's scalars reach metrics.json / TensorBoard only if written
        # before the next meta-step. Flush the file writers once its iteration is over (all of
        # that iteration's scalars, the losses and evaluation included, are in by now).
        if self._flush_writers:
            self._flush_writers = False
            for writer in file_writers(self.trainer):
                writer.write()

    def after_step(self):
        if self.checkpoint_period and (self.trainer.iter + 1) % self.checkpoint_period == 0:
            self.export_trajectory()

    def after_train(self):
        self.export_trajectory()

    def export_trajectory(self) -> None:
        """Write OUTPUT_DIR/distpro_trajectory.json (main process; nothing before the first step)."""
        if comm.is_main_process() and len(self.record):
            save_trajectory(self.record.trajectory(), self.trajectory_file)

    def state_dict(self):
        return {"meta": self.meta.state_dict(), "num_meta_steps": self.num_meta_steps, "num_skipped": self.num_skipped,
                **self.record.state_dict()}

    def load_state_dict(self, state_dict):
        self.meta.load_state_dict(state_dict["meta"])
        self.record.metadata["reference"] = tuple(self.weighting.reference.tolist())  # the checkpoint's
        self.num_meta_steps = int(state_dict["num_meta_steps"])
        self.num_skipped = int(state_dict.get("num_skipped", 0))  # absent from older checkpoints
        self.record.load_state_dict(state_dict)
        self._loaded = True


# ---------------------------------------------------------------------------- replay
class ReplayHook(HookBase):
    """Points the ReplayWeighting at the current iteration before every step; logs its
    weights every ``log_period`` iterations."""

    def __init__(self, weighting: ReplayWeighting, log_period: int):
        if not isinstance(weighting, ReplayWeighting):
            raise TypeError(f"ReplayHook needs a ReplayWeighting; the model has {type(weighting).__name__}")
        self.weighting = weighting
        self.log_period = max(1, log_period)

    def before_step(self):
        iteration = self.trainer.iter
        self.weighting.set_iteration(iteration)
        if iteration % self.log_period == 0:
            storage = self.trainer.storage
            for name, weight in zip(self.weighting.names, self.weighting.weight_vector().tolist()):
                storage.put_scalar(f"{SCALAR_PREFIX}weight_{name}", weight, smoothing_hint=False)


# ------------------------------------------------------------------------ checks
@register_config_check
def check_distpro_numbers(cfg) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.DISTPRO.PERIOD", minimum=0, strict=True, integer=True,
                               hint=": iterations between DistPro meta-steps, e.g. 10")
    yield from number_problems(cfg, "MGD.DISTPRO.LR", minimum=0, strict=True, hint=", e.g. 0.05")
    yield from number_problems(cfg, "MGD.DISTPRO.VIRTUAL_LR", minimum=0, hint=" (0: the student's LR)")
    yield from number_problems(cfg, "MGD.DISTPRO.FD_RADIUS", minimum=0, strict=True, hint=", e.g. 1e-4")
    fraction = cfg.MGD.DISTPRO.HELDOUT_FRACTION
    if not is_number(fraction) or not 0 < fraction < 1:
        what = ("holds out no image" if is_number(fraction) and fraction <= 0 else
                "holds out the whole training set, leaving nothing to train on" if is_number(fraction) else
                "is not a number")
        yield (f"MGD.DISTPRO.HELDOUT_FRACTION must be > 0 and < 1 (got {fraction!r}, which {what}): "
               "the share of the training set DistPro holds out, e.g. 0.05")


@register_config_check
def check_distpro_hypergradient(cfg) -> Iterator[str]:
    yield from choice_problems(cfg, "MGD.DISTPRO.HYPERGRADIENT", HYPERGRADIENT_MODES)


@register_config_check
def check_distpro_learned(cfg) -> Iterator[str]:
    if cfg.MGD.WEIGHTING != "learned":
        return
    names = pathway_names(cfg)
    if names is not None and len(names) < 2:
        yield (f"MGD.WEIGHTING 'learned' needs at least 2 pathways to weigh against each other (got "
               f"{names}): add positions to MGD.POSITIONS (or entries to MGD.PATHWAYS), or use "
               "MGD.WEIGHTING 'constant'")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        yield (f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} cannot be used with MGD.WEIGHTING "
               "'learned': DistPro cuts its held-out split from the TrainingSampler's data set; set "
               "DATALOADER.SAMPLER_TRAIN 'TrainingSampler'")
    if is_number(cfg.MGD.LOSS_WEIGHT) and cfg.MGD.LOSS_WEIGHT == 0:
        yield ("MGD.LOSS_WEIGHT 0 switches distillation off, so there is nothing for MGD.WEIGHTING 'learned' "
               "to weigh: set MGD.LOSS_WEIGHT > 0, or MGD.WEIGHTING 'constant'")
