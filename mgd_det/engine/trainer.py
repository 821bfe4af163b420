"""Detectron2 trainer for plain detectors and MGD distillers alike.

On top of ``DefaultTrainer``: COCO evaluation, data sets generated on demand, the MGD
assignment hook, and what long multi-process runs need:

- the training data as one value (:class:`~mgd_det.engine.train_data.TrainData`: loader,
  samplers, held-out split), handed to the hooks that need more than the batches;
- exact resume: the training sampler skips what the interrupted run already consumed, the
  sampler seed and the global RNG states (torch, numpy, Python) are part of the trainer's
  checkpointed state, and the data loader draws its worker seed from its own generator (a
  fresh loader iterator would otherwise consume one global RNG draw after the restore);
- :class:`~mgd_det.engine.checkpoint.MGDCheckpointer`: strict, all-or-nothing loading with
  the teacher-file check, and plain detector checkpoints as MODEL.WEIGHTS for the student;
- DDP on CPU (gloo) as well as on GPUs; ``MGD.FIND_UNUSED_PARAMETERS`` for models that need it;
- clear errors before anything heavy runs: the config is validated (``config_checks.py``),
  own data sets (DATASETS.COCO_SETS) registered, the class count checked against the
  training data, unreadable images named (``FileNamingMapper``); evaluation tasks follow the
  config (segm with MODEL.MASK_ON) and a model that predicts nothing gets explicit 0.0 rows.
"""
import logging
import os
import weakref

import torch
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from mgd_det.cfg_facts import config_seed, detector_meta_architecture, is_mgd, per_rank_batch_size
from mgd_det.config_checks import validate_once
from mgd_det.data import coco_json
from mgd_det.data.datasets import ensure_dataset_ready, register_config_datasets
from mgd_det.data.mapper import FileNamingMapper
from mgd_det.data.samplers import ResumableTrainingSampler
from mgd_det.engine.assignment_hook import MGDAssignmentHook, unwrap_model
from mgd_det.engine.unlabeled_training import build_sampling_stats_hook, build_unlabeled_train_data, unlabeled_train_sets
from mgd_det.engine.distpro import build_distpro_hooks, exclude_weighting_params, training_split, wrap_train_data
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.resume_settings import mgd_settings
from mgd_det.engine.snapshots import load_module_ema_state, module_ema_state, rng_state, set_rng_state
from mgd_det.engine.train_data import TrainData
from mgd_det.errors import ConfigError
from mgd_det.modeling.teacher import CLASS_COUNT_KEYS

logger = logging.getLogger(__name__)


def class_count_key(cfg):
    """The config key holding the number of classes of the (student) detector, if known."""
    return CLASS_COUNT_KEYS.get(detector_meta_architecture(cfg))


def check_class_count(cfg, dataset_names) -> None:
    """The detector must have at least as many classes as the training data's categories
    (more would only waste outputs: warned). Call after the sets were loaded."""
    key = class_count_key(cfg)
    if key is None:
        return
    count = cfg.MODEL.RETINANET.NUM_CLASSES if key.endswith("RETINANET.NUM_CLASSES") else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None:
            continue
        if len(classes) > count:
            raise ConfigError(
                f"data set '{name}' has {len(classes)} categories but {key} is {count}: set {key} "
                f"{len(classes)} (on the command line or in the config)", key=key,
            )
        if len(classes) < count:
            logger.warning("%s is %d but data set '%s' has %d categories: the extra outputs never "
                           "see a positive example.", key, count, name, len(classes))


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
        if validate_once(cfg):  # else tools/train_net.py's setup validated it and registered its data
            register_config_datasets(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # Image folders in DATASETS.TRAIN: label-free or mixed training (unlabeled_training.py).
        if unlabeled_train_sets(cfg):
            data = build_unlabeled_train_data(cfg, model)
        else:
            data = self.build_train_data(cfg)
        self.train_data = wrap_train_data(cfg, data)  # DistPro observes the batches
        model = create_ddp_model(cfg, model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, self.train_data.loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = MGDCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            teacher_weights=cfg.MGD.TEACHER.WEIGHTS if is_mgd(cfg) else "",
            settings=mgd_settings(cfg) if is_mgd(cfg) else None,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        # Loader and hooks hold their dicts: drop the parsed training JSON (see coco_json.py).
        coco_json.forget(MetadataCatalog.get(n).get("json_file") for n in cfg.DATASETS.TRAIN
                         if MetadataCatalog.get(n).get("json_file") and n not in cfg.DATASETS.TEST)

    # ------------------------------------------------------------------ data
    @classmethod
    def build_train_loader(cls, cfg):
        """The loader of :meth:`build_train_data` (Detectron2's entry point)."""
        return cls.build_train_data(cfg).loader

    @classmethod
    def build_train_data(cls, cfg) -> TrainData:
        """Detectron2's train loader, with a :class:`ResumableTrainingSampler` (the data's
        ``sampler``) and DistPro's held-out split when DATALOADER.SAMPLER_TRAIN is the default
        "TrainingSampler"; Detectron2 builds the other samplers, whose order restarts on
        resume."""
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_ready(name)
        mapper = FileNamingMapper(DatasetMapper(cfg, True), cfg.DATASETS.TRAIN, cfg.INPUT.FORMAT)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "DATALOADER.SAMPLER_TRAIN %s: after --resume the data order restarts (exact "
                "resume needs TrainingSampler).", cfg.DATALOADER.SAMPLER_TRAIN,
            )
            loader = build_detection_train_loader(cfg, mapper=mapper)
            check_class_count(cfg, cfg.DATASETS.TRAIN)
            return TrainData(loader)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_class_count(cfg, cfg.DATASETS.TRAIN)
        dataset, heldout = training_split(cfg, dataset)  # DistPro's held-out share, never trained on
        sampler = ResumableTrainingSampler(len(dataset), seed=config_seed(cfg, None))
        # seed: the loader's own generator, so a new iterator draws nothing from the global RNG.
        loader = build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=sampler.seed, mapper=mapper)
        return TrainData(loader, sampler=sampler, heldout_dicts=heldout)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        ensure_dataset_ready(dataset_name)
        mapper = FileNamingMapper(DatasetMapper(cfg, False), (dataset_name,), cfg.INPUT.FORMAT)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_ready(dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type != "coco":
            raise ConfigError(
                f"data set {dataset_name} has evaluator_type {evaluator_type!r}; only 'coco' is "
                "supported (DATASETS.TEST): evaluate on a COCO-format set", key="DATASETS.TEST",
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        with coco_json.shared_coco_api("evaluate"):
            evaluator = ExplicitCOCOEvaluator(dataset_name, tasks=evaluation_tasks(cfg), output_dir=output_folder)
        return DatasetEvaluators([evaluator])

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's optimizer, without the loss weighting's (DistPro's) parameters."""
        return exclude_weighting_params(super().build_optimizer(cfg, model), model)

    # ------------------------------------------------------------------ resume
    def train(self):
        """Detectron2's training loop with TorchScript's optimisation off.

        TorchScript runs a scripted function's first calls in a process (RetinaNet's
        ``sigmoid_focal_loss_jit``) unoptimised and later ones through its optimised graph,
        which rounds differently: a resumed process rounded its first steps unlike the
        uninterrupted run (~5e-7 relative in the losses, which DistPro's meta-steps magnify to
        ~1e-2). With one path for every call a resume is bitwise exact on CPU; the focal loss
        itself is no slower on CPU (docs/BENCHMARKS.md §9).
        """
        with torch.jit.optimized_execution(False):
            return super().train()

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, except that the start iteration follows the file actually resumed
        from (which may be found without a last_checkpoint file, see MGDCheckpointer)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1
        self.train_data.fast_forward(self.start_iter, per_rank_batch_size(self.cfg, comm.get_world_size()))

    def state_dict(self):
        ret = super().state_dict()
        ret["rng"] = rng_state()
        ret["module_ema"] = module_ema_state(self.unwrapped_model)
        ret.update(self.train_data.state_dict(completed_iters=self.iter + 1))
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.train_data.load_state_dict(state_dict)
        load_module_ema_state(self.unwrapped_model, state_dict.get("module_ema", {}))
        if "rng" in state_dict:
            # Saved by rank 0; other ranks would otherwise repeat rank 0's random draws.
            if comm.get_rank() == 0:
                set_rng_state(state_dict["rng"])
            else:
                from detectron2.utils.env import seed_all_rng

                seed_all_rng(config_seed(self.cfg, 0) + 1000 * self.iter + comm.get_rank())

    # ------------------------------------------------------------------ hooks
    def build_hooks(self):
        ret = super().build_hooks()
        if is_mgd(self.cfg):
            # After the LR scheduler, before the checkpointer: a checkpoint written at an
            # update iteration already holds the new assignment.
            index = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(index, MGDAssignmentHook(self.cfg))
            ret[index + 1:index + 1] = build_distpro_hooks(self.cfg, self.unwrapped_model, self.optimizer, self.train_data)
        if self.train_data.pool_sampler is not None:
            ret.append(build_sampling_stats_hook(self.cfg, self.train_data))
        return ret

    @property
    def mgd_hook(self):
        return next((h for h in self._hooks if isinstance(h, MGDAssignmentHook)), None)

    @property
    def unwrapped_model(self):
        return unwrap_model(self.model)


# ------------------------------------------------------------------ evaluation
def evaluation_tasks(cfg):
    """COCO tasks from the config, not from the predictions (Detectron2 infers them from the
    predictions, so "segm" vanished when a young Mask R-CNN predicted nothing)."""
    tasks = ["bbox"]
    if cfg.MODEL.MASK_ON:
        tasks.append("segm")
    if cfg.MODEL.KEYPOINT_ON:
        tasks.append("keypoints")
    return tuple(tasks)


class ExplicitCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator reporting 0.0 (not NaN) for every metric of a task without any
    prediction: no detection at all means no recall, i.e. AP 0 on a set with annotations."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is not None:
            return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        metrics = ["AP", "AP50", "AP75", "APm", "APl"] if iou_type == "keypoints" else \
            ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        self._logger.warning("No %s predictions from the model: reporting 0.0 for every %s metric.", iou_type, iou_type)
        results = {metric: 0.0 for metric in metrics}
        for name in class_names or ():
            results[f"AP-{name}"] = 0.0
        return results
