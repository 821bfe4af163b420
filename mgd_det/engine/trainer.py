"""Detectron2 trainer for plain detectors and MGD distillers alike.

On top of ``DefaultTrainer``: COCO evaluation, data sets generated on demand, the MGD
assignment hook, and what long multi-process runs need:

- exact resume: the training sampler skips what the interrupted run already consumed, the
  sampler seed and the global RNG states (torch, numpy, Python) are part of the trainer's
  checkpointed state, and the data loader draws its worker seed from its own generator (a
  fresh loader iterator would otherwise consume one global RNG draw after the restore);
- :class:`~mgd_det.engine.checkpoint.MGDCheckpointer`: strict, all-or-nothing loading with
  the teacher-file check, and plain detector checkpoints as MODEL.WEIGHTS for the student;
- DDP on CPU (gloo) as well as on GPUs; ``MGD.FIND_UNUSED_PARAMETERS`` for models that need it.
"""
import logging
import os
import weakref

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from mgd_det.data.datasets import ensure_dataset_ready
from mgd_det.data.samplers import ResumableTrainingSampler
from mgd_det.engine.assignment_hook import MGDAssignmentHook, unwrap_model
from mgd_det.engine.checkpoint import (
    MGDCheckpointer,
    load_module_ema_state,
    module_ema_state,
    rng_state,
    set_rng_state,
)

logger = logging.getLogger(__name__)


def is_mgd(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "MGDDistiller"


def create_ddp_model(cfg, model):
    """DDP when there are several processes; ``device_ids`` only for a CUDA model (DDP
    rejects them for CPU modules, which Detectron2's own helper always passes)."""
    if comm.get_world_size() == 1:
        return model
    kwargs = {"broadcast_buffers": False, "find_unused_parameters": cfg.MGD.FIND_UNUSED_PARAMETERS}
    device = next(model.parameters()).device
    if device.type == "cuda":
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


class MGDTrainer(DefaultTrainer):
    """DefaultTrainer + COCO evaluation, dataset generation on demand and the MGD hook."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with our DDP wrapper, sampler and checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.train_sampler = getattr(data_loader, "resumable_sampler", None)
        model = create_ddp_model(cfg, model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = MGDCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            teacher_weights=cfg.MGD.TEACHER.WEIGHTS if is_mgd(cfg) else "",
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ data
    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader, with a :class:`ResumableTrainingSampler` (attached to
        the loader as ``resumable_sampler``) when DATALOADER.SAMPLER_TRAIN is the default
        "TrainingSampler"; Detectron2 builds the other samplers, whose order restarts on
        resume."""
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_ready(name)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "DATALOADER.SAMPLER_TRAIN %s: after --resume the data order restarts (exact "
                "resume needs TrainingSampler).", cfg.DATALOADER.SAMPLER_TRAIN,
            )
            return super().build_train_loader(cfg)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED if cfg.SEED >= 0 else None)
        # seed: the loader's own generator, so a new iterator draws nothing from the global RNG.
        loader = build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=sampler.seed)
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        ensure_dataset_ready(dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_ready(dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type != "coco":
            raise NotImplementedError(f"Dataset {dataset_name} has evaluator_type {evaluator_type!r}; only 'coco' is supported.")
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([COCOEvaluator(dataset_name, output_dir=output_folder)])

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.train_sampler is not None:
            images_per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            self.train_sampler.fast_forward(self.start_iter * images_per_rank)

    def state_dict(self):
        ret = super().state_dict()
        ret["rng"] = rng_state()
        ret["module_ema"] = module_ema_state(self.unwrapped_model)
        if self.train_sampler is not None:
            ret["sampler_seed"] = self.train_sampler.seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.train_sampler is not None and "sampler_seed" in state_dict:
            self.train_sampler.seed = state_dict["sampler_seed"]
        load_module_ema_state(self.unwrapped_model, state_dict.get("module_ema", {}))
        if "rng" in state_dict:
            # Saved by rank 0; other ranks would otherwise repeat rank 0's random draws.
            if comm.get_rank() == 0:
                set_rng_state(state_dict["rng"])
            else:
                from detectron2.utils.env import seed_all_rng

                seed_all_rng((self.cfg.SEED if self.cfg.SEED >= 0 else 0) + 1000 * self.iter + comm.get_rank())

    # ------------------------------------------------------------------ hooks
    def build_hooks(self):
        ret = super().build_hooks()
        if is_mgd(self.cfg):
            # After the LR scheduler, before the checkpointer: a checkpoint written at an
            # update iteration already holds the new assignment.
            index = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(index, MGDAssignmentHook(self.cfg))
        return ret

    @property
    def mgd_hook(self):
        return next((h for h in self._hooks if isinstance(h, MGDAssignmentHook)), None)

    @property
    def unwrapped_model(self):
        return unwrap_model(self.model)
